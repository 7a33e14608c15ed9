"""CPU instruction sets and ONNX Runtime's u8 x s8 integer kernels: which weight layouts saturate where.

ONNX Runtime's CPU provider multiplies u8 activation codes by s8 weight codes. How it adds the products
depends on the CPU:

* x86 without VNNI (AVX2 only: AMD Zen 2/3, Intel before Ice Lake; AVX512 without VNNI too): VPMADDUBSW
  adds each *pair* of adjacent products along K in **saturating 16 bits**, then widens to 32 bits. A pair
  ``a1*w1 + a2*w2`` with ``a`` in [0, 255] overflows int16 once same-sign weights have ``|w1| + |w2| > 128``.
* x86 with AVX-VNNI or AVX512-VNNI (VPDPBUSD) and Arm64 (SDOT/UDOT, or widening multiplies) accumulate
  in 32 bits: exact.

Weight layouts (recorded in the model's metadata as ``trtq_cpu_weights``):

* ``s8``: full-range 8-bit weights, [-127, 127]. Exact on VNNI and Arm64; can saturate on AVX2.
* ``s8-pair128``: 8-bit weights whose adjacent same-sign pairs (in the K orders ONNX Runtime packs)
  have ``|w1| + |w2| <= 128``, so ``255 * 128 = 32640`` fits int16: exact on AVX2, and the same model on
  every other CPU. Per output channel, the finest grid at which every pair fits, 7 to 8 bits
  (:func:`quantize_fitting`).
* ``s8-data``: as ``s8-pair128``, but a pair need only fit ``a1*|w1| + a2*|w2| <= 32767`` with ``a`` the
  largest u8 code each input channel of the conv carries on the calibration images (with headroom):
  most channels keep the full 8-bit grid, since SiLU outputs rarely reach code 255 in every channel.
* ``s7``: 7-bit weights, [-63, 63] (``--reduce-range``): exact everywhere, half the weight resolution.

A base module: it imports only ``trtq.errors`` (numpy and onnx when called).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trtq.errors import TrtqError

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

ISA_AVX2 = "avx2"
ISA_AVX_VNNI = "avx-vnni"
ISA_AVX512_VNNI = "avx512-vnni"
ISA_ARM64 = "arm64"
ISAS = (ISA_AVX2, ISA_AVX_VNNI, ISA_AVX512_VNNI, ISA_ARM64)
ISA_AUTO = "auto"
ISA_CHOICES = (ISA_AUTO, *ISAS)
# CPUs whose u8 x s8 kernels add product pairs in saturating 16 bits
SATURATING_ISAS = frozenset({ISA_AVX2})

WEIGHTS_S8 = "s8"
WEIGHTS_S8_PAIR128 = "s8-pair128"
WEIGHTS_S8_DATA = "s8-data"
WEIGHTS_S7 = "s7"
WEIGHT_LAYOUTS = (WEIGHTS_S8, WEIGHTS_S8_DATA, WEIGHTS_S8_PAIR128, WEIGHTS_S7)
# the layout each ISA gets by default: chosen by measurement (README "INT8 on the CPU")
ISA_LAYOUT = {
    ISA_AVX2: WEIGHTS_S8_PAIR128,
    ISA_AVX_VNNI: WEIGHTS_S8,
    ISA_AVX512_VNNI: WEIGHTS_S8,
    ISA_ARM64: WEIGHTS_S8,
}

# model metadata (metadata_props)
TARGET_KEY = "trtq_target"
TARGET_CPU = "cpu"
ISA_KEY = "trtq_cpu_isa"
WEIGHTS_KEY = "trtq_cpu_weights"
FULL8_KEY = "trtq_cpu_weights_8bit_channels"  # "N of M": conv output channels that kept the full 8-bit grid

INT16_MAX = 32767
INT16_MIN = -32768
U8_MAX = 255
# the largest |w1| + |w2| of a same-sign pair that cannot saturate with u8 codes up to 255
PAIR_LIMIT = INT16_MAX // U8_MAX  # 128


@dataclass(frozen=True)
class CpuIsa:
    isa: str
    reason: str  # why: the flags read, or "asked for"


def _x86_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def detect_isa(*, cpuinfo: str | None = None, machine: str | None = None) -> CpuIsa:
    """The ISA class of this CPU: from ``/proc/cpuinfo`` flags on x86, ``platform.machine()`` on Arm."""
    arch = (machine if machine is not None else platform.machine()).lower()
    if arch in ("aarch64", "arm64"):
        return CpuIsa(ISA_ARM64, f"{arch} CPU (Arm64: dot-product kernels accumulate in 32 bits)")
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    flags = _x86_flags(cpuinfo)
    if "avx512_vnni" in flags:
        return CpuIsa(ISA_AVX512_VNNI, "CPU flags include avx512_vnni")
    if "avx_vnni" in flags:
        return CpuIsa(ISA_AVX_VNNI, "CPU flags include avx_vnni")
    if not flags:
        return CpuIsa(ISA_AVX2, f"{arch or 'unknown'} CPU whose flags cannot be read: assumed without VNNI")
    return CpuIsa(ISA_AVX2, "CPU flags have no avx512_vnni or avx_vnni (u8 x s8 pairs add in 16 bits)")


def resolve_isa(isa: str | None) -> CpuIsa:
    """``auto`` (or None): this CPU; otherwise the ISA asked for."""
    if isa is None or isa == ISA_AUTO:
        found = detect_isa()
        return CpuIsa(found.isa, f"auto: this CPU, {found.reason}")
    if isa not in ISAS:
        raise TrtqError(f"unknown CPU ISA {isa!r}; choose one of {', '.join(ISA_CHOICES)}")
    return CpuIsa(isa, "asked for (--cpu-isa)")


# ---------------------------------------------------------------------------------------------------------------
# the saturation rule
# ---------------------------------------------------------------------------------------------------------------
# K orders of a conv's weights that ONNX Runtime's u8 x s8 kernels may pack (see :func:`_view`)
_ORDERS = (1, 2)


def k_orders(wq: np.ndarray) -> Iterator[np.ndarray]:
    """The weight codes of every output channel as ``[M, K]`` in each K order the kernels may pack, whose
    adjacent pairs (0, 1), (2, 3), ... are added in 16 bits.

    ``wq`` is ``[M, C/group, kh, kw]`` (or ``[M, K]``); K runs over one group's channels. Orders: channels
    last (kh, kw, channel), as ONNX Runtime's QLinearConv reorders its filter before its GEMM (measured:
    limiting the pairs of this order alone removes every saturation on an AVX2 CPU, for 1x1 and 3x3 convs
    with 3 to 64 channels; ONNX's own (channel, kh, kw) order does not); and channels last with each
    kernel position's channels padded to a multiple of 4, the packing of its symmetric-conv kernels, which
    differs only where the channel count is not a multiple of 4 (a network's first conv).
    """
    if wq.ndim < 3:
        yield wq.reshape(wq.shape[0], -1)
        return
    for order in _ORDERS:
        flat = _view(wq, order)
        if flat is not None:
            yield flat


def _pairs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if flat.shape[1] % 2:
        flat = np.concatenate([flat, np.zeros((flat.shape[0], 1), flat.dtype)], axis=1)
    return flat[:, 0::2], flat[:, 1::2]


def input_codes(codes: np.ndarray | None, wshape: tuple[int, ...]) -> np.ndarray | None:
    """Per-input-channel maximum u8 codes (``[C]``, C the conv's input channels over every group) laid out
    as the weights ``[M, C/group, kh, kw]`` are: the largest code each weight can be multiplied by."""
    if codes is None:
        return None
    c = np.asarray(codes, dtype=np.int64).reshape(-1)
    m, cg = wshape[0], (wshape[1] if len(wshape) > 1 else 1)
    groups = max(1, c.size // max(cg, 1))
    if c.size != groups * cg or m % groups:
        raise ValueError(f"{c.size} input-channel codes do not match weights of shape {tuple(wshape)}")
    per_out = c.reshape(groups, cg)[np.arange(m) // (m // groups)]  # [M, C/group]
    return np.broadcast_to(per_out.reshape(m, cg, *([1] * (len(wshape) - 2))), wshape)


def channel_pair_sums(wq: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray:
    """Per output channel, the largest same-sign ``|w1| + |w2|`` over adjacent K pairs in every packing order;
    with ``codes`` (per input channel, the largest u8 code it carries), the largest ``a1*|w1| + a2*|w2|``."""
    w = np.asarray(wq, dtype=np.int64)
    a = input_codes(codes, w.shape)
    if a is None:
        a = np.ones_like(w)
    worst = np.zeros(w.shape[0], dtype=np.int64)
    for flat, act in zip(k_orders(w), k_orders(np.ascontiguousarray(a)), strict=True):
        pos = np.add(*_pairs(np.maximum(flat, 0) * act))
        neg = np.add(*_pairs(-np.minimum(flat, 0) * act))
        worst = np.maximum(worst, np.maximum(pos.max(axis=1, initial=0), neg.max(axis=1, initial=0)))
    return worst


def worst_pair_sum(wq: np.ndarray, act_max: int = U8_MAX, codes: np.ndarray | None = None) -> tuple[int, int]:
    """(largest, smallest) ``a1*w1 + a2*w2`` over adjacent K pairs, every packing order and u8 codes in
    ``[0, act_max]`` (or, with ``codes``, in ``[0, codes[c]]`` for input channel ``c``): what a 16-bit
    pairwise adder must hold."""
    w = np.asarray(wq, dtype=np.int64)
    a = input_codes(codes, w.shape)
    if a is None:
        a = np.broadcast_to(np.int64(act_max), w.shape)
    hi, lo = 0, 0
    for flat, act in zip(k_orders(w), k_orders(np.ascontiguousarray(a)), strict=True):
        pos = np.add(*_pairs(np.maximum(flat, 0) * act))
        neg = np.add(*_pairs(np.minimum(flat, 0) * act))
        hi = max(hi, int(pos.max(initial=0)))
        lo = min(lo, int(neg.min(initial=0)))
    return hi, lo


def pair_sum_fits(wq: np.ndarray, act_max: int = U8_MAX, codes: np.ndarray | None = None) -> bool:
    hi, lo = worst_pair_sum(wq, act_max, codes)
    return hi <= INT16_MAX and lo >= INT16_MIN


def quantize_fitting(w: np.ndarray, limit: int = PAIR_LIMIT, codes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel s8 codes and scales of float weights ``w`` (``[M, ...]``) whose adjacent
    pairs cannot saturate 16-bit sums with u8 activations: per channel, the finest grid ``amax / qmax``,
    ``qmax`` in [64, 127], at which every pair fits ``|w1| + |w2| <= limit`` (``qmax = 64`` always fits).

    With ``codes`` (per input channel, the largest u8 code the conv's input carries there, as calibrated:
    layout ``s8-data``) a pair fits when ``a1*|w1| + a2*|w2| <= 32767`` with ``a`` those codes, so channels
    whose inputs never reach 255 keep more (often all) of the 8-bit grid.

    Channels that fit at 127 keep plain 8-bit weights; no code is ever clipped or cut, so the rounding error
    stays unbiased. (Cutting the over-limit pairs of the 8-bit grid instead can give a smaller squared
    weight error, but shrinks both weights of a pair toward zero: on YOLOv8n, letting channels choose it lost
    1.0 to 1.2 mAP points, no better than 7-bit weights.)
    """
    q, scale, _ = fit_grid(w, limit, codes)
    return q, scale


def fit_grid(
    w: np.ndarray, limit: int = PAIR_LIMIT, codes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`quantize_fitting`, and the ``qmax`` each output channel got (127: full 8 bits)."""
    w = np.asarray(w, dtype=np.float32)
    m = w.shape[0]
    bshape = (m, *([1] * (w.ndim - 1)))
    amax = np.max(np.abs(w.reshape(m, -1)), axis=1)
    safe = np.where(amax > 0, amax, 1.0)
    bound = INT16_MAX if codes is not None else limit

    def grid(qmax: float) -> tuple[np.ndarray, np.ndarray]:
        scale = (safe / qmax).astype(np.float32)
        return np.clip(np.rint(w / scale.reshape(bshape)), -127, 127).astype(np.int64), scale

    best_q, best_s = grid(64.0)
    best_m = np.full(m, 64, dtype=np.int64)
    found = np.zeros(m, dtype=bool)
    for qmax in range(127, 64, -1):
        q, scale = grid(float(qmax))
        fits = (channel_pair_sums(q, codes) <= bound) & ~found
        best_q[fits], best_s[fits], best_m[fits] = q[fits], scale[fits], qmax
        found |= fits
        if found.all():
            break
    return best_q.astype(np.int8), np.where(amax > 0, best_s, 1.0).astype(np.float32), best_m


def _view(w: np.ndarray, order: int) -> np.ndarray | None:
    """K order ``order`` as a flat ``[M, K]`` array: 1 channels last, 2 channels last padded to a multiple
    of 4 (None where that equals order 1)."""
    m = w.shape[0]
    last = np.moveaxis(w, 1, -1)
    c = last.shape[-1]
    if order == 1:
        return last.reshape(m, -1)
    if c % 4 == 0:
        return None
    padded = np.concatenate([last, np.zeros((*last.shape[:-1], 4 - c % 4), w.dtype)], axis=-1)
    return padded.reshape(m, -1)


# ---------------------------------------------------------------------------------------------------------------
# a model and the CPU it runs on
# ---------------------------------------------------------------------------------------------------------------
def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def is_cpu_target(model: str | Path | bytes | onnx.ModelProto) -> bool:
    """True for an INT8 model trtq laid out for ONNX Runtime's CPU integer kernels (``--target cpu``)."""
    return model_metadata(model).get(TARGET_KEY) == TARGET_CPU


def saturating_weights(model: onnx.ModelProto) -> list[str]:
    """Names of the s8 weight initializers read by a DequantizeLinear feeding a Conv/MatMul whose worst
    adjacent pair with u8 codes up to 255 does not fit int16."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    readers = {i for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm") for i in n.input[1:2]}
    bad = []
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or n.output[0] not in readers or n.input[0] not in inits:
            continue
        arr = numpy_helper.to_array(inits[n.input[0]])
        if arr.dtype == np.int8 and not pair_sum_fits(arr):
            bad.append(n.input[0])
    return bad


def model_metadata(model: str | Path | bytes | onnx.ModelProto) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX model ({} when it cannot be read)."""
    import onnx

    try:
        if isinstance(model, onnx.ModelProto):
            m = model
        elif isinstance(model, bytes):
            m = onnx.load_from_string(model)
        else:
            m = onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - not an ONNX file: no metadata
        return {}
    return _metadata(m)


# layouts whose adjacent pairs fit 16-bit sums with u8 codes: exact on every CPU
# (s8-data: on the calibration data, with headroom; trtq verify on the deployment CPU checks the rest)
NON_SATURATING_LAYOUTS = frozenset({WEIGHTS_S8_DATA, WEIGHTS_S8_PAIR128, WEIGHTS_S7})
_warned: set[str] = set()


def saturation_warning(meta: Mapping[str, str], name: str, *, host: CpuIsa | None = None) -> str | None:
    """One line when a model with metadata ``meta`` is a CPU-target INT8 model whose weight layout can
    saturate the integer kernels of ``host`` (default: this CPU); None when it runs exactly there.

    Decided from the metadata alone (no onnx import: the runtime uses it). A CPU-target model without a
    recorded layout (made before layouts were recorded) has full 8-bit weights unless it was reduced."""
    if meta.get(TARGET_KEY) != TARGET_CPU:
        return None
    cpu = host or detect_isa()
    if cpu.isa not in SATURATING_ISAS or meta.get(WEIGHTS_KEY) in NON_SATURATING_LAYOUTS:
        return None
    made_for = meta.get(ISA_KEY, "a CPU with VNNI")
    layout = meta.get(WEIGHTS_KEY, "8-bit")
    return (f"{name} was quantized for {made_for} ({layout} weights), but this CPU ({cpu.isa}, no VNNI) adds "
            f"u8 x s8 product pairs in saturating 16 bits, so its results can be wrong: re-quantize with "
            f"`trtq quantize --target cpu --cpu-isa {cpu.isa}`")


def warn_if_saturating(meta: Mapping[str, str], name: str, log: logging.Logger | None = None) -> str | None:
    """Log :func:`saturation_warning` (one line, a warning) once per model name; return it."""
    msg = saturation_warning(meta, name)
    if msg and name not in _warned:
        _warned.add(name)
        (log or logger).warning("%s", msg)
    return msg


def cpu_metadata(isa: CpuIsa, layout: str) -> Mapping[str, str]:
    return {ISA_KEY: isa.isa, WEIGHTS_KEY: layout}
