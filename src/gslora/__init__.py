"""gslora: continual forgetting for pre-trained vision transformers with GS-LoRA.

The public API::

    from gslora import create_model, load_checkpoint, load_data, make_plan, RunConfig, run_forgetting

    model, meta = load_checkpoint("pretrained.safetensors")
    data = load_data("faces", image_size=model.image_size)
    result = run_forgetting(model, meta["classes"], data, RunConfig(tasks="4x20"), out_dir="runs/demo")
    result.rows[0]["acc_f"], result.rows[0]["h_mean"]
"""

from ._version import __version__
from .config import PretrainConfig, RunConfig
from .data import load_data, make_plan
from .errors import GsloraError
from .forget import RunResult, run_forgetting
from .models import create_model, load_checkpoint, locate_ffn, save_checkpoint
from .presets import load_run_config, resolve
from .rundir import FinishedRun, RunFolder

__all__ = [
    "FinishedRun",
    "GsloraError",
    "PretrainConfig",
    "RunConfig",
    "RunFolder",
    "RunResult",
    "__version__",
    "create_model",
    "load_checkpoint",
    "load_data",
    "load_run_config",
    "locate_ffn",
    "make_plan",
    "resolve",
    "run_forgetting",
    "save_checkpoint",
]
