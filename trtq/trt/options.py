"""What a build is asked for: :class:`BuildOptions`, validated in one place, and the batch :class:`Profile`.

``BuildOptions`` holds every choice of ``trtq build`` (``None`` means "use the default");
:meth:`BuildOptions.validate` checks everything that does not depend on the model, and
:func:`resolve_profile` what does (a fixed batch or image size in the ONNX). :func:`command_line` writes
the ``trtq build`` command that repeats a build, for the engine record and the "finish on the target"
message.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibrators.ranges import ALGORITHMS, DEFAULT_ALGO, DEFAULT_PERCENTILE
from trtq.errors import TrtqError

if TYPE_CHECKING:
    from trtq.modelinfo import ModelInfo

MODES = ("auto", "implicit", "explicit")


@dataclass(frozen=True)
class BuildOptions:
    """Every choice of a build; see :func:`trtq.trt.builder.build` for what each does.

    ``version_compatible``: the engine also runs on later TensorRT releases (8.6+; it carries its own lean
    runtime, so it may be slower; the runtime must allow host code, which ``trtq.runtime`` does for engines
    recorded as version compatible). ``hardware_compatible``: the engine runs on every Ampere or newer
    discrete GPU (8.6+, not for DLA; may be slower). Both are recorded in the engine's metadata, which is
    what lets the runtime's compatibility check accept a newer TensorRT or another GPU.

    ``workspace`` is in GiB. ``strongly_typed=None`` picks: always on TensorRT 11; on 8.x/10.x a weakly
    typed network with INT8+FP16 flags (so layers outside the Q/DQ pairs run in FP16) unless the ONNX is
    already FP16-typed. ``algo=None``: ``calibrators.ranges.DEFAULT_ALGO``, or the algorithm a ``cache``
    was made with. ``imgsz``: one size or (H, W). With ``calib``, ``reference_images`` reference
    inputs/outputs are written for ``trtq verify``; with ``verify`` the built engine is checked against them.
    """

    fp16: bool = False
    int8: bool = False
    calib: str | Path | None = None
    cache: str | Path | None = None
    force_cache: bool = False
    algo: str | None = None
    percentile: float = DEFAULT_PERCENTILE
    mode: str = "auto"
    batch: int | None = None
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    imgsz: int | Sequence[int] | None = None
    workspace: float | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    timing_cache: str | Path | None = None
    builder_opt_level: int | None = None
    strongly_typed: bool | None = None
    version_compatible: bool = False
    hardware_compatible: bool = False
    ultralytics_header: bool = False
    output: str | Path | None = None
    num_images: int | None = None
    seed: int = 0
    progress: bool = True
    verify: bool = True
    reference_images: int = 8

    def validate(self) -> None:
        """Raise :class:`TrtqError` (one line: what is wrong and the fix) for an option no model can satisfy."""
        if self.algo is not None and self.algo not in ALGORITHMS:
            raise TrtqError(f"unknown calibration algorithm {self.algo!r}; choose one of {', '.join(ALGORITHMS)}")
        if self.mode not in MODES:
            raise TrtqError(f"unknown INT8 mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.workspace is not None and self.workspace <= 0:
            raise TrtqError(f"--workspace is in GiB and must be positive, got {self.workspace}")
        if self.builder_opt_level is not None and not 0 <= self.builder_opt_level <= 5:
            raise TrtqError(f"--builder-opt-level must be 0..5, got {self.builder_opt_level}")
        if self.dla_core is not None and self.dla_core < 0:
            raise TrtqError(f"--dla-core must be 0 or more, got {self.dla_core}")
        if self.version_compatible and self.ultralytics_header:
            # ultralytics' AutoBackend deserializes without setting engine_host_code_allowed, so TensorRT refuses
            # the lean runtime a version-compatible plan carries and YOLO("x.engine") gets None
            # (ultralytics/nn/autobackend.py, the `engine` branch)
            raise TrtqError(
                "--version-compatible engines need engine_host_code_allowed, which ultralytics never sets, so "
                "YOLO() could not load this file: drop --ultralytics-header or --version-compatible"
            )
        _ = self.image_size  # raises for a bad --imgsz
        if self.batch is not None and self.ranged:
            raise TrtqError("pass either --batch N or --min-batch/--opt-batch/--max-batch, not both")
        for label, value in (("batch", self.batch), ("min-batch", self.min_batch), ("opt-batch", self.opt_batch),
                             ("max-batch", self.max_batch)):
            if value is not None and value < 1:
                raise TrtqError(f"--{label} must be at least 1, got {value}")

    @property
    def algorithm(self) -> str:
        """The range algorithm asked for, or the default (a ``cache`` may still bring its own)."""
        return self.algo or DEFAULT_ALGO

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``imgsz`` as (H, W), or None to take the model's."""
        if self.imgsz is None:
            return None
        sizes = [int(self.imgsz)] * 2 if isinstance(self.imgsz, int) else [int(s) for s in self.imgsz]
        if len(sizes) == 1:
            sizes = sizes * 2
        if len(sizes) != 2 or min(sizes) < 32:
            raise TrtqError(f"--imgsz must be one or two sizes of at least 32, got {self.imgsz}")
        return (sizes[0], sizes[1])

    @property
    def ranged(self) -> bool:
        """A dynamic batch profile was asked for (--min-batch/--opt-batch/--max-batch)."""
        return any(v is not None for v in (self.min_batch, self.opt_batch, self.max_batch))

    @property
    def timing_cache_path(self) -> Path | None:
        return Path(self.timing_cache) if self.timing_cache is not None else None

    def target_flags(self) -> dict[str, Any]:
        """The options a build on the target must repeat, as :func:`command_line` takes them."""
        return {
            "batch": self.batch,
            "min_batch": self.min_batch,
            "opt_batch": self.opt_batch,
            "max_batch": self.max_batch,
            "workspace": self.workspace,
            "dla_core": self.dla_core,
            "no_gpu_fallback": not self.gpu_fallback if self.dla_core is not None else None,
            "builder_opt_level": self.builder_opt_level,
            "version_compatible": self.version_compatible,
            "hardware_compatible": self.hardware_compatible,
            "ultralytics_header": self.ultralytics_header,
        }


@dataclass(frozen=True)
class Profile:
    """Batch range of the optimization profile (H and W are fixed per engine)."""

    min: int
    opt: int
    max: int
    height: int
    width: int

    def shape(self, which: str) -> tuple[int, int, int, int]:
        n = {"min": self.min, "opt": self.opt, "max": self.max}[which]
        return (n, 3, self.height, self.width)

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max


def resolve_profile(info: ModelInfo, options: BuildOptions) -> Profile:
    """The batch profile and image size of the build, from the options and what the ONNX fixes."""
    shape = info.input.shape
    n, h, w = shape[0], shape[2], shape[3]
    batch, min_batch, opt_batch, max_batch = options.batch, options.min_batch, options.opt_batch, options.max_batch
    imgsz = options.image_size
    if n is not None:
        asked = {v for v in (batch, min_batch, opt_batch, max_batch) if v is not None}
        if asked - {n}:
            raise TrtqError(
                f"{info.path.name} has a fixed batch of {n}; export it with a dynamic batch "
                f"(`trtq export MODEL.pt --dynamic`, or build from the .pt) to use batch {sorted(asked - {n})[0]}"
            )
        lo = opt = hi = int(n)
    elif batch is not None:
        lo = opt = hi = batch
    else:
        lo = min_batch or 1
        hi = max_batch or max(opt_batch or 0, lo)
        opt = opt_batch or hi
        if not lo <= opt <= hi:
            raise TrtqError(f"batch profile must satisfy min <= opt <= max, got {lo} / {opt} / {hi}")
    if h is not None and w is not None:
        if imgsz is not None and tuple(imgsz) != (h, w):
            raise TrtqError(
                f"{info.path.name} is fixed at {h}x{w}; re-export it with --imgsz {imgsz[0]} to build at that size"
            )
        hw = (int(h), int(w))
    else:
        hw = tuple(imgsz) if imgsz is not None else info.imgsz
    return Profile(lo, opt, hi, int(hw[0]), int(hw[1]))


def command_line(model: Path, opts: dict[str, Any]) -> str:
    """``trtq build MODEL --flag value ...`` for the options that are set (None and False are left out)."""
    parts = ["trtq", "build", str(model)]
    for key, value in sorted(opts.items(), key=lambda kv: kv[0] == "output"):  # -o last, after the options
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts.extend([flag] if value is True else [flag, str(value)])
    return " ".join(shlex.quote(p) for p in parts)
