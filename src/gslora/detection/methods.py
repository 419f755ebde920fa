"""Forgetting methods for detectors, on the library's :class:`~gslora.methods.base.Method` interface and in its
registry under the problem ``detection`` (:func:`gslora.methods.get_problem_method`); the same loop and engine run
them. A batch is ``(x, y)`` with ``y`` the padded box tensor of :mod:`gslora.detection.data`.

- ``gslora``: classification's GS-LoRA (:class:`gslora.methods.gslora.GSLoRA`: its proximal group-lasso step and its
  ``finish``) with the detector's groups: LoRA (r = 8) on fc1 / fc2 of every encoder and decoder layer, one group per
  layer; retention = the DETR set loss on the replayed remaining boxes, forgetting = max(0, BND − 2·L_cls) + box
  terms on forget boxes (β per task).
- ``finetune``: retrain-free fine-tuning of the backbone, encoder and decoder (heads frozen) with the set loss on
  remain images and on forget images whose forget boxes are removed (``forget_boxes: remove``: they become
  background) or relabelled to random remaining classes (``relabel``).
- ``l2``: ``finetune`` plus λ · Σ_tasks ‖θ − θ*‖² (θ*: the model before each task).

Their arguments default to the ``Args`` dataclasses here (the classification presets do not apply to detectors). The
search spaces of ``gslora tune --detection`` are in ``configs/detection_tune.yaml`` (:func:`tune_space`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..config import from_dict
from ..errors import GsloraError
from ..lora import block_is_zero
from ..losses import group_lasso
from ..methods.base import Method, StepState, TaskContext, per_task, register
from ..methods.gslora import GSLoRA
from ..presets import check_tune_space, packaged_yaml
from .data import targets_from_tensor
from .losses import forget_loss, layer_outputs, set_criterion, set_loss
from .models import arch_of, attach_detr_lora, group_names, unwrap


class DetectionMethod(Method):
    """Base: method arguments come from the ``Args`` dataclass defaults (overridable), not from the classification
    presets; each step clips the gradients to the run config's ``grad_clip`` (Method.train_step)."""

    problem = "detection"

    def __init__(self, **overrides):
        self.args = from_dict(self.Args, overrides, where=f"method_args ({self.name})") if self.Args else None
        validate = getattr(self.args, "validate", None)
        if validate:
            validate()

    def _split(self, model, remain, forget):
        (x_r, y_r), (x_f, y_f) = remain, forget
        layers = layer_outputs(model, torch.cat([x_r, x_f]))
        n = x_r.shape[0]
        return ([{k: v[:n] for k, v in out.items()} for out in layers],
                [{k: v[n:] for k, v in out.items()} for out in layers],
                targets_from_tensor(y_r), targets_from_tensor(y_f))


@dataclass
class DetGSLoRAArgs:
    lora_rank: int = 8
    lora_alpha: float = 8.0  # scaling alpha / rank = 1, as the classification preset
    beta: float | list[float] = 0.2  # weight of the forgetting loss, per task (the last value repeats)
    bound: float = 15.0  # BND of max(0, BND − 2·L_cls) (the paper's detection protocol; L_cls summed over the 6
    # decoder layers)
    sparsity: str = "prox"  # prox: proximal group soft-thresholding of each layer's B; penalty: α·group lasso term
    alpha: float = 0.3  # prox: share of a full Adam step a group's update must exceed to move; penalty: loss weight
    forget_queries: str = "matched"  # L_cls over the Hungarian-matched queries (the paper's detection protocol)
    # or every "overlapping" one

    def validate(self):
        if self.lora_rank < 1:
            raise GsloraError(f"method_args.lora_rank must be at least 1, got {self.lora_rank}.")
        betas = self.beta if isinstance(self.beta, list) else [self.beta]
        if not betas or any(b < 0 for b in betas):
            raise GsloraError(f"method_args.beta must be ≥ 0 (a number or a per-task list), got {self.beta}.")
        if self.bound < 0 or self.alpha < 0:
            raise GsloraError("method_args.bound and method_args.alpha must be ≥ 0.")
        if self.sparsity not in ("prox", "penalty"):
            raise GsloraError(f"method_args.sparsity must be prox or penalty, got {self.sparsity!r}.")
        if self.forget_queries not in ("matched", "overlapping"):
            raise GsloraError("method_args.forget_queries must be matched or overlapping, got "
                              f"{self.forget_queries!r}.")


@register
class DetGSLoRA(DetectionMethod, GSLoRA):
    """GS-LoRA on a detector: GSLoRA's proximal step and ``finish`` (group norms, the groups selected, the adapter,
    the merge) on the detector's per-layer FFN groups; its own prepare and loss."""

    name = "gslora"
    Args = DetGSLoRAArgs
    off_log = "groups_off"

    def prepare(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        a = self.args
        self.grad_clip = ctx.config.grad_clip
        self.beta = float(per_task(a.beta, ctx.position))
        self.focal = arch_of(model) == "deformable_detr"
        self.names = group_names(model)
        self.criterion = set_criterion(model)
        self.prototypes = None  # GS-LoRA++'s prototype term is classification's
        peft_model, self.groups = attach_detr_lora(model, rank=a.lora_rank, alpha=a.lora_alpha)
        return peft_model

    def loss(self, model, remain, forget, state: StepState):
        out_r, out_f, t_r, t_f = self._split(model, remain, forget)
        retain, logs = set_loss(self.criterion, out_r, t_r)
        forget_term, flogs = forget_loss(self.criterion, out_f, t_f, self.args.bound, self.focal,
                                         self.args.forget_queries)
        structure = group_lasso(self.groups.params)
        total = retain + self.beta * forget_term
        if self.args.sparsity == "penalty":
            total = total + self.args.alpha * structure
        return total, {"retain": float(retain.detach()), **flogs, "gl": float(structure.detach())}

    def _alpha(self, state: StepState) -> float:
        return self.args.alpha  # no warm-up of the sparsity weight on detectors

    def _selected(self, groups, delta_rel: list[float]) -> list[int]:
        return [b.index for b, zero in zip(groups.blocks, block_is_zero(groups)) if not zero]

    def _extra_info(self, selected: list[int]) -> dict:
        return {"groups": self.names, "selected_groups": [self.names[i] for i in selected]}

    def finish(self, model, ctx: TaskContext):
        merged, info = super().finish(model, ctx)
        self.criterion = None
        return merged, info


HEAD_PREFIXES = ("class_embed", "bbox_embed", "class_labels_classifier", "bbox_predictor")


@dataclass
class DetFinetuneArgs:
    forget_boxes: str = "remove"  # remove: forget boxes become background; relabel: random remaining class
    lam: float = 0.0  # L2 pull to the model before each task (l2 only)
    seed: int = 1337

    def validate(self):
        if self.forget_boxes not in ("remove", "relabel"):
            raise GsloraError(f"method_args.forget_boxes must be remove or relabel, got {self.forget_boxes!r}.")
        if self.lam < 0:
            raise GsloraError(f"method_args.lam must be ≥ 0, got {self.lam}.")


@register
class DetFinetune(DetectionMethod):
    name = "finetune"
    Args = DetFinetuneArgs

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self.anchors: list[dict[str, torch.Tensor]] = []

    def prepare(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self.grad_clip = ctx.config.grad_clip
        self.criterion = set_criterion(model)
        self.remain = torch.as_tensor(list(ctx.task.remain), dtype=torch.long)
        self.gen = torch.Generator().manual_seed(self.args.seed + ctx.task.index)
        for n, p in unwrap(model).named_parameters():
            p.requires_grad_(not n.startswith(HEAD_PREFIXES))
        if self.args.lam > 0:
            self.anchors.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return model

    def _forget_targets(self, t_f: list[dict]) -> list[dict]:
        if self.args.forget_boxes == "remove":
            return [{"class_labels": t["class_labels"][:0], "boxes": t["boxes"][:0]} for t in t_f]
        out = []
        for t in t_f:
            pick = torch.randint(len(self.remain), (len(t["class_labels"]),), generator=self.gen)
            out.append({"class_labels": self.remain[pick].to(t["class_labels"].device), "boxes": t["boxes"]})
        return out

    def loss(self, model, remain, forget, state: StepState):
        out_r, out_f, t_r, t_f = self._split(model, remain, forget)
        retain, _ = set_loss(self.criterion, out_r, t_r)
        forget_term, _ = set_loss(self.criterion, out_f, self._forget_targets(t_f))
        total = retain + forget_term
        logs = {"retain": float(retain.detach()), "forget_set": float(forget_term.detach())}
        if self.args.lam > 0 and self.anchors:
            named = dict(model.named_parameters())
            pen = sum((named[n] - ref).pow(2).sum() for anchor in self.anchors for n, ref in anchor.items())
            total = total + self.args.lam * pen
            logs["l2"] = float(pen.detach())
        return total, logs

    def finish(self, model, ctx: TaskContext):
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        for p in model.parameters():
            p.requires_grad_(True)
        self.criterion = None
        return model, {"trainable_params": trainable, "forget_boxes": self.args.forget_boxes}

    def state_dict(self) -> dict:
        return {"anchors": self.anchors}


@dataclass
class DetL2Args(DetFinetuneArgs):
    lam: float = 0.01  # weight of Σ_tasks ‖θ − θ*‖² (small: the sum runs over every backbone / transformer weight)
    forget_boxes: str = field(default="relabel")  # the paper's baseline protocol: the regularisation baselines
    # relabel forget samples


@register
class DetL2(DetFinetune):
    name = "l2"
    Args = DetL2Args


TUNE_FILE = "detection_tune.yaml"


def tune_space(name: str) -> dict:
    """The search space of ``gslora tune --detection`` for detection method ``name``: its entry in
    ``configs/detection_tune.yaml``, checked as a classification preset's ``tune:`` key is
    (:func:`gslora.presets.check_tune_space`, against the method's ``Args`` fields); {} when it has none (``gslora
    tune`` then refuses the method)."""
    from ..methods import REGISTRY

    known = REGISTRY["detection"]
    if name not in known:
        raise GsloraError(f"unknown detection method {name!r}; choose one of {', '.join(sorted(known))}.")
    cls = known[name]
    tune = (packaged_yaml(TUNE_FILE) or {}).get(name)
    if tune is None:
        return {}
    return check_tune_space(tune, asdict(cls.Args()) if cls.Args else {},
                            f"the search space of detection method {name!r} (configs/{TUNE_FILE})")
