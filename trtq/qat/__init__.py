"""Quantization-aware fine-tuning (QAT) of an ultralytics YOLOv8 model, exported as a Q/DQ ONNX.

The fake quantization goes exactly where ``trtq quantize`` puts Q/DQ: the placement is read from
:func:`trtq.qdq.plan_qdq` on the model's own ONNX export and mapped back to the PyTorch modules
(:mod:`trtq.qat.placement`). The activation ranges come from trtq's own calibration (the default algorithm)
and stay fixed; the weights are fine-tuned, either with ultralytics' trainer and data loaders (label loss,
:mod:`trtq.qat.labels`, on a staged copy of the dataset, :mod:`trtq.qat.dataset`) or by distillation against
the FP32 model's outputs (:mod:`trtq.qat.distill`, no labels needed). The fake quantization itself is
:mod:`trtq.qat.numerics`, bit for bit ONNX Runtime's QuantizeLinear -> DequantizeLinear.

The export writes the fine-tuned float model through trtq's usual path (ultralytics ONNX export, then
:func:`trtq.quantize.write_qdq` with the ranges used in training), so ``trtq build``, ``eval``, ``compare``
and ``inspect`` take the result as they take any ``trtq quantize`` output (:mod:`trtq.qat.pipeline`,
:mod:`trtq.qat.outputs`).
"""

from __future__ import annotations

from trtq.qat.dataset import stage_dataset
from trtq.qat.distill import distill_loss
from trtq.qat.model import load_detection_model, save_checkpoint
from trtq.qat.numerics import (
    ACT_QMAX,
    ACT_QMIN,
    WEIGHT_QMAX,
    activation_scale,
    fake_quantize,
    module_classes,
    weight_scale,
)
from trtq.qat.outputs import QatResult, output_paths
from trtq.qat.pipeline import DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_LR, qat
from trtq.qat.placement import (
    QatPlacement,
    insert_fake_quant,
    map_placement,
    module_path,
    set_fake_quant,
    strip_fake_quant,
)

__all__ = [
    "ACT_QMAX", "ACT_QMIN", "DEFAULT_BATCH", "DEFAULT_EPOCHS", "DEFAULT_LR", "WEIGHT_QMAX", "QatPlacement", "QatResult",
    "activation_scale", "distill_loss", "fake_quantize", "insert_fake_quant", "load_detection_model", "map_placement",
    "module_classes", "module_path", "output_paths", "qat", "save_checkpoint", "set_fake_quant", "stage_dataset",
    "strip_fake_quant", "weight_scale",
]
