"""Fake quantization on plain torch ops, bit for bit ONNX Runtime's QuantizeLinear -> DequantizeLinear.

:func:`fake_quantize` is ``clamp(round_half_even(x / scale), qmin, qmax) * scale`` with a true division and a
straight-through gradient inside the range; torch's own ``fake_quantize_per_tensor_affine`` multiplies by
``1 / scale`` instead and rounds ties differently. The modules that carry it (an activation quantizer, a
conv with quantized input and weight, a bottleneck with a quantized shortcut) are defined on first use so
that torch stays an optional dependency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is an optional dependency (the export extra)
    import torch
    from torch import nn

ACT_QMIN, ACT_QMAX = -128, 127  # INT8 QuantizeLinear saturation (ONNX Runtime and TensorRT explicit Q/DQ)
WEIGHT_QMAX = 127  # symmetric weights: amax_c = max|w_c| maps to 127, never below -127


def require_torch() -> Any:
    try:
        import torch
    except ImportError:
        from trtq.errors import MissingDependencyError

        raise MissingDependencyError("trtq qat needs torch and ultralytics: pip install 'trtq[export]'", exit_code=2) from None
    return torch


def _make_function() -> Any:
    torch = require_torch()

    class _FakeQuantize(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
            r = x / scale
            ctx.save_for_backward((r >= qmin) & (r <= qmax))
            return torch.clamp(torch.round(r), qmin, qmax) * scale

        @staticmethod
        def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
            (inside,) = ctx.saved_tensors
            return grads[0] * inside, None, None, None

    return _FakeQuantize


_FUNCTION: Any = None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, qmin: int = ACT_QMIN, qmax: int = ACT_QMAX) -> torch.Tensor:
    """Quantize-dequantize ``x`` (zero point 0): ``clamp(round(x / scale), qmin, qmax) * scale``.

    ``torch.round`` rounds half to even and the division is a true float32 division, as in ONNX Runtime's
    QuantizeLinear; ``scale`` broadcasts (a scalar for per tensor, ``[C, 1, 1, 1]`` for per channel). The
    gradient passes straight through inside the range and is zero where the value was clamped.
    """
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _make_function()
    return _FUNCTION.apply(x, scale, qmin, qmax)


def weight_scale(w: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Per-output-channel scale ``max|w_c| / 127`` as :func:`trtq.qdq.quantize_weight` computes it (float32).

    ``axis`` is the output-channel axis: 0 for a Conv2d weight, 1 for a ConvTranspose2d one. The result
    broadcasts against ``w`` (size 1 on every other axis)."""
    torch = require_torch()
    amax = w.detach().abs().amax(dim=tuple(i for i in range(w.ndim) if i != axis), keepdim=True)
    amax = torch.where(amax > 0, amax, torch.ones_like(amax))
    return amax / torch.tensor(float(WEIGHT_QMAX), dtype=amax.dtype)


def activation_scale(amax: float) -> np.float32:
    """The float32 scale the Q/DQ ONNX stores for ``amax`` (as :func:`trtq.qdq.insert_qdq` writes it)."""
    from trtq.qdq import QMAX

    return np.float32(np.array(amax / QMAX, dtype=np.float32))


def _module_classes() -> tuple[type, type, type, type]:
    torch = require_torch()
    nn = torch.nn
    F = torch.nn.functional

    class ActQuantizer(nn.Module):
        """Per-tensor activation fake quantization with a fixed range (one ONNX tensor's Q/DQ pair)."""

        def __init__(self, tensor: str, amax: float) -> None:
            super().__init__()
            self.tensor = tensor
            self.register_buffer("scale", torch.tensor(float(activation_scale(amax)), dtype=torch.float32))
            self.enabled = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.enabled:
                return x
            return fake_quantize(x, self.scale.to(x.dtype))

        def extra_repr(self) -> str:
            return f"{self.tensor!r}, amax={float(self.scale) * 127:.5g}"

    class QuantConv2d(nn.Module):
        """A Conv2d whose input (per tensor) and weight (per output channel) are fake-quantized."""

        def __init__(self, conv: nn.Conv2d, input_quantizer: nn.Module | None, quantize_weight: bool, node: str) -> None:
            super().__init__()
            self.conv = conv
            self.input_quantizer = input_quantizer
            self.quantize_weight = quantize_weight
            self.node = node
            self.enabled = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            c = self.conv
            w = c.weight
            if self.enabled:
                if self.input_quantizer is not None:
                    x = self.input_quantizer(x)
                if self.quantize_weight:
                    w = fake_quantize(w, weight_scale(w).to(w.dtype), -WEIGHT_QMAX, WEIGHT_QMAX)
            return F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)

    class QuantConvTranspose2d(QuantConv2d):
        """A ConvTranspose2d (a mask prototype's upsampling) with its input and weight fake-quantized; the
        weight's output channels are its axis 1, as in ONNX's ConvTranspose."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            c: Any = self.conv
            w = c.weight
            if self.enabled:
                if self.input_quantizer is not None:
                    x = self.input_quantizer(x)
                if self.quantize_weight:
                    w = fake_quantize(w, weight_scale(w, 1).to(w.dtype), -WEIGHT_QMAX, WEIGHT_QMAX)
            return F.conv_transpose2d(x, w, c.bias, c.stride, c.padding, c.output_padding, c.groups, c.dilation)

    class QuantResidual(nn.Module):
        """A bottleneck ``x + cv2(cv1(x))`` whose shortcut ``x`` goes through the Add's Q/DQ pair."""

        def __init__(self, block: nn.Module, quantizer: nn.Module, node: str) -> None:
            super().__init__()
            self.block = block
            self.shortcut_quantizer = quantizer
            self.node = node
            self.enabled = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b: Any = self.block
            shortcut = self.shortcut_quantizer(x) if self.enabled else x
            return shortcut + b.cv2(b.cv1(x))

    return ActQuantizer, QuantConv2d, QuantResidual, QuantConvTranspose2d


_CLASSES: tuple[type, type, type, type] | None = None


def module_classes() -> tuple[type, type, type, type]:
    """(ActQuantizer, QuantConv2d, QuantResidual, QuantConvTranspose2d), defined on first use so that torch
    stays optional."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _module_classes()
    return _CLASSES
