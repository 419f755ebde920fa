"""One entry point for every command: a model given as a gslora checkpoint, a Hugging Face or timm folder, or a state
dict (with the ``gslora.json`` gslora wrote beside it, when there is one) → (model, meta), and the class list a run
uses. Reads through :mod:`~gslora.models.checkpoint` and :mod:`~gslora.models.importers`; neither imports this."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import GsloraError
from .checkpoint import checkpoint_paths, load_checkpoint
from .importers import align_classes, import_model, read_class_file
from .registry import Classifier


def is_gslora_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    if path.is_dir() or (path.suffix and path.suffix not in (".safetensors", ".json")):
        return False
    weights, sidecar = checkpoint_paths(path)
    if not sidecar.is_file():
        return False
    try:
        return json.loads(sidecar.read_text(encoding="utf-8")).get("format") == "gslora-checkpoint"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def load_any(path: str | Path, model: str | None = None, model_args: dict | None = None,
             preprocessing: dict | None = None, classes_file: str | Path | None = None) -> tuple[Classifier, dict]:
    """A gslora checkpoint (``load_checkpoint``) or anything :func:`import_model` reads → (model, meta).

    ``meta`` is the sidecar's (``classes``, ``history``, …) for gslora checkpoints; for an import it has
    ``classes`` (``None`` when neither the checkpoint nor ``classes_file`` names them), ``history`` (from an HF
    folder gslora exported, so a second run continues the history) and ``imported_from``."""
    if is_gslora_checkpoint(path) and model is None:
        loaded, meta = load_checkpoint(path)
        if classes_file is not None:
            names = read_class_file(classes_file)
            if len(names) != len(meta["classes"]):
                raise GsloraError(f"class file {classes_file} names {len(names)} classes for a model with "
                                  f"{len(meta['classes'])} outputs.")
            meta = {**meta, "classes": names}
        return loaded, meta
    note, where = read_note(path)
    if note is not None and model is None and not Path(path).is_dir():
        model = note.get("arch")  # a state dict gslora exported: its note names the architecture and input
        model_args = {**(note.get("model_args") or {}), **(model_args or {})}
        if preprocessing is None and note.get("preprocessing"):
            preprocessing = {k: note["preprocessing"][k] for k in ("mean", "std") if k in note["preprocessing"]}
    loaded, names = import_model(path, model, model_args, preprocessing)
    if classes_file is not None:
        names = read_class_file(classes_file)
        if len(names) != loaded.config["num_classes"]:
            raise GsloraError(f"class file {classes_file} names {len(names)} classes for a model with "
                              f"{loaded.config['num_classes']} outputs.")
    note = note or {}
    if "classes" in note and len(note["classes"] or []) != loaded.config["num_classes"]:
        raise GsloraError(f"{where} describes a model with {len(note.get('classes') or [])} classes, but {path} has "
                          f"{loaded.config['num_classes']} outputs; keep the gslora.json that came with the model.")
    if names is None and note.get("classes"):
        names = list(note["classes"])
    if note.get("masked_classes"):  # baked into the exported weights already; kept so the model hashes as exported
        loaded.config["masked_classes"] = [int(c) for c in note["masked_classes"]]
    return loaded, {"classes": names, "history": note.get("history", []), "record": note.get("record", []),
                    "imported_from": str(Path(path).resolve()), "model": loaded.config,
                    "image_size": loaded.image_size}


NOTE = "gslora.json"  # written beside every exported model (models.exporters)


def read_note(path: str | Path) -> tuple[dict | None, str]:
    """What gslora wrote beside a model it exported: for a Hugging Face folder the ``gslora`` field of its
    ``config.json`` (it travels with the folder), else ``gslora.json`` in the folder, or beside a state dict file.
    (None, "") when there is none."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    note_file = folder / NOTE
    config_file = folder / "config.json"
    note = None
    if note_file.is_file():
        try:
            note = json.loads(note_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise GsloraError(f"{note_file} is not valid JSON ({e}).") from None
        if not isinstance(note, dict):
            raise GsloraError(f"{note_file} is not a gslora note (a JSON object).")
    if path.is_dir() and config_file.is_file():
        try:
            hf = json.loads(config_file.read_text(encoding="utf-8")).get("gslora")
        except (json.JSONDecodeError, AttributeError):
            hf = None
        if isinstance(hf, dict) and ("record" in hf or "history" in hf):
            base = note or {}
            return {**base, **{k: hf[k] for k in ("history", "record", "masked_classes", "forgotten") if k in hf}}, \
                f"{config_file} (field gslora)"
    return note, str(note_file)


def classes_for_run(model: Classifier, meta: dict, data_classes: list[str], head_subset: bool = False) -> list[str]:
    """The class list a run uses: a gslora checkpoint's own (checked against the data by the runner) unless
    ``head_subset`` is asked for; an imported model's matched by name to the data (:func:`align_classes`)."""
    if "imported_from" not in meta and not head_subset:
        return list(meta["classes"])
    classes, _ = align_classes(model, meta.get("classes"), data_classes, head_subset=head_subset)
    return classes


def load_original(source: str | Path, final_config: dict, classes: list[str]) -> tuple[Classifier, dict]:
    """The model a run started from, loaded as the run loaded it (same library, arguments and class alignment), so
    audits compare like with like."""
    imported = final_config.get("imported") or {}
    model_arg, model_args, prep = None, None, None
    if imported.get("library") in ("torchvision", "timm"):
        model_arg = imported["arch"]
        model_args = {k: v for k, v in imported.get("kwargs", {}).items() if k != "num_classes"}
    if imported:
        prep = {k: final_config["preprocessing"][k] for k in ("mean", "std")}
    model, meta = load_any(source, model_arg, model_args, prep)
    subset = final_config.get("head_subset")
    if meta.get("classes") != classes:
        names = meta.get("classes") or (subset or {}).get("original_classes")
        meta = {**meta, "classes": classes_for_run(model, {**meta, "classes": names, "imported_from": str(source)},
                                                   classes, head_subset=bool(subset))}
    return model, meta
