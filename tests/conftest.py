"""Shared fixtures: the shared real assets (skipped with a reason where absent) and tiny ONNX models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_ASSETS = Path(os.environ.get("TRTQ_SHARED_ASSETS", REPO.parent / "shared" / "assets")).resolve()


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    if not (SHARED_ASSETS / "models" / "yolov8n-coco.onnx").is_file():
        pytest.skip(f"shared assets not found at {SHARED_ASSETS} (set TRTQ_SHARED_ASSETS)")
    return SHARED_ASSETS


@pytest.fixture(scope="session")
def yolo_onnx(shared_assets: Path) -> Path:
    return shared_assets / "models" / "yolov8n-coco.onnx"


@pytest.fixture(scope="session")
def yolo_pt(shared_assets: Path) -> Path:
    return shared_assets / "models" / "yolov8n-coco.pt"


@pytest.fixture(scope="session")
def calib_dir(shared_assets: Path) -> Path:
    return shared_assets / "coco128" / "images" / "train2017"


@pytest.fixture(scope="session")
def val_yaml(shared_assets: Path) -> Path:
    return shared_assets / "coco128" / "data.yaml"


def make_tiny_conv_onnx(path: Path, *, hw: int = 32, batch: int | str = 1, seed: int = 0) -> Path:
    """A small detector-shaped net: Conv-Sigmoid*x (SiLU) -> Conv -> residual Add -> MaxPool -> Concat -> Conv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["images", "w0", "b0"], ["c0"], name="/model.0/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c0"], ["s0"], name="/model.0/act/Sigmoid"),
        helper.make_node("Mul", ["c0", "s0"], ["a0"], name="/model.0/act/Mul"),
        helper.make_node("Conv", ["a0", "w1", "b1"], ["c1"], name="/model.1/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a0", "c1"], ["r1"], name="/model.1/Add"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="/model.2/MaxPool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["r1", "p1"], ["cat"], name="/model.3/Concat", axis=1),
        helper.make_node("Conv", ["cat", "w2", "b2"], ["output0"], name="/model.4/Conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, hw, hw])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 6, hw, hw])],
        [init("w0", 8, 3, 3, 3), init("b0", 8), init("w1", 8, 8, 3, 3), init("b1", 8), init("w2", 6, 16, 1, 1), init("b2", 6)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = model.metadata_props.add()
    meta.key, meta.value = "names", "{0: 'a', 1: 'b'}"
    meta = model.metadata_props.add()
    meta.key, meta.value = "stride", "32"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_conv_onnx(tmp_path: Path) -> Path:
    return make_tiny_conv_onnx(tmp_path / "tiny.onnx")


@pytest.fixture(scope="session")
def zoo_onnx(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a factory
    """Factory: ``zoo_onnx("yolo11n-seg.yaml", weights=None, imgsz=320, **export_args)`` -> cached ONNX path.

    Structures come from ultralytics' own yaml files (offline); pass ``weights=`` a COCO YOLOv8 ``.pt``
    to transplant real weights where the structure allows. Each distinct call exports once per session.
    """
    pytest.importorskip("ultralytics")
    from trtq.zoo import build_onnx

    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("zoo")

    def make(cfg: str, **kwargs: object) -> Path:
        key = cfg + repr(sorted(kwargs.items(), key=lambda kv: kv[0]))
        if key not in cache:
            cache[key] = build_onnx(cfg, root / f"{len(cache):02d}-{Path(cfg).stem}.onnx", **kwargs)  # type: ignore[arg-type]
        return cache[key]

    return make
