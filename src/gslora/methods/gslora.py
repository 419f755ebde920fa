"""GS-LoRA (the paper's method) and its GS-LoRA++ prototype term (the GS-LoRA++ paper)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..depth import collapse_loss
from ..errors import GsloraError
from ..lora import (
    LoraGroups,
    attach_lora,
    block_is_zero,
    delta_norms,
    group_norms,
    merge_lora,
    prox_group_b,
    save_adapter,
)
from ..losses import bounded_forget_loss, group_lasso, margin_forget_loss, prototype_terms
from .base import Method, StepState, TaskContext, per_task, register


@dataclass
class GSLoRAArgs:
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    beta: float | list[float]
    bound: float
    alpha: float
    sparsity: str
    alpha_warmup_epochs: int
    selection_threshold: float
    prototype_weight_forget: float | list[float]  # w_f of GS-LoRA++'s L_pro, a number or one per task
    prototype_weight_remain: float | list[float]  # w_r (the released scripts: 0)
    prototype_bound: float  # BND_pro
    forget_loss: str = "margin"  # margin: per-sample hinge on the logit gap; ce: the paper's max(0, BND - CE)
    forget_margin: float = 64.0  # forget_loss margin: the logit gap own class vs best other to reach
    forget_margin_ramp: bool = True  # grow the margin linearly from 0 to forget_margin over the step budget
    collapse_weight: float = 0.0  # weight of the class-mean collapse term on the forget batch's embeddings
    # (gslora.depth.collapse_loss: the between-class share η² of the forgotten classes' embedding variance)
    anchor_weight: float = 0.0  # weight of the embedding anchor on the replay batch: mean squared distance of its
    # L2-normalised embeddings from the task-start model's (adapters off); a trial after a retention miss multiplies
    # it (gslora.policy.next_trial)

    def validate(self):
        if self.lora_rank < 1:
            raise GsloraError(f"method_args.lora_rank must be at least 1, got {self.lora_rank}.")
        betas = self.beta if isinstance(self.beta, list) else [self.beta]
        if not betas or any(b < 0 for b in betas):
            raise GsloraError(f"method_args.beta must be ≥ 0 (a number or a per-task list), got {self.beta}.")
        for name in ("bound", "alpha", "lora_alpha", "prototype_bound", "selection_threshold", "collapse_weight",
                     "anchor_weight"):
            if getattr(self, name) < 0:
                raise GsloraError(f"method_args.{name} must be ≥ 0, got {getattr(self, name)}.")
        for name in ("prototype_weight_forget", "prototype_weight_remain"):
            value = getattr(self, name)
            values = value if isinstance(value, list) else [value]
            if not values or any(v < 0 for v in values):
                raise GsloraError(f"method_args.{name} must be ≥ 0 (a number or a per-task list), got {value}.")
        if self.sparsity not in ("prox", "penalty"):
            raise GsloraError(f"method_args.sparsity must be prox or penalty, got {self.sparsity!r}.")
        if self.forget_loss not in ("ce", "margin"):
            raise GsloraError(f"method_args.forget_loss must be ce or margin, got {self.forget_loss!r}.")
        if not 0 <= self.lora_dropout < 1:
            raise GsloraError(f"method_args.lora_dropout must be in [0, 1), got {self.lora_dropout}.")


@register
class GSLoRA(Method):
    name = "gslora"
    Args = GSLoRAArgs
    off_log = "blocks_off"  # the training log's name for the blocks at zero after the proximal step

    @property
    def anchored(self) -> bool:
        """Whether the replay embeddings are anchored (``anchor_weight`` > 0): a trial after a retention miss then
        strengthens the anchor instead of halving the lr (:func:`gslora.policy.next_trial`)."""
        return self.args.anchor_weight > 0

    def prepare(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        a = self.args
        self.position = ctx.position
        self.beta = float(per_task(a.beta, ctx.position))
        self.anchor = a.anchor_weight * ctx.anchor_scale  # the trial's anchor (gslora.policy.next_trial)
        # earlier-forgotten classes in the forget batch (RunConfig.old_forget_shots) get their own hinge: in one
        # batch-mean hinge their already-huge CE would saturate the bound and weaken forgetting of the current task
        self.old_classes = torch.as_tensor(list(ctx.task.old), dtype=torch.long, device=ctx.device)
        self.prototypes = None
        self.w_f = float(per_task(a.prototype_weight_forget, ctx.position))
        self.w_r = float(per_task(a.prototype_weight_remain, ctx.position))
        self.prototype_trace = {"step": [], "pro": [], "kl_f": [], "kl_r": []}
        if self.w_f > 0 or self.w_r > 0:
            # computed once per task (and trial) with the model at the start of the task, before LoRA is attached (the
            # authors' single-step script used a random model): the task's training subsets, remain and forget
            self.prototypes = class_prototypes(model, [ctx.remain_data, ctx.forget_data], ctx.num_classes, ctx.device)
        peft_model, self.groups = attach_lora(model, rank=a.lora_rank, alpha=a.lora_alpha, dropout=a.lora_dropout)
        return peft_model

    def loss(self, model, remain, forget, state: StepState):
        a = self.args
        (x_r, y_r), (x_f, y_f) = remain, forget
        n_r = x_r.shape[0]
        emb = model.embed(torch.cat([x_r, x_f]))  # one forward for both batches
        logits = model.head(emb, torch.cat([y_r, y_f]))
        ce_r = F.cross_entropy(logits[:n_r], y_r)
        plain_f = model.head(emb[n_r:]).float() if a.forget_loss == "margin" else None
        forget_term = self._forget_term(logits[n_r:], y_f, plain_f, self._margin(state))
        structure = group_lasso(self.groups.params)
        total = ce_r + self.beta * forget_term
        if a.sparsity == "penalty":  # the authors' form: the group lasso as a loss term inside AdamW
            total = total + self._alpha(state) * structure
        logs = {"ce_r": float(ce_r.detach()), "forget": float(forget_term.detach()), "gl": float(structure.detach())}
        feature = self.feature_term(emb[n_r:], y_f, state)
        if feature is not None:
            total = total + feature
            logs["feature"] = float(feature.detach())
        if self.anchor > 0:
            anchor = self.anchor * embedding_anchor(model, x_r, emb[:n_r])
            total = total + anchor
            logs["anchor"] = float(anchor.detach())
        if self.prototypes is not None:  # GS-LoRA++: on the embedding, so any head (CosFace, linear)
            protos = self.prototypes.to(emb.device, emb.dtype)
            pro, kl_f, kl_r = prototype_terms(emb[n_r:], protos[y_f], emb[:n_r], protos[y_r], self.w_f, self.w_r,
                                              a.prototype_bound)
            total = total + pro
            logs.update(pro=float(pro.detach()), pro_kl_f=float(kl_f.detach()), pro_kl_r=float(kl_r.detach()))
            trace = self.prototype_trace
            trace["step"].append(state.step)
            for key, name in (("pro", "pro"), ("kl_f", "pro_kl_f"), ("kl_r", "pro_kl_r")):
                trace[key].append(round(logs[name], 5))
        return total, logs

    def feature_term(self, emb_f: torch.Tensor, y_f: torch.Tensor, state: StepState) -> torch.Tensor | None:
        """A term on the forget batch's embeddings (None: none). GS-LoRA's: ``collapse_weight`` × η² of every
        forgotten class in the batch (:func:`gslora.depth.collapse_loss`): this task's, and the earlier-forgotten ones
        whose images ``old_forget_shots`` keeps (without them, their depth erodes in later tasks: ORL 4x5's audit
        probe 90.0 without, 85.0 with 2 images each; docs/results/DECISIONS.md#depth). benchmarks/depth_objectives.py
        measures other terms."""
        w = self.args.collapse_weight
        if w <= 0:
            return None
        return w * collapse_loss(emb_f, y_f)

    def _alpha(self, state: StepState) -> float:
        return self.args.alpha if state.epoch >= self.args.alpha_warmup_epochs else 0.0

    def train_step(self, model, remain, forget, optimizer, state: StepState) -> dict:
        logs = super().train_step(model, remain, forget, optimizer, state)
        alpha = self._alpha(state)
        if self.args.sparsity == "prox" and alpha > 0:
            logs[self.off_log] = float(proximal_step(self.groups, optimizer, alpha, state.lr))
        return logs

    def _margin(self, state: StepState) -> float:
        """forget_loss margin: forget_margin, or with the ramp forget_margin · (step + 1) / budget."""
        a = self.args
        step = state.step
        return a.forget_margin * (min(1.0, (step + 1) / state.total_steps) if a.forget_margin_ramp else 1.0)

    def _forget_term(self, logits_f: torch.Tensor, y_f: torch.Tensor, plain_f: torch.Tensor | None = None,
                     margin: float = 0.0) -> torch.Tensor:
        """The forgetting term: the per-sample margin hinge on the margin-free logits ``plain_f`` (forget_loss
        margin), else the paper's bounded CE on the training logits ``logits_f``."""
        if self.args.forget_loss == "margin":  # per sample: earlier-forgotten samples need no hinge of their own
            return margin_forget_loss(plain_f, y_f, margin)
        bound = self.args.bound
        if self.old_classes.numel() == 0:
            return bounded_forget_loss(logits_f, y_f, bound)
        is_old = torch.isin(y_f, self.old_classes)
        if not is_old.any():
            return bounded_forget_loss(logits_f, y_f, bound)
        term = bounded_forget_loss(logits_f[is_old], y_f[is_old], bound)
        if (~is_old).any():
            term = term + bounded_forget_loss(logits_f[~is_old], y_f[~is_old], bound)
        return term

    def _selected(self, groups: LoraGroups, delta_rel: list[float]) -> list[int]:
        """The blocks the task changed: prox, those whose update is not exactly zero; penalty, those whose relative
        update exceeds ``selection_threshold``."""
        if self.args.sparsity == "prox":  # a block is selected when its update is not exactly zero
            return [b.index for b, zero in zip(groups.blocks, block_is_zero(groups)) if not zero]
        return [b.index for b, r in zip(groups.blocks, delta_rel) if r > self.args.selection_threshold]

    def _extra_info(self, selected: list[int]) -> dict:
        """What the results add to the groups' norms (GS-LoRA++: its prototype term's trace)."""
        if self.prototypes is None:
            return {}
        return {"prototype": {"w_f": self.w_f, "w_r": self.w_r, "bound": self.args.prototype_bound,
                              "computed_from": "the model at the start of the task", **self.prototype_trace}}

    def finish(self, model, ctx: TaskContext):
        """Group norms and the blocks selected, the adapter of the selected blocks (PEFT format; blocks left exactly
        zero are not stored), then the LoRA merged into the model."""
        groups: LoraGroups = self.groups
        norms = group_norms(groups)
        delta_abs, delta_rel = delta_norms(groups)
        selected = self._selected(groups, delta_rel)
        trainable = sum(p.numel() for ps in groups.params for p in ps)
        info = {
            "group_norms": norms,
            "delta_norms": delta_abs,
            "relative_delta_norms": delta_rel,
            "selected_blocks": selected,
            "trainable_params": trainable,
            "beta": self.beta,
            **self._extra_info(selected),
        }
        if ctx.adapter_dir is not None and selected:  # blocks left exactly zero are not stored
            folder = save_adapter(model, ctx.adapter_dir, groups, keep=selected)
            info["adapter"] = str(folder.relative_to(ctx.out_dir)) if ctx.out_dir is not None else str(folder)
        elif ctx.adapter_dir is not None:
            info["adapter"] = None  # no block changed: nothing to store
        merged = merge_lora(model)
        self.groups = None
        return merged, info


@register
class GSLoRAPlus(GSLoRA):
    """GS-LoRA++ (the GS-LoRA++ paper): GS-LoRA with the prototype term on by default
    (``configs/methods/gslora++.yaml``, which inherits gslora.yaml; its ``few_shot`` protocol preset holds the
    journal's few-shot values: w_f per task, BND_pro 50, batch 4)."""

    name = "gslora++"


def embedding_anchor(peft_model, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the L2-normalised embeddings ``emb`` of ``x`` and the task-start model's (the
    same network with its adapters off, no gradient): 0 at the task start, at most 4."""
    with torch.no_grad(), peft_model.disable_adapter():
        start = peft_model.embed(x)
    return (F.normalize(emb.float(), dim=-1) - F.normalize(start.float(), dim=-1)).pow(2).sum(-1).mean()


def proximal_step(groups: LoraGroups, optimizer, alpha: float, lr: float) -> int:
    """GS-LoRA's proximal group-lasso step after an optimizer step: each block's B matrices are soft-thresholded by
    ``alpha · lr`` times the block's Adam metric weight (:func:`adam_metric_weights`). Returns the blocks at zero."""
    steps = [alpha * lr * w for w in adam_metric_weights(groups, optimizer)]
    return sum(prox_group_b(groups, steps))


@torch.no_grad()
def adam_metric_weights(groups: LoraGroups, optimizer) -> list[float]:
    """Per block, mean(rms) / rms of the raw gradients of its B matrices (Adam's second moments).

    The group lasso's proximal step in the geometry Adam steps in has a threshold ∝ lr / sqrt(v): a block whose data
    gradients are small relative to the other blocks' gets a larger threshold, so blocks compete on how much the loss
    needs them (Adam's normalised steps alone are about lr for every block, so a threshold of α·lr switches all
    blocks on or all off). Normalised by the mean over blocks, α keeps its meaning (the share of a full Adam step an
    average block must exceed to move) on any model; 1 for every block before the first step."""
    rms = []
    for ps in groups.params:
        sq = [optimizer.state.get(b, {}).get("exp_avg_sq") for b in ps[1::2]]
        if any(s is None for s in sq):
            return [1.0] * len(groups.params)
        rms.append(float(torch.sqrt(sum(s.float().sum() for s in sq) / sum(s.numel() for s in sq))))
    mean = sum(rms) / len(rms)
    return [mean / r if r > 0 else float("inf") for r in rms]


@torch.no_grad()
def class_prototypes(model: nn.Module, datasets, num_classes: int, device) -> torch.Tensor:
    """Mean embedding per class over the given datasets (classes without samples get zeros)."""
    was_training = model.training
    model.eval()
    sums, counts = None, torch.zeros(num_classes, device=device)
    for ds in datasets:
        for x, y in DataLoader(ds, batch_size=256):
            x, y = x.to(device), y.to(device)
            e = model.embed(x).float()
            if sums is None:
                sums = torch.zeros(num_classes, e.shape[-1], device=device)
            sums.index_add_(0, y, e)
            counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float))
    model.train(was_training)
    return sums / counts.clamp(min=1).unsqueeze(1)
