"""Video: sources, the threaded pipeline (Detector.stream), multi-stream batching, saved video, errors."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
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

        def failing(tensor: np.ndarray) -> list[np.ndarray]:
            raise _Boom("inference failed")

        def slow(tensor: np.ndarray) -> list[np.ndarray]:
            time.sleep(0.01)
            return det.run_tensor(tensor)

        # an exception inside a stage reaches the caller, whichever inference lane raised it
        for lanes in ([failing], [slow, failing], [failing, slow]):
            with _lanes(det, lanes), pytest.raises(_Boom, match="inference failed"):
                list(det.stream(str(long), lanes=len(lanes)))
            assert pipeline_threads() == []


@contextlib.contextmanager
def _lanes(det: Detector, runs: list[Any]) -> Iterator[None]:
    """``det.inference_lanes`` gives ``runs`` (whatever lane count is asked)."""

    @contextlib.contextmanager
    def fake(n: int) -> Iterator[list[Any]]:
        assert n == len(runs)
        yield runs

    det.inference_lanes = fake  # type: ignore[method-assign]
    try:
        yield
    finally:
        del det.inference_lanes


def test_lanes_finishing_out_of_order_give_every_frame_in_order(tiny: Path, video: Path) -> None:
    with Detector(tiny) as det:
        one = list(det.stream(str(video), lanes=1))
        calls = {"a": 0, "b": 0}

        def lane(name: str, delay: float) -> Any:
            def run(tensor: np.ndarray) -> list[np.ndarray]:
                calls[name] += 1
                time.sleep(delay)
                return det.run_tensor(tensor)

            return run

        with _lanes(det, [lane("a", 0.03), lane("b", 0.005)]):
            two = list(det.stream(str(video), lanes=2))
    assert calls["a"] >= 1 and calls["b"] > calls["a"]  # the fast lane overtook the slow one
    assert [r.frame for r in two] == [r.frame for r in one] == list(range(12))
    assert all(same(a.detections, b.detections) for a, b in zip(one, two, strict=True))
    assert pipeline_threads() == []


def test_lanes_are_sessions_sharing_the_cpus(tiny: Path, video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trtq.runtime.detector as detector_module

    monkeypatch.setattr(detector_module, "usable_cpus", lambda: 8)
    with Detector(tiny) as det:
        assert det.cpu_lanes() == 2
        with det.inference_lanes(2) as runs:
            sessions = [run.args[0] for run in runs]  # type: ignore[attr-defined]
            assert len({id(s) for s in sessions}) == 2
            assert [s.session.get_session_options().intra_op_num_threads for s in sessions] == [4, 4]
            x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
            for a, b in zip(runs[0](x), det.run_tensor(x), strict=True):
                assert np.array_equal(a, b)
        assert all(s.session is None for s in sessions)  # closed with the block
        with det.inference_lanes(1) as runs:
            assert runs == [det.run_tensor]
        monkeypatch.setattr(detector_module, "usable_cpus", lambda: 1)
        assert det.cpu_lanes() == 1
        pipe = StreamPipeline(det, [VideoSource(str(video))])
        assert pipe.lanes == 1
        pipe.close()
        with pytest.raises(TrtqError, match="lanes must be at least 1"):
            StreamPipeline(det, [VideoSource(str(video))], lanes=0)
    live = _FastSource(3)
    with Detector(tiny) as det:
        monkeypatch.setattr(detector_module, "usable_cpus", lambda: 8)
        pipe = StreamPipeline(det, [live])  # type: ignore[list-item]
        assert pipe.lanes == 1  # live: lowest latency, one frame at a time
        pipe.close()


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


class _StallingCamera:
    """A live source: ``n`` frames ``period`` apart, with a ``stall`` second silence after frame ``at``
    (its start and end recorded)."""

    live = True
    fps = 50.0

    def __init__(self, index: int, n: int, *, period: float = 0.02, at: int = -1, stall: float = 0.0) -> None:
        self.index, self.n, self.period, self.at, self.stall = index, n, period, at, stall
        self.i = 0
        self.source = self.name = f"camera {index}"
        self.stalled: tuple[float, float] | None = None

    def read(self) -> np.ndarray | None:
        if self.i >= self.n:
            return None
        if self.i == self.at:
            t0 = time.perf_counter()
            time.sleep(self.stall)
            self.stalled = (t0, time.perf_counter())
        else:
            time.sleep(self.period)
        self.i += 1
        return np.full((32, 32, 3), 40 * self.index + 20, np.uint8)

    def close(self) -> None:
        pass


def test_a_stalled_live_stream_does_not_stop_the_others(tmp_path: Path) -> None:
    model = make_tiny_yolo_onnx(tmp_path / "m.onnx", batch="N", hw=32)
    sources = [_StallingCamera(0, 100), _StallingCamera(1, 4, at=2, stall=1.5)]
    seen: list[tuple[float, int]] = []
    with Detector(model) as det:
        pipe = StreamPipeline(det, sources)  # type: ignore[list-item]
        assert pipe.push_timeout == pytest.approx(0.02)  # one frame period at 50 FPS
        for r in pipe:
            seen.append((time.perf_counter(), r.stream))
    assert sources[1].stalled is not None
    began, ended = sources[1].stalled
    during = [s for t, s in seen if began + 0.3 < t < ended]  # camera 1 silent, its earlier frames delivered
    assert during.count(0) >= 15 and 1 not in during  # camera 0 ran on alone
    cam1 = [t for t, s in seen if s == 1]  # live: a frame may be dropped when a newer one comes
    assert cam1 and min(cam1) < began + 0.3 and max(cam1) > ended  # before the stall, and back after it
    assert pipeline_threads() == []


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
    runs = {}
    for lanes in ("1", "2"):  # frames side by side: the same detections, in order, and the run says so
        r = CliRunner().invoke(main, ["predict", str(tiny), "--source", str(src), "--json", "--lanes", lanes])
        assert r.exit_code == 0, r.output
        runs[lanes] = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        assert ("2 frames run side by side" in r.output) == (lanes == "2"), r.output
    assert [x["detections"] for x in runs["2"]] == [x["detections"] for x in runs["1"]] == [x["detections"] for x in lines]


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
