"""``trtq deploy``: the DeepStream bundle and the Triton repository, checked against the real formats and logic
(no DeepStream, Triton or TensorRT here): nvinfer's preprocessing, DeepStream-Yolo's parser and DeepStream's
clustering ported to numpy, GLib key-file rules, Triton's ModelConfig schema and ultralytics' Triton client."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import onnx
import pytest

from trtq.agreement import box_iou
from trtq.deploy import nvinfer
from trtq.images import load_image

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "trtq", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


# ---------------------------------------------------------------------------------------------------------------
# a strict GLib key-file reader (GLib "Key-value file parser" rules: groups in [], key=value, # comments, blank lines)
# ---------------------------------------------------------------------------------------------------------------
_KEY = re.compile(r"^[A-Za-z0-9-]+$")


def parse_key_file(text: str) -> dict[str, dict[str, str]]:
    groups: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            assert line.endswith("]") and "[" not in line[1:-1] and "]" not in line[1:-1], f"line {n}: {raw!r}"
            name = line[1:-1]
            assert name and name not in groups, f"line {n}: bad or repeated group {name!r}"
            current = groups.setdefault(name, {})
            continue
        assert current is not None, f"line {n}: key before the first group"
        key, sep, value = line.partition("=")
        assert sep, f"line {n}: no '=' in {raw!r}"
        key = key.rstrip()
        assert _KEY.match(key), f"line {n}: key {key!r} has characters GLib rejects"
        assert key not in current, f"line {n}: duplicate key {key}"
        current[key] = value.lstrip()
    return groups


def test_key_file_reader_rejects_what_glib_rejects() -> None:
    assert parse_key_file("# c\n[a]\nk=v\n\n[b]\nx-y= 1\n") == {"a": {"k": "v"}, "b": {"x-y": "1"}}
    for bad in ("k=v\n", "[a]\nk v\n", "[a]\nk=1\nk=2\n", "[a]\nk_x=1\n", "[a\nk=1\n"):
        with pytest.raises(AssertionError):
            parse_key_file(bad)


# ---------------------------------------------------------------------------------------------------------------
# DeepStream bundle
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ds_int8(tmp_path_factory: pytest.TempPathFactory, shared_assets: Path) -> Path:
    out = tmp_path_factory.mktemp("ds") / "ds"
    res = _run("deploy", "deepstream", str(shared_assets / "models" / "yolov8n-coco.pt"), "--int8", "--calib",
               str(shared_assets / "coco128" / "images" / "train2017"), "-o", str(out))
    assert res.returncode == 0, res.stderr
    return out


def test_deepstream_bundle_files_and_config(ds_int8: Path) -> None:
    assert sorted(p.name for p in ds_int8.iterdir()) == [
        "README.md", "calib.table", "calib.table.json", "config_infer_primary.txt", "deepstream_app_config.txt",
        "labels.txt", "yolov8n-coco.onnx"]
    cfg = parse_key_file((ds_int8 / "config_infer_primary.txt").read_text())
    prop = cfg["property"]
    expected = {
        "onnx-file": "yolov8n-coco.onnx", "model-engine-file": "model_b1_gpu0_int8.engine",
        "int8-calib-file": "calib.table", "labelfile-path": "labels.txt", "batch-size": "1", "network-mode": "1",
        "num-detected-classes": "80", "net-scale-factor": "0.0039215697906911373", "model-color-format": "0",
        "maintain-aspect-ratio": "1", "symmetric-padding": "1", "cluster-mode": "2", "scaling-filter": "1",
        "parse-bbox-func-name": "NvDsInferParseYolo",
        "custom-lib-path": "nvdsinfer_custom_impl_Yolo/libnvdsinfer_custom_impl_Yolo.so",
    }
    assert {k: prop.get(k) for k in expected} == expected
    assert "engine-create-func-name" not in prop
    assert cfg["class-attrs-all"] == {"nms-iou-threshold": "0.7", "pre-cluster-threshold": "0.25", "topk": "300"}
    app = parse_key_file((ds_int8 / "deepstream_app_config.txt").read_text())
    assert app["primary-gie"]["config-file"] == "config_infer_primary.txt"
    assert app["source0"]["type"] == "3" and app["source0"]["uri"].startswith("file://")
    labels = (ds_int8 / "labels.txt").read_text().splitlines()
    assert len(labels) == 80 and labels[0] == "person"
    readme = (ds_int8 / "README.md").read_text()
    assert "deepstream-app -c deepstream_app_config.txt" in readme and "make -C" in readme


def test_deepstream_onnx_layout(ds_int8: Path) -> None:
    model = onnx.load(str(ds_int8 / "yolov8n-coco.onnx"))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 8400, 6]


def test_calib_table_matches_the_bundle_onnx(ds_int8: Path) -> None:
    from calibrators.table import CalibrationTable, parse_trt_cache
    from trtq.modelinfo import model_sha256

    header, scales = parse_trt_cache((ds_int8 / "calib.table").read_bytes())
    assert header.startswith("TRT-") and header.endswith("EntropyCalibration2")
    model = onnx.load(str(ds_int8 / "yolov8n-coco.onnx"))
    names = {t for n in model.graph.node for t in [*n.input, *n.output]} | {"input"}
    assert set(scales) <= names and "input" in scales
    assert not [t for t in scales if t.startswith("/deepstream/") or t == "output"]
    table = CalibrationTable.load(ds_int8 / "calib.table")  # trtq's own checks (header, sidecar, scales)
    assert table.differences(model_sha256=model_sha256(ds_int8 / "yolov8n-coco.onnx")) == []
    assert table.preprocessing["preprocessor"] == "nvinfer" and table.preprocessing["pad_value"] == 0


def _square_images(calib_dir: Path, folder: Path, n: int = 6) -> list[Path]:
    """640x640 crops: nvinfer's and ultralytics' preprocessing are then the same tensor (no scaling, no padding)."""
    folder.mkdir()
    out = []
    for src in sorted(calib_dir.glob("*.jpg"))[:n]:
        im = load_image(src)
        side = min(im.shape[:2])
        crop = cv2.resize(im[:side, :side], (640, 640), interpolation=cv2.INTER_AREA)
        path = folder / f"{src.stem}.png"
        cv2.imwrite(str(path), crop)
        out.append(path)
    return out


def test_parser_port_on_the_bundle_matches_trtq_predict(tmp_path: Path, shared_assets: Path, calib_dir: Path) -> None:
    import onnxruntime as ort

    from trtq.runtime.predict import predict

    shared_onnx = shared_assets / "models" / "yolov8n-coco.onnx"
    bundle = tmp_path / "fp16"
    res = _run("deploy", "deepstream", str(shared_onnx), "--fp16", "-o", str(bundle))
    assert res.returncode == 0, res.stderr
    cfg = parse_key_file((bundle / "config_infer_primary.txt").read_text())
    attrs = cfg["class-attrs-all"]
    images = _square_images(calib_dir, tmp_path / "imgs")
    session = ort.InferenceSession(str(bundle / "yolov8n-coco.onnx"), providers=["CPUExecutionProvider"])
    preds = {Path(p.path).name: p for p in predict(shared_onnx, str(tmp_path / "imgs"))}
    total = 0
    for path in images:
        x, conv = nvinfer.preprocess_frames([load_image(path)], (640, 640))
        out = np.asarray(session.run(["output"], {"input": x})[0])
        ds = nvinfer.detections(out[0], conv[0], (640, 640), num_classes=80,
                                pre_cluster_threshold=float(attrs["pre-cluster-threshold"]),
                                nms_iou=float(attrs["nms-iou-threshold"]), topk=int(attrs["topk"]),
                                cluster_mode=int(cfg["property"]["cluster-mode"]))
        ref = preds[path.name].detections
        assert len(ds) == len(ref.boxes), path.name
        order = np.lexsort((-ds[:, 4], ds[:, 5]))
        ref_order = np.lexsort((-ref.scores, ref.class_ids))
        ds, boxes, classes = ds[order], ref.boxes[ref_order], ref.class_ids[ref_order]
        assert np.array_equal(ds[:, 5].astype(int), classes.astype(int)), path.name
        iou = np.diag(box_iou(ds[:, :4], boxes)) if len(ds) else np.ones(0)
        assert (iou >= 0.99).all(), (path.name, iou.min())
        total += len(ds)
    assert total >= 10  # the images hold objects: the comparison is not vacuous


def test_nvinfer_geometry_follows_get_converted_buffer() -> None:
    frame = np.full((481, 1001, 3), 200, np.uint8)  # odd sizes: nvinfer rounds them down to even first
    conv = nvinfer.convert_frame(frame, (640, 640))
    # src 1000 x 480 -> hdest = 640 * 480 / 1000 = 307.2 -> 307 (truncated); top = (640 - 307) // 2 = 166
    assert (conv.offset_left, conv.offset_top) == (0, 166)
    assert conv.ratio_x == pytest.approx(640 / 1000) and conv.ratio_y == pytest.approx(307 / 480)
    img = conv.image
    assert (img[:166] == 0).all() and (img[166 + 307:] == 0).all() and (img[166:166 + 307] == 200).all()


def test_parser_and_clustering_port() -> None:
    out = np.array([
        [10, 10, 110, 110, 0.9, 1],     # kept
        [12, 12, 112, 112, 0.8, 1],     # same class, IoU 0.92 > 0.45: suppressed
        [12, 12, 112, 112, 0.8, 2],     # other class: kept
        [-5, 0, 50, 0.5, 0.95, 0],      # height 0.5 < 1 px after clamping: dropped by the parser
        [0, 0, 700, 700, 0.3, 3],       # clamped to the 640 x 640 network
        [0, 0, 10, 10, 0.2, 4],         # under pre-cluster-threshold
    ], np.float32)
    objs = nvinfer.parse_yolo(out, 640, 640, 0.25, 80)
    assert objs[:, 5].tolist() == [1, 1, 2, 3]
    assert objs[3, :4].tolist() == [0, 0, 640, 640]
    kept = nvinfer.cluster_nms(objs, 80, 0.45, 300)
    assert kept[:, 5].tolist() == [1, 2, 3] and kept[0, 4] == pytest.approx(0.9)


# ---------------------------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------------------------
def test_interrupted_deploy_leaves_nothing(tmp_path: Path, shared_assets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trtq.deploy import deepstream

    def boom(**_: Any) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(deepstream, "app_config", boom)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        deepstream.write_deepstream(shared_assets / "models" / "yolov8n-coco.onnx", out, calib=None, precision="fp16")
    assert list(tmp_path.iterdir()) == []


def test_refusals_are_one_line(tmp_path: Path, shared_assets: Path) -> None:
    res = _run("deploy", "deepstream", str(shared_assets / "models" / "yolov8n-coco.onnx"), "--int8", "-o",
               str(tmp_path / "x"))
    assert res.returncode == 2 and res.stderr.startswith("trtq: error:") and "--calib" in res.stderr
    assert not (tmp_path / "x").exists()
    # a static-batch ONNX cannot be made dynamic by renaming its batch axis (its reshapes hold the batch)
    res = _run("deploy", "deepstream", str(shared_assets / "models" / "yolov8n-coco.onnx"), "--fp16", "--dynamic",
               "-o", str(tmp_path / "x"))
    assert res.returncode == 2 and "static batch of 1" in res.stderr and len(res.stderr.splitlines()) == 1
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------------------
# Triton repository
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def triton_repo(tmp_path_factory: pytest.TempPathFactory, shared_assets: Path) -> Path:
    out = tmp_path_factory.mktemp("tr") / "repo"
    res = _run("deploy", "triton", str(shared_assets / "models" / "yolov8n-coco.pt"), "--int8", "--calib",
               str(shared_assets / "coco128" / "images" / "train2017"), "--cc", "8.7=orin.plan", "-o", str(out))
    assert res.returncode == 0, res.stderr
    return out


def _model_config(path: Path) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    schema: Any = model_config_pb2
    return text_format.Parse(path.read_text(), schema.ModelConfig())


def test_triton_config_parses_as_model_config(triton_repo: Path) -> None:
    from tritonclient.grpc import model_config_pb2

    mc: Any = model_config_pb2
    cfg = _model_config(triton_repo / "yolov8n-coco" / "config.pbtxt")
    assert cfg.name == "yolov8n-coco" and cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("images", mc.TYPE_FP32, [3, 640, 640])]
    assert [(o.name, o.data_type, list(o.dims)[0]) for o in cfg.output] == [("output0", mc.TYPE_FP32, 84)]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8]
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU and cfg.instance_group[0].count == 1
    assert dict(cfg.cc_model_filenames) == {"8.7": "orin.plan"}
    files = sorted(p.name for p in (triton_repo / "yolov8n-coco" / "1").iterdir())
    assert files == ["BUILD.md", "model.int8.onnx"]
    notes = (triton_repo / "yolov8n-coco" / "1" / "BUILD.md").read_text()
    assert "--ultralytics-header" in notes and "trtq build" in notes and "version-compatible=true" in notes
    assert "--ultralytics-header -o" not in notes


def test_ultralytics_triton_client_reads_the_metadata(triton_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ultralytics' own TritonRemoteModel (gRPC path, config as JSON) and BaseBackend.apply_metadata."""
    from google.protobuf import json_format
    from tritonclient import grpc as grpcclient
    from ultralytics.nn.backends.base import BaseBackend
    from ultralytics.utils.triton import TritonRemoteModel

    cfg = _model_config(triton_repo / "yolov8n-coco" / "config.pbtxt")

    class Client:
        def __init__(self, **_: Any) -> None:
            pass

        def get_model_config(self, name: str, as_json: bool = False) -> dict[str, Any]:
            assert name == "yolov8n-coco" and as_json
            return {"config": json_format.MessageToDict(cfg, preserving_proto_field_name=True)}

    monkeypatch.setattr(grpcclient, "InferenceServerClient", Client)
    remote = TritonRemoteModel("grpc://localhost:8001/yolov8n-coco")
    assert remote.input_names == ["images"] and remote.output_names == ["output0"]
    backend = SimpleNamespace(dynamic=False)
    BaseBackend.apply_metadata(backend, remote.metadata)  # type: ignore[arg-type]
    assert backend.task == "detect" and backend.stride == 32 and list(backend.imgsz) == [640, 640]
    assert backend.names[0] == "person" and len(backend.names) == 80 and backend.end2end is False


def test_yolo26_end_to_end_bundle(tmp_path: Path, zoo_onnx: Any) -> None:
    """YOLO26's end-to-end head: [B, 300, 6] in the same columns, no NMS in DeepStream (cluster-mode=4)."""
    import onnxruntime as ort

    src = zoo_onnx("yolo26n.yaml", imgsz=320, end2end=True)
    out = tmp_path / "ds26"
    res = _run("deploy", "deepstream", str(src), "--fp16", "-o", str(out))
    assert res.returncode == 0, res.stderr
    cfg = parse_key_file((out / "config_infer_primary.txt").read_text())
    assert cfg["property"]["cluster-mode"] == "4" and cfg["property"]["network-mode"] == "2"
    bundle = next(out.glob("*.onnx"))
    sess = ort.InferenceSession(str(bundle), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 320, 320)).astype(np.float32)
    y = np.asarray(sess.run(["output"], {"input": x})[0])
    assert y.shape == (1, 300, 6)
    np.testing.assert_array_equal(y, np.asarray(ref.run(None, {ref.get_inputs()[0].name: x})[0]))
