"""``retrain-full``: the reference every unlearning paper uses. A freshly initialised model (same architecture, the
full-size head) trained from scratch on *every* training image of the remaining classes with the pre-training recipe
(:func:`gslora.pretrain.pretrain`: its step budget, augmentation, early stopping on the validation images of the
remaining classes, best-validation weights). It never sees an image of a forgotten class, so it forgets by
construction; its wall time (``method_info.retrain_seconds``) is the cost GS-LoRA exists to avoid.

``retrain`` (labelled "retrain (paper)") is the GS-LoRA authors' weaker reference: a fresh model trained on the
replay subset only, for the forgetting budget.

Data: the whole training split from :meth:`TaskContext.full_training_data` (an error when there is none) restricted
to ``task.remain``; the whole validation split (``TaskContext.val_data``) restricted likewise, or no validation (the
whole budget, last weights) when the context has none. The recipe is :class:`gslora.config.PretrainConfig` with
``method_args.pretrain`` overriding its defaults; seed and device come from the run unless set there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from ..config import PretrainConfig, from_dict
from ..data.base import DataBundle, ImageDataset
from ..errors import GsloraError
from ..models.checkpoint import create_from_config
from .base import Method, register
from .common import dataset_targets, indices_of_classes


@dataclass
class RetrainFullArgs:
    init_seed_offset: int  # the fresh model of task t is initialised with seed + offset + t (as ``retrain``)
    pretrain: dict = field(default_factory=dict)  # PretrainConfig fields overriding its defaults (the recipe)

    def validate(self):
        from_dict(PretrainConfig, self.pretrain, where="method_args.pretrain").validate()


class _Indexed(ImageDataset):
    """Items ``indices`` of a dataset that has no ``subset`` (labels known without loading pixels)."""

    def __init__(self, dataset: Dataset, indices: list[int], classes: list[str]):
        self.dataset, self.indices, self.classes = dataset, list(indices), list(classes)
        parent = dataset_targets(dataset)
        self.targets = [parent[i] for i in self.indices]

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


def restrict(dataset: Dataset, indices: list[int], num_classes: int) -> ImageDataset:
    """The items ``indices`` of ``dataset`` as an :class:`ImageDataset` keeping the full class list."""
    if hasattr(dataset, "subset") and hasattr(dataset, "classes"):
        return dataset.subset(indices)
    classes = list(getattr(dataset, "classes", None) or [str(c) for c in range(num_classes)])
    return _Indexed(dataset, indices, classes)


def retrain_from_scratch(template, train: Dataset, val: Dataset | None, classes, cfg: PretrainConfig,
                         init_seed: int, device=None, progress: bool = False,
                         fresh: torch.nn.Module | None = None) -> tuple[torch.nn.Module, dict, list]:
    """A fresh model of ``template``'s architecture (``template.config``, full head; or ``fresh``, a freshly
    initialised one, trained in place) pre-trained with ``cfg`` on the items of ``train`` (and ``val``, for early
    stopping) whose label is in ``classes``.

    Returns (model, pretrain stats + ``retrain_seconds`` / ``train_images`` / ``val_images``, the train indices
    used). The global random state is left as it was."""
    from ..pretrain import pretrain  # not at import time: gslora.pretrain imports the engine, which imports methods

    num_classes = int(template.config["num_classes"])
    train_idx = indices_of_classes(train, classes)
    if not train_idx:
        raise GsloraError("retraining from scratch needs training images of the remaining classes; there are none.")
    train_part = restrict(train, train_idx, num_classes)
    val_part = restrict(val, indices_of_classes(val, classes), num_classes) if val is not None else None
    empty = restrict(train, [], num_classes)
    bundle = DataBundle(train=train_part, val=val_part if val_part is not None else empty, test=empty,
                        name="remaining classes")
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        if fresh is None:
            fresh = create_from_config(template.config)
        if device is not None:
            fresh = fresh.to(device)
        stats = pretrain(fresh, bundle, cfg, progress=progress)
    stats = {**stats, "retrain_seconds": time.perf_counter() - t0, "train_images": len(train_idx),
             "val_images": len(val_part) if val_part is not None else 0}
    return fresh, stats, train_idx


def recipe(overrides: dict, seed: int, device) -> PretrainConfig:
    """The pre-training recipe: PretrainConfig defaults, then the run's seed and device, then ``overrides``."""
    return from_dict(PretrainConfig, {"seed": seed, "device": str(device), **overrides},
                     where="method_args.pretrain").validate()


# what of the pretrain stats goes to method_info (the per-check curve stays out of results.json)
_KEEP = ("max_steps", "steps", "best_step", "stopped_early", "budget_rule", "train_acc", "val_acc", "learned",
         "not_learned_reason")


@register
class RetrainFull(Method):
    name = "retrain-full"
    label = "retrain (full)"
    Args = RetrainFullArgs
    trains = False  # trained inside finish by the pre-training loop, not by the engine's forgetting loop
    drop_against_pretrained = True
    uses_targets = False  # never sees a forgotten class: meets any forgetting target by construction
    data_needs = "every training image of the remaining classes"  # refused under few-shot / missing classes

    def prepare(self, model, ctx):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.config.seed + self.args.init_seed_offset + ctx.task.index)
            fresh = create_from_config(model.config)
        return fresh.requires_grad_(True).to(ctx.device)  # every parameter is trained (tunable ratio 100%)

    def finish(self, model, ctx):
        train, source = ctx.full_training_data()
        if train is None:
            raise GsloraError("retrain-full needs the whole training split (TaskContext.train_data); this context "
                              "has only the replay / forget subsets. Use `retrain` for the replay-subset reference.")
        cfg = recipe(self.args.pretrain, ctx.config.seed, ctx.device)
        trained, stats, idx = retrain_from_scratch(
            model, train, ctx.val_data, ctx.task.remain, cfg,
            init_seed=ctx.config.seed + self.args.init_seed_offset + ctx.task.index, device=ctx.device,
            progress=ctx.progress, fresh=model)  # the model prepare initialised
        self.train_indices = idx  # positions in the training split (tests check them; kept with the method state)
        trained.requires_grad_(False)
        info = {"retrain_seconds": stats["retrain_seconds"], "train_images": stats["train_images"],
                "val_images": stats["val_images"], "train_data": source,
                "validation": "validation images of the remaining classes" if ctx.val_data is not None else
                "none (the context has no validation split: whole budget, last weights)",
                "pretrain": {k: stats[k] for k in _KEEP if k in stats}}
        return trained, info
