"""Label fine-tuning with ultralytics' own trainer and data loaders (its label loss), on the fake-quant model."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtq.qat.dataset import stage_dataset

if TYPE_CHECKING:  # torch is an optional dependency (the export extra)
    from torch import nn

logger = logging.getLogger(__name__)


def label_finetune(
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
