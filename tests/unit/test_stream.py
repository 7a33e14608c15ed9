"""Video: sources, the threaded pipeline (Detector.stream), multi-stream batching, saved video, errors."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.unit.test_runtime_models import make_tiny_yolo_onnx
from trtq.errors import TrtqError
from trtq.runtime import Detector
from trtq.runtime.sources import FrameReader, VideoSource, expand_sources, is_video_source, source_kind
from trtq.runtime.stream import StreamPipeline, rect_hint, stream_batch
from trtq.runtime.video import VideoWriter


def make_video(path: Path, n: int, *, w: int = 64, h: int = 48, seed: int = 0, fps: float = 10.0) -> Path:
    """``n`` frames of coloured rectangles on grey, mp4v at ``fps``."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for _ in range(n):
        img = np.full((h, w, 3), 128, np.uint8)
        for _ in range(3):
            x, y = int(rng.integers(0, w - 16)), int(rng.integers(0, h - 16))
            img[y : y + 16, x : x + 16] = rng.integers(0, 256, 3)
        writer.write(img)
    writer.release()
    return path


def read_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("trtq-")]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_tiny_yolo_onnx(tmp_path / "tiny.onnx", batch="N", hw=32)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return make_video(tmp_path / "a.mp4", 12)


def same(a: Any, b: Any) -> bool:
    return (
        np.array_equal(a.class_ids, b.class_ids)
        and np.allclose(a.boxes, b.boxes, atol=1e-4)
        and np.allclose(a.scores, b.scores, atol=1e-6)
    )


# -- sources -----------------------------------------------------------------------------------------------------
def test_source_kinds_and_streams_file(tmp_path: Path) -> None:
    assert source_kind("0") == "camera"
    assert source_kind("rtsp://cam/1") == "network" and source_kind("http://x/y") == "network"
    assert source_kind("nvarguscamerasrc ! appsink") == "gstreamer"
    assert source_kind("a.mp4") == "file"
    assert is_video_source("a.MP4") and is_video_source("0") and not is_video_source("imgs/*.jpg")
    lst = tmp_path / "cams.streams"
    lst.write_text("a.mp4\n rtsp://x/1  0\n")
    assert expand_sources([str(lst), "b.mp4"]) == ["a.mp4", "rtsp://x/1", "0", "b.mp4"]
    (tmp_path / "empty.streams").write_text("\n")
    with pytest.raises(TrtqError, match="lists no sources"):
        expand_sources([str(tmp_path / "empty.streams")])


def test_vid_stride_grabs_like_ultralytics(video: Path) -> None:
    frames = read_frames(video)
    src = VideoSource(str(video), vid_stride=5)
    got = []
    while (f := src.read()) is not None:
        got.append(f)
    src.close()
    assert src.frames == len(frames) // 5 == len(got)
    for k, f in enumerate(got):  # LoadImagesAndVideos: grab 5, decode the last
        assert np.array_equal(f, frames[5 * k + 4])


# -- the pipeline ----------------------------------------------------------------------------------------------
def test_stream_gives_every_frame_in_order_as_detect(tiny: Path, video: Path) -> None:
    frames = read_frames(video)
    with Detector(tiny, conf=0.25) as det:
        results = list(det.stream(str(video)))
        assert [r.frame for r in results] == list(range(len(frames)))
        assert sum(len(r.detections) for r in results) > 0
        for r, f in zip(results, frames, strict=True):
            assert np.array_equal(r.image, f)
            assert same(r.detections, det.detect(f)[0])
    assert pipeline_threads() == []


def test_batched_single_stream_equals_unbatched(tiny: Path, video: Path) -> None:
    with Detector(tiny) as det:
        one = list(det.stream(str(video)))
        four = list(det.stream(str(video), batch=4))
    assert {r.batch for r in four} == {4}
    assert [r.frame for r in four] == [r.frame for r in one]
    assert all(same(a.detections, b.detections) for a, b in zip(one, four, strict=True))


@pytest.mark.parametrize("batch", ["N", 1])
def test_multi_stream_equals_single_streams(tmp_path: Path, batch: str | int) -> None:
    model = make_tiny_yolo_onnx(tmp_path / "m.onnx", batch=batch, hw=32)
    a = make_video(tmp_path / "a.mp4", 9, seed=1)
    b = make_video(tmp_path / "b.mp4", 5, w=80, h=40, seed=2)
    with Detector(model) as det:
        singles = [list(det.stream(str(p))) for p in (a, b)]
        multi = list(det.stream([str(a), str(b)]))
        assert stream_batch(det, 2, None) == (2 if batch == "N" else 1)
    for i, single in enumerate(singles):
        mine = [r for r in multi if r.stream == i]
        assert [r.frame for r in mine] == [r.frame for r in single]
        assert all(same(x.detections, y.detections) for x, y in zip(mine, single, strict=True))
    if batch == "N":
        assert max(r.batch for r in multi) == 2
    streams_file = tmp_path / "two.streams"
    streams_file.write_text(f"{a}\n{b}\n")
    with Detector(model) as det:
        assert len(list(det.stream(str(streams_file)))) == 14


class _Boom(RuntimeError):
    pass


def test_threads_end_on_every_exit_path(tiny: Path, tmp_path: Path) -> None:
    long = make_video(tmp_path / "long.mp4", 60)
    with Detector(tiny) as det:
        gen = det.stream(str(long))  # early break + close
        next(gen)
        gen.close()  # type: ignore[attr-defined]
        assert pipeline_threads() == []

        with pytest.raises(_Boom):  # an exception in the caller's loop
            for _ in det.stream(str(long)):
                raise _Boom
        assert pipeline_threads() == []

        with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the caller's loop
            for _ in det.stream(str(long)):
                raise KeyboardInterrupt
        assert pipeline_threads() == []

        original = det.run_tensor  # an exception inside a stage reaches the caller

        def failing(tensor: np.ndarray) -> list[np.ndarray]:
            raise _Boom("inference failed")

        det.run_tensor = failing  # type: ignore[method-assign]
        with pytest.raises(_Boom, match="inference failed"):
            list(det.stream(str(long)))
        det.run_tensor = original  # type: ignore[method-assign]
        assert pipeline_threads() == []


class _FastSource:
    """A live source that makes frames faster than they are consumed."""

    index, live, name = 0, True, "fake camera"

    def __init__(self, n: int) -> None:
        self.n, self.i = n, 0

    def read(self) -> np.ndarray | None:
        if self.i >= self.n:
            return None
        self.i += 1
        time.sleep(0.001)
        return np.full((4, 4, 3), self.i, np.uint8)

    def close(self) -> None:
        pass


def test_live_reader_drops_stale_frames_and_ends() -> None:
    stop = threading.Event()
    reader = FrameReader(_FastSource(200), live=True, stop=stop)  # type: ignore[arg-type]
    reader.start()
    seen = []
    while True:
        item = reader.queue.get(timeout=10)
        if not hasattr(item, "image"):
            break
        seen.append(int(item.image[0, 0, 0]))
        time.sleep(0.02)  # a slow consumer
    reader.thread.join(5)
    assert not reader.thread.is_alive()
    assert reader.dropped > 0 and len(seen) < 200
    assert seen == sorted(seen)  # newest frames, in order


# -- saved video, JSON Lines, CLI --------------------------------------------------------------------------------
def test_cli_save_writes_video_with_source_frames_and_size(tiny: Path, tmp_path: Path) -> None:
    from trtq.cli import main

    src = make_video(tmp_path / "src.mp4", 12, w=96, h=64)
    out = tmp_path / "out.mp4"
    res = CliRunner().invoke(main, ["predict", str(tiny), "--source", str(src), "--save", str(out), "--json"])
    assert res.exit_code == 0, res.output
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (96, 64)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    assert len(read_frames(out)) == 12
    assert not list(tmp_path.glob(".*trtq-tmp*"))
    import json

    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [x["frame"] for x in lines] == list(range(12))
    assert lines[0]["width"] == 96 and "detections" in lines[0]


def test_video_writer_discards_on_error_keeps_on_interrupt(tmp_path: Path) -> None:
    frame = np.zeros((32, 48, 3), np.uint8)
    with pytest.raises(_Boom), VideoWriter(tmp_path / "bad.mp4", 10, (48, 32)) as w:
        w.write(frame)
        raise _Boom
    assert not (tmp_path / "bad.mp4").exists()
    with pytest.raises(KeyboardInterrupt), VideoWriter(tmp_path / "cut.mp4", 10, (48, 32)) as w:
        for _ in range(3):
            w.write(frame)
        raise KeyboardInterrupt
    assert len(read_frames(tmp_path / "cut.mp4")) == 3
    assert not list(tmp_path.glob(".*trtq-tmp*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("kind", ["missing", "corrupt", "camera", "rtsp"])
def test_cli_unopenable_source_one_line_bounded_time(tiny: Path, tmp_path: Path, kind: str) -> None:
    from trtq.cli import main

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    source = {
        "missing": str(tmp_path / "nope.mp4"),
        "corrupt": str(corrupt),
        "camera": "97",
        "rtsp": f"rtsp://127.0.0.1:{_free_port()}/stream",
    }[kind]
    t0 = time.perf_counter()
    res = CliRunner().invoke(
        main, ["predict", str(tiny), "--source", source, "--save", str(tmp_path / "o.mp4")]
    )
    assert time.perf_counter() - t0 < 30
    assert res.exit_code != 0
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("trtq: error: "), res.output
    assert not (tmp_path / "o.mp4").exists()
    assert pipeline_threads() == []


def test_rect_hint_names_the_export_command() -> None:
    class Fake:
        imgsz, stride, path = (640, 640), 32, Path("yolov8n.onnx")

        def input_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
            return self.imgsz

    hint = rect_hint(Fake(), 640, 272, "bikes.mp4")  # type: ignore[arg-type]
    assert hint is not None and "`trtq export yolov8n.pt --imgsz 288 640`" in hint and "45%" in hint
    assert rect_hint(Fake(), 1280, 720, "hd") is not None  # 384x640: 60% of the work
    assert rect_hint(Fake(), 640, 512, "4:3-ish") is None  # 512x640: 80%, not worth a note
    Fake.imgsz = (384, 640)
    assert rect_hint(Fake(), 1280, 720, "hd") is None  # already rectangular


def test_pipeline_refuses_no_sources(tiny: Path) -> None:
    with Detector(tiny) as det, pytest.raises(TrtqError, match="no video source"):
        StreamPipeline(det, [])


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_during_save_leaves_a_playable_video_or_none(tiny: Path, tmp_path: Path, sig: str) -> None:
    import os
    import signal
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    src = make_video(tmp_path / "long.mp4", 400, w=160, h=120)
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "trtq", "predict", str(tiny), "--source", str(src), "--save", str(out)]
    proc = subprocess.Popen(cmd, cwd=repo, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.mp4.*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # some frames written
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not list(tmp_path.glob(".out.mp4.*"))  # no temporary file left
    if out.exists():
        n = len(read_frames(out))
        assert 0 < n < 400, err
        assert f"interrupted after {n} frame(s)" in err
    assert os.path.exists(src)


def _dynamic_hw(path: Path) -> Path:
    import onnx

    m = onnx.load(str(path))
    for dim, name in zip(m.graph.input[0].type.tensor_type.shape.dim[2:], ("H", "W"), strict=True):
        dim.ClearField("dim_value")
        dim.dim_param = name
    m.graph.output[0].type.tensor_type.shape.dim[2].dim_param = "A"
    onnx.save(m, str(path))
    return path


def test_dynamic_model_gets_ultralytics_minimum_rectangle(tmp_path: Path) -> None:
    import onnxruntime as ort

    from trtq.images import letterbox
    from trtq.postprocess import decode_layout
    from trtq.runtime.decode import to_detections

    model = _dynamic_hw(make_tiny_yolo_onnx(tmp_path / "dyn.onnx", batch="N", hw=64))
    src = make_video(tmp_path / "wide.mp4", 4, w=128, h=48)
    with Detector(model) as det:
        assert det.dynamic_hw and det.input_hw((48, 128)) == (32, 64)  # 64x24 padded to the stride (32)
        assert rect_hint(det, 128, 48, "wide") is None  # a dynamic model already fits the stream
        results = list(det.stream(str(src)))
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        for r, frame in zip(results, read_frames(src), strict=True):
            lb = letterbox(frame, (64, 64), stride=32, auto=True)[0]  # ultralytics' auto letterbox
            assert lb.shape[:2] == (32, 64)
            x = (lb.transpose(2, 0, 1)[::-1][None] / np.float32(255)).astype(np.float32)
            (out,) = sess.run(None, {"images": x})
            rows = decode_layout(out, det.layout, conf=det.conf, iou=det.iou, max_det=det.max_det)[0]
            want = to_detections(rows, det.layout, (32, 64), (48, 128), det.names)
            assert same(r.detections, want)
    assert sum(len(r.detections) for r in results) > 0


def test_dropped_live_stream_reconnects_a_bounded_number_of_times(
    video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = len(read_frames(video))
    for reconnect in (0, 1):
        src = VideoSource(str(video), reconnect=reconnect)
        src.live = True  # a file that "drops" at its end, and can be reopened: a stand-in for a camera
        got = 0
        t0 = time.perf_counter()
        with pytest.raises(TrtqError, match="stopped sending frames"):
            while src.read() is not None:
                got += 1
        src.close()
        assert got == n * (reconnect + 1)  # each reconnect reopened the stream and read it again
        assert time.perf_counter() - t0 < 10
    assert "reconnecting (1/1)" in caplog.text


def test_stream_takes_a_camera_index_as_int(tiny: Path) -> None:
    with Detector(tiny) as det, pytest.raises(TrtqError, match="cannot open camera 97"):
        det.stream(97)  # opened at once: the error comes before any iteration
    assert pipeline_threads() == []


def test_cli_several_image_sources_are_refused_in_one_line(tiny: Path, tmp_path: Path) -> None:
    from trtq.cli import main

    res = CliRunner().invoke(main, ["predict", str(tiny), "--source", "a.jpg", "b.jpg"])
    assert (
        res.exit_code == 2 and res.output.count("\n") == 1 and "several sources are for video" in res.output
    )
