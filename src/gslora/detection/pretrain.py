"""Pre-training a detector with the DETR set loss (the demo's tiny Deformable DETR, or fine-tuning any DETR-family
model on a COCO folder before forgetting)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..distributed import resolve_device
from ..engine import warmup_cosine
from ..errors import GsloraError
from .data import DetectionData, targets_from_tensor
from .evaluate import class_set_aps
from .losses import layer_outputs, set_criterion, set_loss


@dataclass
class DetPretrainConfig:
    max_steps: int = 3000  # optimiser steps
    batch_size: int = 16
    lr: float = 5e-4  # AdamW peak learning rate (from scratch; the backbone gets lr × backbone_lr_ratio)
    backbone_lr_ratio: float = 1.0  # 0.1 when fine-tuning a pre-trained backbone, as DETR does
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 0.1  # DETR's max gradient norm
    seed: int = 1337
    device: str = "auto"

    def validate(self) -> DetPretrainConfig:
        for name in ("max_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise GsloraError(f"detection pretrain {name} must be ≥ 1, got {getattr(self, name)}.")
        if self.lr <= 0:
            raise GsloraError(f"detection pretrain lr must be > 0, got {self.lr}.")
        return self


def pretrain_detector(model: torch.nn.Module, data: DetectionData, cfg: DetPretrainConfig,
                      progress: bool = False) -> dict:
    """Train every parameter of ``model`` on ``data.train`` with the DETR set loss; returns stats with the test AP
    (all classes) and each class's AP. The model is modified in place."""
    cfg.validate()
    device = resolve_device(cfg.device)
    model.to(device).train()
    criterion = set_criterion(model)
    backbone = [p for n, p in model.named_parameters() if ".backbone." in f".{n}"]
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in ids]
    optimizer = torch.optim.AdamW([{"params": rest, "lr": cfg.lr},
                                   {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_ratio}],
                                  lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.max_steps, min(cfg.warmup_steps, cfg.max_steps // 2), cfg.min_lr / cfg.lr))
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=True)
    if len(loader) == 0:
        raise GsloraError(f"{len(data.train)} training images are fewer than one batch of {cfg.batch_size}; lower "
                          "the batch size.")
    bar = tqdm(total=cfg.max_steps, desc="pre-training detector", disable=not progress, dynamic_ncols=True)
    step, start, logs = 0, time.perf_counter(), {}
    while step < cfg.max_steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss, logs = set_loss(criterion, layer_outputs(model, x), targets_from_tensor(y))
            if not math.isfinite(float(loss.detach())):
                raise GsloraError(f"detection pre-training diverged at step {step} (loss {float(loss)}); lower lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3g}", refresh=False)
            if step >= cfg.max_steps:
                break
    bar.close()
    seconds = time.perf_counter() - start
    nc = data.num_classes
    aps = class_set_aps(model, data.test, {"all": range(nc), **{str(c): [c] for c in range(nc)}}, device)
    model.train()
    return {"steps": step, "train_seconds": seconds, "last_loss": float(loss.detach()), "last_terms": logs,
            "test_ap": aps["all"]["ap"], "test_ap50": aps["all"]["ap50"],
            "class_ap": {data.classes[c]: aps[str(c)]["ap"] for c in range(nc)}, "config": asdict(cfg)}
