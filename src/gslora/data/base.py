"""The dataset types every source produces (the name → loader table is :mod:`gslora.data.sources`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ..errors import GsloraError


class ImageDataset(Dataset):
    """Images as float tensors in [0, 1] of shape (3, H, W) with integer labels.

    ``targets`` (a list of ints) and ``classes`` (names) are always available without loading any image, so plans
    and subsets never touch pixels.
    """

    classes: list[str]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.targets)


class TensorImages(ImageDataset):
    """Images held in memory as one uint8 tensor (N, 3, H, W)."""

    def __init__(self, images: torch.Tensor, targets, classes):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError("images must be a uint8 tensor of shape (N, 3, H, W)")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)

    def __getitem__(self, i):
        return self.images[i].float().div_(255.0), self.targets[i]

    def subset(self, indices) -> TensorImages:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return TensorImages(self.images[idx], [self.targets[i] for i in idx.tolist()], self.classes)


@dataclass
class DataBundle:
    """Train / validation / test splits over the same classes."""

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    name: str

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "classes": self.num_classes,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
        }


def check_data_matches(classes: list[str], data: DataBundle) -> None:
    if len(data.classes) != len(classes):
        raise GsloraError(f"the data has {len(data.classes)} classes but the model has {len(classes)}; use the data "
                          "the model was trained on.")
    if list(data.classes) != list(classes):
        diff = next(i for i, (a, b) in enumerate(zip(data.classes, classes)) if a != b)
        raise GsloraError(f"data class {diff} is {data.classes[diff]!r} but the model's class {diff} is "
                          f"{classes[diff]!r}; use the data the model was trained on.")
