"""trtq.engine_meta: engine + record, the Ultralytics header (checked with ultralytics' own reader)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trtq.engine_meta import (
    EngineMetadata,
    check_compatible,
    engine_record_path,
    read_engine,
    read_header,
    split_ultralytics_header,
    write_engine,
)
from trtq.errors import TrtqError


def _meta(**kw: object) -> EngineMetadata:
    base: dict[str, object] = dict(
        tensorrt_version="10.3.0.30",
        gpu_name="Orin",
        compute_capability=(8, 7),
        precision="int8",
        mode="implicit",
        algorithm="entropy",
        model_sha256="ab" * 32,
        inputs=[{"name": "images", "shape": [-1, 3, 640, 640], "dtype": "float32"}],
        outputs=[{"name": "output0", "shape": [-1, 84, 8400], "dtype": "float32"}],
        profiles=[{"images": {"min": [1, 3, 640, 640], "opt": [4, 3, 640, 640], "max": [8, 3, 640, 640]}}],
        names={0: "person", 1: "bicycle"},
        imgsz=(640, 640),
        batch=8,
        command="trtq build yolov8n.onnx --int8 --cache c.cache",
    )
    base.update(kw)
    return EngineMetadata(**base)  # type: ignore[arg-type]


PLAN = b"\x00\x01plan-bytes\xff" * 10


def test_write_and_read_engine_with_record(tmp_path: Path) -> None:
    path = write_engine(tmp_path / "m.engine", PLAN, _meta())
    assert path.read_bytes() == PLAN  # no header by default: the file is the bare plan
    record = json.loads(engine_record_path(path).read_text())
    assert record["precision"] == "int8" and record["names"] == {"0": "person", "1": "bicycle"}
    assert len(record["engine_sha256"]) == 64
    plan, meta = read_engine(path)
    assert plan == PLAN
    assert meta is not None and meta.names == {0: "person", 1: "bicycle"}
    assert meta.compute_capability == (8, 7) and meta.imgsz == (640, 640) and meta.dynamic
    assert read_header(path) is None
    assert not list(tmp_path.glob("*.trtq-tmp*"))  # atomic: no temporary file left


def test_ultralytics_header_round_trip_with_ultralytics_reader(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    from ultralytics.nn.backends.base import BaseBackend

    onnx_meta = {"description": "Ultralytics YOLOv8n model", "author": "Ultralytics", "task": "detect",
                 "stride": 32, "names": {0: "person"}, "args": {"batch": 1, "nms": False}}
    path = write_engine(tmp_path / "u.engine", PLAN, _meta(dla_core=1), ultralytics_header=True,
                        onnx_metadata=onnx_meta)
    offset, header = BaseBackend.engine_header(path)  # ultralytics' own parser
    assert path.read_bytes()[offset:] == PLAN
    assert header["stride"] == 32 and header["batch"] == 8 and header["imgsz"] == [640, 640]
    assert header["names"] == {"0": "person", "1": "bicycle"} and header["task"] == "detect"
    assert header["args"]["dynamic"] is True and header["args"]["int8"] is True and header["args"]["half"] is True
    assert header["dla"] == "1" and int(header["dla"]) == 1
    assert header["description"] == "Ultralytics YOLOv8n model"
    plan, meta = read_engine(path)
    assert plan == PLAN and meta is not None and meta.dla_core == 1
    engine_record_path(path).unlink()  # without the record, the header still describes the engine
    plan2, meta2 = read_engine(path)
    assert plan2 == PLAN and meta2 is not None and meta2.precision == "int8"


def test_split_header_leaves_a_bare_plan_alone() -> None:
    raw = (12).to_bytes(4, "little") + b"not json at all" + PLAN
    meta, plan = split_ultralytics_header(raw)
    assert meta is None and plan == raw
    meta, plan = split_ultralytics_header(b"\xff\xff\xff\x7f" + PLAN)  # length beyond the file
    assert meta is None and plan.endswith(PLAN)


def test_check_compatible_explains_mismatch() -> None:
    meta = _meta()
    check_compatible(meta, tensorrt_version="10.3.0.30", compute_capability=(8, 7))
    with pytest.raises(TrtqError) as exc:
        check_compatible(meta, tensorrt_version="8.6.2", compute_capability=(7, 2))
    msg = str(exc.value)
    assert "built with TensorRT 10.3.0 for SM 8.7 (Orin)" in msg
    assert "this is TensorRT 8.6.2 on SM 7.2 (Xavier)" in msg
    assert "trtq build yolov8n.onnx --int8 --cache c.cache" in msg
    with pytest.raises(TrtqError, match="SM 8.7"):
        check_compatible(meta, tensorrt_version="10.3.0", compute_capability=(8, 6))
    check_compatible(meta, tensorrt_version="10.3.0", compute_capability=(8, 7))  # no build number: major.minor.patch
    check_compatible(_meta(tensorrt_version="10.3.0"), tensorrt_version="10.3.0.30", compute_capability=(8, 7))
    with pytest.raises(TrtqError) as build_exc:  # plans load only on the exact release, build number included
        check_compatible(meta, tensorrt_version="10.3.0.26", compute_capability=(8, 7))
    assert "built with TensorRT 10.3.0.30" in str(build_exc.value) and "this is TensorRT 10.3.0.26" in str(build_exc.value)
    with pytest.raises(TrtqError, match="DLA core 0"):
        check_compatible(_meta(dla_core=0), tensorrt_version="10.3.0", compute_capability=(8, 7), dla_core=1)


def test_missing_engine_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(TrtqError, match="not found"):
        read_engine(tmp_path / "nope.engine")


@pytest.mark.parametrize(
    "text",
    ["{not json", "[1, 2]", '{"compute_capability": 87}', '{"names": {"zero": "person"}}', "\udcff"],
)
def test_corrupt_sidecar_is_one_clear_error(tmp_path: Path, text: str) -> None:
    """A record that exists but cannot be read must not silently turn off the compatibility checks."""
    path = write_engine(tmp_path / "m.engine", PLAN, _meta())
    engine_record_path(path).write_text(text, errors="surrogateescape")
    with pytest.raises(TrtqError) as exc:
        read_engine(path)
    msg = str(exc.value)
    assert "\n" not in msg and "m.engine.json is corrupt" in msg and "trtq build" in msg


def test_corrupt_header_record_is_one_clear_error(tmp_path: Path) -> None:
    path = write_engine(tmp_path / "u.engine", PLAN, _meta(), ultralytics_header=True)
    engine_record_path(path).unlink()
    bad = {"trtq": {"imgsz": "big"}, "stride": 32}
    path.write_bytes(len(json.dumps(bad)).to_bytes(4, "little") + json.dumps(bad).encode() + PLAN)
    with pytest.raises(TrtqError, match="metadata header of .*u.engine is corrupt"):
        read_engine(path)
