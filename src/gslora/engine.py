"""The training loop for one task. It knows nothing about the method it runs: the method prepares the model,
takes each step and finishes; the engine owns devices, data order, optimizer, schedule, precision and progress.

Multi-process ready: DistributedSampler under torchrun and one averaged gradient per step; the loop needs no change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields

import torch
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler
from tqdm.auto import tqdm

from . import distributed as dist
from .data.augment import augment_batch
from .errors import GsloraError
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


def repeated(dataset, batch_size: int, most: int = 4):
    """``dataset`` repeated up to ``most`` times so that it fills a batch: a forget subset of a few images then gives
    batches holding several (differently augmented) views of each image instead of a handful of images."""
    n = len(dataset)
    times = min(most, max(1, math.ceil(batch_size / max(n, 1))))
    return dataset if times == 1 else ConcatDataset([dataset] * times)


def passes(loader: DataLoader) -> Iterator:
    """The batches of ``loader``, pass after pass, reshuffled each pass (``set_epoch`` under torchrun).

    Unlike ``itertools.cycle`` (which replays its first pass forever and keeps it in memory), every pass draws a new
    order from the loader's generator (or the distributed sampler's epoch)."""
    n = 0
    while True:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(n)
        yield from loader
        n += 1


def epoch_batches(loader: DataLoader, steps: int, epoch: int) -> Iterator:
    """``steps`` batches of ``loader``: one pass, or (when the other loader is the longer one) further reshuffled
    passes, cut at ``steps`` (``set_epoch`` under torchrun, distinct for every pass)."""
    n, k = 0, 0
    while n < steps:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch * 1_000 + k if k else epoch)
        for batch in loader:
            yield batch
            n += 1
            if n >= steps:
                return
        k += 1


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16}.get(precision)


@dataclass
class Check:
    """One validation check during a task: the step, the metrics and whether the forgetting target held."""

    step: int
    metrics: dict
    met: bool


@dataclass(frozen=True)
class TrainSettings:
    """What the engine reads to train one trial: an explicit object, not a whole run config (classification's
    ``RunConfig`` and detection's alike give one with :meth:`of`)."""

    seed: int
    batch_size: int
    lr: float
    min_lr: float
    weight_decay: float
    warmup_epochs: int
    max_steps: int  # 0: epochs x steps per epoch
    epochs: int
    eval_every: int = 0  # steps between checks (0: none)
    target_checks: int = 1  # the default stopping rule without a policy's decide: this many met checks in a row
    checkpoint_every: int = 0  # steps between in-task resume checkpoints (0: none)
    precision: str = "fp32"
    augment: bool = False
    num_workers: int = 0

    @classmethod
    def of(cls, config) -> TrainSettings:
        """The engine's settings out of a run config (any object with these fields, resolved)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)})


def total_steps(cfg, steps_per_epoch: int) -> int:
    """The task's step budget: ``max_steps`` when set, else ``epochs`` × ``steps_per_epoch`` (the batches of the
    longer of the remain and forget loaders)."""
    return cfg.max_steps if cfg.max_steps else cfg.epochs * steps_per_epoch


def train_task(model: torch.nn.Module, method: Method, ctx: TaskContext, state: dict | None = None,
               on_checkpoint: Callable[[dict], None] | None = None,
               check: Callable[[torch.nn.Module], tuple[bool, dict]] | None = None, seed_offset: int = 0,
               decide: Callable[[list], str] | None = None, settings: TrainSettings | None = None) -> dict:
    """Train ``method`` on ``model`` (already prepared) for the task's step budget. Returns a summary. ``settings``:
    what to train with (:class:`TrainSettings`; default: those of ``ctx.config``).

    Budget: ``ctx.config.max_steps`` steps, or ``epochs`` passes over the remain subset when it is 0; the forget
    loader reshuffles on each of its passes. ``check`` (the runner's validation check: model → (target met,
    metrics)) runs every ``ctx.config.eval_every`` steps and at the end; after each, ``decide(checks)`` (the runner's
    policy, :meth:`gslora.policy.TargetPolicy.decide`; default: ``target_checks`` consecutive checks whose target
    held) says ``stop`` or ``hold``, and at ``stop`` the model returned is the one that check evaluated. The summary
    lists every check.

    Resumable: with ``ctx.config.checkpoint_every = k > 0`` the engine hands ``on_checkpoint`` its state (trainable
    weights, optimizer, schedule, step, RNG and data-order state, the method's state) at the first end of a pass over
    the remain subset at least k steps after the last one (steps, because budgets are in steps: with a small replay
    subset a pass can be a single step); passing such a dict back as ``state`` continues from there with the same
    numbers. A non-finite loss
    stops the task with a :class:`TrainingDiverged` error naming the task, epoch and loss term.
    """
    cfg, device = settings or TrainSettings.of(ctx.config), ctx.device
    seed = cfg.seed + 1000 * ctx.task.index + seed_offset
    remain_loader = _loader(ctx.remain_data, cfg.batch_size, seed, cfg.num_workers, device)
    forget_loader = _loader(repeated(ctx.forget_data, cfg.batch_size), cfg.batch_size, seed + 1, cfg.num_workers,
                            device)
    # an epoch is one pass over the longer loader (few-shot: the forget loader can be the longer one); the shorter
    # one cycles, reshuffled on each pass
    steps_per_epoch = max(len(remain_loader), len(forget_loader))
    base = total = total_steps(cfg, steps_per_epoch)
    params = method.trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if dist.is_distributed():  # every process sees its shard of the data; steps use the averaged gradient
        optimizer.register_step_pre_hook(lambda *_: dist.average_gradients(params))
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total // 2)
    phase = warmup_cosine(base, warmup, cfg.min_lr / cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: phase(min(s, base - 1)))
    amp = autocast_dtype(cfg.precision)
    augment_gen = torch.Generator().manual_seed(seed + 2)

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    model.train()
    forget_iter = passes(forget_loader)
    first_epoch, step, spent, checks = 0, 0, 0.0, []
    saved_at = 0  # the step of the last in-task checkpoint
    if state is not None:
        for _ in range(state["step"]):  # the forget stream's position: replay its seeded order up to the step
            next(forget_iter)
        first_epoch, step, spent = state["epoch"], state["step"], state["train_seconds"]
        saved_at = step
        checks = [Check(**c) for c in state.get("checks", [])]
        augment_gen.set_state(state["augment_rng"])
        _load_engine_state(state, model, method, optimizer, schedule, remain_loader, device)
    every = cfg.eval_every if check is not None else 0
    # a trial restarting the task shows as a new bar labelled with its lr
    bar = tqdm(total=total, initial=step, desc=f"task {ctx.task.index}/{ctx.num_tasks} (lr {cfg.lr:.3g})",
               disable=not (ctx.progress and dist.is_main()), leave=False, dynamic_ncols=True)
    logs: dict = {}
    start = time.perf_counter()
    stopped = False
    epoch = first_epoch
    while step < total and not stopped:
        for x_r, y_r in epoch_batches(remain_loader, steps_per_epoch, epoch):
            x_f, y_f = next(forget_iter)
            x_r, y_r = x_r.to(device, non_blocking=True), y_r.to(device, non_blocking=True)
            x_f, y_f = x_f.to(device, non_blocking=True), y_f.to(device, non_blocking=True)
            if cfg.augment:
                x_r, x_f = augment_batch(x_r, augment_gen), augment_batch(x_f, augment_gen)
            step_state = StepState(epoch=epoch, step=step, total_steps=base, epochs=cfg.epochs, autocast=autocast,
                                   lr=optimizer.param_groups[0]["lr"])
            logs = method.train_step(model, (x_r, y_r), (x_f, y_f), optimizer, step_state)
            check_finite(logs, ctx.task.index, epoch)
            schedule.step()
            step += 1
            bar.update(1)
            if step % 10 == 0 or step == total:
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()}, refresh=False)
            if every and (step % every == 0 or step == total):
                met, metrics = check(model)
                model.train()
                checks.append(Check(step=step, metrics=metrics, met=met))
                stopped = (decide or consecutive(cfg.target_checks))(checks) == "stop"
            if stopped or step >= total:
                break
        epoch += 1
        k = cfg.checkpoint_every
        if on_checkpoint is not None and k and step - saved_at >= k and step < total and not stopped:
            saved_at = step
            on_checkpoint({**_engine_state(epoch, step, spent + time.perf_counter() - start, model, method, optimizer,
                                           schedule, remain_loader),
                           "checks": [asdict(c) for c in checks], "augment_rng": augment_gen.get_state()})
    bar.close()
    return {"steps": step, "budget": base,
            "train_seconds": spent + time.perf_counter() - start, "last_logs": logs,
            "checks": [asdict(c) for c in checks], "stopped_early": stopped and step < total,
            "target_met": bool(checks and checks[-1].met)}


def consecutive(need: int) -> Callable[[list], str]:
    """The stopping rule when the caller gives none: ``stop`` once the last ``need`` checks met their target."""
    return lambda checks: "stop" if len(checks) >= need and all(c.met for c in checks[-need:]) else "hold"


class TrainingDiverged(GsloraError):
    """The loss became NaN or infinite; the run folder keeps the last good state."""


def check_finite(logs: dict, task_index: int, epoch: int) -> None:
    """Raise :class:`TrainingDiverged` naming the first non-finite loss term (the total ``loss`` last)."""
    bad = [k for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        term = next((k for k in bad if k != "loss"), bad[0])
        raise TrainingDiverged(f"task {task_index}, epoch {epoch + 1}: the loss term {term!r} became {logs[term]} "
                               "(lower lr or the method's weights); the run folder keeps the last finished task, "
                               "continue with --resume once fixed or start over with --overwrite.")


def _engine_state(epoch, step, train_seconds, model, method, optimizer, schedule, remain_loader) -> dict:
    return {
        "epoch": epoch,
        "step": step,
        "train_seconds": train_seconds,
        "trainable": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "method": method.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "remain_order": remain_loader.generator.get_state() if remain_loader.generator is not None else None,
    }


def _load_engine_state(state, model, method, optimizer, schedule, remain_loader, device) -> None:
    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, value in state["trainable"].items():
            named[n].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    method.load_state_dict(state["method"], device)
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if state["remain_order"] is not None:
        remain_loader.generator.set_state(state["remain_order"])
