"""Image folders: ``root/train/<class>/*`` + ``root/test/<class>/*`` (the CASIA-Face100 layout), or
``root/<class>/*`` split per class by a seeded ratio. Grey images become 3 channels; all are brought to the model's
input size: resized straight to it (gslora's own models), or, when the model's preprocessing carries a resize /
centre-crop policy (``preprocessing["resize_crop"]`` of an imported model, see :func:`resize_and_crop`), resized
then centre-cropped as the model's own library does. Unreadable files are reported by path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import GsloraError
from .base import DataBundle, ImageDataset

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
            "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


def resize_and_crop(im: Image.Image, image_size: int, policy: dict | None = None) -> Image.Image:
    """``im`` brought to ``image_size`` × ``image_size`` as ``policy`` says (PIL operations, as the libraries do on
    PIL images):

    - ``None``: resized straight to the input size, bilinear (gslora's own models; the default);
    - ``{"resize": N, "crop": S, "interpolation": "bicubic", "crop_offset": "round"}``: the shorter side resized to
      N keeping the aspect ratio (the longer side ``int(N · long / short)``, as torchvision and HF compute it), or,
      with ``"resize": [H, W]``, resized to exactly H × W; then the centre S × S cut out, its top-left corner at
      ``round((H - S) / 2)`` (torchvision, timm) or ``(H - S) // 2`` (``"crop_offset": "floor"``: Hugging Face).
      Without ``crop`` only the resize is done; a result that is not the input size is finally resized to it.
    """
    if not policy:
        return im.resize((image_size, image_size), Image.BILINEAR)
    resample = RESAMPLE[policy.get("interpolation") or "bilinear"]
    resize = policy.get("resize")
    if isinstance(resize, int):
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(resize * long / short)
        im = im.resize((resize, new_long) if w <= h else (new_long, resize), resample)
    elif resize:
        im = im.resize((int(resize[1]), int(resize[0])), resample)
    crop = policy.get("crop")
    if crop:
        w, h = im.size
        if policy.get("crop_offset") == "floor":
            top, left = (h - crop) // 2, (w - crop) // 2
        else:
            top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
        im = im.crop((left, top, left + crop, top + crop))  # PIL pads with black where the box leaves the image
    if im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), resample)
    return im


def cache_budget_bytes() -> int:
    """Bytes of decoded images :func:`load_image` keeps in memory per process: ``GSLORA_IMAGE_CACHE_MB`` (default
    1024; 0 turns the cache off). At 112 px an image takes 37 KB, so the default holds about 28 000 images."""
    raw = os.environ.get("GSLORA_IMAGE_CACHE_MB", "1024")
    try:
        mb = float(raw)
    except ValueError:
        raise GsloraError(f"GSLORA_IMAGE_CACHE_MB must be a number of megabytes, got {raw!r}.") from None
    return max(0, int(mb * 2**20))


class _DecodedCache:
    """Decoded, resized images (uint8, 3 × S × S) by file, size and resize policy, up to a byte budget: a training
    loop reads the same few hundred files thousands of times, and decoding them was an eighth of a forgetting run's
    time on ORL. Images past the budget are decoded on every read, as without the cache; a file changed on disk
    after its first read is not re-read within the process."""

    def __init__(self):
        self.images: dict[tuple, torch.Tensor] = {}
        self.nbytes = 0

    def get(self, key: tuple) -> torch.Tensor | None:
        return self.images.get(key)

    def put(self, key: tuple, image: torch.Tensor) -> None:
        size = image.numel() * image.element_size()
        if self.nbytes + size <= cache_budget_bytes():
            self.images[key] = image
            self.nbytes += size

    def clear(self) -> None:
        self.images.clear()
        self.nbytes = 0


DECODED = _DecodedCache()


def _decode(path: Path, image_size: int, resize_crop: dict | None) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            im = resize_and_crop(im.convert("RGB"), image_size, resize_crop)
            arr = np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise GsloraError(f"cannot read image {path}: {e}; remove or replace the file.") from None
    return torch.from_numpy(arr).permute(2, 0, 1)


def load_image(path: Path, image_size: int, resize_crop: dict | None = None) -> torch.Tensor:
    """One image as a float tensor (3, S, S) in [0, 1] (see :func:`resize_and_crop` for ``resize_crop``); a file PIL
    cannot read is a GsloraError naming it. Decoded images are kept in :data:`DECODED` (see
    :func:`cache_budget_bytes`); the result is a new tensor either way."""
    key = (str(path), image_size, repr(sorted((resize_crop or {}).items())))
    pixels = DECODED.get(key)
    if pixels is None:
        pixels = _decode(path, image_size, resize_crop)
        DECODED.put(key, pixels)
    return pixels.float().div_(255.0)


class FolderImages(ImageDataset):
    """Lazily loaded image files with known labels."""

    def __init__(self, paths: list[Path], targets: list[int], classes: list[str], image_size: int,
                 resize_crop: dict | None = None):
        self.paths = list(paths)
        self.targets = list(targets)
        self.classes = list(classes)
        self.image_size = image_size
        self.resize_crop = resize_crop

    def __getitem__(self, i):
        return load_image(self.paths[i], self.image_size, self.resize_crop), self.targets[i]

    def subset(self, indices) -> FolderImages:
        indices = list(indices)
        return FolderImages(
            [self.paths[i] for i in indices], [self.targets[i] for i in indices], self.classes, self.image_size,
            self.resize_crop,
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
        for f in files:  # every image decoded once, before anything is written: a truncated file is named here
            try:
                with Image.open(f) as im:
                    im.load()
            except (UnidentifiedImageError, OSError, ValueError) as e:
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


def folder_data(root: Path, image_size: int, seed: int = 1337, split_ratio: float = 0.7, val_ratio: float = 0.1,
                resize_crop: dict | None = None):
    """``resize_crop``: the model's resize / centre-crop policy (:func:`resize_and_crop`; None: straight resize)."""
    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_files = _scan(root / "train")
        test_files = _scan(root / "test")
        classes = sorted(train_files)
        extra = sorted(set(test_files) - set(train_files))
        if extra:
            raise GsloraError(f"test class {extra[0]!r} in {root / 'test'} has no folder in {root / 'train'}.")
        absent = sorted(set(train_files) - set(test_files))
        if absent:
            more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
            raise GsloraError(f"class {absent[0]!r}{more} has a folder in {root / 'train'} but none in "
                              f"{root / 'test'}; every class needs test images to be scored.")
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
    make = lambda part: FolderImages(part[0], part[1], classes, image_size, resize_crop)  # noqa: E731
    return DataBundle(train=make(train), val=make(val), test=make(test), name=root.name)
