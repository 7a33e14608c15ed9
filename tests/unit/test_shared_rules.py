"""Rules defined once and used by every entry point: algorithm and percentile validation (same words
everywhere), the INT8 maximum, the opset look-up, and the producer/consumer maps of a graph."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from calibrators import ranges
from calibrators.calibrate import amax_table, calibrate
from calibrators.table import CalibrationTable
from tests.conftest import make_tiny_conv_onnx
from trtq import onnxgraph
from trtq.errors import TrtqError
from trtq.quantize import quantize
from trtq.quantize_options import QuantizeOptions

COUNTS, EDGES = np.ones(300), np.arange(301, dtype=np.float64)


def _message(call: Callable[[], Any]) -> str:
    with pytest.raises(TrtqError) as info:
        call()
    return str(info.value)


def test_an_unknown_algorithm_is_refused_in_the_same_words_everywhere(tmp_path: Path) -> None:
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx")
    calls: dict[str, Callable[[], Any]] = {
        "compute_amax": lambda: ranges.compute_amax(COUNTS, EDGES, "kl"),
        "amax_table": lambda: amax_table({}, "kl"),
        "calibrate": lambda: calibrate(model, tmp_path, algo="kl", write=False, progress=False),
        "CalibrationTable": lambda: CalibrationTable(amax={"x": 1.0}, algorithm="kl"),
        "quantize": lambda: quantize(model, tmp_path, QuantizeOptions(algo="kl", progress=False)),
    }
    messages = {name: _message(call) for name, call in calls.items()}
    for name, text in messages.items():
        assert text.startswith("unknown calibration algorithm 'kl'; choose one of entropy, minmax, percentile, mse"), name
    assert messages["quantize"].endswith(", auto")


@pytest.mark.parametrize("bad", [0, -1.0, 100.5, float("nan"), "x"])
def test_a_bad_percentile_is_refused_in_the_same_words_everywhere_and_before_any_image_is_read(
    bad: Any, tmp_path: Path
) -> None:
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx")
    missing = tmp_path / "no-images-here"  # never reached: the percentile is checked first
    calls: dict[str, Callable[[], Any]] = {
        "percentile_amax": lambda: ranges.percentile_amax(COUNTS, EDGES, bad),
        "CalibrationTable": lambda: CalibrationTable(amax={"x": 1.0}, algorithm="percentile", percentile=bad),
        "calibrate": lambda: calibrate(model, missing, algo="percentile", percentile=bad, write=False, progress=False),
        "quantize": lambda: quantize(model, missing, QuantizeOptions(algo="percentile", percentile=bad, progress=False)),
        "quantize auto": lambda: quantize(model, missing, QuantizeOptions(algo="auto", percentile=bad, progress=False)),
    }
    expected = f"percentile must be in (0, 100], got {bad!r}; pass e.g. --percentile 99.99"
    for name, call in calls.items():
        assert _message(call) == expected, name


def test_one_int8_maximum() -> None:
    import calibrators.table
    import trtq.qdq
    import trtq.quantize

    assert ranges.QMAX == 127
    for module in (trtq.qdq, trtq.quantize, calibrators.table):
        assert module.QMAX is ranges.QMAX, module.__name__


def test_a_model_without_a_default_opset_is_refused_alike(tmp_path: Path) -> None:
    """The statistics graph once assumed opset 13 where Q/DQ placement refused: one look-up, one answer."""
    from calibrators.collect import build_stats_graph
    from trtq.qdq import ensure_opset

    model = onnx.load(str(make_tiny_conv_onnx(tmp_path / "tiny.onnx")))
    assert onnxgraph.default_opset(model) == next(o.version for o in model.opset_import if o.domain == "")
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    texts = {_message(lambda: build_stats_graph(model, ["a0"], {}, None)), _message(lambda: ensure_opset(model))}
    assert texts == {"the model declares no default ONNX opset; re-export it with `trtq export`"}


def test_producer_and_consumer_maps_come_from_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from calibrators.collect import calibration_tensors, plan_statistics
    from trtq.headpolicy import float_nodes
    from trtq.qdq import plan_qdq

    model = onnx.load(str(make_tiny_conv_onnx(tmp_path / "tiny.onnx")))
    graph = model.graph
    # against a brute-force scan
    prods = onnxgraph.producers(graph)
    cons = onnxgraph.consumers(graph)
    for t in {x for n in graph.node for x in [*n.input, *n.output] if x}:
        writers = [n for n in graph.node if t in n.output]
        assert (prods.get(t) is None) == (not writers) and (not writers or prods[t] is writers[0])
        assert [id(n) for n in cons.get(t, [])] == [id(n) for n in graph.node for i in n.input if i == t]
    # every user goes through them
    used: list[str] = []
    for name in ("producers", "consumers"):
        real = getattr(onnxgraph, name)
        monkeypatch.setattr(onnxgraph, name, lambda g, real=real, name=name: used.append(name) or real(g))
    both = {"producers", "consumers"}
    for user, expected in (
        (lambda: plan_qdq(model), both),
        (lambda: plan_statistics(model, calibration_tensors(model), {}, None), both),
        (lambda: float_nodes(model), both),  # no Detect head in the tiny net; the attention search reads both
    ):
        used.clear()
        user()
        assert set(used) == expected
