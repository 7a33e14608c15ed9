"""The TensorRT side of the video pipeline, contract-tested with the recording fakes: copies on their own
stream into two alternating buffer slots, executions on the session's stream, results as the ONNX pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.unit import test_runtime_engine as _engine_tests
from tests.unit.test_runtime_engine import Env, write_fake_engine
from tests.unit.test_stream import make_video, pipeline_threads, read_frames, same
from trtq.runtime import Detector

env = _engine_tests.env  # the fake TensorRT + fake device fixture


@pytest.mark.parametrize("batch", [(1, 1), (1, 4)])
def test_engine_stream_overlaps_copies_and_matches_onnx(env: Env, batch: tuple[int, int]) -> None:
    video = make_video(env.tmp / "v.mp4", 7)
    engine = write_fake_engine(env.tmp / "tiny.engine", batch=batch)
    with Detector(env.onnx) as ref:
        expected = list(ref.stream(str(video)))
    env.device.calls.clear()
    with env.detector(engine) as det:
        session_stream = det._session.stream.handle  # type: ignore[union-attr]
        own = {n: t.device.ptr for n, t in det._session.tensors.items()}  # type: ignore[union-attr]
        got = list(det.stream(str(video), batch=2 if batch[1] > 1 else None))
    assert pipeline_threads() == []
    assert [r.frame for r in got] == list(range(len(read_frames(video))))
    assert all(same(a.detections, b.detections) for a, b in zip(got, expected, strict=True))

    htod = env.dev_calls("htod")
    executes = env.trt_calls("context.execute_async_v3")
    copy_streams = {c[3] for c in htod}
    assert len(copy_streams) == 1 and session_stream not in copy_streams  # copies on their own stream
    assert {c[1] for c in executes} == {session_stream}
    assert {c[3] for c in env.dev_calls("dtoh")} == copy_streams
    addresses = [c[2] for c in env.trt_calls("context.set_tensor_address") if c[1] == "images"]
    slot_inputs = [a for a in addresses if a != own["images"]]
    assert len(set(slot_inputs)) == 2  # two slots, alternating
    assert slot_inputs[0] != slot_inputs[1]
    assert addresses[-1] == own["images"]  # the session's own buffers restored at the end
    assert env.dev_calls("stream_synchronize")  # the host waits on the copy stream / events, not the device
    assert not env.dev_calls("synchronize")


def test_overlapped_engine_refuses_a_third_batch(env: Env) -> None:
    from trtq.errors import TrtqError

    engine = write_fake_engine(env.tmp / "tiny.engine")
    with env.detector(engine) as det:
        before = len(env.device.live_buffers)
        with det.overlapped() as runner:
            x = np.zeros((1, 3, 32, 32), np.float32)
            runner.submit(x)
            runner.submit(x)
            with pytest.raises(TrtqError, match="both slots"):
                runner.submit(x)
            assert len(runner.collect()) == 1 and runner.in_flight == 1
            assert len(env.device.live_buffers) == before + 2 * 2  # two slots of input + output
        assert len(env.device.live_buffers) == before  # the slots' memory freed


def test_overlapped_engine_needs_an_engine(tmp_path: Path) -> None:
    from tests.unit.test_runtime_models import make_tiny_yolo_onnx
    from trtq.errors import TrtqError

    with (
        Detector(make_tiny_yolo_onnx(tmp_path / "m.onnx")) as det,
        pytest.raises(TrtqError, match="TensorRT"),
    ):
        with det.overlapped():
            pass
