"""Distillation: the FP32 model's raw head outputs on unlabelled images are the fine-tuning targets."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from trtq.errors import TrtqError
from trtq.qat.numerics import require_torch

if TYPE_CHECKING:  # torch is an optional dependency (the export extra)
    import torch
    from torch import nn

logger = logging.getLogger(__name__)


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
    torch = require_torch()
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


def distill_finetune(
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

    torch = require_torch()
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
