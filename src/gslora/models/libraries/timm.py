"""timm Vision Transformers: a state dict (with the model's name) or a folder timm wrote in, a timm folder out."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ...errors import GsloraError
from ..registry import Classifier
from .common import (
    _apply_override,
    _check_and_load,
    _interpolation,
    _preprocessing,
    _straight,
    _wrap,
    crop_pct_policy,
    read_state_dict,
)


# --- timm -----------------------------------------------------------------------------------------------------------
def import_timm(path: str | Path, name: str, model_args: dict | None = None, preprocessing: dict | None = None,
                label_names: list[str] | None = None, state: dict | None = None
                ) -> tuple[Classifier, list[str] | None]:
    """A timm state dict (safetensors or tensors-only torch file) + the timm model name; or a folder written by timm
    (``config.json`` with ``architecture`` / ``pretrained_cfg`` + weights): :func:`import_timm_folder`."""
    import timm
    from timm.data import resolve_data_config

    state = read_state_dict(path) if state is None else state
    try:
        probe_cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - timm raises several kinds for unknown names
        probe_cfg = None
    if not timm.is_model(name):
        raise GsloraError(f"timm has no model {name!r}.")
    classifier = getattr(probe_cfg, "classifier", None) or "head"
    if not isinstance(classifier, str):
        raise GsloraError(f"unsupported timm architecture {name!r}: it has several classifier heads {classifier}.")
    if f"{classifier}.weight" not in state:
        raise GsloraError(f"the state dict {path} does not match timm {name} (no classifier {classifier}.weight).")
    kwargs = {**dict(model_args or {}), "num_classes": int(state[f"{classifier}.weight"].shape[0])}
    imported = {"library": "timm", "arch": f"timm:{name}", "name": name, "kwargs": kwargs,
                "source": str(Path(path).resolve())}
    try:
        timm_model = _build_timm(imported)
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:
        raise GsloraError(f"cannot build timm {name} with {kwargs} ({e}).") from None
    _check_and_load(timm_model, state, f"timm {name}", path)
    data_cfg = resolve_data_config({}, model=timm_model)
    size = getattr(getattr(timm_model, "patch_embed", None), "img_size", None) or data_cfg["input_size"][1:]
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    crop_pct = data_cfg.get("crop_pct") or 0.875  # timm's default when the config has none
    crop_mode = data_cfg.get("crop_mode") or "center"
    interpolation = _interpolation(data_cfg.get("interpolation"))
    extra = {}
    if crop_mode in ("center", "squash"):
        policy = crop_pct_policy(size, crop_pct, interpolation, square=crop_mode == "squash")
    else:
        policy = _straight(size, interpolation)
        extra["resize_crop_note"] = f"timm crop_mode {crop_mode!r} is not reproduced; images are resized straight"
    prep = _preprocessing(size, data_cfg["mean"], data_cfg["std"], "timm pretrained_cfg", policy,
                          crop_pct=crop_pct, crop_mode=crop_mode, interpolation=interpolation, **extra)
    prep = _apply_override(prep, preprocessing)
    names = label_names or (timm_model.pretrained_cfg or {}).get("label_names")
    model = _wrap(timm_model.eval(), "timm", classifier, size, prep, imported)
    return model, (list(names) if names and len(names) == model.config["num_classes"] else None)


def import_timm_folder(folder: str | Path, preprocessing: dict | None = None) -> tuple[Classifier, list[str] | None]:
    # timm has no public reader of a local folder's config.json (its public path, create_model("local-dir:..."),
    # also loads the weights, without our checks); this private one parses the legacy and current formats alike.
    # Tested on timm 1.0.x; pyproject pins timm < 1.1 for it.
    from timm.models._hub import load_model_config_from_path

    folder = Path(folder)
    try:
        pretrained_cfg, name, model_args = load_model_config_from_path(folder)
    except (KeyError, ValueError, OSError) as e:
        raise GsloraError(f"cannot read the timm config in {folder} ({e}).") from None
    weights = next((folder / w for w in ("model.safetensors", "pytorch_model.bin") if (folder / w).is_file()), None)
    if weights is None:
        raise GsloraError(f"{folder} has a timm config.json but no weights (model.safetensors or pytorch_model.bin).")
    return import_timm(weights, name, model_args, preprocessing, label_names=pretrained_cfg.get("label_names"))


def _build_timm(imported: dict) -> nn.Module:
    import timm

    return timm.create_model(imported["name"], pretrained=False, **imported["kwargs"])


def export(library_model: nn.Module, folder: Path, classes: list[str], imported: dict, note: dict) -> None:
    """timm's own public writer: ``config.json`` (with the class names as ``label_names``) + ``model.safetensors``,
    a folder timm itself reads back from the local disk (its ``local-dir:`` scheme; nothing is downloaded)."""
    from timm.models import save_for_hf

    save_for_hf(library_model, str(folder), model_config={"label_names": list(classes)},
                model_args={k: v for k, v in imported["kwargs"].items() if k != "num_classes"},
                safe_serialization=True)
