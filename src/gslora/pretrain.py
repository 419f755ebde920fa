"""Pre-training a classifier from scratch (the paper's face model): AdamW, linear warm-up then cosine decay, CE on
head logits.

The settings are :class:`gslora.config.PretrainConfig` (re-exported here). The defaults aim at a usable model on any
small image folder without flags:

- a step budget sized by the training set (:meth:`PretrainConfig.schedule`), spent on random batches (a reshuffled
  pass over the training set, cycled), each augmented with :func:`gslora.data.augment.augment_batch`;
- the validation accuracy checked every ``eval_every`` steps; training stops once it has not improved for
  ``patience`` checks (never before half the budget) and the best-validation weights are restored at the end;
- inputs standardised by the training set's per-channel mean and std while training (a better-conditioned start:
  on white-background data such as handwritten characters the raw input is almost constant), folded exactly into
  the patch embedding afterwards, so the checkpoint takes the same [0, 1] images as every other model;
- a CosFace margin that ramps up from 0 over the first ``margin_warmup`` of the budget (cosine softmax first, the
  margin once the embeddings separate classes).

After training the model is checked on its own un-augmented training images: below
:data:`LEARNED_MIN_TRAIN_ACC` percent, or a validation accuracy near chance, the stats say ``learned: False`` with the
reason, a warning is logged, and ``gslora pretrain`` exits with status 3 (the checkpoint is still written, marked).
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from .config import PretrainConfig
from .data.augment import augment_batch
from .data.base import DataBundle, ImageDataset, TensorImages
from .engine import autocast_dtype, warmup_cosine
from .errors import GsloraError
from .evaluate import accuracy, class_counts
from .models.registry import Classifier

log = logging.getLogger(__name__)

LEARNED_MIN_TRAIN_ACC = 50.0  # % of the un-augmented training images a model that learned its data gets right
NEAR_CHANCE = 3.0  # validation accuracy below NEAR_CHANCE × chance (100 / classes %) counts as "near chance"
EARLY_STOP_AFTER = 0.5  # early stopping may end a run only after this fraction of the budget
MAX_IN_MEMORY_BYTES = 1 << 30  # a training set up to this size (as float32) is held in memory; larger ones stream


def _held_in_memory(ds: ImageDataset, max_bytes: int = MAX_IN_MEMORY_BYTES) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(images, labels) of ``ds`` as tensors (uint8 when the dataset keeps uint8, else float), or None if too big."""
    if isinstance(ds, TensorImages):
        return ds.images, torch.as_tensor(ds.targets, dtype=torch.long)
    if len(ds) == 0:
        return None
    first = ds[0][0]
    if first.numel() * 4 * len(ds) > max_bytes:
        return None
    images = torch.empty((len(ds), *first.shape), dtype=first.dtype)
    for i in range(len(ds)):
        images[i] = ds[i][0]
    return images, torch.as_tensor(ds.targets, dtype=torch.long)


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


class _Batches:
    """Random training batches forever: a seeded reshuffled pass over the data, cycled (each image once per pass)."""

    def __init__(self, ds: ImageDataset, batch_size: int, generator: torch.Generator, device: torch.device):
        self.ds, self.batch_size, self.generator, self.device = ds, batch_size, generator, device
        self.memory = _held_in_memory(ds)
        self.order = torch.empty(0, dtype=torch.long)
        self.stream = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.memory is not None:
            while len(self.order) < self.batch_size:
                self.order = torch.cat([self.order, torch.randperm(len(self.ds), generator=self.generator)])
            idx, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
            x, y = self.memory[0][idx], self.memory[1][idx]
        else:
            batch = next(self.stream, None) if self.stream is not None else None
            if batch is None:
                sampler = RandomSampler(self.ds, generator=self.generator)
                self.stream = iter(DataLoader(self.ds, batch_size=self.batch_size, sampler=sampler))
                batch = next(self.stream)
            x, y = batch
        return _to_float(x).to(self.device), y.to(self.device)

    def sample(self, n: int = 4096) -> torch.Tensor:
        """Up to ``n`` training images (for the standardisation statistics)."""
        if self.memory is not None:
            return _to_float(self.memory[0][:n] if len(self.ds) <= n else
                             self.memory[0][torch.randperm(len(self.ds), generator=self.generator)[:n]])
        idx = torch.randperm(len(self.ds), generator=self.generator)[:n].tolist()
        return torch.stack([self.ds[i][0] for i in idx]).float()


def _patch_conv(model: nn.Module) -> nn.Conv2d | None:
    """The first layer if a standardisation can be folded into it exactly (an unpadded conv with a bias)."""
    conv = getattr(getattr(getattr(model, "backbone", None), "patch_embed", None), "proj", None)
    if not isinstance(conv, nn.Conv2d) or conv.bias is None or conv.groups != 1:
        return None
    if conv.padding not in ((0, 0), "valid") or conv.padding_mode != "zeros":
        return None
    return conv


@torch.no_grad()
def fold_standardisation(model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``model(x)`` compute what ``model((x - mean) / std)`` computed (per-channel ``mean``, ``std``), by
    rewriting the patch-embedding conv: W' = W / std, b' = b − Σ W · mean / std."""
    conv = _patch_conv(model)
    if conv is None:
        raise ValueError("the model's first layer is not an unpadded conv with a bias; cannot fold")
    scale = (1.0 / std).to(conv.weight).view(1, -1, 1, 1)
    shift = (mean / std).to(conv.weight).view(1, -1, 1, 1)
    conv.bias.sub_((conv.weight * shift).sum(dim=(1, 2, 3)))
    conv.weight.mul_(scale)


def _channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3))
    return mean, torch.where(std > 1e-3, std, torch.ones_like(std))  # a constant channel is only centred


@torch.no_grad()
def _validate(model: Classifier, data, norm, device, batch_size: int = 256) -> tuple[float, float]:
    """(accuracy %, mean CE without margin) on held-in-memory validation images."""
    x_all, y_all = data
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(y_all), batch_size):
        x = _to_float(x_all[i:i + batch_size]).to(device)
        y = y_all[i:i + batch_size].to(device)
        logits = model(norm(x)).float()
        correct += int((logits.argmax(-1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    model.train()
    n = max(1, len(y_all))
    return 100.0 * correct / n, loss / n


def learned_check(train_acc: float, val_acc: float | None, num_classes: int) -> str | None:
    """None if the accuracies look like a model that learned its data, else the reason it did not."""
    chance = 100.0 / num_classes
    reasons = []
    if train_acc < LEARNED_MIN_TRAIN_ACC:
        reasons.append(f"training accuracy {train_acc:.1f}% on its own un-augmented training images is far below "
                       f"the {LEARNED_MIN_TRAIN_ACC:.0f}% a model that learned its data reaches")
    if val_acc is not None and num_classes > 1 and val_acc < NEAR_CHANCE * chance:
        reasons.append(f"validation accuracy {val_acc:.1f}% is near chance ({chance:.1f}% for {num_classes} classes)")
    return "; ".join(reasons) or None


def still_improving(checks: list[dict], window: int) -> bool:
    """The validation accuracy of the last ``window`` checks rose above every earlier check's (a lower loss at equal
    accuracy, which early stopping also counts, is not enough to train on)."""
    if len(checks) <= window:
        return bool(checks)
    before = max(c["val_acc"] for c in checks[:-window])
    return max(c["val_acc"] for c in checks[-window:]) > before


def pretrain(model: Classifier, data: DataBundle, cfg: PretrainConfig, progress: bool = False) -> dict:
    """Train ``model`` in place on ``data.train`` and keep its best-validation weights. Returns the schedule, the
    steps run, train / val / test accuracy, time, and ``learned`` (False with ``not_learned_reason`` when the model
    did not learn its training data; a warning is logged too)."""
    from .distributed import resolve_device, seeded

    cfg.validate()
    device = resolve_device(cfg.device)
    with seeded(cfg.seed, device):  # the caller's random state is left as it was
        return _pretrain(model, data, cfg, device, progress)


def _pretrain(model: Classifier, data: DataBundle, cfg: PretrainConfig, device, progress: bool) -> dict:
    amp = autocast_dtype(cfg.precision)
    model.to(device).train()
    plan = cfg.schedule(len(data.train))
    steps, warmup, eval_every = plan["max_steps"], plan["warmup_steps"], plan["eval_every"]
    batches = _Batches(data.train, cfg.batch_size, torch.Generator().manual_seed(cfg.seed), device)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)

    standardize = cfg.standardize and _patch_conv(model) is not None
    if standardize:
        mean, std = _channel_stats(batches.sample())
        m_dev, s_dev = mean.to(device).view(1, -1, 1, 1), std.to(device).view(1, -1, 1, 1)
        norm = lambda x: (x - m_dev) / s_dev  # noqa: E731
    else:
        norm = lambda x: x  # noqa: E731
    head = getattr(model, "head", None)
    full_margin = getattr(head, "m", None) if hasattr(head, "cosine") else None
    ramp = int(cfg.margin_warmup * steps) if full_margin else 0

    val = _held_in_memory(data.val) if len(data.val) else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = {"acc": -1.0, "loss": math.inf, "step": 0, "state": None}
    checks: list[dict] = []
    step, stopped_early = 0, False
    # phases: the budget (warm-up, cosine), then while the validation accuracy still improved in the last
    # ``patience`` checks of a phase, an extension of half the budget (from the best weights, cosine from half the
    # lr), until the total reaches extend_cap × the budget
    extendable = cfg.max_steps is None and cfg.epochs is None and cfg.extend_cap > 1 and val is not None
    cap = int(cfg.extend_cap * steps) if extendable else steps
    phases = []
    start = time.perf_counter()
    bar = tqdm(total=steps, desc="pre-training", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        length, peak, warm = steps, cfg.lr, warmup
        while True:
            first = step
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] = peak
            sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(length, warm, min(1.0, cfg.min_lr / peak)))
            bad, plateau = 0, False
            for step in range(first + 1, first + length + 1):
                x, y = batches.next()
                if cfg.augment:
                    x = augment_batch(x, aug_gen)
                if ramp:
                    head.m = full_margin * min(1.0, (step - 1) / ramp)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = F.cross_entropy(model(norm(x), y).float(), y)
                if not torch.isfinite(loss):
                    raise GsloraError(f"pre-training loss became {loss.item()} at step {step}; lower lr.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                postfix = {"loss": f"{loss.item():.3g}"}
                if val is not None and ((step - first) % eval_every == 0 or step == first + length):
                    acc, vloss = _validate(model, val, norm, device)
                    checks.append({"step": step, "val_acc": acc, "val_loss": vloss})
                    if acc > best["acc"] or (acc == best["acc"] and vloss < best["loss"]):
                        best = {"acc": acc, "loss": vloss, "step": step,
                                "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
                        bad = 0
                    else:
                        bad += 1
                    later = step - first >= (EARLY_STOP_AFTER * length if not phases else 0)
                    if cfg.patience and bad >= cfg.patience and later and step < first + length:
                        plateau = True
                        break
                if checks:
                    postfix["val"] = f"{checks[-1]['val_acc']:.1f}%"
                bar.set_postfix(postfix, refresh=False)
            improving = not plateau and still_improving(checks, cfg.patience or 5)
            phases.append({"steps": step - first, "peak_lr": peak, "ended": "plateau" if plateau else "budget",
                           "improving": improving, "best_val_acc": best["acc"]})
            if plateau:
                stopped_early = True
                break
            length = min(max(1, steps // 2), cap - step)
            if not improving or not extendable or length <= 0:
                break
            model.load_state_dict(best["state"])  # the extension continues from the best weights
            peak, warm = cfg.lr * 0.5, 0
            bar.total += length
    finally:
        bar.close()
        if ramp:
            head.m = full_margin
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    if standardize:
        fold_standardisation(model, mean, std)
    seconds = time.perf_counter() - start
    model.eval()
    out = {"train_images": len(data.train), "max_steps": steps, "steps": step, "warmup_steps": warmup,
           "extensions": len(phases) - 1, "cap_steps": cap, "phases": phases,
           "stopped_at_cap": bool(extendable and phases[-1]["improving"] and step >= cap),
           "still_improving": bool(phases[-1]["improving"] and not stopped_early),
           "eval_every": eval_every, "budget_rule": plan["rule"], "stopped_early": stopped_early,
           "best_step": best["step"] if best["state"] is not None else step,
           "epochs": cfg.epochs, "augment": cfg.augment, "train_seconds": seconds,
           "standardization": {"mean": mean.tolist(), "std": std.tolist()} if standardize else None,
           "checks": checks}
    for split in ("train", "val", "test"):
        ds = getattr(data, split)
        if len(ds):
            c, t = class_counts(model, ds, data.num_classes, device)
            out[f"{split}_acc"] = accuracy(c, t, range(data.num_classes))
    reason = learned_check(out["train_acc"], out.get("val_acc"), data.num_classes)
    out["learned"] = reason is None
    if reason:
        out["not_learned_reason"] = reason
        log.warning("the pre-trained model did not learn: %s", reason)
    return out


__all__ = ["LEARNED_MIN_TRAIN_ACC", "PretrainConfig", "fold_standardisation", "learned_check", "pretrain",
           "still_improving"]
