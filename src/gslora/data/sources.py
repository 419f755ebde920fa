"""The one entry point that turns a data spec (a name or a folder path) into train / val / test splits."""

from __future__ import annotations

from pathlib import Path

from ..errors import GsloraError
from .base import DataBundle
from .faces import bundled_faces
from .folder import folder_data

BUNDLED = ("faces", "bundled", "lfw")


def load_data(spec: str, image_size: int, seed: int = 1337, split_ratio: float = 0.7,
              val_ratio: float = 0.1, preprocessing: dict | None = None) -> DataBundle:
    """``"faces"`` for the bundled LFW crops, otherwise a folder path (see :mod:`gslora.data.folder`).

    ``preprocessing``: the model's (``model.config["preprocessing"]``); its ``resize_crop`` policy, when an imported
    model has one, is how folder images are brought to ``image_size`` (the bundled faces are generated at that size).
    """
    if spec in BUNDLED:
        return bundled_faces(image_size=image_size, seed=seed)
    path = Path(spec).expanduser()
    if not path.exists():
        raise GsloraError(f"data {spec!r} is neither 'faces' (the bundled set) nor an existing folder.")
    return folder_data(path, image_size=image_size, seed=seed, split_ratio=split_ratio, val_ratio=val_ratio,
                       resize_crop=(preprocessing or {}).get("resize_crop"))
