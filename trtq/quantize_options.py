"""What a quantization is asked for: :class:`QuantizeOptions`, validated in one place.

``QuantizeOptions`` holds every choice of ``trtq quantize`` for both targets (``tensorrt``: Q/DQ on the
inputs of weighted ops; ``cpu``: the integer-kernel layout of :mod:`trtq.cpu_target`).
:meth:`QuantizeOptions.validate` checks everything that does not depend on the model or the images,
including which options belong to which target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibrators.ranges import DEFAULT_ALGO, DEFAULT_PERCENTILE, check_algorithm, check_percentile
from trtq.amax import QUANTIZE_ALGOS
from trtq.cpuisa import ISA_AUTO, ISA_CHOICES, TARGET_CPU
from trtq.errors import TrtqError

TARGET_TENSORRT = "tensorrt"
TARGETS = (TARGET_TENSORRT, TARGET_CPU)
# With asymmetric u8 ranges, clipping by percentile costs accuracy on the CPU layout (every body tensor is
# quantized, not only weighted-op inputs); the histogram-MSE choice kept YOLOv8n within 0.1 mAP points.
CPU_DEFAULT_ALGO = "mse"
ACTIVATION_TYPES = ("u8", "s8")
SILU_MODES = ("int", "float")

# option -> (how the command line spells a non-default value, the only target it applies to)
_TARGET_ONLY: dict[str, tuple[str, str]] = {
    "max_drop": ("--max-drop", TARGET_TENSORRT),
    "cache": ("--cache", TARGET_TENSORRT),
    "unify_concat": ("--no-concat-unify", TARGET_TENSORRT),
    "int8_weights": ("--int8-weights", TARGET_TENSORRT),
    "quantize_head": ("--quantize-head", TARGET_TENSORRT),
    "per_channel": ("per_channel=False", TARGET_TENSORRT),
    "residual_add": ("residual_add=False", TARGET_TENSORRT),
    "reduce_range": ("--reduce-range", TARGET_CPU),
    "cpu_isa": ("--cpu-isa", TARGET_CPU),
    "activations": ("activations", TARGET_CPU),
    "silu": ("silu", TARGET_CPU),
}


@dataclass(frozen=True)
class QuantizeOptions:
    """Every choice of a quantization; see :func:`trtq.quantize.quantize` (``tensorrt``) and
    :func:`trtq.cpu_target.quantize_cpu` (``cpu``) for what each does.

    Both targets: ``algo=None`` is the target's default (``calibrators.ranges.DEFAULT_ALGO`` for tensorrt,
    :data:`CPU_DEFAULT_ALGO` for cpu); ``percentile`` for ``percentile``/``auto``; ``exclude`` node names or
    patterns kept in float; ``num_images``/``batch``/``seed`` pick and batch the calibration images;
    ``head_policy`` keeps what decodes in float.

    tensorrt only: ``quantize_head`` (the last conv of each head branch is quantized too),
    ``per_channel`` weights, ``unify_concat`` (one scale for a Concat's inputs), ``residual_add`` (Q/DQ on
    the shortcut input of residual Adds), ``int8_weights`` (stored as INT8); ``cache`` (a saved calibration
    cache, or a :class:`calibrators.table.CalibrationTable` taken as checked) supplies the ranges, refused
    when made from another model unless ``force_cache``; ``max_drop`` mAP50-95 points with labelled
    ``data`` keeps the most sensitive layers in float (ranked on ``sensitivity_images`` images, at most
    ``max_steps`` layers).

    cpu only: ``cpu_isa`` (``auto``: this CPU) picks the weight layout that cannot saturate that CPU's
    integer kernels, ``reduce_range`` forces 7-bit weights; ``activations`` ``u8``/``s8``; ``silu``
    ``int`` (QLinearSigmoid/QLinearMul) or ``float``.
    """

    target: str = TARGET_TENSORRT
    algo: str | None = None
    percentile: float = DEFAULT_PERCENTILE
    exclude: Sequence[str] = ()
    num_images: int | None = None
    batch: int = 1
    seed: int = 0
    head_policy: bool = True
    progress: bool = True
    quantize_head: bool = False
    per_channel: bool = True
    unify_concat: bool = True
    residual_add: bool = True
    int8_weights: bool = False
    cache: Any = None  # a path, or a calibrators.table.CalibrationTable
    force_cache: bool = False
    max_drop: float | None = None
    data: str | Path | None = None
    sensitivity_images: int = 16
    max_steps: int = 12
    cpu_isa: str = ISA_AUTO
    reduce_range: bool = False
    activations: str = "u8"
    silu: str = "int"

    def __post_init__(self) -> None:
        # a list (or one string) of exclusions is taken as given; kept as a tuple so the options stay hashable
        exclude = (self.exclude,) if isinstance(self.exclude, str) else tuple(self.exclude)
        object.__setattr__(self, "exclude", exclude)

    def validate(self) -> None:
        """Raise :class:`TrtqError` (one line: what is wrong and the fix) for options no model can satisfy."""
        if self.target not in TARGETS:
            raise TrtqError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        self._check_target_only()
        check_algorithm(self.algorithm, QUANTIZE_ALGOS)
        if self.algorithm in ("percentile", "auto"):
            check_percentile(self.percentile)  # before the image pass
        for label, value, least in (("--batch", self.batch, 1), ("--num-images", self.num_images, 1),
                                    ("--seed", self.seed, 0)):
            if value is not None and value < least:
                raise TrtqError(f"{label} must be at least {least}, got {value}")
        if self.max_drop is not None and self.data is None:
            raise TrtqError("--max-drop needs labelled data to measure mAP: pass --data DATA "
                            "(a data yaml or labelled folder)")
        if self.max_drop is not None and self.max_drop < 0:
            raise TrtqError(f"--max-drop must be >= 0 mAP points, got {self.max_drop}")
        if self.cpu_isa not in ISA_CHOICES:
            raise TrtqError(f"unknown CPU ISA {self.cpu_isa!r}; choose one of {', '.join(ISA_CHOICES)}")
        if self.activations not in ACTIVATION_TYPES:
            raise TrtqError(f"unknown activation type {self.activations!r}; "
                            f"choose one of {', '.join(ACTIVATION_TYPES)}")
        if self.silu not in SILU_MODES:
            raise TrtqError(f"unknown SiLU mode {self.silu!r}; choose one of {', '.join(SILU_MODES)}")

    def _check_target_only(self) -> None:
        """Options of the other target, set to anything but their default, are refused (all named at once)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        wrong = [flag for name, (flag, target) in _TARGET_ONLY.items()
                 if target != self.target and getattr(self, name) != defaults[name]]
        if wrong:
            raise TrtqError(f"{', '.join(wrong)} applies to --target {_other(self.target)} only; "
                            f"drop it for --target {self.target}")

    @property
    def algorithm(self) -> str:
        """The range algorithm asked for, or the target's default (a ``cache`` may still bring its own)."""
        if self.algo is not None:
            return self.algo
        return CPU_DEFAULT_ALGO if self.target == TARGET_CPU else DEFAULT_ALGO

    def report_options(self) -> dict[str, Any]:
        """The layout choices a tensorrt Q/DQ report records."""
        return {
            "head_policy": self.head_policy,
            "quantize_head": self.quantize_head,
            "per_channel": self.per_channel,
            "unify_concat": self.unify_concat,
            "residual_add": self.residual_add,
            "int8_weights": self.int8_weights,
            "exclude": list(self.exclude),
        }


def _other(target: str) -> str:
    return TARGET_CPU if target == TARGET_TENSORRT else TARGET_TENSORRT
