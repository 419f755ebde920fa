"""Metrics: accuracies on class sets from per-class counts (summable across processes), Drop, H-Mean,
tunable ratio. Pure functions of predictions, plus one function that produces the predictions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import distributed as dist


@torch.no_grad()
def class_counts(model: nn.Module, dataset: Dataset, num_classes: int, device: torch.device | str = "cpu",
                 batch_size: int = 256, margin_at_test: bool = False, sampler=None, num_workers: int = 0,
                 autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, total) per true class, top-1 over all logits; summed over processes when distributed.

    ``margin_at_test`` reproduces the authors' protocol (CosFace margin applied with the true labels at test time).
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    correct = torch.zeros(num_classes, dtype=torch.long, device=device)
    total = torch.zeros(num_classes, dtype=torch.long, device=device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=num_workers)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(x, y) if margin_at_test else model(x)
        pred = logits.argmax(-1)
        total += torch.bincount(y, minlength=num_classes)
        correct += torch.bincount(y[pred == y], minlength=num_classes)
    model.train(was_training)
    correct, total = dist.all_reduce_sum(correct), dist.all_reduce_sum(total)
    return correct.cpu(), total.cpu()


def accuracy(correct: torch.Tensor, total: torch.Tensor, classes: Iterable[int]) -> float | None:
    """Top-1 accuracy in percent over the samples of ``classes``; None when the set has no samples."""
    idx = torch.as_tensor(sorted(set(classes)), dtype=torch.long)
    if idx.numel() == 0:
        return None
    n = int(total[idx].sum())
    return 100.0 * int(correct[idx].sum()) / n if n else None


def drop(acc_before: float | None, acc_after: float | None) -> float | None:
    return None if acc_before is None or acc_after is None else acc_before - acc_after


def h_mean(acc_r: float | None, drop_f: float | None) -> float | None:
    """2·Acc_r·Drop / (Acc_r + Drop); 0 when either is ≤ 0 (a negative drop means nothing was forgotten)."""
    if acc_r is None or drop_f is None:
        return None
    if acc_r <= 0 or drop_f <= 0:
        return 0.0
    return 2.0 * acc_r * drop_f / (acc_r + drop_f)


def tunable_ratio(trainable: int, total: int) -> float:
    """Trainable parameters / all parameters of the model, in percent."""
    return 100.0 * trainable / total if total else 0.0


def set_accuracies(correct, total, sets: dict[str, Iterable[int]]) -> dict[str, float | None]:
    return {name: accuracy(correct, total, classes) for name, classes in sets.items()}


class SetAccuracies(TypedDict):
    acc_f: float | None  # forgotten in this task
    acc_r: float | None  # remaining (with missing classes: the remaining classes that keep their replay data)
    acc_o: float | None  # forgotten in earlier tasks (None in the first)
    acc_m: float | None  # missing classes: remaining, but without any data (None when the run has none)


class TaskMetrics(SetAccuracies):
    """The metrics of one task on one split (accuracies in %, top-1 over all classes)."""

    drop: float | None  # Acc_f before − Acc_f after
    h_mean: float | None
    before: SetAccuracies  # at the start of the task (Retrain: the pre-trained model)
    pretrained: dict  # acc_f, acc_r of the pre-trained model on this task's sets
    acc_r_change_vs_pretrained: float | None


def task_metrics(counts_before, counts_after, counts_orig, task, drop_against_pretrained: bool = False,
                 missing=()) -> TaskMetrics:
    """A task's metrics from per-class counts (correct, total) before the task, after it and of the original model:
    Acc_f / Acc_r / Acc_o / Acc_m after, Drop (against the task's start, or the original model), H-Mean, the before
    and pre-trained accuracies and the change of Acc_r against the pre-trained model.

    ``missing``: the run's missing classes (:mod:`gslora.practical`). Those among the task's remaining classes are
    scored apart as Acc_m; Acc_r (and so H-Mean and the retention target) covers the remaining classes with data."""
    gone = set(missing) & set(task.remain)
    sets = {"acc_f": task.forget, "acc_r": [c for c in task.remain if c not in gone], "acc_o": task.old,
            "acc_m": sorted(gone)}
    before = set_accuracies(*(counts_orig if drop_against_pretrained else counts_before), sets)
    after = set_accuracies(*counts_after, sets)
    orig = set_accuracies(*counts_orig, sets)
    d = drop(before["acc_f"], after["acc_f"])
    return {
        **after,
        "drop": d,
        "h_mean": h_mean(after["acc_r"], d),
        "before": before,
        "pretrained": {"acc_f": orig["acc_f"], "acc_r": orig["acc_r"], "acc_m": orig["acc_m"]},
        "acc_r_change_vs_pretrained": after["acc_r"] - orig["acc_r"],
    }
