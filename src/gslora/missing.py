"""The missing-class check of the ImageNet-100 protocol (the paper's setting).

When ``--head-subset`` cut a model's head to the data's classes (e.g. the 100 ImageNet-100 rows of a 1000-way head),
the classes cut away are in no task: neither forgotten nor replayed. The check scores images of those classes with
the *original full head* (every row, as loaded: :func:`gslora.models.importers.full_head`) on top of the *current*
backbone, before the first task and after each task: top-1 accuracy among all the original classes. A backbone that
kept its general features keeps this number; one damaged by forgetting loses it.

The images come from ``RunConfig.missing_check_data``: a folder of class folders named like the original head's
classes (e.g. ImageNet's validation images of the 900 classes outside the 100; folders of classes inside the subset
are skipped, so the whole validation folder may be given). They are loaded as the run's data is, with the model's
input size and resize / centre-crop policy.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .data.folder import FolderImages, _scan
from .errors import GsloraError
from .models.importers import full_head
from .models.registry import Classifier

NO_SUBSET = "the model's head was not cut to a subset of its classes (--head-subset)"
NO_FOLDER = "no folder of images of the classes outside the head subset was given (--missing-check-data)"


class MissingCheck:
    """Set up once per run (every error before anything is trained or written); :meth:`evaluate` per model state."""

    def __init__(self, dataset: FolderImages | None, head, skipped: str | None = None, info: dict | None = None):
        self.dataset, self.head, self.skipped, self.info = dataset, head, skipped, dict(info or {})

    @property
    def active(self) -> bool:
        return self.dataset is not None

    @classmethod
    def setup(cls, model: Classifier, folder: str | Path | None) -> MissingCheck:
        subset = model.config.get("head_subset")
        if not folder:
            return cls(None, None, skipped=NO_FOLDER if subset else NO_SUBSET)
        folder = Path(folder).expanduser()
        if not subset:
            raise GsloraError(f"--missing-check-data {folder} needs a model whose head was cut with --head-subset "
                              "(the check scores the classes cut away with the original full head).")
        head = full_head(model)
        if head is None:
            raise GsloraError("the model's original full head is not available (its head was cut before it was "
                              "saved); start from the original checkpoint with --head-subset to run the missing-class "
                              "check.")
        original = list(subset["original_classes"])
        kept = {original[r] for r in subset["rows"]}
        files = _scan(folder)
        unknown = sorted(c for c in files if c not in set(original))
        if unknown:
            raise GsloraError(f"{len(unknown)} class folder(s) of the missing-class check data {folder} are not "
                              f"classes of the original {len(original)}-way head (e.g. {unknown[0]!r}; its first "
                              f"classes: {', '.join(original[:3])}); name the folders like the head's classes "
                              "(--classes FILE names them).")
        outside = [c for c in sorted(files) if c not in kept]
        if not outside:
            raise GsloraError(f"the missing-class check data {folder} holds only classes of the head subset; it needs "
                              "images of the classes cut away.")
        index = {c: i for i, c in enumerate(original)}
        paths = [f for c in outside for f in files[c]]
        targets = [index[c] for c in outside for _ in files[c]]
        prep = model.config.get("preprocessing") or {}
        dataset = FolderImages(paths, targets, original, model.image_size, prep.get("resize_crop"))
        info = {"folder": str(folder.resolve()), "classes": len(outside), "images": len(paths),
                "subset_classes_skipped": len(files) - len(outside), "head_classes": len(original)}
        return cls(dataset, head, info=info)

    @torch.no_grad()
    def evaluate(self, model: Classifier, device, batch_size: int = 256, num_workers: int = 0,
                 autocast_dtype: torch.dtype | None = None) -> dict:
        """{"acc": top-1 % among the original classes, "images": n} of ``model``'s backbone under the full head."""
        device = torch.device(device)
        head = copy.deepcopy(self.head).to(device).eval()
        was_training = model.training
        model.eval()
        correct = total = 0
        for x, y in DataLoader(self.dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = head(model.embed(x.to(device)))
            correct += int((logits.argmax(-1).cpu() == y).sum())
            total += len(y)
        model.train(was_training)
        return {"acc": 100.0 * correct / total, "images": total}

    def summary(self, before: dict | None) -> dict:
        """What ``results["missing_check"]`` holds: the set-up (folder, classes, images) and the value before the
        first task, or why the check was skipped."""
        if not self.active:
            return {"skipped": self.skipped}
        return {**self.info, "before": before}
