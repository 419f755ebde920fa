"""Model builders, heads, FFN locator and checkpoint I/O."""

from .checkpoint import create_from_config, load_checkpoint, read_sidecar, save_checkpoint
from .exporters import export_native
from .ffn import FFNBlock, locate_ffn
from .heads import CosFace, LinearHead
from .importers import import_model
from .loading import load_any
from .registry import Classifier, count_parameters, create_model, list_models

__all__ = [
    "Classifier",
    "CosFace",
    "FFNBlock",
    "LinearHead",
    "count_parameters",
    "create_from_config",
    "create_model",
    "export_native",
    "import_model",
    "list_models",
    "load_any",
    "load_checkpoint",
    "locate_ffn",
    "read_sidecar",
    "save_checkpoint",
]
