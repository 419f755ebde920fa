"""Hugging Face image classifiers (ViT, DeiT, BEiT, Dinov2): a ``save_pretrained`` folder in, the same out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from ...errors import GsloraError
from ..registry import Classifier
from .common import (
    _apply_override,
    _interpolation,
    _preprocessing,
    _straight,
    _wrap,
)

HF_CLASSES = (
    "ViTForImageClassification", "DeiTForImageClassification", "BeitForImageClassification",
    "Dinov2ForImageClassification",
)
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


# --- Hugging Face ---------------------------------------------------------------------------------------------------
def _hf_model_class(arch: str):
    import transformers

    if arch not in HF_CLASSES:
        raise GsloraError(f"unsupported Hugging Face architecture {arch!r}; gslora imports {', '.join(HF_CLASSES)}.")
    return getattr(transformers, arch)


def _hf_preprocessing(folder: Path | None, hf_config, saved: dict | None) -> tuple[dict, dict | None]:
    size = hf_config.image_size
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    proc = saved
    if proc is None and folder is not None and (folder / "preprocessor_config.json").is_file():
        proc = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
    if proc is None:
        return _preprocessing(size, [0.0] * 3, [1.0] * 3, "none (no preprocessor_config.json)"), None
    normalize = proc.get("do_normalize", True)
    mean = proc.get("image_mean", [0.5] * 3) if normalize else [0.0] * 3
    std = proc.get("image_std", [0.5] * 3) if normalize else [1.0] * 3
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    extra = {k: proc[k] for k in ("size", "crop_size", "do_center_crop", "do_resize") if k in proc}
    policy, note = _hf_resize_crop(proc, size)
    if note:
        extra["resize_crop_note"] = note
    return _preprocessing(size, mean, std, "preprocessor_config.json", policy, **extra), proc


def _hf_size(value):
    """An HF ``size`` / ``crop_size`` → N (``shortest_edge``) or [H, W]; None when it is neither."""
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, dict):
        if value.get("height") and value.get("width"):
            return [int(value["height"]), int(value["width"])]
        if set(value) == {"shortest_edge"}:
            return int(value["shortest_edge"])
    return None


def _hf_resize_crop(proc: dict, image_size: int) -> tuple[dict, str | None]:
    """What the HF image processor does to an image: resize (``size``: height × width, or ``shortest_edge``;
    ``resample``), then with ``do_center_crop`` the centre ``crop_size`` (offset rounded down, as HF does).
    Anything that does not end at the model's input size is replaced by a straight resize, with a note why."""
    interpolation = _interpolation(proc.get("resample"))
    resize = _hf_size(proc.get("size")) if proc.get("do_resize", True) else None
    crop = _hf_size(proc.get("crop_size")) if proc.get("do_center_crop", False) else None
    square = [image_size, image_size]
    if proc.get("do_center_crop", False):
        if crop == square and (resize is not None or not proc.get("do_resize", True)):
            return {"resize": resize, "crop": image_size, "interpolation": interpolation, "crop_offset": "floor"}, None
        why = f"size {proc.get('size')!r}, crop_size {proc.get('crop_size')!r}"
    elif resize == square or (resize is None and not proc.get("do_resize", True)):
        return _straight(image_size, interpolation), None
    else:
        why = f"size {proc.get('size')!r} without a centre crop"
    return _straight(image_size, interpolation), (f"{why} does not end at the model's input size {image_size}; "
                                                  "images are resized straight to it")


def _hf_arch(hf_config) -> str:
    archs = list(getattr(hf_config, "architectures", None) or [])
    if "DeiTForImageClassificationWithTeacher" in archs:
        raise GsloraError("unsupported Hugging Face architecture DeiTForImageClassificationWithTeacher (its logits "
                          "average two heads); gslora imports " + ", ".join(HF_CLASSES) + ".")
    for arch in archs:
        if arch in HF_CLASSES:
            return arch
    guess = {"vit": "ViTForImageClassification", "deit": "DeiTForImageClassification",
             "beit": "BeitForImageClassification", "dinov2": "Dinov2ForImageClassification"}
    if not archs and hf_config.model_type in guess:
        return guess[hf_config.model_type]
    raise GsloraError(f"unsupported Hugging Face architecture {(archs or [hf_config.model_type])[0]!r}; gslora "
                      f"imports {', '.join(HF_CLASSES)}.")


def import_hf(folder: str | Path, preprocessing: dict | None = None) -> tuple[Classifier, list[str] | None]:
    """An HF image-classification folder (``config.json`` + weights) → (model, class names from ``id2label``)."""
    import transformers

    folder = Path(folder)
    try:
        hf_config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise GsloraError(f"cannot read the Hugging Face config in {folder} ({str(e).splitlines()[0]}).") from None
    arch = _hf_arch(hf_config)
    if not any((folder / name).is_file() for name in HF_WEIGHTS):
        raise GsloraError(f"{folder} has a config.json but no weights ({' or '.join(HF_WEIGHTS[::2])}).")
    cls = _hf_model_class(arch)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bars on the command line
    try:
        hf_model, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                             dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise GsloraError(f"cannot load {folder} as {arch} ({str(e).strip().splitlines()[0]}).") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    bad = info.get("missing_keys") or info.get("mismatched_keys")
    if bad:
        raise GsloraError(f"the weights in {folder} do not match its config.json ({arch}: "
                          f"{'missing' if info.get('missing_keys') else 'mismatched'} {sorted(bad)[:3]}).")
    prep, proc = _hf_preprocessing(folder, hf_model.config, None)
    prep = _apply_override(prep, preprocessing)
    model = _wrap(hf_model.float().eval(), "hf", "classifier", prep["image_size"], prep, {
        "library": "hf", "arch": f"hf:{arch}", "class": arch, "source": str(folder.resolve()),
        "hf_config": hf_model.config.to_dict(), "preprocessor_config": proc,
    })
    id2label = getattr(hf_config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(model.config["num_classes"])]
    default = all(re.fullmatch(r"LABEL_\d+", n) or not n for n in names)
    return model, (None if default else names)


def _build_hf(imported: dict) -> nn.Module:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    conf = dict(imported["hf_config"])
    config_class = CONFIG_MAPPING[conf["model_type"]]
    return _hf_model_class(imported["class"])(config_class.from_dict(conf)).float()


def export(library_model: nn.Module, folder: Path, classes: list[str], imported: dict, note: dict) -> None:
    """``save_pretrained`` into ``folder``: ``id2label`` holds the classes and ``config.gslora`` the forgotten classes,
    the masked ones, the history and the erasure record (so they travel with the folder); the preprocessor config
    the model came with is written beside it."""
    from ..._version import __version__

    conf = library_model.config
    conf.num_labels = len(classes)
    conf.id2label = {i: c for i, c in enumerate(classes)}
    conf.label2id = {c: i for i, c in enumerate(classes)}
    conf.gslora = {"forgotten": note["forgotten"], "masked_classes": note["masked_classes"],
                   "history": note["history"], "record": note["record"], "gslora_version": __version__}
    library_model.save_pretrained(str(folder))
    if imported.get("preprocessor_config"):
        (folder / "preprocessor_config.json").write_text(json.dumps(imported["preprocessor_config"], indent=2))
