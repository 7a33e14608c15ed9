"""trtq inspect: engines (record + per-layer precisions through the engine inspector), caches, ONNX."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from calibrators.table import CalibrationTable
from tests.conftest import make_tiny_conv_onnx
from tests.fakes import make_qdq_onnx, write_images
from tests.fakes.fake_device import FakeDevice
from tests.fakes.fake_tensorrt import make_fake_tensorrt
from trtq.cli import main
from trtq.trt.builder import build_engine
from trtq.trt.inspect import inspect_path, layer_precisions


@pytest.fixture(autouse=True)
def _fake_plans_count_as_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake TensorRT's plans carry their own magic; inspect accepts it in these tests only."""
    import trtq.trt.inspect as inspect_module
    from tests.fakes.fake_tensorrt import PLAN_MAGIC

    monkeypatch.setattr(inspect_module, "PLAN_MAGICS", (*inspect_module.PLAN_MAGICS, PLAN_MAGIC))


@pytest.fixture
def int8_engine(tmp_path: Path) -> tuple[Path, object]:
    trt = make_fake_tensorrt("8.5.3")
    tiny = make_tiny_conv_onnx(tmp_path / "tiny.onnx")
    images = write_images(tmp_path / "img", 4)
    r = build_engine(tiny, int8=True, calib=images, trt_module=trt, device=FakeDevice("Fake Orin", (8, 7)),
                     output=tmp_path / "e" / "tiny.int8.engine", progress=False)
    assert r.engine_path is not None
    return r.engine_path, trt


def test_engine_with_tensorrt_lists_layer_precisions(int8_engine: tuple[Path, object]) -> None:
    path, trt = int8_engine
    res = inspect_path(path, trt_module=trt)  # type: ignore[arg-type]
    assert res.kind == "engine" and res.data["metadata"]["precision"] == "int8"
    layers = {r["name"]: r["precision"] for r in res.data["layers"]}
    assert layers["/model.0/conv/Conv"] == "INT8"  # conv layers calibrated to INT8
    assert layers["/model.2/MaxPool"] == "FP16"
    text = res.text()
    assert "implicit INT8" in text and "TensorRT 8.5.3 on Fake Orin (SM 8.7)" in text and "INT8" in text


def test_inspector_format_of_tensorrt_11(tmp_path: Path) -> None:
    trt = make_fake_tensorrt("11.0")  # splits Format/Datatype into Datatype and Format
    tiny = make_tiny_conv_onnx(tmp_path / "tiny.onnx")
    r = build_engine(tiny, trt_module=trt, device=FakeDevice(), output=tmp_path / "t.engine", progress=False)
    rows = layer_precisions(trt, r.engine_path.read_bytes())  # type: ignore[union-attr, arg-type]
    assert {row["precision"] for row in rows} == {"FP32"}


def test_engine_without_tensorrt(int8_engine: tuple[Path, object], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = int8_engine
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    res = inspect_path(path)
    assert "layers" not in res.data and "per-layer precisions need TensorRT" in res.text()
    out = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["kind"] == "engine" and data["metadata"]["mode"] == "implicit"


def test_cache_and_record(tmp_path: Path) -> None:
    cache = tmp_path / "c.cache"
    CalibrationTable(amax={"images": 1.0, "/m/Conv_output_0": 12.7}, algorithm="mse", model_sha256="f" * 64,
                     num_images=3).save(cache)
    res = inspect_path(cache)
    assert res.kind == "cache" and res.data["tensors"] == 2 and res.data["record"]["algorithm"] == "mse"
    assert "max 12.7" in res.text() and "algorithm      mse" in res.text()
    assert inspect_path(Path(str(cache) + ".json")).kind == "cache"  # the record leads to its cache


def test_onnx_with_and_without_qdq(tmp_path: Path) -> None:
    tiny = make_tiny_conv_onnx(tmp_path / "tiny.onnx")
    qdq = make_qdq_onnx(tiny, tmp_path / "tiny.int8.onnx")
    plain, quant = inspect_path(tiny), inspect_path(qdq)
    assert plain.data["quantize_linear"] == 0 and quant.data["quantize_linear"] == 1
    assert "float ONNX" in plain.text() and "Q/DQ INT8 ONNX (1 QuantizeLinear)" in quant.text()
    assert plain.data["inputs"][0]["shape"] == [1, 3, 32, 32]
    out = CliRunner().invoke(main, ["inspect", str(tmp_path / "missing.engine")])
    assert out.exit_code == 2 and "not found" in out.output


def test_dla_engine_is_deserialized_on_its_dla_core(tmp_path: Path) -> None:
    """As at run time, the runtime's DLA core is set before a DLA engine is deserialized."""
    trt = make_fake_tensorrt("10.3.0", num_dla_cores=2)
    tiny = make_tiny_conv_onnx(tmp_path / "tiny.onnx")
    r = build_engine(tiny, fp16=True, dla_core=1, trt_module=trt, device=FakeDevice("Fake Orin", (8, 7)),
                     output=tmp_path / "dla.engine", progress=False)
    assert r.engine_path is not None
    res = inspect_path(r.engine_path, trt_module=trt)  # type: ignore[arg-type]
    assert "layers" in res.data
    loads = [c for c in trt.CALLS if c[0] == "runtime.deserialize_cuda_engine"]  # type: ignore[attr-defined]
    assert loads and loads[-1][2] == 1


def test_a_file_without_the_plan_magic_is_not_called_an_engine(tmp_path: Path) -> None:
    """1000 random bytes named .engine (or with no suffix), or an Ultralytics header in front of anything but
    a plan: one line, non-zero exit."""
    import numpy as np

    from trtq.engine_meta import ultralytics_header

    noise = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    header = ultralytics_header({"stride": 32, "names": {"0": "person"}})
    cases = {"noise.engine": noise, "noise": noise, "header-noise.engine": header + noise, "onnx.plan": b"\x08\x07" + noise}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        out = CliRunner().invoke(main, ["inspect", str(tmp_path / name), "--no-layers"])
        assert out.exit_code == 2, (name, out.output)
        assert len(out.output.strip().splitlines()) == 1 and "Traceback" not in out.output
        if name.endswith((".engine", ".plan")):
            assert "not a TensorRT engine" in out.output and "b'ftrt'" in out.output


def test_a_plan_is_an_engine_with_or_without_an_ultralytics_header(tmp_path: Path) -> None:
    from trtq.engine_meta import ultralytics_header

    plan = b"ftrt" + bytes(64)
    (tmp_path / "bare.engine").write_bytes(plan)
    (tmp_path / "headed.engine").write_bytes(ultralytics_header({"stride": 32}) + plan)
    (tmp_path / "renamed.bin").write_bytes(plan)
    for name in ("bare.engine", "headed.engine", "renamed.bin"):
        res = inspect_path(tmp_path / name, layers=False)
        assert res.kind == "engine" and res.data["plan_bytes"] == len(plan), name
    assert inspect_path(tmp_path / "headed.engine", layers=False).data["ultralytics_header"] is True


@pytest.mark.parametrize("name", ["m.qdq.report.json", "m.qdq.report.md", "m.ref-inputs.json", "m.ref-outputs.json",
                                  "m.ref.json"])
def test_reports_and_references_are_named_not_taken_for_engine_records(tmp_path: Path, name: str) -> None:
    from trtq.errors import TrtqError
    from trtq.trt.inspect import inspect_path

    f = tmp_path / name
    f.write_text("{}")
    with pytest.raises(TrtqError) as err:
        inspect_path(f)
    assert ("report" in str(err.value) or "reference" in str(err.value)) and "record of" not in str(err.value)
