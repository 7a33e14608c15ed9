"""Placement: where ``trtq quantize`` puts Q/DQ, translated into the PyTorch model's modules.

The plan is :func:`trtq.qdq.plan_qdq` on the model's own ONNX export; every ONNX node that reads a quantized
tensor is mapped back to the PyTorch module that produced it (``/model.2/m.0/cv1/conv/Conv`` ->
``model.2.m.0.cv1.conv``): conv inputs per tensor, conv weights per output channel, residual-Add shortcuts,
one quantizer per ONNX tensor (shared by its readers, so a Concat group keeps one range). A structure it
cannot map is an error, never a different placement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trtq.errors import TrtqError
from trtq.qat.numerics import module_classes, require_torch

if TYPE_CHECKING:  # torch is an optional dependency (the export extra)
    from torch import nn


def module_path(model: nn.Module, node_name: str) -> str:
    """The dotted PyTorch module path of an ONNX node name from ultralytics' export.

    ``/model.2/m.0/cv1/conv/Conv`` -> ``model.2.m.0.cv1.conv``; nested sequentials repeat their parent's
    prefix in the scope (``/model.22/cv2.0/cv2.0.2/Conv`` -> ``model.22.cv2.0.2``).
    """
    parts = [p for p in node_name.split("/") if p][:-1]
    if not parts:
        raise TrtqError(f"ONNX node {node_name!r} has no module scope; re-export the model with ultralytics")
    path: list[str] = []
    current = model
    previous = ""
    for part in parts:
        rel = part
        if previous and part.startswith(previous + "."):
            rel = part[len(previous) + 1 :]
        try:
            current = current.get_submodule(rel)
        except AttributeError:
            try:
                current = current.get_submodule(part)
                rel = part
            except AttributeError:
                raise TrtqError(
                    f"cannot map ONNX node {node_name!r} to a module of the PyTorch model (no {'.'.join([*path, rel])!r}); "
                    "the .pt and its ONNX export differ in structure"
                ) from None
        path.append(rel)
        previous = part
    return ".".join(path)


@dataclass
class QatPlacement:
    """Where fake quantization sits in the PyTorch model, keyed like the ONNX plan."""

    # ONNX activation tensor -> amax used (after Concat unification)
    amax: dict[str, float]
    # conv module path -> (ONNX node, input tensor or None, weight quantized)
    convs: dict[str, tuple[str, str | None, bool]] = field(default_factory=dict)
    # bottleneck module path -> (ONNX Add node, shortcut tensor)
    residuals: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def quantized_tensors(self) -> set[str]:
        used = {t for _, t, _ in self.convs.values() if t is not None} | {t for _, t in self.residuals.values()}
        return used


def map_placement(model: nn.Module, onnx_model: Any, plan: Any, amax: Mapping[str, float]) -> QatPlacement:
    """Translate a :class:`trtq.qdq.QdqPlan` of ``model``'s ONNX export into PyTorch module paths.

    Every reader of a quantized tensor must be a Conv or ConvTranspose (its input is fake-quantized) or a
    residual Add of a bottleneck (its shortcut is); every quantized weight must belong to one of those convs,
    with the same shape and output-channel axis in PyTorch. Anything else is an error, never a silently
    different placement.
    """
    from onnx import numpy_helper

    from trtq.headpolicy import node_key

    torch = require_torch()
    nodes = {node_key(n): n for n in onnx_model.graph.node}
    inits = {i.name: i for i in onnx_model.graph.initializer}
    # every reader of a quantized weight reads it through Q/DQ (a shared weight has several readers)
    weight_nodes = {r: w for w, (node, _) in plan.weights.items() for r in plan.weight_readers.get(w) or [node]}
    axes = {w: axis for w, (_, axis) in plan.weights.items()}
    placement = QatPlacement(amax={t: float(amax[t]) for t in plan.activations})
    conv_inputs: dict[str, str] = {}
    for tensor, readers in plan.activations.items():
        for reader in readers:
            node = nodes[reader]
            path = module_path(model, reader)
            module = model.get_submodule(path)
            if _is_mapped_conv(node.op_type, module, torch):
                conv_inputs[reader] = tensor
            elif node.op_type == "Add" and hasattr(module, "cv1") and hasattr(module, "cv2") and getattr(module, "add", False):
                placement.residuals[path] = (reader, tensor)
            else:
                raise TrtqError(
                    f"quantized tensor {tensor!r} is read by {node.op_type} node {reader!r} ({type(module).__name__}); "
                    "QAT supports Conv inputs and residual bottleneck Adds (YOLOv8 detect, segment, pose and OBB models)"
                )
    for node_name in dict.fromkeys([*conv_inputs, *weight_nodes]):
        node = nodes[node_name]
        path = module_path(model, node_name)
        module: Any = model.get_submodule(path)
        if not _is_mapped_conv(node.op_type, module, torch):
            raise TrtqError(
                f"quantized weighted op {node_name!r} is a {node.op_type} ({type(module).__name__}); "
                "QAT supports Conv2d and ConvTranspose2d (one group)"
            )
        w = weight_nodes.get(node_name)
        if w is not None:
            shape = tuple(numpy_helper.to_array(inits[w]).shape)
            if shape != tuple(module.weight.shape):
                raise TrtqError(
                    f"weight of {node_name!r} has shape {shape} in the ONNX but {tuple(module.weight.shape)} in the "
                    "PyTorch model; they are not the same model"
                )
            if axes[w] != (1 if node.op_type == "ConvTranspose" else 0):
                raise TrtqError(f"weight of {node_name!r} is quantized along axis {axes[w]}; QAT quantizes output channels")
        placement.convs[path] = (node_name, conv_inputs.get(node_name), w is not None)
    # a residual shortcut is the bottleneck's input: the same tensor its first conv reads
    for path, (add, tensor) in placement.residuals.items():
        first = placement.convs.get(f"{path}.cv1.conv")
        if first is None or first[1] != tensor:
            raise TrtqError(f"residual Add {add!r} quantizes {tensor!r}, which is not its bottleneck's input; unsupported structure")
    return placement


def _is_mapped_conv(op_type: str, module: Any, torch: Any) -> bool:
    if op_type == "Conv":
        return isinstance(module, torch.nn.Conv2d)
    return op_type == "ConvTranspose" and isinstance(module, torch.nn.ConvTranspose2d) and module.groups == 1


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def insert_fake_quant(model: nn.Module, placement: QatPlacement) -> dict[str, nn.Module]:
    """Wrap ``model``'s convs and bottlenecks in place; returns ONNX tensor -> its (shared) quantizer."""
    act_cls, conv_cls, res_cls, convt_cls = module_classes()
    torch = require_torch()
    quantizers: dict[str, nn.Module] = {t: act_cls(t, a) for t, a in placement.amax.items()}
    targets = {p: model.get_submodule(p) for p in [*placement.convs, *placement.residuals]}
    for path, (node, tensor, qw) in placement.convs.items():
        conv = targets[path]
        cls = convt_cls if isinstance(conv, torch.nn.ConvTranspose2d) else conv_cls
        _set_submodule(model, path, cls(conv, quantizers[tensor] if tensor else None, qw, node))
    for path, (node, tensor) in placement.residuals.items():
        _set_submodule(model, path, res_cls(targets[path], quantizers[tensor], node))
    return quantizers


def strip_fake_quant(model: nn.Module) -> nn.Module:
    """Undo :func:`insert_fake_quant` in place (the plain modules come back, with the fine-tuned weights)."""
    _, conv_cls, res_cls, _ = module_classes()  # QuantConvTranspose2d is a QuantConv2d
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, (conv_cls, res_cls))]
    # deepest first, so that a bottleneck's convs are unwrapped before the bottleneck itself
    for name, m in sorted(wrapped, key=lambda item: -item[0].count(".")):
        inner: Any = m
        _set_submodule(model, name, inner.conv if isinstance(m, conv_cls) else inner.block)
    return model


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    act_cls, conv_cls, res_cls, _ = module_classes()
    for m in model.modules():
        if isinstance(m, (act_cls, conv_cls, res_cls)):
            setattr(m, "enabled", enabled)  # noqa: B010 - a plain attribute, not a parameter
