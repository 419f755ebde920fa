"""Bring your own model: Hugging Face, torchvision and timm classifiers (and the authors' Face Transformer) in, the
same format out. Each library has its module in :mod:`gslora.models.libraries` (import and export); this one holds
the entry points that dispatch to them and the class matching they share.

An imported model is a :class:`~gslora.models.registry.Classifier` whose backbone *is* the library's own module with
its final classifier linear replaced by ``nn.Identity`` (so it returns exactly what that linear received: the CLS
embedding after the final LayerNorm for ViT / DeiT / torchvision / timm, the pooled output for BEiT, CLS ⊕ mean patch
token for Dinov2), behind an input normalisation held in buffers. The classifier's weights become a
:class:`~gslora.models.heads.LinearHead`, so logits are identical to the library's.

The sidecar of a gslora checkpoint records how to rebuild the library module offline (``config["imported"]``: the HF
``config.json`` contents, the torchvision builder and its arguments, or the timm model name and arguments), and
:func:`export_native` writes the (forgotten, LoRA-merged) model back in the library's own format.

Nothing is unpickled beyond tensors: ``.pth`` / ``.bin`` files are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import GsloraError
from .heads import LinearHead
from .libraries.common import (  # noqa: F401 (re-exported: the names importers offered before the split)
    STATE_SUFFIXES,
    ImportedBackbone,
    _apply_override,
    _put_classifier,
    _take_classifier,
    crop_pct_policy,
    read_state_dict,
)
from .libraries.face_transformer import import_face_transformer, is_face_transformer_state
from .libraries.hf import _build_hf, import_hf
from .libraries.timm import _build_timm, import_timm, import_timm_folder
from .libraries.torchvision import _build_torchvision, _guess_torchvision_arch, import_torchvision
from .registry import Classifier


# --- entry points ---------------------------------------------------------------------------------------------------
def build_imported(cfg: dict) -> Classifier:
    """Rebuild (randomly initialised, offline) the imported model a checkpoint sidecar describes."""
    imported = dict(cfg["imported"])
    builders = {"hf": _build_hf, "torchvision": _build_torchvision, "timm": _build_timm}
    if imported.get("library") not in builders:
        raise GsloraError(f"the checkpoint records an unknown import library {imported.get('library')!r}.")
    library_model = builders[imported["library"]](imported)
    _take_classifier(library_model, imported["classifier"])
    prep = cfg["preprocessing"]
    head = LinearHead(_embed_dim(cfg), cfg["num_classes"], bias=cfg.get("head_kwargs", {}).get("bias", True))
    backbone = ImportedBackbone(library_model, imported["library"], prep["mean"], prep["std"])
    return Classifier(backbone, head, image_size=int(prep["image_size"]), config=copy.deepcopy(cfg))


def _embed_dim(cfg: dict) -> int:
    return int(cfg["embed_dim"])


def import_model(path: str | Path, model: str | None = None, model_args: dict | None = None,
                 preprocessing: dict | None = None) -> tuple[Classifier, list[str] | None]:
    """Any supported non-gslora checkpoint → (model, class names or None when the checkpoint has none).

    ``path``: an HF folder, a timm folder, or a state-dict file; ``model``: ``torchvision:<arch>``,
    ``timm:<name>`` or ``vit_face`` (the authors' Face Transformer) for state-dict files."""
    path = Path(path)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise GsloraError(f"{path} is a folder without config.json; expected a Hugging Face or timm model folder.")
        try:
            conf = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise GsloraError(f"{config_file} is not valid JSON ({e}).") from None
        if "architecture" in conf and "model_type" not in conf:
            return import_timm_folder(path, preprocessing)
        if "model_type" not in conf:
            raise GsloraError(f"{config_file} is neither a Hugging Face config (no model_type) nor a timm one.")
        return import_hf(path, preprocessing)
    if not path.exists():
        raise GsloraError(f"checkpoint {path} does not exist.")
    if path.suffix not in STATE_SUFFIXES:
        raise GsloraError(f"cannot tell what {path} is; pass a gslora checkpoint, a Hugging Face folder or a state "
                          f"dict ({', '.join(STATE_SUFFIXES)}).")
    state = read_state_dict(path)
    if model is None or model == "vit_face":
        if is_face_transformer_state(state):
            return import_face_transformer(state, model_args, path), None
        if model == "vit_face":
            raise GsloraError(f"{path} is not a Face Transformer state dict (no patch_to_embedding / "
                              "transformer.layers.*).")
        guess = _guess_torchvision_arch(state)
        if model is None and guess is not None:
            return import_torchvision(path, guess, model_args, preprocessing, state=state)
        raise GsloraError(f"{path} is a state dict without a gslora sidecar; name its architecture with --model "
                          "torchvision:<arch> or timm:<name>.")
    if model.startswith("torchvision:"):
        return import_torchvision(path, model.split(":", 1)[1], model_args, preprocessing, state=state)
    if model.startswith("timm:"):
        return import_timm(path, model.split(":", 1)[1], model_args, preprocessing, state=state)
    raise GsloraError(f"unsupported --model {model!r} for a state dict; use torchvision:<arch>, timm:<name> or "
                      "vit_face.")


# --- classes --------------------------------------------------------------------------------------------------------
def read_class_file(path: str | Path) -> list[str]:
    """Class names of the model's outputs, in order: a JSON list, or one name per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise GsloraError(f"class file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise GsloraError(f"class file {path} is not valid JSON ({e}).") from None
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise GsloraError(f"class file {path} names {dup!r} twice.")
    return names


def select_head_rows(model: Classifier, rows: list[int]) -> None:
    """Keep only ``rows`` of the head, in that order (a new head of the same kind; the model is changed in place)."""
    old = model.head
    new = copy.deepcopy(old)
    with torch.no_grad():
        new.weight = nn.Parameter(old.weight.detach()[rows].clone())
        if getattr(old, "bias", None) is not None:
            new.bias = nn.Parameter(old.bias.detach()[rows].clone())
    if hasattr(new, "out_features"):
        new.out_features = len(rows)
    model.head = new
    model.config["num_classes"] = len(rows)


def align_classes(model: Classifier, model_classes: list[str] | None, data_classes: list[str],
                  head_subset: bool = False) -> tuple[list[str], dict]:
    """Make the model's outputs the data's classes, in the data's order; returns (classes, what was done).

    - names equal: nothing to do; same names in another order: the head rows are permuted (same function);
    - no names in the checkpoint and as many outputs as data classes: the data's (sorted folder) order is taken;
    - the data's classes a strict subset of the model's: with ``head_subset`` only their head rows are kept (the
      ImageNet-100 protocol); the original size, rows and class names are recorded in
      ``model.config["head_subset"]`` and the whole original head is kept beside the model (:func:`full_head`, for
      the missing-class check); otherwise an error.
    """
    data_classes = list(data_classes)
    n = model.config["num_classes"]
    if model_classes is None:
        if n == len(data_classes):
            return data_classes, {"classes_from": "data folder order (the checkpoint names no classes)"}
        raise GsloraError(f"the checkpoint names no classes and has {n} outputs but the data has "
                          f"{len(data_classes)} classes; pass --classes FILE with the name of each output.")
    model_classes = list(model_classes)
    if len(model_classes) != n:
        raise GsloraError(f"{len(model_classes)} class names for a model with {n} outputs.")
    if model_classes == data_classes:
        return data_classes, {"classes_from": "checkpoint"}
    index = {c: i for i, c in enumerate(model_classes)}
    unknown = [c for c in data_classes if c not in index]
    if unknown:
        raise GsloraError(f"{len(unknown)} data class(es) are not classes of the model (e.g. {unknown[0]!r}; the "
                          f"model's first classes: {', '.join(model_classes[:3])}); pass --classes FILE naming the "
                          "model's outputs, or use the data it was trained on.")
    rows = [index[c] for c in data_classes]
    if len(rows) == n:
        select_head_rows(model, rows)
        return data_classes, {"classes_from": "checkpoint, head rows put in the data's order"}
    if not head_subset:
        raise GsloraError(f"the data has {len(rows)} of the model's {n} classes; pass --head-subset to keep only "
                          "their head rows.")
    model.config["head_subset"] = {"of": n, "rows": rows, "original_classes": model_classes}
    full = copy.deepcopy(model.head).requires_grad_(False)
    select_head_rows(model, rows)
    # the whole original head, for the missing-class check (gslora.missing); a plain attribute, so it is neither a
    # parameter nor in the state dict (a checkpoint of the cut model holds the cut head only)
    object.__setattr__(model, FULL_HEAD, full)
    return data_classes, {"classes_from": f"checkpoint, head subset: {len(rows)} of {n} rows"}


FULL_HEAD = "_gslora_full_head"


def full_head(model: Classifier) -> nn.Module | None:
    """The original head (all its rows, as loaded) of a model whose head :func:`align_classes` cut with
    ``head_subset``; None when the head was not cut in this process (e.g. a checkpoint saved after the cut)."""
    return model.__dict__.get(FULL_HEAD)
