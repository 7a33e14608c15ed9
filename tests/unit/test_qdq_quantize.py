"""The quantize() library path on the tiny net: report, exclusions, algorithms, tables, --max-drop logic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from trtq.amax import activation_amax, histogram_mse
from trtq.errors import TrtqError
from trtq.quantize import quantize
from trtq.quantize_options import QuantizeOptions


@pytest.fixture(scope="module")
def tiny_hists(tmp_path_factory: pytest.TempPathFactory, calib_dir: Path) -> tuple[Path, dict[str, Any]]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import make_tiny_conv_onnx

    from trtq.amax import collect_statistics

    path = make_tiny_conv_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx")
    hists, _ = collect_statistics(path, calib_dir, ["images", "a0", "cat"], num_images=4, progress=False)
    return path, hists


def test_quantize_writes_model_and_report(tiny_hists: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, hists = tiny_hists
    out = tmp_path / "q.onnx"
    r = quantize(path, None, QuantizeOptions(progress=False), histograms=hists, output=out)
    onnx.checker.check_model(onnx.load(str(out)))
    report = json.loads(r.report_path.read_text())
    assert r.report_path == tmp_path / "q.report.json" and r.markdown_path.is_file()
    acts = {a["tensor"]: a for a in report["quantized_activations"]}
    assert set(acts) == {"images", "a0", "cat"}
    assert acts["images"]["amax"] == pytest.approx(hists["images"].max_abs)  # the image is never clipped
    assert acts["images"]["algorithm"] == "minmax" and acts["a0"]["algorithm"] == "percentile"
    assert report["counts"]["quantized_weights"] == 3 and report["residual_adds"] == [{"node": "/model.1/Add", "shortcut": "a0"}]
    assert "| `a0` |" in r.markdown_path.read_text()


def test_exclude_keeps_node_float_and_reports_it(tiny_hists: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, hists = tiny_hists
    r = quantize(path, None, QuantizeOptions(exclude=["/model.4/Conv"], progress=False), histograms=hists,
                 output=tmp_path / "q.onnx")
    floats = {f["node"]: f["reason"] for f in r.report["float_nodes"]}
    assert "excluded" in floats["/model.4/Conv"]
    assert "cat" not in {a["tensor"] for a in r.report["quantized_activations"]}
    with pytest.raises(TrtqError, match="matches no node"):
        quantize(path, None, QuantizeOptions(exclude=["nothing"], progress=False), histograms=hists,
                 output=tmp_path / "x.onnx")


def test_bad_arguments_are_user_errors(tiny_hists: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, _ = tiny_hists
    with pytest.raises(TrtqError, match="unknown calibration algorithm"):
        quantize(path, None, QuantizeOptions(algo="kl"))
    with pytest.raises(TrtqError, match="--data"):
        quantize(path, None, QuantizeOptions(max_drop=0.5))
    with pytest.raises(TrtqError, match="not found"):
        quantize(tmp_path / "missing.onnx", None)


def test_auto_never_has_larger_histogram_error(tiny_hists: tuple[Path, dict[str, Any]]) -> None:
    _, hists = tiny_hists
    tensors = ["a0", "cat"]
    auto, chosen = activation_amax(hists, tensors, "auto")
    for algo in ("entropy", "percentile", "mse", "minmax"):
        other, _ = activation_amax(hists, tensors, algo)
        for t in tensors:
            h = hists[t]
            assert histogram_mse(h.counts, h.edges, auto[t]) <= histogram_mse(h.counts, h.edges, other[t]) * (1 + 1e-9)
    assert set(chosen.values()) <= {"entropy", "percentile", "mse", "minmax"}


def test_histogram_mse_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal(20000))
    counts, edges = np.histogram(x, bins=512, range=(0, x.max()))
    amax = 2.0
    centres = (edges[:-1] + edges[1:]) / 2
    v = np.repeat(centres, counts)
    s = amax / 127
    brute = np.mean((v - np.minimum(np.rint(v / s), 127) * s) ** 2)
    assert histogram_mse(counts, edges, amax) == pytest.approx(brute, rel=1e-9)


def test_table_supplies_ranges(tiny_hists: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    from calibrators.table import CalibrationTable

    path, _ = tiny_hists
    table = CalibrationTable(amax={"images": 1.0, "a0": 2.5, "cat": 3.5, "c0": 9.0}, algorithm="entropy")
    r = quantize(path, None, QuantizeOptions(cache=table, progress=False), output=tmp_path / "t.onnx")
    acts = {a["tensor"]: a["amax"] for a in r.report["quantized_activations"]}
    assert acts == {"images": 1.0, "a0": 2.5, "cat": 3.5}
    short = CalibrationTable(amax={"images": 1.0}, algorithm="entropy")
    with pytest.raises(TrtqError, match="no range"):
        quantize(path, None, QuantizeOptions(cache=short, progress=False), output=tmp_path / "u.onnx")


def test_max_drop_keeps_sensitive_layers_until_within_target(
    tiny_hists: tuple[Path, dict[str, Any]], tmp_path: Path, calib_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy loop with a stand-in metric: every quantized conv costs 1 point of mAP."""
    import trtq.evaluate

    path, hists = tiny_hists

    def fake_evaluate(model: Any, data: Any, **_: Any) -> dict[str, Any]:
        m = onnx.load(str(model))
        prod = {o: n for n in m.graph.node for o in n.output}
        quantized = sum(1 for n in m.graph.node if n.op_type == "Conv" and n.input[0] in prod and prod[n.input[0]].op_type == "DequantizeLinear")
        return {"map50_95": 0.5 - 0.01 * quantized, "images": 1}

    monkeypatch.setattr(trtq.evaluate, "evaluate", fake_evaluate)
    options = QuantizeOptions(max_drop=1.5, data="unused", sensitivity_images=2, progress=False)
    r = quantize(path, calib_dir, options, histograms=hists, output=tmp_path / "m.onnx")
    md = r.report["max_drop"]
    assert md["initial_map50_95"] == pytest.approx(0.47)
    assert md["met"] and md["final_drop_points"] <= 1.5
    assert len(md["steps"]) == len(md["kept_float"]) + 1
    assert all(name in {f["node"] for f in r.report["float_nodes"]} for name in md["kept_float"])
    assert "Accuracy-driven mixed precision" in r.markdown_path.read_text()


def test_sensitivity_map_metric_ranks_by_drop(
    tiny_hists: tuple[Path, dict[str, Any]], calib_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """metric='map' evaluates each layer alone; a stand-in metric makes /model.4/Conv the costliest."""
    import trtq.evaluate
    from trtq.amax import activation_amax
    from trtq.sensitivity import analyse

    path, hists = tiny_hists

    def fake_evaluate(model: Any, data: Any, **_: Any) -> dict[str, Any]:
        m = onnx.load(str(model))
        prod = {o: n for n in m.graph.node for o in n.output}
        cost = {"/model.0/conv/Conv": 0.01, "/model.1/conv/Conv": 0.02, "/model.4/Conv": 0.05, "/model.1/Add": 0.0}
        lost = sum(c for name, c in cost.items() for n in m.graph.node if n.name == name and any(i in prod and prod[i].op_type == "DequantizeLinear" for i in n.input))
        return {"map50_95": 0.5 - lost, "images": 3}

    monkeypatch.setattr(trtq.evaluate, "evaluate", fake_evaluate)
    amax, _ = activation_amax(hists, ["images", "a0", "cat"], "percentile")
    result = analyse(path, calib_dir, amax=amax, data="unused", metric="map", output=tmp_path / "s")
    assert [c.layer for c in result.ranking][:3] == ["/model.4/Conv", "/model.1/conv/Conv", "/model.0/conv/Conv"]
    assert result.ranking[0].cost == pytest.approx(5.0)
    assert (tmp_path / "s.png").is_file() and "/model.4/Conv" in (tmp_path / "s.txt").read_text()
