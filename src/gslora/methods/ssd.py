"""Selective Synaptic Dampening (Foster et al., AAAI 2024, arXiv 2308.07707): retrain-free forgetting.

With []_D the diagonal Fisher importance (mean squared CE gradient) on the remaining data and []_F on the forget data,
every parameter with []_F,i > α·[]_D,i is dampened: θ_i ← β_i·θ_i, β_i = min(λ·[]_D,i / []_F,i, 1). Nothing else
changes. Defaults: α = 10 (selection weighting), λ = 1 (dampening constant), the paper's values. The head is left
alone by default (SPEC §7 keeps it frozen for every baseline; CosFace rows are scale-invariant anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import GsloraError
from .base import Method, register
from .common import batches_of, parameter_importance


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


def ssd_dampen(params: dict[str, torch.nn.Parameter], imp_remain: dict[str, torch.Tensor],
               imp_forget: dict[str, torch.Tensor], alpha: float, lam: float) -> dict[str, torch.Tensor]:
    """Dampen ``params`` in place by SSD's rule; returns the boolean selection mask per parameter."""
    masks = {}
    with torch.no_grad():
        for n, p in params.items():
            d, f = imp_remain[n].to(p.device), imp_forget[n].to(p.device)
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

    def finish(self, model, ctx):
        names = self._names(model)
        bs = self.args.importance_batch_size
        imp_r = parameter_importance(model, batches_of(ctx.remain_data, bs), "fisher", names, device=ctx.device)
        imp_f = parameter_importance(model, batches_of(ctx.forget_data, bs), "fisher", names, device=ctx.device)
        named = dict(model.named_parameters())
        masks = ssd_dampen({n: named[n] for n in names}, imp_r, imp_f, self.args.selection_weighting,
                           self.args.dampening_constant)
        selected = int(sum(int(m.sum()) for m in masks.values()))
        model.requires_grad_(False)
        return model, {"trainable_params": selected, "ssd_selected": selected}
