"""gslora: continual forgetting for pre-trained vision transformers with GS-LoRA.

The public API::

    from gslora import create_model, load_checkpoint, load_data, make_plan, RunConfig, run_forgetting

    model, meta = load_checkpoint("pretrained.safetensors")
    data = load_data("faces", image_size=model.image_size)
    result = run_forgetting(model, meta["classes"], data, RunConfig(tasks="4x20"), out_dir="runs/demo")
    result.rows[0]["acc_f"], result.rows[0]["h_mean"]
"""

__version__ = "0.1.0"

from .config import RunConfig, load_run_config  # noqa: E402
from .data import load_data, make_plan  # noqa: E402
from .errors import GsloraError  # noqa: E402
from .forget import RunResult, run_forgetting  # noqa: E402
from .models import create_model, load_checkpoint, locate_ffn, save_checkpoint  # noqa: E402

__all__ = [
    "GsloraError",
    "RunConfig",
    "RunResult",
    "__version__",
    "create_model",
    "load_checkpoint",
    "load_data",
    "load_run_config",
    "locate_ffn",
    "make_plan",
    "run_forgetting",
    "save_checkpoint",
]
