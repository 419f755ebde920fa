"""Checkpoints: ``NAME.safetensors`` (weights) + ``NAME.json`` (model config, class names, forgetting history).

Nothing is ever unpickled: weights are safetensors, metadata is JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import GsloraError
from ..files import atomic_write, atomic_write_json
from .importers import build_imported
from .registry import Classifier, create_model


def create_from_config(cfg: dict) -> Classifier:
    """Rebuild a model from the ``config`` a checkpoint stored (offline: imported models are rebuilt from the
    library configuration recorded in the sidecar, never downloaded)."""
    if cfg.get("imported"):
        return build_imported(cfg)
    overrides = dict(cfg.get("overrides", {}))
    if cfg.get("arch") == "vit_face" and "attention_scale" not in overrides and not cfg.get("face_v2"):
        # written before vit_face reproduced the Face Transformer: keep the timm blocks it was trained with
        overrides.update(face=False, pos_drop_rate=0.0, attn_drop_rate=0.1)
        rebuilt = create_model("vit_face", cfg["num_classes"], head=cfg.get("head", "cosface"),
                               head_kwargs=cfg.get("head_kwargs", {}), **overrides)
        rebuilt.config = cfg
        return rebuilt
    try:
        return create_model(
            cfg["arch"], cfg["num_classes"], head=cfg.get("head", "cosface"),
            head_kwargs=cfg.get("head_kwargs", {}), **overrides,
        )
    except KeyError as e:
        raise GsloraError(f"model config is missing {e.args[0]!r}; the checkpoint sidecar is damaged.") from None


FORMAT = "gslora-checkpoint"
VERSION = 1


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, sidecar) paths for a checkpoint given as NAME, NAME.safetensors or NAME.json."""
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors") if path.suffix else path.with_suffix(".safetensors")
    return path, path.with_suffix(".json")


def save_checkpoint(model: Classifier, path: str | Path, classes: list[str], history: list | None = None,
                    extra: dict | None = None, record: list | None = None) -> Path:
    """Write weights then sidecar, each atomically. Returns the ``.safetensors`` path. ``record``: the model's erasure
    record (:mod:`gslora.record`); the masked classes (``model.config["masked_classes"]``) are kept in the sidecar's
    model config and masked again on loading, the weights are stored unmasked."""
    weights, sidecar = checkpoint_paths(path)
    if len(classes) != model.config["num_classes"]:
        raise GsloraError(f"{len(classes)} class names given for a model with {model.config['num_classes']} classes.")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda p: save_file(state, str(p), metadata={"format": FORMAT}))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.config,
        "image_size": model.image_size,
        "classes": list(classes),
        "history": list(history or []),
        **({"record": list(record)} if record else {}),
        **(extra or {}),
    }
    atomic_write_json(sidecar, meta)
    return weights


def read_sidecar(path: str | Path) -> dict:
    weights, sidecar = checkpoint_paths(path)
    if not weights.is_file():
        raise GsloraError(
            f"checkpoint {weights} does not exist; pass the .safetensors file that `gslora pretrain` wrote."
        )
    if not sidecar.is_file():
        raise GsloraError(f"checkpoint {weights} has no sidecar {sidecar.name} beside it (model config and classes).")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GsloraError(f"checkpoint sidecar {sidecar} is not valid JSON ({e}).") from None
    if meta.get("format") != FORMAT:
        raise GsloraError(f"{sidecar} is not a gslora checkpoint sidecar (format {meta.get('format')!r}).")
    return meta


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """Rebuild the model from the sidecar and load the weights strictly; mismatches are clear errors."""
    weights, _ = checkpoint_paths(path)
    meta = read_sidecar(weights)
    model = create_from_config(meta["model"])
    if len(meta.get("classes", [])) != meta["model"]["num_classes"]:
        raise GsloraError(
            f"checkpoint {weights} lists {len(meta.get('classes', []))} class names but its model has "
            f"{meta['model']['num_classes']} classes."
        )
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise GsloraError(f"cannot read checkpoint weights {weights}: {e}.") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad_shape:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape of {bad_shape[0]} is {tuple(state[bad_shape[0]].shape)}, expected "
                  f"{tuple(expected[bad_shape[0]].shape)}")
        raise GsloraError(
            f"checkpoint {weights} does not match its declared architecture {meta['model']['arch']!r} ({detail})."
        )
    model.load_state_dict(state, strict=True)
    if meta["model"].get("masked_classes"):
        model.config["masked_classes"] = [int(c) for c in meta["model"]["masked_classes"]]
    return model, meta
