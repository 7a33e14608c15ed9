"""Quantization-aware fine-tuning (QAT) of an ultralytics YOLOv8 detector, exported as a Q/DQ ONNX.

The fake quantization goes exactly where ``trtq quantize`` puts Q/DQ: the placement is read from
:func:`trtq.qdq.plan_qdq` on the model's own ONNX export (same head policy, per-channel weights, per-tensor
activations, Concat groups sharing one scale, residual-Add shortcuts), and every ONNX node that reads a
quantized tensor is mapped back to the PyTorch module that produced it (``/model.2/m.0/cv1/conv/Conv`` ->
``model.2.m.0.cv1.conv``). The activation ranges come from trtq's own calibration (the default algorithm)
and stay fixed; the weights are fine-tuned, either with ultralytics' trainer and data loaders (label loss)
or by distillation against the FP32 model's outputs (no labels needed).

BatchNorm is folded into the convolutions before fine-tuning, so the weights seen (and quantized per
output channel) during training are exactly the weights of the exported ONNX, and training cannot disturb
BatchNorm statistics.

Fake quantization is :func:`fake_quantize`: ``clamp(round_half_even(x / scale), qmin, qmax) * scale`` with a
true division and a straight-through gradient inside the range. That is bit for bit what ONNX Runtime's
QuantizeLinear -> DequantizeLinear computes for INT8 (saturating to [-128, 127] on activations); torch's own
``fake_quantize_per_tensor_affine`` multiplies by ``1 / scale`` instead and rounds ties differently.

The export writes the fine-tuned float model through trtq's usual path (ultralytics ONNX export, then
:func:`trtq.quantize.write_qdq` with the ranges used in training), so ``trtq build``, ``eval``, ``compare``
and ``inspect`` take the result as they take any ``trtq quantize`` output.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtq.errors import TrtqError

if TYPE_CHECKING:  # torch is an optional dependency (the export extra)
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

ACT_QMIN, ACT_QMAX = -128, 127  # INT8 QuantizeLinear saturation (ONNX Runtime and TensorRT explicit Q/DQ)
WEIGHT_QMAX = 127  # symmetric weights: amax_c = max|w_c| maps to 127, never below -127
DEFAULT_EPOCHS = 3
DEFAULT_BATCH = 8
DEFAULT_LR = 1e-5


# ----------------------------------------------------------------------------------------------- numerics
def _torch() -> Any:
    try:
        import torch
    except ImportError:
        from trtq.errors import MissingDependencyError

        raise MissingDependencyError("trtq qat needs torch and ultralytics: pip install 'trtq[export]'", exit_code=2) from None
    return torch


def _make_function() -> Any:
    torch = _torch()

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


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel scale ``max|w_c| / 127`` as :func:`trtq.qdq.quantize_weight` computes it (float32)."""
    torch = _torch()
    amax = w.detach().abs().amax(dim=tuple(range(1, w.ndim)))
    amax = torch.where(amax > 0, amax, torch.ones_like(amax))
    return (amax / torch.tensor(float(WEIGHT_QMAX), dtype=amax.dtype)).reshape(-1, *([1] * (w.ndim - 1)))


def activation_scale(amax: float) -> np.float32:
    """The float32 scale the Q/DQ ONNX stores for ``amax`` (as :func:`trtq.qdq.insert_qdq` writes it)."""
    from trtq.qdq import QMAX

    return np.float32(np.array(amax / QMAX, dtype=np.float32))


# ----------------------------------------------------------------------------------------------- modules
def _module_classes() -> tuple[type, type, type]:
    torch = _torch()
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

    return ActQuantizer, QuantConv2d, QuantResidual


_CLASSES: tuple[type, type, type] | None = None


def module_classes() -> tuple[type, type, type]:
    """(ActQuantizer, QuantConv2d, QuantResidual), defined on first use so that torch stays optional."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _module_classes()
    return _CLASSES


# ----------------------------------------------------------------------------------------------- placement
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

    Every reader of a quantized tensor must be a Conv (its input is fake-quantized) or a residual Add of a
    bottleneck (its shortcut is); every quantized weight must belong to a Conv whose PyTorch weight has the
    same shape. Anything else is an error, never a silently different placement.
    """
    from onnx import numpy_helper

    from trtq.headpolicy import node_key

    torch = _torch()
    nodes = {node_key(n): n for n in onnx_model.graph.node}
    inits = {i.name: i for i in onnx_model.graph.initializer}
    weight_nodes = {node: w for w, (node, _) in plan.weights.items()}
    placement = QatPlacement(amax={t: float(amax[t]) for t in plan.activations})
    conv_inputs: dict[str, str] = {}
    for tensor, readers in plan.activations.items():
        for reader in readers:
            node = nodes[reader]
            path = module_path(model, reader)
            module = model.get_submodule(path)
            if node.op_type == "Conv" and isinstance(module, torch.nn.Conv2d):
                conv_inputs[reader] = tensor
            elif node.op_type == "Add" and hasattr(module, "cv1") and hasattr(module, "cv2") and getattr(module, "add", False):
                placement.residuals[path] = (reader, tensor)
            else:
                raise TrtqError(
                    f"quantized tensor {tensor!r} is read by {node.op_type} node {reader!r} ({type(module).__name__}); "
                    "QAT supports Conv inputs and residual bottleneck Adds (YOLOv8 detection models)"
                )
    for node_name in dict.fromkeys([*conv_inputs, *weight_nodes]):
        node = nodes[node_name]
        path = module_path(model, node_name)
        module: Any = model.get_submodule(path)
        if node.op_type != "Conv" or not isinstance(module, torch.nn.Conv2d):
            raise TrtqError(f"quantized weighted op {node_name!r} is a {node.op_type} ({type(module).__name__}); QAT supports Conv2d")
        w = weight_nodes.get(node_name)
        if w is not None:
            shape = tuple(numpy_helper.to_array(inits[w]).shape)
            if shape != tuple(module.weight.shape):
                raise TrtqError(
                    f"weight of {node_name!r} has shape {shape} in the ONNX but {tuple(module.weight.shape)} in the "
                    "PyTorch model; they are not the same model"
                )
        placement.convs[path] = (node_name, conv_inputs.get(node_name), w is not None)
    # a residual shortcut is the bottleneck's input: the same tensor its first conv reads
    for path, (add, tensor) in placement.residuals.items():
        first = placement.convs.get(f"{path}.cv1.conv")
        if first is None or first[1] != tensor:
            raise TrtqError(f"residual Add {add!r} quantizes {tensor!r}, which is not its bottleneck's input; unsupported structure")
    return placement


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def insert_fake_quant(model: nn.Module, placement: QatPlacement) -> dict[str, nn.Module]:
    """Wrap ``model``'s convs and bottlenecks in place; returns ONNX tensor -> its (shared) quantizer."""
    act_cls, conv_cls, res_cls = module_classes()
    quantizers: dict[str, nn.Module] = {t: act_cls(t, a) for t, a in placement.amax.items()}
    targets = {p: model.get_submodule(p) for p in [*placement.convs, *placement.residuals]}
    for path, (node, tensor, qw) in placement.convs.items():
        conv = targets[path]
        _set_submodule(model, path, conv_cls(conv, quantizers[tensor] if tensor else None, qw, node))
    for path, (node, tensor) in placement.residuals.items():
        _set_submodule(model, path, res_cls(targets[path], quantizers[tensor], node))
    return quantizers


def strip_fake_quant(model: nn.Module) -> nn.Module:
    """Undo :func:`insert_fake_quant` in place (the plain modules come back, with the fine-tuned weights)."""
    _, conv_cls, res_cls = module_classes()
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, (conv_cls, res_cls))]
    # deepest first, so that a bottleneck's convs are unwrapped before the bottleneck itself
    for name, m in sorted(wrapped, key=lambda item: -item[0].count(".")):
        inner: Any = m
        _set_submodule(model, name, inner.conv if isinstance(m, conv_cls) else inner.block)
    return model


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    act_cls, conv_cls, res_cls = module_classes()
    for m in model.modules():
        if isinstance(m, (act_cls, conv_cls, res_cls)):
            setattr(m, "enabled", enabled)  # noqa: B010 - a plain attribute, not a parameter


# ----------------------------------------------------------------------------------------------- result
@dataclass
class QatResult:
    """What :func:`qat` wrote and measured."""

    path: Path
    float_path: Path
    cache_path: Path
    report_path: Path
    markdown_path: Path
    report: dict[str, Any]

    def summary(self) -> str:
        q = self.report["qat"]
        c = self.report["counts"]
        return "\n".join(
            [
                f"wrote {self.path} ({c['quantized_activations']} activations, {c['quantized_weights']} weights quantized; "
                f"{c['float_weighted_ops']} weighted ops kept float)",
                f"fine-tuned {q['mode']} for {q['epochs']} epoch(s), {q['iterations']} iterations in {q['finetune_seconds']:.0f} s "
                f"(loss {q['first_loss']:.4g} -> {q['last_loss']:.4g}); total {q['total_seconds']:.0f} s, peak RSS {q['peak_rss_mb']:.0f} MB",
                f"implicit INT8: {self.float_path} with cache {self.cache_path} (+ .json)",
                f"report {self.report_path} and {self.markdown_path}",
            ]
        )


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children (MB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def output_paths(output: Path) -> dict[str, Path]:
    """Every file :func:`qat` writes for the Q/DQ ONNX ``output``."""
    from calibrators.table import table_sidecar_path
    from trtq.quantize import report_paths

    stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
    float_path = output.with_name(f"{stem}.float.onnx")
    cache = output.with_name(f"{stem}.cache")
    report_json, report_md = report_paths(output)
    return {
        "onnx": output,
        "float": float_path,
        "cache": cache,
        "sidecar": table_sidecar_path(cache),
        "report_json": report_json,
        "report_md": report_md,
    }


@contextlib.contextmanager
def _staging(output: Path) -> Iterator[Path]:
    """A private folder next to ``output``, removed whatever happens."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".trtq-tmp", dir=output.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- model loading
def load_detection_model(pt: Path) -> tuple[Any, nn.Module]:
    """(the YOLO wrapper, its DetectionModel in float32 with BatchNorm folded into the convs)."""
    from trtq.export import _load_yolo

    yolo = _load_yolo(pt)
    model: Any = yolo.model
    if not isinstance(model, _torch().nn.Module):
        raise TrtqError(f"{pt} holds no PyTorch model; qat needs an ultralytics .pt checkpoint")
    model = model.float().cpu()
    model.eval()
    with _quiet():
        model.fuse(verbose=False)
    for p in model.parameters():
        p.requires_grad_(True)
    return yolo, model


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    from trtq.export import _quiet_ultralytics

    with _quiet_ultralytics():
        yield


def save_checkpoint(model: nn.Module, path: Path, train_args: Mapping[str, Any] | None = None) -> Path:
    """A plain ultralytics checkpoint of ``model`` (float32, no optimizer) that ``YOLO(path)`` loads."""
    import copy

    torch = _torch()
    plain = copy.deepcopy(model).float().cpu().eval()
    for p in plain.parameters():
        p.requires_grad_(False)
    torch.save({"model": plain, "train_args": dict(train_args or {}), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}, str(path))
    return path


# ----------------------------------------------------------------------------------------------- fine-tuning
def _label_finetune(
    model: nn.Module,
    *,
    pt: Path,
    data: str,
    epochs: int,
    batch: int,
    lr: float,
    imgsz: int,
    workdir: Path,
    num_images: int | None,
    workers: int,
    seed: int,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune with ultralytics' DetectionTrainer (its data loaders and label loss); returns the EMA model."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    staged = stage_dataset(Path(data), workdir / "data", num_images=num_images, seed=seed)
    losses: list[float] = []
    first: dict[str, float] = {}  # box, cls, dfl of the first iteration

    class _Trainer(DetectionTrainer):
        def validate(self) -> tuple[dict[str, Any], float]:  # evaluation is done on the exported ONNX
            return {}, 0.0

        def save_model(self) -> Any:  # nothing to keep: the result is exported from memory
            return False

        def final_eval(self) -> None:
            return None

    overrides = {
        "model": str(pt),
        "data": str(staged),
        "epochs": epochs,
        "batch": batch,
        "imgsz": imgsz,
        "optimizer": "AdamW",
        "lr0": lr,
        "lrf": 0.01,
        "cos_lr": True,
        "warmup_epochs": 0,
        "mosaic": 0.0,
        "close_mosaic": 0,
        "amp": False,
        "device": "cpu",
        "workers": workers,
        "project": str(workdir),
        "name": "train",
        "exist_ok": True,
        "plots": False,
        "val": False,
        "save": False,
        "verbose": False,
        "seed": seed,
        "deterministic": False,
        "cache": False,
    }
    trainer = _Trainer(overrides=overrides)
    trainer.model = model

    def on_batch_end(tr: Any) -> None:
        if tr.loss_items is None:
            return
        items = tr.loss_items
        if isinstance(items, Mapping):
            named = {str(k).removesuffix("_loss"): float(v) for k, v in items.items()}
        else:
            named = {k: float(v) for k, v in zip(("box", "cls", "dfl"), items, strict=False)}
        losses.append(sum(named.values()))
        if not first:
            first.update(named)
            logger.info("first iteration losses: %s", ", ".join(f"{k} {v:.3f}" for k, v in first.items()))

    trainer.add_callback("on_train_batch_end", on_batch_end)
    trainer.train()
    ema = trainer.ema.ema if trainer.ema is not None else trainer.model
    return ema, {"losses": losses, "first_losses": first, "iterations": len(losses), "train_images": len(trainer.train_loader.dataset)}


def _head_outputs(preds: Any) -> dict[str, Any]:
    if isinstance(preds, dict) and "one2many" in preds:
        preds = preds["one2many"]
    if not isinstance(preds, dict) or "boxes" not in preds:
        raise TrtqError("distillation needs a YOLOv8 Detect head (raw box and class outputs in training mode)")
    return preds


def _detect_head(model: Any) -> Any:
    return model.model[-1]


def distill_loss(student: Mapping[str, Any], teacher: Mapping[str, Any], reg_max: int) -> torch.Tensor:
    """Output distillation against the FP32 model on the Detect head's raw outputs.

    Class logits: binary cross-entropy against the teacher's probabilities. Box distributions: KL divergence
    of each side's ``reg_max``-bin distribution, weighted per anchor by the teacher's best class probability
    (background anchors carry no box). Neck features: mean squared error relative to the teacher's energy.
    """
    torch = _torch()
    F = torch.nn.functional
    s_cls, t_cls = student["scores"], teacher["scores"].detach()
    t_prob = t_cls.sigmoid()
    cls = F.binary_cross_entropy_with_logits(s_cls, t_prob) - F.binary_cross_entropy_with_logits(t_cls, t_prob)
    b, _, a = student["boxes"].shape
    s_box = student["boxes"].view(b, 4, reg_max, a).log_softmax(2)
    t_box = teacher["boxes"].detach().view(b, 4, reg_max, a).softmax(2)
    kl = (t_box * (t_box.clamp_min(1e-12).log() - s_box)).sum(2).mean(1)  # [b, a]
    weight = t_prob.amax(1)  # [b, a]
    box = (kl * weight).sum() / weight.sum().clamp_min(1e-6)
    feat = sum(
        F.mse_loss(s, t.detach()) / t.detach().pow(2).mean().clamp_min(1e-6)
        for s, t in zip(student["feats"], teacher["feats"], strict=True)
    )
    return cls * 10.0 + box + feat


def _distill_finetune(
    model: nn.Module,
    teacher: nn.Module,
    *,
    source: Any,
    epochs: int,
    batch: int,
    lr: float,
    imgsz: int,
    num_images: int | None,
    seed: int,
    progress: bool,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune against the FP32 teacher on unlabelled images (letterboxed like calibration, random flips)."""
    from trtq.images import ImageBatcher

    torch = _torch()
    torch.manual_seed(seed)
    batcher = ImageBatcher(source, imgsz=imgsz, batch=batch, num_images=num_images, seed=seed)
    steps_per_epoch = len(batcher)
    total = max(epochs * steps_per_epoch, 1)
    params = [p for n, p in model.named_parameters() if p.requires_grad and ".dfl." not in n]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(i, total) / total))
    )
    reg_max = int(getattr(_detect_head(model), "reg_max", 16))
    for name, p in model.named_parameters():
        if ".dfl." in name:
            p.requires_grad_(False)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.train()  # raw head outputs (no BatchNorm left to update: it is folded)
    model.train()
    losses: list[float] = []
    gen = np.random.default_rng(seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="it", desc="qat distill", leave=False, dynamic_ncols=True, disable=None)
    try:
        for _epoch in range(epochs):
            for item in batcher:
                x = torch.from_numpy(next(iter(item.values())))
                flip = torch.from_numpy(gen.random(x.shape[0]) < 0.5)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                with torch.no_grad():
                    t_out = _head_outputs(teacher(x))
                s_out = _head_outputs(model(x))
                loss = distill_loss(s_out, t_out, reg_max)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if len(losses) == 1:
                    logger.info("first iteration distillation loss %.4f", losses[0])
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return model, {"losses": losses, "iterations": len(losses), "train_images": batcher.num_used}


# ----------------------------------------------------------------------------------------------- main entry
def _check_options(epochs: int, batch: int, lr: float, imgsz: int, num_images: int | None) -> None:
    if epochs < 1:
        raise TrtqError(f"--epochs must be at least 1, got {epochs}")
    if batch < 1:
        raise TrtqError(f"--batch must be at least 1, got {batch}")
    if not (math.isfinite(lr) and lr > 0):
        raise TrtqError(f"--lr must be a positive number, got {lr}")
    if imgsz < 32 or imgsz % 32:
        raise TrtqError(f"--imgsz must be a multiple of 32 (at least 32), got {imgsz}")
    if num_images is not None and num_images < 1:
        raise TrtqError(f"--num-images must be at least 1, got {num_images}")


def qat(
    model: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    calib: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    epochs: int = DEFAULT_EPOCHS,
    batch: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    imgsz: int = 640,
    quantize_head: bool = False,
    distill: bool = False,
    output: str | os.PathLike[str] | None = None,
    num_images: int | None = None,
    calib_images: int | None = None,
    workers: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> QatResult:
    """Quantization-aware fine-tuning of an ultralytics ``.pt``; writes a Q/DQ ONNX (+ float ONNX, cache, report).

    ``data`` (an ultralytics data yaml) gives labelled training images for the label loss; with ``distill``
    the FP32 model's outputs are the targets and only images are needed (``calib``, else ``data``'s train
    split). ``calib`` (default: ``data``'s train split) calibrates the initial activation ranges with the
    default algorithm. ``num_images`` limits the fine-tuning images, ``calib_images`` the calibration images.
    """
    t_start = time.perf_counter()
    pt = Path(model)
    if pt.suffix.lower() != ".pt":
        raise TrtqError(f"{pt}: qat fine-tunes an ultralytics .pt checkpoint (the ONNX has no trainable weights)")
    if not pt.is_file():
        raise TrtqError(f"model not found: {pt}")
    _check_options(epochs, batch, lr, imgsz, num_images)
    if data is None and not distill:
        raise TrtqError("label fine-tuning needs --data DATA.yaml (an ultralytics data yaml); or pass --distill --calib DIR")
    if data is not None and not Path(data).is_file():
        raise TrtqError(f"data yaml not found: {data}")
    calib_source: Any = calib if calib is not None else data
    if calib_source is None:
        raise TrtqError("qat needs images to calibrate on: pass --calib DIR (or --data DATA.yaml)")
    from trtq.fileio import default_output

    out = Path(output) if output is not None else default_output(pt, ".qat.int8.qdq.onnx")
    if not out.name.endswith(".onnx"):
        raise TrtqError(f"output {out} must end in .onnx")
    if not os.access(out.parent if out.parent.exists() else Path.cwd(), os.W_OK):
        raise TrtqError(f"cannot write to {out.parent}; pass -o PATH in a writable folder")

    import onnx

    from calibrators.ranges import DEFAULT_ALGO, DEFAULT_PERCENTILE
    from trtq.amax import activation_amax, calibration_record, collect_statistics
    from trtq.export import export_onnx
    from trtq.headpolicy import head_keep_float
    from trtq.qdq import insert_qdq, plan_qdq
    from trtq.quantize import report_markdown, write_qdq

    paths = output_paths(out)
    with _staging(out) as tmp:
        # 1. the model's own ONNX export and trtq's placement on it
        logger.info("exporting %s to ONNX for the placement and the calibration", pt.name)
        base_onnx = export_onnx(pt, imgsz=imgsz, output=tmp / "base.onnx")
        fmodel = onnx.load(str(base_onnx))
        keep = head_keep_float(fmodel, quantize_head=quantize_head)
        plan = plan_qdq(fmodel, keep_float=keep)
        graph_inputs = [i.name for i in fmodel.graph.input]

        # 2. initial ranges: trtq's calibration, default algorithm
        hists, batcher = collect_statistics(
            base_onnx, calib_source, plan.activation_tensors, num_images=calib_images, seed=seed, progress=progress
        )
        calibrated, chosen = activation_amax(hists, plan.activation_tensors, DEFAULT_ALGO, graph_inputs=graph_inputs)
        _, used = insert_qdq(fmodel, plan, calibrated)  # the exact ranges the Q/DQ ONNX will carry
        calibration = calibration_record(calib_source, batcher, seed)
        del hists

        # 3. the PyTorch model with fake quantization at the same tensors
        _, net = load_detection_model(pt)
        teacher = None
        if distill:
            import copy

            teacher = copy.deepcopy(net)
        placement = map_placement(net, fmodel, plan, used)
        insert_fake_quant(net, placement)
        logger.info(
            "fake quantization: %d activation tensors, %d convs (%d weights), %d residual Adds",
            len(placement.amax),
            len(placement.convs),
            sum(1 for _, _, w in placement.convs.values() if w),
            len(placement.residuals),
        )

        # 4. fine-tune
        t_ft = time.perf_counter()
        if distill:
            assert teacher is not None
            tuned, stats = _distill_finetune(
                net, teacher, source=calib_source if calib is not None else data, epochs=epochs, batch=batch, lr=lr,
                imgsz=imgsz, num_images=num_images, seed=seed, progress=progress,
            )
            del teacher
        else:
            assert data is not None
            pt_copy = tmp / pt.name
            shutil.copy2(pt, pt_copy)
            tuned, stats = _label_finetune(
                net, pt=pt_copy, data=str(data), epochs=epochs, batch=batch, lr=lr, imgsz=imgsz, workdir=tmp / "runs",
                num_images=num_images, workers=workers, seed=seed,
            )
        finetune_seconds = time.perf_counter() - t_ft
        if not stats["losses"] or not all(math.isfinite(v) for v in stats["losses"]):
            raise TrtqError("fine-tuning diverged (non-finite loss); lower --lr")

        # 5. export: the fine-tuned float model through the usual path, then Q/DQ with the trained ranges
        strip_fake_quant(tuned)
        tuned_pt = save_checkpoint(tuned, tmp / "finetuned.pt")
        float_onnx = export_onnx(tuned_pt, imgsz=imgsz, output=tmp / "float.onnx")
        tuned_model = onnx.load(str(float_onnx))
        missing = [t for t in used if t not in {v for n in tuned_model.graph.node for v in n.output} | set(graph_inputs)]
        if missing:
            raise RuntimeError(f"the fine-tuned export lost quantized tensor {missing[0]!r}")
        result = write_qdq(
            float_onnx,
            used,
            output=tmp / "qdq.onnx",
            algo=DEFAULT_ALGO,
            chosen=chosen,
            percentile=DEFAULT_PERCENTILE,
            quantize_head=quantize_head,
            calibration=calibration,
            write_report=False,
        )

        # 6. implicit mode: calibration cache of the fine-tuned float ONNX, the trained ranges where Q/DQ is
        table = _implicit_table(float_onnx, calib_source, used, calib_images=calib_images, seed=seed, progress=progress)

        losses = stats["losses"]
        report = dict(result.report)
        report["kind"] = "trtq-qdq-report"
        report["model"] = str(pt)
        report["output"] = str(out)
        report["qat"] = {
            "mode": "distill" if distill else "labels",
            "quantize_head": quantize_head,
            "epochs": epochs,
            "batch": batch,
            "lr": lr,
            "optimizer": "AdamW, cosine to lr/100, no warmup" + ("" if distill else ", mosaic off (ultralytics trainer)"),
            "imgsz": imgsz,
            "train_data": str(calib_source if distill else data),
            "train_images": stats.get("train_images"),
            "iterations": stats["iterations"],
            "first_losses": stats.get("first_losses") or {"loss": losses[0]},
            "first_loss": losses[0],
            "last_loss": float(np.mean(losses[-max(1, min(10, len(losses))):])),
            "finetune_seconds": round(finetune_seconds, 1),
            "total_seconds": round(time.perf_counter() - t_start, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "batchnorm": "folded into the convs before fine-tuning",
            "activation_ranges": f"calibrated ({DEFAULT_ALGO}), fixed during fine-tuning",
            "weights": "per output channel, amax = max|w_c| of the fine-tuned weights",
            "float_model": str(paths["float"]),
            "cache": str(paths["cache"]),
        }
        from trtq.fileio import write_json, write_text

        stage = {
            "float": tmp / "float.onnx",
            "cache": tmp / "implicit.cache",
            "report_json": tmp / "report.json",
            "report_md": tmp / "report.md",
        }
        table.save(stage["cache"])
        from calibrators.table import table_sidecar_path

        write_json(stage["report_json"], report)
        write_text(stage["report_md"], report_markdown(report) + _qat_markdown(report["qat"]))
        # 7. into place; the Q/DQ ONNX last, so its presence means the set is complete
        moves = [
            (stage["float"], paths["float"]),
            (stage["cache"], paths["cache"]),
            (table_sidecar_path(stage["cache"]), paths["sidecar"]),
            (stage["report_json"], paths["report_json"]),
            (stage["report_md"], paths["report_md"]),
            (tmp / "qdq.onnx", paths["onnx"]),
        ]
        for src, dst in moves:
            os.replace(src, dst)
    logger.info("qat done in %.1f s", time.perf_counter() - t_start)
    return QatResult(out, paths["float"], paths["cache"], paths["report_json"], paths["report_md"], report)


def stage_dataset(data: Path, folder: Path, *, num_images: int | None = None, seed: int = 0) -> Path:
    """A private copy (file links) of ``data``'s train split, and a data yaml that names it for train and val.

    ultralytics writes label caches next to the labels it reads; staging keeps it from writing beside the
    user's (possibly shared or read-only) dataset, and the validation split is never touched here.
    """
    import yaml

    from trtq.evaluate import label_path
    from trtq.images import resolve_image_paths

    try:
        cfg = yaml.safe_load(data.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TrtqError(f"cannot read data yaml {data}: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, dict) or "names" not in cfg:
        raise TrtqError(f"{data} has no 'names' entry; pass an ultralytics data yaml")
    images = resolve_image_paths(data)
    if num_images is not None:
        order = np.random.default_rng(seed).permutation(len(images))[:num_images]
        images = [images[int(i)] for i in sorted(order)]
    img_dir, lbl_dir = folder / "images" / "train", folder / "labels" / "train"
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    labelled = 0
    for k, img in enumerate(images):
        name = f"{k:06d}_{img.stem}"
        os.symlink(img.resolve(), img_dir / f"{name}{img.suffix}")
        label = label_path(img.resolve())
        if label.is_file():
            os.symlink(label, lbl_dir / f"{name}.txt")
            labelled += 1
    if labelled == 0:
        raise TrtqError(
            f"no labels found for the {len(images)} training images of {data} (expected YOLO .txt files under a "
            "'labels' folder beside 'images'); label fine-tuning needs them, or use --distill"
        )
    staged = folder / "data.yaml"
    staged.write_text(
        yaml.safe_dump({"path": str(folder.resolve()), "train": "images/train", "val": "images/train", "names": cfg["names"]}),
        encoding="utf-8",
    )
    return staged


def _implicit_table(
    float_onnx: Path,
    source: Any,
    used: Mapping[str, float],
    *,
    calib_images: int | None,
    seed: int,
    progress: bool,
) -> Any:
    """Calibration table of the fine-tuned float ONNX; the trained (Q/DQ) tensors keep their QAT ranges."""
    from calibrators.calibrate import calibrate
    from calibrators.table import CalibrationTable

    res = calibrate(float_onnx, source, num_images=calib_images, seed=seed, write=False, progress=progress)
    t = res.table
    amax = dict(t.amax)
    for name, a in used.items():
        amax[name] = float(a)
    stats = dict(t.statistics)
    stats["qat_tensors"] = sorted(used)
    return CalibrationTable(
        amax=amax,
        algorithm=t.algorithm,
        percentile=t.percentile,
        model_sha256=t.model_sha256,
        num_images=t.num_images,
        images_sha256=t.images_sha256,
        preprocessing=t.preprocessing,
        tensorrt_version=t.tensorrt_version,
        statistics=stats,
    )


def _qat_markdown(q: Mapping[str, Any]) -> str:
    lines = [
        "",
        "## Quantization-aware fine-tuning",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key in ("mode", "quantize_head", "epochs", "batch", "lr", "optimizer", "imgsz", "train_data", "train_images",
                "iterations", "first_losses", "first_loss", "last_loss", "finetune_seconds", "total_seconds", "peak_rss_mb",
                "batchnorm", "activation_ranges", "weights", "float_model", "cache"):
        v = q.get(key)
        if isinstance(v, dict):
            v = ", ".join(f"{k} {float(x):.4g}" for k, x in v.items())
        elif isinstance(v, float):
            v = f"{v:.4g}"
        lines.append(f"| {key} | {v} |")
    return "\n".join(lines) + "\n"
