"""Write a model back in the format it was imported from (see :mod:`gslora.models.importers`).

- Hugging Face: a folder ``save_pretrained`` wrote (``config.json`` + ``model.safetensors``, and the
  ``preprocessor_config.json`` the model came with), loadable with ``AutoModelForImageClassification.from_pretrained``;
  ``id2label`` holds the head's classes and ``config.gslora`` the forgotten classes and the forgetting history.
- torchvision: ``model.safetensors``, the ``VisionTransformer`` state dict (``model.load_state_dict(load_file(...))``).
- timm: ``model.safetensors`` (the timm state dict) + ``config.json`` in timm's own format, so
  ``timm.create_model("local-dir:FOLDER", ...)`` with timm's pretrained flag also loads it (from the local folder;
  nothing is downloaded).

Each comes with ``gslora.json``: the architecture, classes, forgotten classes, history and the erasure record
(:mod:`gslora.record`; an HF folder also keeps it in ``config.json``). The classes in ``model.config["masked_classes"]``
are masked in the exported weights (head weight row 0, bias :data:`~gslora.record.MASK_LOGIT`), so no library ever
predicts a forgotten class. The model must be merged (no LoRA layers), as every finished task leaves it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from .._version import __version__
from ..errors import GsloraError
from ..files import atomic_write_dir
from ..record import MASK_LOGIT, forgotten_names
from .libraries import hf, timm, torchvision
from .libraries.common import _put_classifier
from .registry import Classifier

NOTE = "gslora.json"
NOT_IMPORTED = "this model was not imported from Hugging Face / torchvision / timm; it has no native format."


def is_imported(model: Classifier) -> bool:
    return bool(model.config.get("imported"))


def native_model(model: Classifier) -> nn.Module:
    """A CPU copy of the library's own model with the head put back as its classifier linear."""
    if not is_imported(model):
        raise GsloraError(NOT_IMPORTED)
    head = model.head
    library_model = copy.deepcopy(model.backbone.model).cpu().eval()
    if any("lora_" in name for name, _ in library_model.named_parameters()):
        raise GsloraError("merge the LoRA update before exporting (the model still has LoRA layers).")
    linear = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(head.weight.detach().cpu())
        if head.bias is not None:
            linear.bias.copy_(head.bias.detach().cpu())
    masked = sorted(int(c) for c in model.config.get("masked_classes") or [])
    if masked:
        if linear.bias is None:
            raise GsloraError("the model's classifier has no bias, so its forgotten classes cannot be masked in the "
                              "exported weights; run with --set mask_outputs=false to export it unmasked.")
        with torch.no_grad():
            linear.weight[masked] = 0.0
            linear.bias[masked] = MASK_LOGIT
    _put_classifier(library_model, model.config["imported"]["classifier"], linear)
    return library_model


EXPORTERS = {"hf": hf.export, "torchvision": torchvision.export, "timm": timm.export}  # one module per library


def export_native(model: Classifier, folder: str | Path, classes: list[str], history: list | None = None,
                  record: list | None = None) -> Path:
    """Write ``model`` (merged) to ``folder`` in its library's format; returns the folder. Atomic (whole folder)."""
    imported = model.config["imported"] if is_imported(model) else None
    if imported is None:
        raise GsloraError(NOT_IMPORTED)
    if len(classes) != model.config["num_classes"]:
        raise GsloraError(f"{len(classes)} class names for a model with {model.config['num_classes']} classes.")
    library_model = native_model(model)
    masked = sorted(int(c) for c in model.config.get("masked_classes") or [])
    note = {"format": f"{imported['library']} (exported by gslora {__version__})", "library": imported["library"],
            "arch": imported["arch"],
            "model_args": {k: v for k, v in (imported.get("kwargs") or {}).items() if k != "num_classes"},
            "source": imported.get("source"), "classes": list(classes), "forgotten": forgotten_names(record, history),
            "masked_classes": masked, "history": list(history or []), "record": list(record or []),
            "preprocessing": model.config.get("preprocessing")}

    exporter = EXPORTERS[imported["library"]]

    def write(tmp: Path) -> None:
        exporter(library_model, tmp, classes, imported, note)
        (tmp / NOTE).write_text(json.dumps(note, indent=2))

    return atomic_write_dir(folder, write)

