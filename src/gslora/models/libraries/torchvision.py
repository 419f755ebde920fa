"""torchvision Vision Transformers: a state dict (with the architecture's name) in, a state dict out."""

from __future__ import annotations

import math
import re
from pathlib import Path

from torch import nn

from ...errors import GsloraError
from ..registry import Classifier
from .common import (
    _apply_override,
    _check_and_load,
    _interpolation,
    _preprocessing,
    _wrap,
    read_state_dict,
)

TORCHVISION_ARCHS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")


# --- torchvision ----------------------------------------------------------------------------------------------------
def _torchvision_shapes(state: dict, path) -> dict:
    try:
        conv = state["conv_proj.weight"]
        layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.encoder_layer_(\d+)\.", k))}
        mlp = state["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0]
        seq = state["encoder.pos_embedding"].shape[1]
    except KeyError as e:
        raise GsloraError(f"{path} is not a torchvision VisionTransformer state dict (no {e.args[0]!r}).") from None
    grid = math.isqrt(seq - 1)
    kwargs = {"image_size": grid * conv.shape[-1], "patch_size": conv.shape[-1], "num_layers": len(layers),
              "hidden_dim": conv.shape[0], "mlp_dim": mlp}
    if "heads.pre_logits.weight" in state:
        kwargs["representation_size"] = state["heads.pre_logits.weight"].shape[0]
    return kwargs


def import_torchvision(path: str | Path, arch: str, model_args: dict | None = None,
                       preprocessing: dict | None = None, state: dict | None = None
                       ) -> tuple[Classifier, list[str] | None]:
    """A torchvision ViT state dict + an architecture name (``vit_b_16`` …, or ``VisionTransformer`` whose shapes are
    read from the state dict; ``num_heads`` then comes from ``model_args``, default width / 64)."""
    state = read_state_dict(path) if state is None else state
    if "heads.head.weight" not in state:
        raise GsloraError(f"{path} is not a torchvision VisionTransformer state dict (no 'heads.head.weight').")
    num_classes = int(state["heads.head.weight"].shape[0])
    shapes = _torchvision_shapes(state, path)
    model_args = dict(model_args or {})
    if arch == "VisionTransformer":
        kwargs = {**shapes, "num_heads": int(model_args.pop("num_heads", max(1, shapes["hidden_dim"] // 64))),
                  **model_args, "num_classes": num_classes}
    elif arch in TORCHVISION_ARCHS:
        kwargs = {"image_size": shapes["image_size"], **model_args, "num_classes": num_classes}
    else:
        raise GsloraError(f"unsupported torchvision architecture {arch!r}; use one of "
                          f"{', '.join(TORCHVISION_ARCHS)} or VisionTransformer.")
    imported = {"library": "torchvision", "arch": f"torchvision:{arch}", "builder": arch, "kwargs": kwargs,
                "source": str(Path(path).resolve())}
    try:
        tv_model = _build_torchvision(imported)
    except (TypeError, ValueError, AssertionError) as e:
        raise GsloraError(f"cannot build torchvision {arch} with {kwargs} ({e}).") from None
    _check_and_load(tv_model, state, f"torchvision {arch}", path)
    names, prep = None, None
    if arch in TORCHVISION_ARCHS:
        from torchvision.models import get_model_weights

        for weights in get_model_weights(arch):
            t = weights.transforms()
            if list(t.crop_size) == [tv_model.image_size]:
                policy = {"resize": int(t.resize_size[0]), "crop": int(t.crop_size[0]),
                          "interpolation": _interpolation(t.interpolation), "crop_offset": "round"}
                prep = _preprocessing(tv_model.image_size, t.mean, t.std, f"torchvision {weights}", policy,
                                      resize_size=list(t.resize_size), crop_size=list(t.crop_size))
                if len(weights.meta.get("categories", [])) == num_classes:
                    names = list(weights.meta["categories"])
                break
    if prep is None:
        prep = _preprocessing(tv_model.image_size, [0.0] * 3, [1.0] * 3, "none (no torchvision weights entry)")
    prep = _apply_override(prep, preprocessing)
    return _wrap(tv_model.eval(), "torchvision", "heads.head", tv_model.image_size, prep, imported), names


# (hidden_dim, patch_size, num_layers, mlp_dim) of torchvision's named ViTs
_TORCHVISION_SHAPES = {(768, 16, 12, 3072): "vit_b_16", (768, 32, 12, 3072): "vit_b_32",
                       (1024, 16, 24, 4096): "vit_l_16", (1024, 32, 24, 4096): "vit_l_32",
                       (1280, 14, 32, 5120): "vit_h_14"}


def _guess_torchvision_arch(state: dict) -> str | None:
    """The named torchvision ViT a state dict's shapes match (None when it is not one)."""
    if "conv_proj.weight" not in state or "heads.head.weight" not in state:
        return None
    try:
        k = _torchvision_shapes(state, "")
    except GsloraError:
        return None
    return _TORCHVISION_SHAPES.get((k["hidden_dim"], k["patch_size"], k["num_layers"], k["mlp_dim"]))


def _build_torchvision(imported: dict) -> nn.Module:
    import torchvision.models as tvm
    from torchvision.models.vision_transformer import VisionTransformer

    if imported["builder"] == "VisionTransformer":
        return VisionTransformer(**imported["kwargs"])
    return getattr(tvm, imported["builder"])(weights=None, **imported["kwargs"])


def export(library_model: nn.Module, folder: Path, classes: list[str], imported: dict, note: dict) -> None:
    """``model.safetensors``: the ``VisionTransformer`` state dict (``model.load_state_dict(load_file(...))``)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in library_model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
