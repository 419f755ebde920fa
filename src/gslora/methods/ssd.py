"""Selective Synaptic Dampening (Foster et al., AAAI 2024, arXiv 2308.07707): retrain-free forgetting.

With []_D the diagonal Fisher importance (mean squared CE gradient) on the training data D and []_F on the forget data,
every parameter with []_F,i > α·[]_D,i is dampened: θ_i ← β_i·θ_i, β_i = min(λ·[]_D,i / []_F,i, 1). Nothing else
changes. Defaults: α = 10 (selection weighting), λ = 1 (dampening constant), the paper's values (set for ResNet18 /
ViT-B on CIFAR; sweep α on other models). The head is left alone by default (the paper's baseline protocol keeps it
frozen for every baseline; CosFace rows are scale-invariant anyway).

D is the whole training split as in the paper (every training image of the task's remaining and forgotten classes;
classes forgotten in earlier tasks are left out, they are no longer part of the model's data), taken from
:meth:`TaskContext.full_training_data`. When no training split is available the replay subset stands in, and
``method_info`` says so (``importance_data``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Subset

from ..errors import GsloraError
from .base import Method, register
from .common import batches_of, indices_of_classes, parameter_importance


@dataclass
class SSDArgs:
    selection_weighting: float  # α
    dampening_constant: float  # λ
    importance_batch_size: int
    include_head: bool

    def validate(self):
        if self.selection_weighting <= 0 or self.dampening_constant <= 0:
            raise GsloraError("method_args.selection_weighting and dampening_constant must be > 0, got "
                              f"{self.selection_weighting} and {self.dampening_constant}.")
        if self.importance_batch_size < 1:
            raise GsloraError(f"method_args.importance_batch_size must be ≥ 1, got {self.importance_batch_size}.")


def ssd_dampen(params: dict[str, torch.nn.Parameter], imp_data: dict[str, torch.Tensor],
               imp_forget: dict[str, torch.Tensor], alpha: float, lam: float) -> dict[str, torch.Tensor]:
    """Dampen ``params`` in place by SSD's rule ([]_D = ``imp_data``, []_F = ``imp_forget``); returns the boolean
    selection mask per parameter."""
    masks = {}
    with torch.no_grad():
        for n, p in params.items():
            d, f = imp_data[n].to(p.device), imp_forget[n].to(p.device)
            mask = f > alpha * d
            beta = torch.where(mask, (lam * d / f.clamp(min=1e-30)).clamp(max=1.0), torch.ones_like(f))
            p.mul_(beta.to(p.dtype))
            masks[n] = mask
    return masks


@register
class SSD(Method):
    name = "ssd"
    Args = SSDArgs
    trains = False

    def _names(self, model) -> list[str]:
        return [n for n, _ in model.named_parameters() if self.args.include_head or not n.startswith("head.")]

    def prepare(self, model, ctx):
        model.requires_grad_(False)
        names = set(self._names(model))
        for n, p in model.named_parameters():
            if n in names:
                p.requires_grad_(True)  # the parameters SSD may change (the tunable ratio counts only those changed)
        return model

    def importance_data(self, ctx):
        """(D, how D was obtained): the training images of the task's remaining and forgotten classes, or the replay
        subset when the context has no training split."""
        train, source = ctx.full_training_data()
        if train is None:
            return ctx.remain_data, ("replay subset of the remaining classes (no training split was available; the "
                                     "paper computes this importance on the whole training set)")
        idx = indices_of_classes(train, (*ctx.task.remain, *ctx.task.forget))
        return Subset(train, idx), f"whole training split, remaining and forgotten classes ({source})"

    def importances(self, model, ctx) -> tuple[dict, dict, dict]:
        """([]_D, []_F, info): the Fisher importances on D and on the forget data."""
        names = self._names(model)
        bs = self.args.importance_batch_size
        data, source = self.importance_data(ctx)
        imp_d = parameter_importance(model, batches_of(data, bs), "fisher", names, device=ctx.device)
        imp_f = parameter_importance(model, batches_of(ctx.forget_data, bs), "fisher", names, device=ctx.device)
        return imp_d, imp_f, {"importance_data": source, "importance_images": len(data),
                              "forget_images": len(ctx.forget_data)}

    def finish(self, model, ctx):
        names = self._names(model)
        imp_d, imp_f, info = self.importances(model, ctx)
        named = dict(model.named_parameters())
        masks = ssd_dampen({n: named[n] for n in names}, imp_d, imp_f, self.args.selection_weighting,
                           self.args.dampening_constant)
        selected = int(sum(int(m.sum()) for m in masks.values()))
        model.requires_grad_(False)
        return model, {"trainable_params": selected, "ssd_selected": selected, **info}
