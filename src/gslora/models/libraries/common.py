"""What every library importer shares: the backbone wrapper (the library's module behind an input normalisation), the
classifier linear taken out and put back, the preprocessing record and its overrides, and reading state-dict files
(tensors only: nothing is unpickled beyond them)."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from ...errors import GsloraError
from ..heads import LinearHead
from ..registry import Classifier

STATE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


# --- the backbone wrapper -------------------------------------------------------------------------------------------
class ImportedBackbone(nn.Module):
    """``(x - mean) / std`` then the library's model (its classifier linear replaced by ``nn.Identity``)."""

    def __init__(self, model: nn.Module, library: str, mean, std):
        super().__init__()
        self.model = model
        self.library = library
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if self.library == "hf":
            return self.model(pixel_values=x).logits
        return self.model(x)

    # The parts methods that train "the lower blocks" look for, under timm's names (``blocks``, ``patch_embed``,
    # ``cls_token``, ``pos_embed``), mapped onto each library's modules. Properties, so nothing is registered twice.
    def _base(self) -> nn.Module:
        return getattr(self.model, self.model.base_model_prefix)

    @property
    def blocks(self) -> nn.Module:
        if self.library == "timm":
            return self.model.blocks
        if self.library == "torchvision":
            return self.model.encoder.layers
        base = self._base()
        return base.layers if hasattr(base, "layers") else base.encoder.layer

    @property
    def patch_embed(self) -> nn.Module:
        if self.library == "timm":
            return self.model.patch_embed
        if self.library == "torchvision":
            return self.model.conv_proj
        return self._base().embeddings  # HF: patch projection, CLS token and position embeddings together

    @property
    def cls_token(self):
        return {"timm": lambda: getattr(self.model, "cls_token", None),
                "torchvision": lambda: self.model.class_token}.get(self.library, lambda: None)()

    @property
    def pos_embed(self):
        return {"timm": lambda: getattr(self.model, "pos_embed", None),
                "torchvision": lambda: self.model.encoder.pos_embedding}.get(self.library, lambda: None)()


def _split_path(path: str) -> tuple[str, str]:
    parent, _, leaf = path.rpartition(".")
    return parent, leaf


def _take_classifier(model: nn.Module, path: str) -> nn.Linear:
    """Replace the linear at ``path`` by ``nn.Identity`` and return it."""
    parent, leaf = _split_path(path)
    owner = model.get_submodule(parent) if parent else model
    linear = getattr(owner, leaf, None)
    if not isinstance(linear, nn.Linear):
        raise GsloraError(f"{type(model).__name__}.{path} is {type(linear).__name__}, not a linear classifier; only "
                          "models whose classifier is one linear layer can be imported.")
    setattr(owner, leaf, nn.Identity())
    return linear


def _put_classifier(model: nn.Module, path: str, linear: nn.Linear) -> None:
    parent, leaf = _split_path(path)
    setattr(model.get_submodule(parent) if parent else model, leaf, linear)


def _wrap(library_model: nn.Module, library: str, classifier_path: str, image_size: int, prep: dict,
          imported: dict) -> Classifier:
    linear = _take_classifier(library_model, classifier_path)
    head = LinearHead(linear.in_features, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        head.weight.copy_(linear.weight)
        if linear.bias is not None:
            head.bias.copy_(linear.bias)
    backbone = ImportedBackbone(library_model, library, prep["mean"], prep["std"])
    cfg = {
        "arch": imported["arch"], "num_classes": linear.out_features, "head": "linear",
        "head_kwargs": {"bias": linear.bias is not None}, "overrides": {}, "embed_dim": linear.in_features,
        "imported": {**imported, "classifier": classifier_path}, "preprocessing": prep,
    }
    return Classifier(backbone, head, image_size=int(image_size), config=cfg).eval()


def _preprocessing(image_size: int, mean, std, source: str, resize_crop: dict | None = None, **extra) -> dict:
    """The model's input: size, mean / std, and ``resize_crop``, how an image file is brought to the input size
    (:func:`gslora.data.folder.resize_and_crop`; None: resized straight to it)."""
    return {"image_size": int(image_size), "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "from": source, "resize_crop": resize_crop, **extra}


# PIL's resampling codes (what an HF preprocessor_config.json stores as ``resample``)
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
INTERPOLATIONS = tuple(PIL_RESAMPLE.values())
OVERRIDE_KEYS = ("mean", "std", "crop_pct", "interpolation")


def _interpolation(value, default: str = "bilinear") -> str:
    value = getattr(value, "value", value)  # torchvision's InterpolationMode
    if isinstance(value, int) and value in PIL_RESAMPLE:
        return PIL_RESAMPLE[value]
    return value if value in INTERPOLATIONS else default


def crop_pct_policy(image_size: int, crop_pct: float, interpolation: str = "bilinear",
                    square: bool = False) -> dict:
    """timm's eval transform: the shorter side resized to floor(input / crop_pct) (``square``: both sides, timm's
    ``crop_mode="squash"``), then the centre input × input (torchvision's rounding of the offset)."""
    scale = math.floor(image_size / crop_pct)
    return {"resize": [scale, scale] if square else scale, "crop": int(image_size), "interpolation": interpolation,
            "crop_offset": "round"}


def _straight(image_size: int, interpolation: str) -> dict:
    return {"resize": [int(image_size)] * 2, "crop": None, "interpolation": interpolation}


def _apply_override(prep: dict, override: dict | None) -> dict:
    """``preprocessing`` of the run config: ``mean`` / ``std``; ``crop_pct`` (in (0, 1]: shorter side to
    input / crop_pct, then the centre crop; null: resized straight to the input size) and ``interpolation``."""
    if not override:
        return prep
    unknown = sorted(set(override) - set(OVERRIDE_KEYS))
    if unknown:
        raise GsloraError(f"unknown preprocessing override {unknown[0]!r}; set {', '.join(OVERRIDE_KEYS)}.")
    prep = {**prep, **{k: [float(v) for v in override[k]] for k in ("mean", "std") if k in override},
            "from": "override"}
    if "crop_pct" not in override and "interpolation" not in override:
        return prep
    policy = dict(prep.get("resize_crop") or _straight(prep["image_size"], "bilinear"))
    interpolation = override.get("interpolation", policy.get("interpolation") or "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise GsloraError(f"preprocessing.interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                          f"{interpolation!r}.")
    if "crop_pct" in override:
        pct = override["crop_pct"]
        if pct is None:
            policy = _straight(prep["image_size"], interpolation)
        elif isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 < pct <= 1:
            raise GsloraError(f"preprocessing.crop_pct must be a number in (0, 1] (or null: resize straight to the "
                              f"input size), got {pct!r}.")
        else:
            policy = crop_pct_policy(prep["image_size"], float(pct), interpolation)
        prep["crop_pct"] = pct
    policy["interpolation"] = interpolation
    prep["resize_crop"] = policy
    return prep


# --- reading files --------------------------------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a tensors-only ``torch.save`` file (``weights_only=True``); a checkpoint
    dict holding it under ``state_dict`` / ``model`` / ``state_dict_ema`` is unwrapped; ``module.`` prefixes go."""
    path = Path(path)
    if not path.is_file():
        raise GsloraError(f"checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise GsloraError(f"cannot read {path} as safetensors ({e}).") from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            text = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", str(e)).strip()  # torch's message carries colour codes
            first = text.splitlines()[0] if text else type(e).__name__
            raise GsloraError(f"refusing to load {path}: it needs unpickling arbitrary Python objects, which gslora "
                              f"never does ({first}); save a plain state dict (torch.save(model.state_dict())) or "
                              "safetensors.") from None
        except (RuntimeError, OSError, EOFError) as e:
            raise GsloraError(f"cannot read {path} as a PyTorch state dict ({e}).") from None
        for key in ("state_dict", "model", "state_dict_ema", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GsloraError(f"{path} does not hold a state dict of tensors.")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _check_and_load(module: nn.Module, state: dict, what: str, path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        detail = (f"shape of {bad[0]} is {tuple(state[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)}"
                  if bad else f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}")
        raise GsloraError(f"the state dict {path} does not match {what} ({detail}).")
    module.load_state_dict(state, strict=True)
