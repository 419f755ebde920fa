"""Named model configurations (timm style): ``create_model("vit_face", num_classes=100)``.

Every model is a :class:`Classifier`: a backbone that maps images to an embedding, and a head that maps the embedding
(and, in training, the labels) to logits. Backbones are timm ``VisionTransformer``s.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import GsloraError
from ..record import MASK_LOGIT
from .heads import make_head

# The paper's Face Transformer: 112 px, patch 8, width 512, depth 6, 8 heads, FFN 2048, qkv without bias.
# With a 100-way CosFace head it has 19,157,504 parameters. ``face=True`` makes the timm ViT compute what the authors'
# ``ViT_face`` computes (see :func:`_make_face_transformer`): attention scale width^-0.5 (512^-0.5, not the head
# dimension's 64^-0.5), LayerNorm eps 1e-5, dropout 0.1 after the embedding, after the attention output projection,
# after the FFN's GELU and after its second linear, none on the attention weights. ``attention_scale="head"`` keeps
# timm's standard head_dim^-0.5 (a choice for models trained from scratch).
MODEL_CONFIGS: dict[str, dict] = {
    "vit_face": dict(
        img_size=112, patch_size=8, embed_dim=512, depth=6, num_heads=8, mlp_ratio=4.0, qkv_bias=False,
        pos_drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.0, face=True, head="cosface",
    ),
    # A CPU-sized face model for demos and tests: 24 px, patch 4 (36 patches), width 64, depth 6, FFN 256.
    "vit_face_tiny": dict(
        img_size=24, patch_size=4, embed_dim=64, depth=6, num_heads=2, mlp_ratio=4.0, qkv_bias=False, head="cosface",
    ),
    # 4x the width at 32 px / patch 8 (16 tokens, 1.2 M parameters): to measure whether width helps retention.
    "vit_face_small": dict(
        img_size=32, patch_size=8, embed_dim=128, depth=6, num_heads=4, mlp_ratio=4.0, qkv_bias=False, head="cosface",
    ),
    # An even smaller one for unit tests (seconds).
    "vit_face_micro": dict(
        img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0, qkv_bias=False, head="cosface",
    ),
}


class Classifier(nn.Module):
    """backbone(x) → embedding; head(embedding, labels) → logits.

    ``config["masked_classes"]`` (set on a finished run's model; the deployed model): without labels the output of
    those classes is :data:`gslora.record.MASK_LOGIT`, so a forgotten class is never predicted. With labels
    (training) nothing is masked."""

    def __init__(self, backbone: nn.Module, head: nn.Module, image_size: int, config: dict):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.image_size = image_size
        self.config = config

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.head(self.backbone(x), labels)
        masked = self.config.get("masked_classes") if labels is None else None
        if masked:
            index = torch.as_tensor(masked, dtype=torch.long, device=logits.device)
            logits = logits.index_fill(-1, index, MASK_LOGIT)
        return logits


def list_models() -> list[str]:
    return sorted(MODEL_CONFIGS)


def create_model(name: str, num_classes: int, seed: int | None = None, **overrides) -> Classifier:
    """A fresh, randomly initialised model. ``name`` is a registry name or ``timm:<timm model name>``.

    ``seed`` makes the initialisation reproducible without touching the global random state.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create_model(name, num_classes, **overrides)
    from timm.models.vision_transformer import VisionTransformer

    if num_classes < 1:
        raise GsloraError(f"num_classes must be at least 1, got {num_classes}.")
    head_kwargs = overrides.pop("head_kwargs", {}) or {}
    head_kind = overrides.pop("head", None)
    if name.startswith("timm:"):
        import timm

        head_kind = head_kind or "cosface"
        try:
            backbone = timm.create_model(name[5:], pretrained=False, num_classes=0, **overrides)
        except RuntimeError as e:
            raise GsloraError(f"timm has no model {name[5:]!r} ({e}).") from None
        patch_embed_size = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
        if patch_embed_size is not None:  # the actual input size, including an img_size override
            image_size = int(patch_embed_size[0] if isinstance(patch_embed_size, (tuple, list)) else patch_embed_size)
        else:
            image_size = int(backbone.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
        embed_dim = backbone.num_features
        cfg = {"arch": name, "num_classes": num_classes, "head": head_kind, "overrides": overrides}
    else:
        if name not in MODEL_CONFIGS:
            raise GsloraError(f"unknown model {name!r}; choose one of {', '.join(list_models())} or timm:<name>.")
        kwargs = {**copy.deepcopy(MODEL_CONFIGS[name]), **overrides}
        head_kind = head_kind or kwargs.pop("head")
        kwargs.pop("head", None)
        face = bool(kwargs.pop("face", False))
        attention_scale = kwargs.pop("attention_scale", "width" if face else "head")
        if attention_scale not in ("width", "head"):
            raise GsloraError(f"attention_scale must be 'width' or 'head', got {attention_scale!r}.")
        if face:
            backbone = _make_face_transformer(VisionTransformer, kwargs, attention_scale)
        else:
            backbone = VisionTransformer(num_classes=0, global_pool="token", **kwargs)
        image_size = int(kwargs["img_size"])
        embed_dim = int(kwargs["embed_dim"])
        cfg = {"arch": name, "num_classes": num_classes, "head": head_kind, "overrides": overrides}
        if face:
            cfg["face_v2"] = True  # records that the blocks follow the Face Transformer (see create_from_config)
    cfg["head_kwargs"] = head_kwargs
    head = make_head(head_kind, embed_dim, num_classes, **head_kwargs)
    return Classifier(backbone, head, image_size=image_size, config=cfg)


def _make_face_transformer(vit_class, kwargs: dict, attention_scale: str) -> nn.Module:
    """A timm ViT computing the authors' Face Transformer (``vit_pytorch_face/vit_face.py``): pre-LN blocks,
    ``dots = q·kᵀ · dim^-0.5`` with dim the model width, nn.LayerNorm (eps 1e-5), dropout after the embedding (timm's
    pos_drop), after ``to_out`` (proj_drop) and after GELU and the second FFN linear (timm's Mlp drop1 / drop2), CLS
    token then LayerNorm as the embedding. Their linear patch embedding on (p1 p2 c)-flattened patches is the same
    function as timm's conv patch embedding once the weight is permuted (done when their checkpoint is imported)."""
    from functools import partial

    backbone = vit_class(num_classes=0, global_pool="token", norm_layer=partial(nn.LayerNorm, eps=1e-5), **kwargs)
    if attention_scale == "width":
        for block in backbone.blocks:
            block.attn.scale = float(kwargs["embed_dim"]) ** -0.5
            block.attn.fused_attn = False  # timm's fused path ignores .scale
    return backbone


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
