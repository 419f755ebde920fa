"""Forgetting depth inside the loop: a cheap linear attack on the forgotten classes' features, and the feature term
that trains against it.

The **in-loop probe** (``probe_f``) is the attack a user fears: someone with a few fresh photos of the forgotten people
fits a linear read-out on the model's embeddings and identifies them. It is a ridge classifier on the L2-normalised
embeddings (plus a constant feature for the bias), one-vs-all with ±1 targets, among every class of the task (as the
audit's probe reads all classes), fitted by leave-one-out on the task's check images (never trained on) and scored on
those of the forgotten classes. Leave-one-out is
closed form for ridge (one n×n solve for every left-out image), and the ridge strength is chosen from
:data:`RIDGE_ALPHAS` by leave-one-out squared error, as scikit-learn's ``RidgeClassifierCV`` does; the two agree
exactly (tests/test_depth.py).

``probe_keep`` is that accuracy as a percentage of the task-start model's on the same images: a model that never saw
the forgotten classes still tells them apart by generic features, so the target is not chance but a share of what
the model read before (docs/results/DECISIONS.md says how the default share was measured against retrained models).

The **feature term** (:func:`collapse_loss`, GS-LoRA's ``collapse_weight``) trains against that read-out: η², the
between-class share of the forgotten classes' embedding variance on the forget batch. When the class means coincide
no linear read-out can separate the classes (LEACE's condition); the term is 0 there and 1 when every image sits on
its class mean. Other objectives measured side by side (the attack in the loop, RMU, the paper's loss at its full
budget) are in benchmarks/depth_objectives.py, with the reasons in docs/results/DECISIONS.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _design(emb: torch.Tensor) -> torch.Tensor:
    """L2-normalised embeddings with a constant column (the bias, penalised like the weights)."""
    x = F.normalize(emb.double() if not emb.requires_grad else emb.float(), dim=-1)
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


def _targets(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class ids present, ±1 one-vs-all targets n × classes)."""
    classes, idx = torch.unique(y, return_inverse=True)
    t = -torch.ones(len(y), len(classes), dtype=torch.float64)
    t[torch.arange(len(y)), idx] = 1.0
    return classes, t


def loo_ridge(x: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
    """Leave-one-out ridge predictions (n × k) of the targets ``t`` from the rows of ``x`` (n × d), no intercept
    beyond x's own columns: for each i the prediction of a ridge fitted on every row but i. Dual form: with
    H = K (K + αI)⁻¹, K = x xᵀ, the left-out prediction is (ŷ_i − H_ii t_i) / (1 − H_ii)."""
    n = x.shape[0]
    k = x @ x.T
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    h = k @ torch.linalg.solve(k + alpha * eye, eye)
    fitted = h @ t
    diag = torch.diagonal(h).unsqueeze(1)
    return (fitted - diag * t) / (1.0 - diag).clamp(min=1e-6)


def _loo_fit(emb: torch.Tensor, y: torch.Tensor, alphas) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(class ids, leave-one-out ridge predictions, ridge strength) at the strength with the lowest leave-one-out
    squared error over all images."""
    x = _design(emb.detach().cpu())
    classes, t = _targets(y)
    best = None
    for alpha in alphas:
        pred = loo_ridge(x, t, alpha)
        err = float(((pred - t) ** 2).mean())
        if best is None or err < best[0] - 1e-12:
            best = (err, alpha, pred)
    _, alpha, pred = best
    return classes, pred, alpha


def probe_accuracies(emb: torch.Tensor, y: torch.Tensor, scores: dict, alphas=RIDGE_ALPHAS) -> dict:
    """:func:`probe_accuracy` of one fit scored on several groups of classes: ``scores`` maps a name to class ids
    (None: every class); the name's accuracy is None when no image of ``y`` is in its group."""
    y = torch.as_tensor(y, dtype=torch.long).cpu()
    masks = {k: torch.ones_like(y, dtype=torch.bool) if v is None else torch.isin(
        y, torch.as_tensor(sorted(int(c) for c in v), dtype=torch.long)) for k, v in scores.items()}
    out = {k: {"acc": None, "alpha": None, "images": int(m.sum())} for k, m in masks.items()}
    if len(y) < 3 or len(torch.unique(y)) < 2 or not any(m.any() for m in masks.values()):
        return out
    classes, pred, alpha = _loo_fit(emb, y, alphas)
    right = classes[pred.argmax(1)] == y
    for k, m in masks.items():
        if m.any():
            out[k].update(acc=100.0 * float(right[m].double().mean()), alpha=alpha)
    return out


def probe_accuracy(emb: torch.Tensor, y: torch.Tensor, score=None, alphas=RIDGE_ALPHAS) -> dict:
    """The in-loop probe on fixed embeddings: leave-one-out accuracy (%) of the ridge classifier among all the classes
    of ``y``, over the images whose class is in ``score`` (default: all), at the ridge strength with the lowest
    leave-one-out squared error over all images. None without two classes, three images or an image to score."""
    return probe_accuracies(emb, y, {"acc": score}, alphas)["acc"]


def collapse_loss(emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Class-mean collapse: η², the between-class share of the variance of the L2-normalised embeddings ``emb`` of
    the classes ``y`` (1 when every image sits on its class mean, 0 when every class has the same mean: then no
    linear read-out can tell the classes apart, LEACE's condition). Differentiable; 0 with fewer than two classes."""
    x = F.normalize(emb.float(), dim=-1)
    classes, idx = torch.unique(y, return_inverse=True)
    if len(classes) < 2:
        return emb.sum() * 0.0
    mu = x.mean(0, keepdim=True)
    means = torch.zeros(len(classes), x.shape[1], device=x.device, dtype=x.dtype).index_add_(0, idx, x)
    counts = torch.bincount(idx, minlength=len(classes)).to(x.dtype).unsqueeze(1)
    means = means / counts
    between = (counts * (means - mu) ** 2).sum()
    return between / ((x - mu) ** 2).sum().clamp(min=1e-8)


@torch.no_grad()
def embed_images(model, dataset, device, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (``model.embed``, float, on the CPU) and labels of every image of ``dataset``, in order."""
    was_training = model.training
    model.eval()
    embs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        embs.append(model.embed(x.to(device)).float().cpu())
        ys.append(torch.as_tensor(y))
    model.train(was_training)
    if not embs:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(embs), torch.cat(ys).long()


def model_probe(model, dataset, device, score=None, batch_size: int = 256) -> float | None:
    """The in-loop probe's accuracy (%) under ``model``: fitted leave-one-out on every image of ``dataset``, scored on
    those of the classes ``score`` (the forgotten ones)."""
    return model_probes(model, dataset, device, {"acc": score}, batch_size)["acc"]


def model_probes(model, dataset, device, scores: dict, batch_size: int = 256) -> dict[str, float | None]:
    """:func:`model_probe` for several groups of classes (name → class ids) from one embedding and one fit."""
    emb, y = embed_images(model, dataset, device, batch_size)
    return {k: v["acc"] for k, v in probe_accuracies(emb, y, scores).items()}


def keep(probe: float | None, start: float | None) -> float | None:
    """``probe_keep``: the probe's accuracy as % of the task-start model's (None when either is missing or 0)."""
    if probe is None or not start:
        return None
    return 100.0 * probe / start
