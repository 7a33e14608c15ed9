"""Label fine-tuning with ultralytics' own trainer and data loaders (its label loss), on the fake-quant model."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtq.errors import TrtqError

if TYPE_CHECKING:  # torch is an optional dependency (the export extra)
    from torch import nn

logger = logging.getLogger(__name__)


def _trainer_class(task: str) -> type:
    """ultralytics' own trainer for ``task``: its dataset format, augmentation and loss."""
    if task == "pose":
        from ultralytics.models.yolo.pose import PoseTrainer

        return PoseTrainer
    if task == "obb":
        from ultralytics.models.yolo.obb import OBBTrainer

        return OBBTrainer
    if task == "segment":
        from ultralytics.models.yolo.segment import SegmentationTrainer

        return SegmentationTrainer
    if task == "detect":
        from ultralytics.models.yolo.detect import DetectionTrainer

        return DetectionTrainer
    raise TrtqError(f"label fine-tuning of {task} models is not supported")


def _overrides(pt: Path, staged: Path, workdir: Path, *, epochs: int, batch: int, lr: float, imgsz: int, workers: int, seed: int) -> dict[str, Any]:
    # save_dir, absolute, pins every file ultralytics writes (args.yaml, results.csv, weights/) inside the
    # private work folder; a relative project would land under ultralytics' global runs folder instead
    save_dir = Path(os.path.abspath(workdir)) / "train"
    return {
        "model": str(pt), "data": str(staged), "epochs": epochs, "batch": batch, "imgsz": imgsz,
        "optimizer": "AdamW", "lr0": lr, "lrf": 0.01, "cos_lr": True, "warmup_epochs": 0, "mosaic": 0.0, "close_mosaic": 0,
        "amp": False, "device": "cpu", "workers": workers,
        "project": str(save_dir.parent), "name": save_dir.name, "save_dir": str(save_dir), "exist_ok": True,
        "plots": False, "val": False, "save": False, "verbose": False, "seed": seed, "deterministic": False, "cache": False,
    }


def _count_instances(tr: Any, task: str, record: dict[str, int]) -> None:
    """After ultralytics built its training set: no labelled instance left (all dropped as corrupt) is an error."""
    labels = tr.train_loader.dataset.labels
    n = sum(len(lb["cls"]) for lb in labels)
    if n == 0:
        raise TrtqError(
            f"ultralytics found 0 labelled instances in the {len(labels)} training images it kept (images under 10 px "
            f"or labels not in the {task} format are dropped as corrupt); check the dataset"
        )
    record["train_instances"] = n


def label_finetune(
    model: nn.Module,
    *,
    pt: Path,
    staged: Path,
    task: str,
    epochs: int,
    batch: int,
    lr: float,
    imgsz: int,
    workdir: Path,
    workers: int,
    seed: int,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune with ultralytics' trainer for ``task`` on the staged dataset; returns the EMA model."""
    base = _trainer_class(task)
    losses: list[float] = []
    first: dict[str, float] = {}  # the first iteration's loss items (box, cls, dfl, and the task's own)
    record: dict[str, int] = {}

    class _Trainer(base):
        def validate(self) -> tuple[dict[str, Any], float]:  # evaluation is done on the exported ONNX
            return {}, 0.0

        def save_model(self) -> Any:  # nothing to keep: the result is exported from memory
            return False

        def final_eval(self) -> None:
            return None

    overrides = _overrides(pt, staged, workdir, epochs=epochs, batch=batch, lr=lr, imgsz=imgsz, workers=workers, seed=seed)
    trainer: Any = _Trainer(overrides=overrides)
    trainer.model = model

    def on_batch_end(tr: Any) -> None:
        if tr.loss_items is None:
            return
        items = tr.loss_items
        if isinstance(items, Mapping):
            named = {str(k).removesuffix("_loss"): float(v) for k, v in items.items()}
        else:
            keys = [str(k).removesuffix("_loss") for k in getattr(tr, "loss_names", ("box", "cls", "dfl"))]
            named = {k: float(v) for k, v in zip(keys, items, strict=False)}
        losses.append(sum(named.values()))
        if not first:
            first.update(named)
            logger.info("first iteration losses: %s", ", ".join(f"{k} {v:.3f}" for k, v in first.items()))

    trainer.add_callback("on_pretrain_routine_end", lambda tr: _count_instances(tr, task, record))
    trainer.add_callback("on_train_batch_end", on_batch_end)
    try:
        trainer.train()
    except (RuntimeError, ValueError) as exc:  # ultralytics' own refusals of a training set
        if "No valid images" not in str(exc) and "No labels found" not in str(exc):
            raise
        raise TrtqError(
            f"ultralytics found no usable labelled training image (images under 10 px or labels not in the {task} "
            "format are dropped as corrupt); check the dataset"
        ) from None
    ema = trainer.ema.ema if trainer.ema is not None else trainer.model
    return ema, {
        "losses": losses, "first_losses": first, "iterations": len(losses),
        "train_images": len(trainer.train_loader.dataset), **record,
    }
