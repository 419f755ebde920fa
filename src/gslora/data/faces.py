"""Bundled data: scikit-image's 100 real LFW face crops, each photo one class, seen through seeded augmentations.

Honest scope: every split is made of *augmented views of the same 100 photos*, so accuracy here measures
augmentation-invariant recognition of 100 photos, not recognition of a person across different photos. It is real
face data that ships with an installed package, enough to show forgetting end to end on a CPU in minutes; use an
image folder (e.g. CASIA-Face100, ORL) for identity-level claims.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .base import DataBundle, TensorImages

NUM_FACES = 100
VIEWS = {"train": 20, "val": 5, "test": 10}


def _photos(num_faces: int = NUM_FACES) -> torch.Tensor:
    from skimage import data as skdata

    if not 2 <= num_faces <= NUM_FACES:
        raise ValueError(f"num_faces must be in 2..{NUM_FACES}, got {num_faces}")
    faces = np.asarray(skdata.lfw_subset()[:num_faces], dtype=np.float32)  # (100, 25, 25) in [0, 1]
    return torch.from_numpy(faces).unsqueeze(1)


def _augment(image_size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.7, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(12),
            v2.ColorJitter(brightness=0.35, contrast=0.35),
        ]
    )


def make_views(photos: torch.Tensor, n_views: int, image_size: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """``n_views`` random augmented views of every photo, as uint8 (N, 3, S, S); fully determined by ``seed``."""
    big = F.interpolate(photos, size=(image_size * 2, image_size * 2), mode="bilinear", align_corners=False)
    aug = _augment(image_size)
    out, targets = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for c in range(photos.shape[0]):
            for _ in range(n_views):
                view = aug(big[c])
                view = view + 0.03 * torch.randn_like(view)
                out.append(view.clamp(0, 1))
                targets.append(c)
    images = (torch.stack(out).expand(-1, 3, -1, -1) * 255).round().to(torch.uint8).contiguous()
    return images, targets


def bundled_faces(image_size: int = 24, seed: int = 1337, views: dict | None = None,
                  num_faces: int = NUM_FACES) -> DataBundle:
    """``views`` overrides the number of views per split (train 20, val 5, test 10); ``num_faces`` takes the first
    photos only (tests use fewer classes)."""
    views = {**VIEWS, **(views or {})}
    photos = _photos(num_faces)
    classes = [f"lfw{c:03d}" for c in range(photos.shape[0])]
    splits = {}
    for k, (name, n) in enumerate(views.items()):
        images, targets = make_views(photos, n, image_size, seed=seed * 10 + k)
        splits[name] = TensorImages(images, targets, classes)
    return DataBundle(train=splits["train"], val=splits["val"], test=splits["test"], name="faces")
