"""Image folders: ``root/train/<class>/*`` + ``root/test/<class>/*`` (the CASIA-Face100 layout), or
``root/<class>/*`` split per class by a seeded ratio. Grey images become 3 channels; all are resized to the model's
input size. Unreadable files are reported by path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import GsloraError
from .base import DataBundle, ImageDataset

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def load_image(path: Path, image_size: int) -> torch.Tensor:
    """One image as a float tensor (3, S, S) in [0, 1]; a file PIL cannot read is a GsloraError naming it."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise GsloraError(f"cannot read image {path}: {e}; remove or replace the file.") from None
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


class FolderImages(ImageDataset):
    """Lazily loaded image files with known labels."""

    def __init__(self, paths: list[Path], targets: list[int], classes: list[str], image_size: int):
        self.paths = list(paths)
        self.targets = list(targets)
        self.classes = list(classes)
        self.image_size = image_size

    def __getitem__(self, i):
        return load_image(self.paths[i], self.image_size), self.targets[i]

    def subset(self, indices) -> FolderImages:
        indices = list(indices)
        return FolderImages(
            [self.paths[i] for i in indices], [self.targets[i] for i in indices], self.classes, self.image_size
        )


def _scan(root: Path) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise GsloraError(f"data folder {root} does not exist or is not a folder.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise GsloraError(f"data folder {root} holds no class folders; expected {root}/<class>/<image files>.")
    found = {}
    for d in class_dirs:
        files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise GsloraError(f"class folder {d} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
        for f in files:  # a header check: cheap, catches non-images early with the path
            try:
                with Image.open(f) as im:
                    im.size  # noqa: B018
            except (UnidentifiedImageError, OSError) as e:
                raise GsloraError(f"cannot read image {f}: {e}; remove or replace the file.") from None
        found[d.name] = files
    return found


def _split(files_by_class, classes, fraction, seed, salt):
    """Per class, a seeded permutation; the first ``fraction`` (at least 1, leaving at least 1) goes to part A."""
    a, b = ([], []), ([], [])
    for c, name in enumerate(classes):
        files = files_by_class[name]
        perm = np.random.default_rng([seed, salt, c]).permutation(len(files))
        n_a = int(round(fraction * len(files)))
        if fraction > 0 and len(files) >= 2:
            n_a = min(max(n_a, 1), len(files) - 1)
        else:
            n_a = min(n_a, len(files))
        for k, i in enumerate(perm):
            part = a if k < n_a else b
            part[0].append(files[i])
            part[1].append(c)
    return a, b


def folder_data(root: Path, image_size: int, seed: int = 1337, split_ratio: float = 0.7, val_ratio: float = 0.1):
    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_files = _scan(root / "train")
        test_files = _scan(root / "test")
        classes = sorted(train_files)
        extra = sorted(set(test_files) - set(train_files))
        if extra:
            raise GsloraError(f"test class {extra[0]!r} in {root / 'test'} has no folder in {root / 'train'}.")
        test = ([f for c in classes for f in test_files.get(c, [])],
                [i for i, c in enumerate(classes) for _ in test_files.get(c, [])])
    else:
        files = _scan(root)
        classes = sorted(files)
        train_files_split, test = _split(files, classes, split_ratio, seed, salt=1)
        train_files = {c: [] for c in classes}
        for f, t in zip(*train_files_split):
            train_files[classes[t]].append(f)
    val, train = _split(train_files, classes, val_ratio, seed, salt=2)
    make = lambda part: FolderImages(part[0], part[1], classes, image_size)  # noqa: E731
    return DataBundle(train=make(train), val=make(val), test=make(test), name=root.name)
