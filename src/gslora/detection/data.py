"""Detection data: COCO-format folders (annotation JSON + images) and the bundled synthetic digits set.

Every source produces :class:`DetectionData`: train / val / test :class:`DetectionSet` over the same categories.
A sample is ``(x, y)``: ``x`` the image resized to ``image_size`` × ``image_size`` and normalised with the ImageNet
mean / std (what DETR-family models expect), ``y`` a float tensor (max_boxes, 5) of ``[label, cx, cy, w, h]`` rows
(box normalised to [0, 1]; padding rows have label −1). Fixed shapes let the library's engine batch detection data
with PyTorch's default collate, exactly as it batches classification data.

Boxes stay exact: a plain resize scales x and y independently and IoU is invariant to that, so AP is computed against
the annotations in the original image's pixels (predictions are scaled back).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.base import DataBundle
from ..errors import GsloraError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@dataclass
class DetImage:
    """One image and its boxes. ``boxes`` are COCO ``[x, y, w, h]`` in the image's own pixels; ``labels`` index the
    dataset's categories (0..C−1). Pixels come from ``path`` (a folder image) or ``array`` (H, W, 3 uint8)."""

    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    path: Path | None = None
    array: np.ndarray | None = field(default=None, repr=False)

    def pixels(self) -> np.ndarray:
        if self.array is not None:
            return self.array
        with Image.open(self.path) as im:
            return np.asarray(im.convert("RGB"))

    def keep(self, classes) -> DetImage:
        """The same image with only the boxes of ``classes`` (other objects become background)."""
        mask = np.isin(self.labels, np.asarray(sorted(classes), dtype=np.int64))
        return replace(self, boxes=self.boxes[mask], labels=self.labels[mask])


class DetectionSet(Dataset):
    """Images with boxes, resized to ``image_size``; ``y`` padded to ``max_boxes`` rows (default: the most boxes of
    any image here). ``classes`` are the category names; ``category_ids`` their ids in the source annotations."""

    def __init__(self, images: list[DetImage], classes: list[str], image_size: int,
                 category_ids: list[int] | None = None, max_boxes: int | None = None):
        self.images = list(images)
        self.classes = list(classes)
        self.category_ids = list(category_ids) if category_ids is not None else list(range(1, len(classes) + 1))
        self.image_size = int(image_size)
        most = max((len(im.labels) for im in self.images), default=0)
        self.max_boxes = max(1, most if max_boxes is None else max(max_boxes, most))
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.images)

    def image_tensor(self, i: int) -> torch.Tensor:
        """Image ``i`` as a float tensor in [0, 1], (3, S, S). An in-memory image at another size than the model's is
        resized once and kept (uint8)."""
        t = self._cache.get(i)
        if t is None:
            im = self.images[i]
            arr = im.pixels()
            resized = arr.shape[0] != self.image_size or arr.shape[1] != self.image_size
            if resized:
                arr = np.asarray(Image.fromarray(arr).resize((self.image_size, self.image_size), Image.BILINEAR))
            t = torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1)  # a copy: arr can be read-only
            if im.array is not None and resized:
                self._cache[i] = t
        return t.float().div_(255.0)

    def target(self, i: int) -> torch.Tensor:
        im = self.images[i]
        y = torch.full((self.max_boxes, 5), -1.0)
        n = len(im.labels)
        if n:
            b = torch.as_tensor(im.boxes, dtype=torch.float32)
            cx = (b[:, 0] + b[:, 2] / 2) / im.width
            cy = (b[:, 1] + b[:, 3] / 2) / im.height
            y[:n, 0] = torch.as_tensor(im.labels, dtype=torch.float32)
            y[:n, 1:] = torch.stack([cx, cy, b[:, 2] / im.width, b[:, 3] / im.height], dim=1)
        return y

    def __getitem__(self, i):
        return (self.image_tensor(i) - MEAN) / STD, self.target(i)

    # --- views -------------------------------------------------------------------------------------------------------
    def _like(self, images: list[DetImage]) -> DetectionSet:
        out = DetectionSet(images, self.classes, self.image_size, self.category_ids)
        return out

    def restrict(self, classes) -> DetectionSet:
        """The images holding at least one box of ``classes``, each with only those boxes (the paper's detection
        protocol: training images keep only the annotations of their set)."""
        kept = [im.keep(classes) for im in self.images]
        return self._like([im for im in kept if len(im.labels)])

    def subset(self, indices) -> DetectionSet:
        return self._like([self.images[i] for i in indices])

    def with_labels(self, labels_of) -> DetectionSet:
        """The same images with labels mapped by ``labels_of(image_index, labels) -> labels`` (relabelling)."""
        return self._like([replace(im, labels=np.asarray(labels_of(i, im.labels), dtype=np.int64))
                           for i, im in enumerate(self.images)])

    def box_counts(self) -> list[int]:
        counts = [0] * len(self.classes)
        for im in self.images:
            for c in im.labels:
                counts[int(c)] += 1
        return counts


def targets_from_tensor(y: torch.Tensor) -> list[dict]:
    """The padded ``(B, M, 5)`` batch targets as the list of dicts transformers' DETR losses take
    (``class_labels``: long (n,), ``boxes``: (n, 4) normalised cx, cy, w, h)."""
    out = []
    for row in y:
        keep = row[:, 0] >= 0
        out.append({"class_labels": row[keep, 0].long(), "boxes": row[keep, 1:]})
    return out


@dataclass
class DetectionData(DataBundle):
    """Train / validation / test splits (each a :class:`DetectionSet`) over the same categories."""

    def describe(self) -> dict:
        return {"name": self.name, "classes": self.num_classes, "image_size": self.train.image_size,
                **{s: len(getattr(self, s)) for s in ("train", "val", "test")},
                "boxes": {s: sum(getattr(self, s).box_counts()) for s in ("train", "val", "test")}}


# --- COCO-format folders -------------------------------------------------------------------------------------------

SPLITS = ("train", "val", "test")


def read_coco(json_path: str | Path, image_root: str | Path | None = None,
              categories: list[dict] | None = None) -> tuple[list[DetImage], list[dict]]:
    """Read one COCO annotation file. Returns (images, categories sorted by id). Every problem a user can fix is a
    :class:`GsloraError` naming the file and the entry: an image file that is not there, a box outside its image or
    with no area, an annotation of an unknown category or image. ``categories`` (from another split's file) must
    match when given."""
    json_path = Path(json_path)
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GsloraError(f"annotation file {json_path} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GsloraError(f"annotation file {json_path} is not valid JSON ({e}); give a COCO instances file.") from None
    if not isinstance(doc, dict) or not all(k in doc for k in ("images", "annotations", "categories")):
        raise GsloraError(f"{json_path} is not a COCO annotation file: it needs the keys images, annotations and "
                          "categories.")
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    if not cats:
        raise GsloraError(f"{json_path} lists no categories.")
    if categories is not None and [(c["id"], c["name"]) for c in cats] != [(c["id"], c["name"]) for c in categories]:
        raise GsloraError(f"the categories of {json_path} differ from the training split's; every split must list "
                          "the same categories.")
    index = {c["id"]: i for i, c in enumerate(cats)}
    root = Path(image_root) if image_root is not None else json_path.parent
    images: dict[int, dict] = {}
    for entry in doc["images"]:
        path = _find_image(root, json_path.parent, entry["file_name"])
        if path is None:
            raise GsloraError(f"image {entry['file_name']!r} (id {entry['id']}) of {json_path} is missing: looked in "
                              f"{root}; put the file there or remove the image from the annotations.")
        w, h = entry.get("width"), entry.get("height")
        if not w or not h:
            with Image.open(path) as im:
                w, h = im.size
        images[entry["id"]] = {"path": path, "width": int(w), "height": int(h), "boxes": [], "labels": []}
    for a in doc["annotations"]:
        if a.get("iscrowd", 0):
            continue
        if a["category_id"] not in index:
            known = ", ".join(str(c["id"]) for c in cats[:10])
            raise GsloraError(f"annotation {a.get('id')} of {json_path} has category_id {a['category_id']}, which "
                              f"is not among the file's categories ({known}{', ...' if len(cats) > 10 else ''}); "
                              "fix the id or add the category.")
        if a["image_id"] not in images:
            raise GsloraError(f"annotation {a.get('id')} of {json_path} refers to image_id {a['image_id']}, which "
                              "the file's images do not list.")
        im = images[a["image_id"]]
        x, y, w, h = (float(v) for v in a["bbox"])
        tol = 1.0  # COCO's own boxes overshoot their image by up to a pixel now and then
        if w <= 0 or h <= 0 or x < -tol or y < -tol or x + w > im["width"] + tol or y + h > im["height"] + tol:
            raise GsloraError(f"annotation {a.get('id')} of {json_path} has bbox {a['bbox']} outside its image "
                              f"({im['width']}x{im['height']}, file {im['path'].name}) or without area; boxes are "
                              "[x, y, width, height] in pixels inside the image.")
        x0, y0 = max(0.0, x), max(0.0, y)
        im["boxes"].append([x0, y0, min(x + w, im["width"]) - x0, min(y + h, im["height"]) - y0])
        im["labels"].append(index[a["category_id"]])
    out = [DetImage(image_id=i, width=d["width"], height=d["height"], path=d["path"],
                    boxes=np.asarray(d["boxes"], dtype=np.float64).reshape(-1, 4),
                    labels=np.asarray(d["labels"], dtype=np.int64)) for i, d in images.items()]
    return out, cats


def _find_image(root: Path, json_dir: Path, name: str) -> Path | None:
    for base in (root, json_dir, json_dir.parent, json_dir.parent / "images"):
        p = base / name
        if p.is_file():
            return p
    return None


def _split_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    """(annotation file, image folder) per split found in a COCO folder."""
    found: dict[str, tuple[Path, Path]] = {}
    for split in SPLITS:
        names = [f"{split}.json", f"annotations/{split}.json", f"annotations/instances_{split}.json"]
        names += [str(p.relative_to(folder)) for p in sorted(folder.glob(f"annotations/instances_{split}*.json"))]
        for n in names:
            p = folder / n
            if p.is_file():
                images = next((d for d in (folder / split, folder / p.stem.replace("instances_", ""),
                                           folder / "images" / split, folder / "images") if d.is_dir()), folder)
                found[split] = (p, images)
                break
    return found


def coco_folder(folder: str | Path, image_size: int, seed: int = 1337, val_ratio: float = 0.1,
                test_ratio: float = 0.2) -> DetectionData:
    """A COCO-format folder: ``train.json`` / ``val.json`` / ``test.json`` (or ``annotations/instances_<split>*.json``)
    with images in ``<split>/``, ``images/`` or beside the file. Without a test file the training images are split
    (seeded) into train / test; without a val file ``val_ratio`` of the training images become validation."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise GsloraError(f"detection data {str(folder)!r} is not a folder; give a COCO-format folder (train.json + "
                          "images) or 'digits' for the bundled demo set.")
    files = _split_files(folder)
    if "train" not in files:
        jsons = sorted(folder.glob("*.json"))
        if len(jsons) == 1:
            files["train"] = (jsons[0], folder)
        else:
            raise GsloraError(f"{folder} has no COCO annotation file: expected train.json (optionally val.json, "
                              "test.json) or annotations/instances_train*.json.")
    train, cats = read_coco(*files["train"])
    splits = {"train": train}
    for s in ("val", "test"):
        if s in files:
            splits[s], _ = read_coco(*files[s], categories=cats)
    rng = np.random.default_rng([seed, 12])
    if "test" not in splits:
        perm = rng.permutation(len(train)).tolist()
        n_test = max(1, int(round(test_ratio * len(train))))
        splits["test"] = [train[i] for i in sorted(perm[:n_test])]
        splits["train"] = train = [train[i] for i in sorted(perm[n_test:])]
    if "val" not in splits:
        perm = rng.permutation(len(train)).tolist()
        n_val = int(round(val_ratio * len(train)))
        splits["val"] = [train[i] for i in sorted(perm[:n_val])]
        splits["train"] = [train[i] for i in sorted(perm[n_val:])]
    if not splits["train"]:
        raise GsloraError(f"{folder} leaves no training images once test / validation images are set aside.")
    names = [c["name"] for c in cats]
    ids = [c["id"] for c in cats]
    sets = {s: DetectionSet(v, names, image_size, ids) for s, v in splits.items()}
    return DetectionData(train=sets["train"], val=sets["val"], test=sets["test"], name=folder.name)


def write_coco(images: list[DetImage], classes: list[str], json_path: str | Path, image_dir: str | Path,
               category_ids: list[int] | None = None) -> Path:
    """Write images (PNG) and a COCO annotation file for them (the bundled set as a folder, test fixtures)."""
    json_path, image_dir = Path(json_path), Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    ids = category_ids or list(range(1, len(classes) + 1))
    doc = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in zip(ids, classes)]}
    ann = 1
    for im in images:
        name = f"{im.image_id:06d}.png"
        Image.fromarray(im.pixels()).save(image_dir / name)
        doc["images"].append({"id": im.image_id, "file_name": name, "width": im.width, "height": im.height})
        for b, c in zip(im.boxes, im.labels):
            doc["annotations"].append({"id": ann, "image_id": im.image_id, "category_id": ids[int(c)],
                                       "bbox": [float(v) for v in b], "area": float(b[2] * b[3]), "iscrowd": 0})
            ann += 1
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc))
    return json_path


# --- the bundled demo set: handwritten digits on photos ----------------------------------------------------------

_BACKGROUNDS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "grass", "gravel", "brick",
                "hubble_deep_field", "immunohistochemistry", "cell", "page", "text", "retina")
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _backgrounds() -> list[np.ndarray]:
    """The photos and textures that ship inside scikit-image (no download), as RGB uint8."""
    import skimage.data as sk

    out = []
    for name in _BACKGROUNDS:
        try:
            im = getattr(sk, name)()
        except Exception:  # a photo this scikit-image does not bundle: use the others
            continue
        im = np.asarray(im)
        if im.dtype != np.uint8:
            im = (255 * (im.astype(np.float64) / max(float(im.max()), 1e-9))).astype(np.uint8)
        if im.ndim == 2:
            im = np.stack([im] * 3, axis=-1)
        out.append(np.ascontiguousarray(im[..., :3]))
    if not out:
        raise GsloraError("scikit-image bundles none of the demo's background photos; reinstall scikit-image.")
    return out


def _paste_digit(canvas: np.ndarray, digit: np.ndarray, x: int, y: int, size: int, rng) -> list[float]:
    """Alpha-blend an 8x8 digit (0..16), scaled to ``size`` px, at (x, y) in a colour that contrasts with the spot;
    return its exact box (the extent of its visible ink) as [x, y, w, h]."""
    alpha = np.asarray(Image.fromarray((digit * (255 / 16)).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                       dtype=np.float64) / 255.0
    alpha[alpha < 0.15] = 0.0
    patch = canvas[y:y + size, x:x + size].astype(np.float64)
    bright = patch.mean() > 110
    base = rng.uniform(0, 60, size=3) if bright else rng.uniform(195, 255, size=3)
    canvas[y:y + size, x:x + size] = np.clip(patch * (1 - alpha[..., None]) + base * alpha[..., None], 0, 255)
    ys, xs = np.nonzero(alpha)
    return [float(x + xs.min()), float(y + ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def digits_images(n: int, digits: np.ndarray, digit_labels: np.ndarray, backgrounds: list[np.ndarray],
                  image_size: int, rng, first_id: int = 1, max_objects: int = 3,
                  scale: tuple[float, float] = (0.25, 0.45)) -> list[DetImage]:
    """``n`` images: a random crop of a random background, with 1..max_objects digits (drawn from ``digits``) pasted
    at random positions and scales (side = scale × image size), not overlapping."""
    out = []
    for k in range(n):
        bg = backgrounds[rng.integers(len(backgrounds))]
        crop = int(rng.integers(min(bg.shape[:2]) // 3, min(bg.shape[:2]) + 1))
        y0, x0 = rng.integers(bg.shape[0] - crop + 1), rng.integers(bg.shape[1] - crop + 1)
        canvas = np.asarray(Image.fromarray(bg[y0:y0 + crop, x0:x0 + crop]).resize((image_size, image_size),
                                                                                   Image.BILINEAR)).copy()
        boxes, labels, taken = [], [], []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):
                size = int(rng.integers(int(scale[0] * image_size), int(scale[1] * image_size) + 1))
                x, y = int(rng.integers(0, image_size - size + 1)), int(rng.integers(0, image_size - size + 1))
                if all(x + size <= a or a + s <= x or y + size <= b or b + s <= y for a, b, s in taken):
                    break
            else:
                continue
            j = int(rng.integers(len(digits)))
            boxes.append(_paste_digit(canvas, digits[j], x, y, size, rng))
            labels.append(int(digit_labels[j]))
            taken.append((x, y, size))
        out.append(DetImage(image_id=first_id + k, width=image_size, height=image_size, array=canvas,
                            boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                            labels=np.asarray(labels, dtype=np.int64)))
    return out


def digits_data(image_size: int = 64, n_train: int = 8000, n_val: int = 200, n_test: int = 500,
                seed: int = 1337, max_objects: int = 2, scale: tuple[float, float] = (0.35, 0.5)) -> DetectionData:
    """The bundled detection demo: scikit-learn's 1,797 handwritten digits (8x8 scans, 10 categories) pasted onto
    crops of scikit-image's photos and textures; built at run time, seeded, exact boxes. Train, validation and test
    images use disjoint digit scans (60 / 15 / 25%), so test digits are handwriting the model never saw."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng([seed, 2024])
    perm = rng.permutation(len(d.target))
    a, b = int(0.6 * len(perm)), int(0.75 * len(perm))
    parts = {"train": perm[:a], "val": perm[a:b], "test": perm[b:]}
    bgs = _backgrounds()
    sets, first = {}, 1
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        idx = parts[split]
        images = digits_images(n, d.images[idx], d.target[idx], bgs, image_size, np.random.default_rng([seed, first]),
                               first_id=first, max_objects=max_objects, scale=tuple(scale))
        sets[split] = DetectionSet(images, DIGIT_NAMES, image_size)
        first += n
    return DetectionData(train=sets["train"], val=sets["val"], test=sets["test"], name="digits")


BUNDLED_DETECTION = ("digits", "bundled")


def load_detection_data(spec: str, image_size: int, seed: int = 1337, **kwargs) -> DetectionData:
    """``"digits"`` (the bundled demo set) or a COCO-format folder."""
    if spec in BUNDLED_DETECTION:
        return digits_data(image_size=image_size, seed=seed, **{k: v for k, v in kwargs.items()
                                                                 if k in ("n_train", "n_val", "n_test", "max_objects",
                                                                          "scale")})
    return coco_folder(spec, image_size=image_size, seed=seed,
                       **{k: v for k, v in kwargs.items() if k in ("val_ratio", "test_ratio")})
