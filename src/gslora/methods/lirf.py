"""``uniform-kd``: a distillation-and-uniform-target stand-in for LIRF. It is **not** LIRF.

Until config version 2 this method was called ``lirf`` and described as LIRF's knowledge-deposit stage ("Learning with
Recoverable Forgetting", Ye et al., ECCV 2022). It does not implement that paper: LIRF's deposit module, its
knowledge-deposit losses and the withdrawal (recovery) stage are absent, and its removal term is not LIRF's. What it
does, and what it is now named after:

The model keeps the original's upper part frozen (upper Transformer blocks, final norm, head) and re-trains only its
lower part (patch embedding, position embedding, CLS token and the lower ``lower_fraction`` of the blocks; LIRF's
split, about half of the backbone tunable). Losses, per step:

- on remain: γ·CE + w_kd·T²·KL(original‖model) (distillation from the frozen original);
- on forget: w_rm·KL(uniform‖model), pulling the prediction on forget samples to a uniform guess.

A faithful LIRF is left to do (the paper's baseline protocol asks for the published method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import GsloraError
from .base import StepState, register
from .common import BackboneFinetune, distill_kl


@dataclass
class UniformKDArgs:
    lower_fraction: float  # fraction of the Transformer blocks (from the input) that are trained
    ce_weight: float  # γ on CE(remain)
    distill_weight: float  # w_kd
    removal_weight: float  # w_rm
    temperature: float

    def validate(self):
        if not 0 < self.lower_fraction <= 1:
            raise GsloraError(f"method_args.lower_fraction must be in (0, 1], got {self.lower_fraction}.")
        for name in ("ce_weight", "distill_weight", "removal_weight"):
            if getattr(self, name) < 0:
                raise GsloraError(f"method_args.{name} must be ≥ 0, got {getattr(self, name)}.")
        if self.temperature <= 0:
            raise GsloraError(f"method_args.temperature must be > 0, got {self.temperature}.")


@register
class UniformKD(BackboneFinetune):
    name = "uniform-kd"
    Args = UniformKDArgs

    def prepare(self, model, ctx):
        model = super().prepare(model, ctx)
        backbone = model.backbone
        blocks = getattr(backbone, "blocks", None)
        if blocks is None:
            raise GsloraError(f"{self.name} needs a ViT backbone with a .blocks list; this model has none.")
        k = max(1, round(self.args.lower_fraction * len(blocks)))
        backbone.requires_grad_(False)
        for name in ("patch_embed", "cls_token", "pos_embed", "reg_token"):
            part = getattr(backbone, name, None)
            if part is not None:  # a Parameter or a Module
                part.requires_grad_(True)
        for block in list(blocks)[:k]:
            block.requires_grad_(True)
        self.lower_blocks = k
        return model

    def loss(self, model, remain, forget, state: StepState):
        a = self.args
        (x_r, y_r), (x_f, _) = remain, forget
        n_r = x_r.shape[0]
        emb = model.embed(torch.cat([x_r, x_f]))
        ce = F.cross_entropy(model.head(emb[:n_r], y_r), y_r)
        logits = model.head(emb)
        with torch.no_grad():
            teacher = self.teacher(x_r)
        kd = distill_kl(logits[:n_r], teacher, a.temperature)
        log_p = F.log_softmax(logits[n_r:].float() / a.temperature, dim=-1)
        removal = -log_p.mean(-1).mean() - math.log(log_p.shape[-1])  # KL(uniform ‖ p), ≥ 0
        total = a.ce_weight * ce + a.distill_weight * kd + a.removal_weight * removal
        return total, {"ce_r": float(ce.detach()), "kd": float(kd.detach()), "removal": float(removal.detach())}

    def info(self) -> dict:
        return {"lower_blocks": self.lower_blocks}
