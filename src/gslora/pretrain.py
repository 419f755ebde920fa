"""Pre-training a classifier from scratch (SPEC §2): AdamW, cosine schedule with warm-up, CE on head logits.
The settings are :class:`gslora.config.PretrainConfig` (re-exported here)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import PretrainConfig
from .data.base import DataBundle
from .engine import warmup_cosine
from .evaluate import accuracy, class_counts
from .models.registry import Classifier


def pretrain(model: Classifier, data: DataBundle, cfg: PretrainConfig, progress: bool = False) -> dict:
    """Train ``model`` in place on ``data.train``; returns train/val/test accuracy and time."""
    from .distributed import resolve_device

    cfg.validate()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    loader = DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    steps = cfg.epochs * len(loader)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, cfg.resolved_warmup() * len(loader),
                                                                 cfg.min_lr / cfg.lr))
    start = time.perf_counter()
    bar = tqdm(total=steps, desc="pre-training", disable=not progress, leave=False, dynamic_ncols=True)
    for _ in range(cfg.epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x, y), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3g}", refresh=False)
    bar.close()
    model.eval()
    out = {"epochs": cfg.epochs, "warmup_epochs": cfg.resolved_warmup(), "train_seconds": time.perf_counter() - start}
    for split in ("train", "val", "test"):
        ds = getattr(data, split)
        if len(ds):
            c, t = class_counts(model, ds, data.num_classes, device)
            out[f"{split}_acc"] = accuracy(c, t, range(data.num_classes))
    return out


__all__ = ["PretrainConfig", "pretrain"]
