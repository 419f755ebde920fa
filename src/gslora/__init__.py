"""gslora: continual forgetting for pre-trained vision transformers with GS-LoRA.

The public API::

    from gslora import create_model, load_checkpoint, load_data, make_plan, RunConfig, run_forgetting

    model, meta = load_checkpoint("pretrained.safetensors")
    data = load_data("faces", image_size=model.image_size)
    result = run_forgetting(model, meta["classes"], data, RunConfig(tasks="4x20"), out_dir="runs/demo")
    result.rows[0]["acc_f"], result.rows[0]["h_mean"]

The names are imported on first use (PEP 562), so ``import gslora`` and ``gslora --help`` do not load PyTorch.
"""

from __future__ import annotations

import importlib

from ._version import __version__  # noqa: F401 (in __all__)

_WHERE = {
    "FinishedRun": ".rundir", "RunFolder": ".rundir",
    "GsloraError": ".errors",
    "PretrainConfig": ".config", "RunConfig": ".config",
    "RunResult": ".forget", "run_forgetting": ".forget",
    "create_model": ".models", "load_checkpoint": ".models", "locate_ffn": ".models", "save_checkpoint": ".models",
    "load_data": ".data", "make_plan": ".data",
    "load_run_config": ".presets", "resolve": ".presets",
}

__all__ = sorted([*_WHERE, "__version__"])


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gslora' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
