"""The training loop for one task. It knows nothing about the method it runs: the method prepares the model,
takes each step and finishes; the engine owns devices, data order, optimizer, schedule, precision and progress.

Multi-process ready: pass samplers (DistributedSampler under torchrun); the loop itself needs no change.
"""

from __future__ import annotations

import math
import time
from itertools import cycle

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from . import distributed as dist
from .methods.base import Method, StepState, TaskContext


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier: linear warm-up, then cosine from 1 down to ``min_ratio`` at the last step."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        t = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def _loader(dataset, batch_size, seed, num_workers, device, drop_last=False) -> DataLoader:
    if dist.is_distributed():
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                          pin_memory=device.type == "cuda", drop_last=drop_last)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen, num_workers=num_workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last)


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16}.get(precision)


def train_task(model: torch.nn.Module, method: Method, ctx: TaskContext) -> dict:
    """Run ``ctx.config.epochs`` epochs of ``method`` on ``model`` (already prepared). Returns a summary."""
    cfg, device = ctx.config, ctx.device
    seed = cfg.seed + 1000 * ctx.task.index
    remain_loader = _loader(ctx.remain_data, cfg.batch_size, seed, cfg.num_workers, device)
    forget_loader = _loader(ctx.forget_data, cfg.batch_size, seed + 1, cfg.num_workers, device)
    steps_per_epoch = len(remain_loader)
    total = cfg.epochs * steps_per_epoch
    params = method.trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if dist.is_distributed():  # every process sees its shard of the data; steps use the averaged gradient
        optimizer.register_step_pre_hook(lambda *_: dist.average_gradients(params))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, cfg.warmup_epochs * steps_per_epoch, cfg.min_lr / cfg.lr)
    )
    amp = autocast_dtype(cfg.precision)

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    model.train()
    forget_iter = cycle(forget_loader)  # the forget loader cycles; an epoch is one pass over the remain subset
    bar = tqdm(total=total, desc=f"task {ctx.task.index}/{ctx.num_tasks}",
               disable=not (ctx.progress and dist.is_main()), leave=False, dynamic_ncols=True)
    logs: dict = {}
    start, step = time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        if isinstance(remain_loader.sampler, DistributedSampler):
            remain_loader.sampler.set_epoch(epoch)
        for x_r, y_r in remain_loader:
            x_f, y_f = next(forget_iter)
            remain = (x_r.to(device, non_blocking=True), y_r.to(device, non_blocking=True))
            forget = (x_f.to(device, non_blocking=True), y_f.to(device, non_blocking=True))
            state = StepState(epoch=epoch, step=step, total_steps=total, epochs=cfg.epochs, autocast=autocast)
            logs = method.train_step(model, remain, forget, optimizer, state)
            schedule.step()
            step += 1
            bar.update(1)
            if step % 10 == 0 or step == total:
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()}, refresh=False)
    bar.close()
    return {"steps": step, "train_seconds": time.perf_counter() - start, "last_logs": logs}
