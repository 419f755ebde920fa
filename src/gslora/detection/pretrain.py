"""Pre-training a detector with the DETR set loss (the demo's tiny Deformable DETR, or fine-tuning any DETR-family
model on a COCO folder before forgetting).

A detector built from scratch first gets an optional *backbone warm-up* (``backbone_warmup_steps``): the backbone
alone learns to classify the feature found at the centre of every ground-truth box (all feature levels, sampled
bilinearly, one linear layer on top; the layer is thrown away afterwards). It stands in for the ImageNet
pre-training a real DETR backbone has: on the bundled digits the set loss alone barely separates the categories
within a CPU budget (docs/detection.md has the measurements)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..distributed import resolve_device
from ..engine import warmup_cosine
from ..errors import GsloraError
from .data import DetectionData, targets_from_tensor
from .evaluate import class_set_aps
from .losses import layer_outputs, set_criterion, set_loss
from .models import backbone_network, freeze_batch_norm


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
    cls_weight: float = 2.0  # weight of L_cls in the set loss (Deformable DETR: 2; the demo: 5, see docs/detection.md)
    backbone_warmup_steps: int = 0  # box-centre classification steps for the backbone alone, before the set loss
    backbone_warmup_lr: float = 2e-3
    backbone_warmup_batch_size: int = 32
    seed: int = 1337
    device: str = "auto"

    def validate(self) -> DetPretrainConfig:
        for name in ("max_steps", "batch_size", "backbone_warmup_batch_size"):
            if getattr(self, name) < 1:
                raise GsloraError(f"detection pretrain {name} must be ≥ 1, got {getattr(self, name)}.")
        if self.backbone_warmup_steps < 0:
            raise GsloraError(f"detection pretrain backbone_warmup_steps must be ≥ 0, got "
                              f"{self.backbone_warmup_steps}.")
        if self.cls_weight <= 0:
            raise GsloraError(f"detection pretrain cls_weight must be > 0, got {self.cls_weight}.")
        if self.lr <= 0 or self.backbone_warmup_lr <= 0:
            raise GsloraError(f"detection pretrain lr and backbone_warmup_lr must be > 0, got {self.lr} and "
                              f"{self.backbone_warmup_lr}.")
        return self


def _centre_features(net: nn.Module, x: torch.Tensor, targets: list[dict]) -> torch.Tensor:
    """The backbone's features at every target box centre: each feature level sampled bilinearly, concatenated."""
    out = net(x)
    maps = out.feature_maps if hasattr(out, "feature_maps") else out
    feats = []
    for b, t in enumerate(targets):
        if len(t["boxes"]):
            grid = (t["boxes"][:, :2] * 2 - 1).view(1, 1, -1, 2)
            feats.append(torch.cat([F.grid_sample(m[b:b + 1], grid, align_corners=False)[0, :, 0].T
                                    for m in maps], dim=1))
    return torch.cat(feats)


def warm_up_backbone(model: nn.Module, data: DetectionData, cfg: DetPretrainConfig, device,
                     progress: bool = False) -> dict:
    """``cfg.backbone_warmup_steps`` AdamW steps training the backbone (and a throw-away linear layer) to classify
    the feature at each box centre of ``data.train``. Returns the validation accuracy of that classification."""
    net = backbone_network(model)
    channels = getattr(net, "channels", None)
    if channels is None:
        raise GsloraError("this detector's backbone does not list its channels; set backbone_warmup_steps to 0.")
    with torch.random.fork_rng(devices=[]):  # the throw-away head's initialisation, seeded locally
        torch.manual_seed(cfg.seed + 2)
        head = nn.Linear(sum(channels), data.num_classes).to(device)
    params = [p for p in net.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.backbone_warmup_lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    loader = DataLoader(data.train, batch_size=min(cfg.backbone_warmup_batch_size, len(data.train)), shuffle=True,
                        generator=gen, drop_last=True)
    bar = tqdm(total=cfg.backbone_warmup_steps, desc="backbone warm-up", disable=not progress, dynamic_ncols=True)
    start, step, net_mode = time.perf_counter(), 0, net.training
    net.train()
    while step < cfg.backbone_warmup_steps:
        for x, y in loader:
            targets = targets_from_tensor(y.to(device))
            labels = torch.cat([t["class_labels"] for t in targets])
            if labels.numel() == 0:
                continue
            loss = F.cross_entropy(head(_centre_features(net, x.to(device), targets)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            if step >= cfg.backbone_warmup_steps:
                break
    bar.close()
    net.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in DataLoader(data.val, batch_size=64):
            targets = targets_from_tensor(y.to(device))
            labels = torch.cat([t["class_labels"] for t in targets])
            if labels.numel():
                right += int((head(_centre_features(net, x.to(device), targets)).argmax(1) == labels).sum())
                total += labels.numel()
    net.train(net_mode)
    return {"steps": step, "seconds": time.perf_counter() - start,
            "val_accuracy": right / total if total else None}


def pretrain_detector(model: torch.nn.Module, data: DetectionData, cfg: DetPretrainConfig,
                      progress: bool = False) -> dict:
    """Train every trainable parameter of ``model`` on ``data.train`` with the DETR set loss (after the optional
    backbone warm-up); returns stats with the test AP (all classes) and each class's AP. The model is modified in
    place; its backbone's batch norms are frozen at the end (:func:`~gslora.detection.models.freeze_batch_norm`)."""
    cfg.validate()
    device = resolve_device(cfg.device)
    model.to(device).train()
    warmup = warm_up_backbone(model, data, cfg, device, progress) if cfg.backbone_warmup_steps else None
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
            loss, logs = set_loss(criterion, layer_outputs(model, x), targets_from_tensor(y), cfg.cls_weight)
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
    freeze_batch_norm(model)
    nc = data.num_classes
    aps = class_set_aps(model, data.test, {"all": range(nc), **{str(c): [c] for c in range(nc)}}, device)
    model.train()
    if warmup is not None:
        seconds += warmup["seconds"]  # train_seconds: warm-up + set-loss training
    return {"steps": step, "train_seconds": seconds, "backbone_warmup": warmup, "last_loss": float(loss.detach()),
            "last_terms": logs,
            "test_ap": aps["all"]["ap"], "test_ap50": aps["all"]["ap50"],
            "class_ap": {data.classes[c]: aps[str(c)]["ap"] for c in range(nc)}, "config": asdict(cfg)}
