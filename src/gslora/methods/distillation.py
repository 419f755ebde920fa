"""Distillation baselines (the paper's baseline protocol), all with the frozen original model as teacher and the head
frozen:

- LwF:   CE(relabelled forget) + λ_r·CE(remain) + w_kd·T²·KL(teacher‖student) at T = 2 on remain (a real KD term; the
         authors' was NaN-zeroed);
- DER:   CE(relabelled forget) + λ·Σ_batch ‖logits(x_r) − logits_orig(x_r)‖² (squared L2 of the logit difference,
         summed over the batch and the classes: the GS-LoRA authors' DER_regularzaion_loss, ‖diff‖²_F, with which
         their λ = 0.01 / 0.005 were used; DER itself, Buzzega et al. 2020, distils logits too);
- DER++: DER + λ'·CE on a second, independently drawn remain batch;
- FDR:   CE(relabelled forget) + λ·mean ‖logits(x_r) − logits_orig(x_r)‖₂.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import GsloraError
from .base import StepState, register
from .common import BackboneFinetune, ReplayStream, distill_kl


def _non_negative(obj, *names):
    for name in names:
        if getattr(obj, name) < 0:
            raise GsloraError(f"method_args.{name} must be ≥ 0, got {getattr(obj, name)}.")


@dataclass
class LwFArgs:
    remain_weight: float  # λ_r on CE(remain)
    distill_weight: float  # weight of the distillation term
    temperature: float

    def validate(self):
        _non_negative(self, "remain_weight", "distill_weight")
        if self.temperature <= 0:
            raise GsloraError(f"method_args.temperature must be > 0, got {self.temperature}.")


@register
class LwF(BackboneFinetune):
    name = "lwf"
    Args = LwFArgs

    def loss(self, model, remain, forget, state: StepState):
        a = self.args
        (x_r, y_r) = remain
        forget_ce = self.relabelled_forget_ce(model, forget)
        emb = model.embed(x_r)
        ce_r = F.cross_entropy(model.head(emb, y_r), y_r)
        with torch.no_grad():
            teacher = self.teacher(x_r)
        kd = distill_kl(model.head(emb), teacher, a.temperature)
        total = forget_ce + a.remain_weight * ce_r + a.distill_weight * kd
        return total, {"ce_f": float(forget_ce.detach()), "ce_r": float(ce_r.detach()), "kd": float(kd.detach())}


@dataclass
class DERArgs:
    lam: float  # weight of the embedding distillation on remain

    def validate(self):
        _non_negative(self, "lam")


@register
class DER(BackboneFinetune):
    name = "der"
    Args = DERArgs

    def logit_distance(self, model, x_r) -> torch.Tensor:
        """‖logits(x_r) − logits_orig(x_r)‖² summed over the batch and the classes (not averaged: λ = 0.01 belongs to
        the sum; a batch mean would make the term batch-size times weaker). With a CosFace head the margin cancels in
        the difference, so the logits are taken without labels."""
        with torch.no_grad():
            target = self.teacher(x_r)
        return (model(x_r).float() - target.float()).pow(2).sum()

    def loss(self, model, remain, forget, state: StepState):
        forget_ce = self.relabelled_forget_ce(model, forget)
        dist = self.logit_distance(model, remain[0])
        return forget_ce + self.args.lam * dist, {"ce_f": float(forget_ce.detach()), "logit_dist": float(dist.detach())}


@dataclass
class DERppArgs:
    lam: float
    replay_weight: float  # λ' on CE of a second remain batch

    def validate(self):
        _non_negative(self, "lam", "replay_weight")


@register
class DERpp(DER):
    name = "derpp"
    Args = DERppArgs

    def prepare(self, model, ctx):
        model = super().prepare(model, ctx)
        self.replay = ReplayStream(ctx.remain_data, ctx.config.batch_size, ctx.config.seed + 31 * ctx.task.index + 5,
                                   ctx.device)
        return model

    def loss(self, model, remain, forget, state: StepState):
        total, logs = super().loss(model, remain, forget, state)
        x2, y2 = self.replay.next()
        ce2 = F.cross_entropy(model(x2, y2), y2)
        logs["ce_replay"] = float(ce2.detach())
        return total + self.args.replay_weight * ce2, logs

    def finish(self, model, ctx):
        self.replay = None
        return super().finish(model, ctx)


@dataclass
class FDRArgs:
    lam: float  # weight of the function distance on remain

    def validate(self):
        _non_negative(self, "lam")


@register
class FDR(BackboneFinetune):
    name = "fdr"
    Args = FDRArgs

    def loss(self, model, remain, forget, state: StepState):
        forget_ce = self.relabelled_forget_ce(model, forget)
        x_r = remain[0]
        with torch.no_grad():
            target = self.teacher(x_r)
        dist = (model(x_r).float() - target.float()).norm(dim=-1).mean()
        return forget_ce + self.args.lam * dist, {"ce_f": float(forget_ce.detach()), "fdist": float(dist.detach())}
