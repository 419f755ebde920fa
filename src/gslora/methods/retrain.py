"""Two reference points of the paper's baseline protocol:

- ``retrain`` ("retrain (paper)" in tables): the GS-LoRA authors' reference, a freshly initialised model (same
  architecture) trained with CE on the replay subset of R_t for the same epoch budget; all parameters are tunable. Its
  Drop and H-Mean are measured against the pre-trained model. The reference of the unlearning literature (every
  training image of the remaining classes, the pre-training recipe) is ``retrain-full`` (``retrain_full.py``).
- ``head``: forgetting that lives only in the classification head (paper Fig. 6), the trivial baseline whose
  forgetting is easy to undo. ``mode: retrain`` fine-tunes only the head (backbone frozen) with CE on remain and
  relabelled forget samples; ``mode: mask`` trains nothing and zeroes the head rows of the forgotten classes (a linear
  head also gets a very negative bias; a CosFace head then scores those classes with cos = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import GsloraError
from ..models.checkpoint import create_from_config
from .base import Method, StepState, register
from .common import random_wrong_labels


@dataclass
class RetrainArgs:
    init_seed_offset: int  # the fresh model of task t is initialised with seed + offset + t

    def validate(self):
        pass


@register
class Retrain(Method):
    name = "retrain"
    label = "retrain (paper)"  # the GS-LoRA authors' reference; retrain-full is the literature's
    Args = RetrainArgs
    drop_against_pretrained = True
    uses_targets = False  # a fresh model meets any forgetting target before its first step

    def prepare(self, model, ctx):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.config.seed + self.args.init_seed_offset + ctx.task.index)
            fresh = create_from_config(model.config)
        fresh.requires_grad_(True)
        return fresh.to(ctx.device).train()

    def loss(self, model, remain, forget, state: StepState):
        x_r, y_r = remain
        ce = F.cross_entropy(model(x_r, y_r), y_r)
        return ce, {"ce_r": float(ce.detach())}


_HEAD_MODES = ("retrain", "mask")


@dataclass
class HeadArgs:
    mode: str  # retrain | mask

    def validate(self):
        if self.mode not in _HEAD_MODES:
            raise GsloraError(f"method_args.mode must be one of {', '.join(_HEAD_MODES)}, got {self.mode!r}.")


@register
class HeadForgetting(Method):
    name = "head"
    Args = HeadArgs
    moves_features = False  # the backbone is frozen: the embeddings a probe reads stay the original's

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self.trains = self.args.mode == "retrain"

    def prepare(self, model, ctx):
        model.requires_grad_(False)
        model.head.requires_grad_(True)
        self.remain_classes = tuple(ctx.task.remain)
        self.generator = torch.Generator().manual_seed(ctx.config.seed + 7919 * ctx.task.index)
        return model

    def loss(self, model, remain, forget, state: StepState):
        (x_r, y_r), (x_f, y_f) = remain, forget
        wrong = random_wrong_labels(y_f, self.remain_classes, self.generator)
        with torch.no_grad():  # the backbone is frozen: no graph through it
            emb = model.embed(torch.cat([x_r, x_f]))
        y = torch.cat([y_r, wrong])
        ce = F.cross_entropy(model.head(emb, y), y)
        return ce, {"ce": float(ce.detach())}

    def finish(self, model, ctx):
        info = {"head_mode": self.args.mode}
        if self.args.mode == "mask":
            rows = torch.as_tensor(list(ctx.task.forget), dtype=torch.long)
            with torch.no_grad():
                model.head.weight[rows.to(model.head.weight.device)] = 0.0
                bias = getattr(model.head, "bias", None)
                if bias is not None:
                    bias[rows.to(bias.device)] = -1e4
            info["trainable_params"] = int(rows.numel() * model.head.weight.shape[1])
        model.requires_grad_(False)
        return model, info
