"""SCRUB and SCRUB-S (Kurmanji et al., NeurIPS 2023; the paper's baseline protocol).

The student starts as the model, the teacher is the frozen original. During the first ``max_fraction`` of the epoch
budget every engine step is a *max step* on the forget batch (ascend the distillation divergence d = T²·KL(teacher‖
student) at T = 2, the published DistillKL) followed by a *min step* on the remain batch (γ·CE + α·d); afterwards only
min steps. SCRUB-S adds to the min step a smoothing pull s·‖θ − θ_swa‖ towards the running (SWA) average of the
student's weights over the task's steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import GsloraError
from .base import StepState, register
from .common import BackboneFinetune, distill_kl


@dataclass
class SCRUBArgs:
    gamma: float  # weight of CE on remain in the min step
    alpha: float  # weight of the distillation divergence on remain in the min step
    forget_weight: float  # weight of the (negated) divergence on forget in the max step
    temperature: float
    max_fraction: float  # fraction of the epochs with max steps (SCRUB's msteps / epochs)
    smoothing: float  # s of SCRUB-S (0 for SCRUB)

    def validate(self):
        for name in ("gamma", "alpha", "forget_weight", "smoothing"):
            if getattr(self, name) < 0:
                raise GsloraError(f"method_args.{name} must be ≥ 0, got {getattr(self, name)}.")
        if self.temperature <= 0:
            raise GsloraError(f"method_args.temperature must be > 0, got {self.temperature}.")
        if not 0 <= self.max_fraction <= 1:
            raise GsloraError(f"method_args.max_fraction must be in [0, 1], got {self.max_fraction}.")


@register
class SCRUB(BackboneFinetune):
    name = "scrub"
    Args = SCRUBArgs

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self.step_kinds: list[str] = []  # "max" / "min", in the order taken (all tasks)

    def prepare(self, model, ctx):
        model = super().prepare(model, ctx)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.swa = [p.detach().clone() for p in self.params] if self.args.smoothing > 0 else None
        self.swa_count = 1
        self.task_start = len(self.step_kinds)
        return model

    def is_max_phase(self, state: StepState) -> bool:
        return state.epoch < self.args.max_fraction * state.epochs

    def _divergence(self, model, x):
        with torch.no_grad():
            teacher = self.teacher(x)
        return distill_kl(model(x), teacher, self.args.temperature)

    def train_step(self, model, remain, forget, optimizer, state: StepState) -> dict:
        a = self.args
        logs = {}
        if self.is_max_phase(state):
            with state.autocast():
                div_f = self._divergence(model, forget[0])
                loss = -a.forget_weight * div_f
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.step_kinds.append("max")
            logs["max_kl_f"] = float(div_f.detach())
        x_r, y_r = remain
        with state.autocast():
            emb = model.embed(x_r)
            ce = F.cross_entropy(model.head(emb, y_r), y_r)
            with torch.no_grad():
                teacher = self.teacher(x_r)
            div_r = distill_kl(model.head(emb), teacher, a.temperature)
            loss = a.gamma * ce + a.alpha * div_r
            if self.swa is not None:
                sq = sum((p.float() - s).pow(2).sum() for p, s in zip(self.params, self.swa))
                pull = torch.sqrt(sq + 1e-12)
                loss = loss + a.smoothing * pull
                logs["swa_dist"] = float(pull.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.step_kinds.append("min")
        if self.swa is not None:
            self.swa_count += 1
            with torch.no_grad():
                for p, s in zip(self.params, self.swa):
                    s += (p.detach().float() - s) / self.swa_count
        return {"loss": float(loss.detach()), "ce_r": float(ce.detach()), "kl_r": float(div_r.detach()), **logs}

    def info(self) -> dict:
        kinds = self.step_kinds[self.task_start:]
        return {"max_steps": kinds.count("max"), "min_steps": kinds.count("min")}

    def finish(self, model, ctx):
        self.params, self.swa = None, None
        return super().finish(model, ctx)


@register
class SCRUBS(SCRUB):
    name = "scrub-s"
