"""Pieces the baselines share (the paper's baseline protocol): relabelling of forget samples, distillation, parameter
importances, a replay stream, and the base class of every method that fine-tunes the whole backbone with the head
frozen."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .base import Method, TaskContext

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Relabelling


def random_wrong_labels(labels: torch.Tensor, remain_classes, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random label per sample drawn uniformly from ``remain_classes``.

    Forget samples never belong to a remaining class, so every drawn label is wrong (the authors drew from all K
    classes, which sometimes gave a forget sample its own label back; the paper's baseline protocol asks for the
    remaining classes)."""
    pool = torch.as_tensor(list(remain_classes), dtype=torch.long)
    if pool.numel() == 0:
        raise ValueError("relabelling needs at least one remaining class")
    idx = torch.randint(pool.numel(), labels.shape, generator=generator)
    return pool[idx].to(labels.device)


# ---------------------------------------------------------------------------------------------------------------------
# Distillation


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: T² · KL(softmax(teacher/T) ‖ softmax(student/T)), mean over the batch.

    Computed in float32 from log-probabilities, so it stays finite with CosFace's large logits (s = 64)."""
    t = float(temperature)
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * t * t


# ---------------------------------------------------------------------------------------------------------------------
# Parameter importances (EWC, MAS, SSD)

IMPORTANCE_KINDS = ("fisher", "mas")


def _importance_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """The scalar whose gradient is scored, averaged over the samples of ``x``:

    - ``fisher``: CE(model(x, y), y) (margin applied with the true labels, as in training);
    - ``mas``: the squared L2 norm of the logits divided by the number of classes, i.e. the mean over classes of
      logits² (Aljundi et al.'s ℓ2-norm objective with the GS-LoRA authors' mean over the output units)."""
    if kind == "fisher":
        return F.cross_entropy(model(x, y).float(), y)
    return model(x).float().pow(2).mean(-1).mean()


def _per_sample_grads_vmap(model, params: dict[str, torch.Tensor], x, y, kind) -> dict[str, torch.Tensor]:
    """Per-sample gradients of the objective for a batch, with torch.func (one vectorised pass)."""
    from torch.func import grad, vmap

    def one(p, xi, yi):
        return _importance_objective(_Bound(model, p), xi.unsqueeze(0), yi.unsqueeze(0), kind)

    with warnings.catch_warnings():  # attention has no vmap batching rule on CPU: correct, only slower
        warnings.filterwarnings("ignore", message="There is a performance drop")
        return vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)


class _Bound:
    """``model`` called with ``params`` substituted (torch.func.functional_call), keeping the call signature."""

    def __init__(self, model, params):
        self.model, self.params = model, params

    def __call__(self, x, y=None):
        from torch.func import functional_call

        return functional_call(self.model, self.params, (x,) if y is None else (x, y))


def parameter_importance(model: nn.Module, batches: Iterable, kind: str, names: Iterable[str] | None = None,
                         device=None, per_sample: bool = False) -> dict[str, torch.Tensor]:
    """Per-parameter importance over ``batches`` of (x, y).

    ``per_sample=True`` (EWC, MAS): the mean over *samples* of a per-sample score,

    - ``fisher``: (∂ CE(x_i, y_i) / ∂θ)², the diagonal empirical Fisher information (Kirkpatrick et al.);
    - ``mas``: |∂ (‖logits(x_i)‖² / C) / ∂θ| (Aljundi et al.: per-sample gradient magnitude averaged over samples;
      the ‖·‖² divided by the number of classes C as the GS-LoRA authors' ``outputs.pow(2).mean()``).

    The per-sample gradients come from torch.func (functional_call + vmap(grad)); a model that vmap cannot trace
    falls back to one backward pass per sample (same numbers, slower). The batch size only sets the chunking.

    ``per_sample=False`` (SSD, as in its authors' code): the mean over *batches* of the same score of the gradient of
    the batch-mean objective (for fisher, the square of the batch-mean gradient: batch size B gives about 1/B of the
    per-sample Fisher on uncorrelated samples).

    ``names``: the parameters to score (default: those that require grad). The model is scored in eval mode (no
    dropout); its requires_grad flags and mode are restored afterwards.
    """
    if kind not in IMPORTANCE_KINDS:
        raise ValueError(f"importance kind must be one of {IMPORTANCE_KINDS}, got {kind!r}")
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if names is None else list(names)
    params = [named[n] for n in names]
    flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()
    scores = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    count = 0
    use_vmap = True

    def accumulate(grads):
        for s, g in zip(scores, grads):
            if g is not None:
                s += g.float().pow(2) if kind == "fisher" else g.float().abs()

    try:
        for p in params:
            p.requires_grad_(True)
        for x, y in batches:
            if device is not None:
                x, y = x.to(device), y.to(device)
            if not per_sample:
                grads = torch.autograd.grad(_importance_objective(model, x, y, kind), params, allow_unused=True)
                accumulate(grads)
                count += 1
                continue
            if use_vmap:
                try:
                    detached = {n: p.detach() for n, p in zip(names, params)}
                    per = _per_sample_grads_vmap(model, detached, x, y, kind)
                    for s, n in zip(scores, names):
                        g = per[n].float()
                        s += (g.pow(2) if kind == "fisher" else g.abs()).sum(0)
                    count += x.shape[0]
                    continue
                except Exception as e:  # noqa: BLE001 - e.g. a data-dependent op vmap cannot batch: loop instead
                    use_vmap = False
                    _warn_vmap_once(type(model).__name__, e)
            for i in range(x.shape[0]):
                obj = _importance_objective(model, x[i:i + 1], y[i:i + 1], kind)
                accumulate(torch.autograd.grad(obj, params, allow_unused=True))
                count += 1
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was_training)
    return {n: s / max(count, 1) for n, s in zip(names, scores)}


_VMAP_WARNED: set[str] = set()


def _warn_vmap_once(model_name: str, error: Exception) -> None:
    """Say once per model class that per-sample gradients fell back to a loop (same numbers, much slower)."""
    if model_name not in _VMAP_WARNED:
        _VMAP_WARNED.add(model_name)
        log.warning("per-sample gradients of %s: torch.func.vmap failed (%s: %s); using one backward pass per sample "
                    "instead (same numbers, slower)", model_name, type(error).__name__, str(error).splitlines()[0]
                    if str(error) else "")


def dataset_targets(dataset: Dataset) -> list[int]:
    """The label of every item: ``dataset.targets`` when present (no pixels loaded), through ``Subset``s, else by
    reading the items."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return [int(t) for t in targets]
    if isinstance(dataset, Subset):
        parent = dataset_targets(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def indices_of_classes(dataset: Dataset, classes) -> list[int]:
    """Indices of every item of ``dataset`` whose label is in ``classes``, in dataset order."""
    wanted = {int(c) for c in classes}
    return [i for i, t in enumerate(dataset_targets(dataset)) if t in wanted]


def batches_of(dataset: Dataset, batch_size: int) -> DataLoader:
    """Deterministic (unshuffled) batches of a dataset."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


class ReplayStream:
    """An endless, seeded, shuffled stream of batches of a dataset (DER++'s second replay batch)."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, device):
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                 generator=torch.Generator().manual_seed(seed))
        self.device = device
        self._it: Iterator | None = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            x, y = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            x, y = next(self._it)
        return x.to(self.device), y.to(self.device)


# ---------------------------------------------------------------------------------------------------------------------
# Base class of the baselines


class BackboneFinetune(Method):
    """Fine-tune the whole backbone, head frozen (the paper's baseline protocol). Keeps the task's remaining classes
    and a seeded generator for relabelling; subclasses write ``loss``."""

    def prepare(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        model.requires_grad_(False)
        model.backbone.requires_grad_(True)
        self.remain_classes = tuple(ctx.task.remain)
        self.generator = torch.Generator().manual_seed(ctx.config.seed + 7919 * ctx.task.index)
        self.teacher = ctx.original_model
        return model

    def relabel(self, labels: torch.Tensor) -> torch.Tensor:
        return random_wrong_labels(labels, self.remain_classes, self.generator)

    def relabelled_forget_ce(self, model: nn.Module, forget) -> torch.Tensor:
        """CE of the forget batch against random wrong labels (margin applied with those labels, as in training)."""
        x_f, y_f = forget
        wrong = self.relabel(y_f)
        return F.cross_entropy(model(x_f, wrong), wrong)

    def info(self) -> dict:
        return {}

    def finish(self, model: nn.Module, ctx: TaskContext):
        model.requires_grad_(False)
        self.teacher = None
        return model, self.info()
