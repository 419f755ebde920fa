"""The authors' Face Transformer (their ``vit_pytorch_face`` checkpoints): mapped onto gslora's ``vit_face``."""

from __future__ import annotations

import math
import re

import torch

from ...errors import GsloraError
from ..registry import Classifier, create_model
from .common import (
    _check_and_load,
)


# --- the authors' Face Transformer ----------------------------------------------------------------------------------
def is_face_transformer_state(state: dict) -> bool:
    return "patch_to_embedding.weight" in state and "transformer.layers.0.1.fn.fn.net.0.weight" in state


def import_face_transformer(state: dict, model_args: dict | None = None, path="state dict") -> Classifier:
    """The authors' ``ViT_face`` (GS-LoRA release, loralib naming) → ``vit_face`` with identical outputs.

    loralib keeps ``lora_A`` (r × in) and ``lora_B`` (out × r) beside each FFN weight and merges
    ``W + (lora_alpha / r) · B A`` when the model is put in eval mode; that merge is done here
    (``model_args["lora_alpha"]``, default 1: the authors' scaling 1/8 at rank 8). Their patch embedding is a linear
    layer on patches flattened in (p1 p2 c) order; it becomes timm's conv weight by a permutation."""
    model_args = dict(model_args or {})
    alpha = float(model_args.pop("lora_alpha", 1.0))
    try:
        pe = state["patch_to_embedding.weight"]
        width, patch_dim = pe.shape
        patch = math.isqrt(patch_dim // 3)
        depth = len({int(m.group(1)) for k in state if (m := re.match(r"transformer\.layers\.(\d+)\.", k))})
        hidden = state["transformer.layers.0.1.fn.fn.net.0.weight"].shape[0]
        grid = math.isqrt(state["pos_embedding"].shape[1] - 1)
        num_classes = state["loss.weight"].shape[0]
    except KeyError as e:
        raise GsloraError(f"{path} is not a Face Transformer state dict (no {e.args[0]!r}).") from None
    overrides = {"img_size": grid * patch, "patch_size": patch, "embed_dim": width, "depth": depth,
                 "num_heads": int(model_args.pop("num_heads", 8)), "mlp_ratio": hidden / width, **model_args}
    model = create_model("vit_face", num_classes, **overrides)

    def merged(prefix: str) -> torch.Tensor:
        w = state[f"{prefix}.weight"].float()
        if f"{prefix}.lora_A" in state:
            a, b = state[f"{prefix}.lora_A"].float(), state[f"{prefix}.lora_B"].float()
            w = w + (alpha / a.shape[0]) * (b @ a)
        return w

    new = {
        "backbone.cls_token": state["cls_token"], "backbone.pos_embed": state["pos_embedding"],
        "backbone.patch_embed.proj.weight": pe.reshape(width, patch, patch, 3).permute(0, 3, 1, 2),
        "backbone.patch_embed.proj.bias": state["patch_to_embedding.bias"],
        "backbone.norm.weight": state["mlp_head.0.weight"], "backbone.norm.bias": state["mlp_head.0.bias"],
        "head.weight": state["loss.weight"],
    }
    for i in range(depth):
        t, b = f"transformer.layers.{i}", f"backbone.blocks.{i}"
        new.update({
            f"{b}.norm1.weight": state[f"{t}.0.fn.norm.weight"], f"{b}.norm1.bias": state[f"{t}.0.fn.norm.bias"],
            f"{b}.attn.qkv.weight": merged(f"{t}.0.fn.fn.to_qkv"),
            f"{b}.attn.proj.weight": merged(f"{t}.0.fn.fn.to_out.0"),
            f"{b}.attn.proj.bias": state[f"{t}.0.fn.fn.to_out.0.bias"],
            f"{b}.norm2.weight": state[f"{t}.1.fn.norm.weight"], f"{b}.norm2.bias": state[f"{t}.1.fn.norm.bias"],
            f"{b}.mlp.fc1.weight": merged(f"{t}.1.fn.fn.net.0"), f"{b}.mlp.fc1.bias": state[f"{t}.1.fn.fn.net.0.bias"],
            f"{b}.mlp.fc2.weight": merged(f"{t}.1.fn.fn.net.3"), f"{b}.mlp.fc2.bias": state[f"{t}.1.fn.fn.net.3.bias"],
        })
    _check_and_load(model, {k: v.contiguous() for k, v in new.items()}, "the Face Transformer (vit_face)", path)
    return model.eval()
