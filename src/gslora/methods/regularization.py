"""L2, EWC and MAS (the paper's baseline protocol): CE on the remain batch and the relabelled forget batch, plus
λ · Σ_tasks Σ_i Ω_i (θ_i − θ*_i)², with θ* the model before each task and Ω computed on that task's remain subset:
Ω = 1 (L2); for EWC the diagonal empirical Fisher, the mean over samples of the squared *per-sample* CE gradient
(Kirkpatrick et al.); for MAS the mean over samples of |per-sample gradient of ‖logits‖² / C| (Aljundi et al., with
the GS-LoRA authors' mean over the C classes). Penalties accumulate over tasks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GsloraError
from .base import StepState, TaskContext, register
from .common import BackboneFinetune, batches_of, parameter_importance


@dataclass
class RegularizationArgs:
    lam: float  # λ, weight of the quadratic penalty
    importance_batch_size: int  # chunk size of the per-sample importance pass (memory only; the result is the same)

    def validate(self):
        if self.lam < 0:
            raise GsloraError(f"method_args.lam must be ≥ 0, got {self.lam}.")
        if self.importance_batch_size < 1:
            raise GsloraError(f"method_args.importance_batch_size must be ≥ 1, got {self.importance_batch_size}.")


class QuadraticPenaltyMethod(BackboneFinetune):
    """Shared machinery: one (Ω, θ*) anchor per task, summed in the penalty. ``importance_kind`` None means Ω = 1."""

    Args = RegularizationArgs
    importance_kind: str | None = None

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self.anchors: list[tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor]]] = []

    def prepare(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        model = super().prepare(model, ctx)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        omega = None
        if self.importance_kind is not None:
            omega = parameter_importance(model, batches_of(ctx.remain_data, self.args.importance_batch_size),
                                         self.importance_kind, names, device=ctx.device, per_sample=True)
        named = dict(model.named_parameters())
        self.anchors.append((omega, {n: named[n].detach().clone() for n in names}))
        return model

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """Σ over the anchors of all tasks so far of Σ_i Ω_i (θ_i − θ*_i)² (without λ)."""
        named = dict(model.named_parameters())
        total = None
        for omega, theta_star in self.anchors:
            for n, ref in theta_star.items():
                sq = (named[n] - ref).pow(2)
                term = (sq * omega[n]).sum() if omega is not None else sq.sum()
                total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def loss(self, model, remain, forget, state: StepState):
        (x_r, y_r), (x_f, y_f) = remain, forget
        wrong = self.relabel(y_f)
        x, y = torch.cat([x_r, x_f]), torch.cat([y_r, wrong])
        ce = F.cross_entropy(model(x, y), y)
        pen = self.penalty(model)
        return ce + self.args.lam * pen, {"ce": float(ce.detach()), "penalty": float(pen.detach())}

    def info(self) -> dict:
        return {"penalty_tasks": len(self.anchors)}


@register
class L2(QuadraticPenaltyMethod):
    name = "l2"
    importance_kind = None


@register
class EWC(QuadraticPenaltyMethod):
    name = "ewc"
    importance_kind = "fisher"


@register
class MAS(QuadraticPenaltyMethod):
    name = "mas"
    importance_kind = "mas"
