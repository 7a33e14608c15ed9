"""Overlapped TensorRT inference for the video pipeline: copies on their own CUDA stream, double-buffered.

:class:`~trtq.trt.session.TensorRTSession` runs one batch at a time: copy in, execute, copy out, synchronize.
In a video pipeline the next batch is already preprocessed while the current one runs, so
:class:`OverlappedEngine` keeps two *slots*, each with its own pinned host input, device input, device outputs
and pinned host outputs, and two streams::

    copy stream:     htod(k+1) ........ dtoh(k) ......... htod(k+2) ....... dtoh(k+1)
    compute stream:  [ execute(k)                     ][ execute(k+1)                  ]

``submit(k+1)`` copies batch k+1 in (copy stream) while batch k executes (compute stream), then queues
``execute(k+1)`` behind it with the slot's tensor addresses (``set_tensor_address`` per run: cheap, no
re-allocation). ``collect()`` waits for the oldest execution's event and copies its outputs out on the copy
stream while the next execution runs. The host waits on events only (``Event.synchronize``), never on the
whole device, so the GPU always has the next execution queued while the CPU stages work.

Expected on a Jetson: the H2D copy of a 640x640 FP32 frame (4.9 MB) and the D2H copy of the outputs run
beside the previous frame's compute instead of before and after it, so inference per frame approaches
``max(compute, copies)`` instead of ``compute + copies``; with the CPU stages in their own threads the
pipeline's frame rate approaches that of its slowest stage.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from trtq.errors import TrtqError

if TYPE_CHECKING:
    from trtq.device import DeviceBuffer, Event
    from trtq.trt.session import TensorRTSession


@dataclass
class _Slot:
    """One set of buffers: pinned host and device memory for every I/O tensor, and its events."""

    host: dict[str, np.ndarray]
    device: dict[str, DeviceBuffer]
    copied_in: Event
    computed: Event
    n: int = 0
    busy: bool = False
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


class OverlappedEngine:
    """Two-slot, two-stream execution of a :class:`TensorRTSession` (see the module docstring).

    ``submit(tensor)`` queues one batch (N, 3, H, W) and returns at once; ``collect()`` returns the outputs of
    the oldest submitted batch (owned arrays). At most two batches are in flight; ``submit`` with both slots
    busy is an error (collect first). The session's own buffers are left as they were: ``close()`` restores
    its tensor addresses.
    """

    SLOTS = 2

    def __init__(self, session: TensorRTSession) -> None:
        self.session = session
        dev = session.device
        self.copy_stream = dev.stream()
        self._order: deque[int] = deque()
        self._next = 0
        self.slots: list[_Slot] = []
        try:
            for _ in range(self.SLOTS):
                host = {n: dev.pinned_empty(t.host.shape, t.dtype) for n, t in session.tensors.items()}
                device = {n: dev.alloc(max(int(h.nbytes), 1)) for n, h in host.items()}
                self.slots.append(_Slot(host, device, dev.event(), dev.event()))
        except BaseException:
            self.close()
            raise

    def submit(self, tensor: np.ndarray) -> None:
        s = self.session
        slot = self.slots[self._next]
        if slot.busy:
            raise TrtqError("both slots are in flight: collect() a result before submitting another batch")
        n = int(tensor.shape[0])
        run_n = max(n, s.batch_range[0])
        s.set_batch(run_n)
        dev, name_in = s.device, s.input_name
        shape_in = s.shape_of(name_in)
        host_in = slot.host[name_in].reshape(-1)[: int(np.prod(shape_in))].reshape(shape_in)
        host_in[:n] = tensor
        dev.htod(slot.device[name_in], host_in, self.copy_stream)  # beside the other slot's execution
        slot.copied_in.record(self.copy_stream)
        slot.copied_in.synchronize()  # the input is on the device before the execution is queued
        for name, buf in slot.device.items():
            if not s.context.set_tensor_address(name, int(buf.ptr)):
                raise TrtqError(f"{s.path}: TensorRT rejected the buffer address of {name!r}")
        slot.shapes = {name: s.shape_of(name) for name in s.output_names}
        s.enqueue()  # compute stream, queued behind the other slot's execution
        slot.computed.record(s.stream)
        slot.n, slot.busy = n, True
        self._order.append(self._next)
        self._next = (self._next + 1) % self.SLOTS

    @property
    def in_flight(self) -> int:
        return len(self._order)

    def collect(self) -> list[np.ndarray]:
        if not self._order:
            raise TrtqError("collect() with no batch in flight")
        slot = self.slots[self._order.popleft()]
        slot.computed.synchronize()
        dev = self.session.device
        outs: list[np.ndarray] = []
        for name in self.session.output_names:
            shape = slot.shapes[name]
            host = slot.host[name].reshape(-1)[: int(np.prod(shape))].reshape(shape)
            dev.dtoh(host, slot.device[name], self.copy_stream)  # beside the next execution
            outs.append(host)
        self.copy_stream.synchronize()
        slot.busy = False
        return [np.array(o[: slot.n]) for o in outs]

    def close(self) -> None:
        """Wait for work in flight, free the slots' device memory, give the session its own buffers back."""
        s = self.session
        for i in list(self._order):
            self.slots[i].computed.synchronize()
        self._order.clear()
        for slot in self.slots:
            for buf in slot.device.values():
                buf.free()
        self.slots = []
        context: Any = getattr(s, "context", None)
        if context is not None:
            for name, t in s.tensors.items():
                context.set_tensor_address(name, int(t.device.ptr))
