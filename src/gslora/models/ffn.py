"""Find the two FFN linears (fc1 → act → fc2) of every Transformer block, by model family.

Families, tried in order (the first that matches wins):

- ``timm``: ``blocks.<i>.mlp.fc1`` / ``blocks.<i>.mlp.fc2`` (timm ``VisionTransformer`` and relatives)
- ``hf-vit-5``: ``layers.<i>.mlp.fc1`` / ``fc2`` (Hugging Face transformers 5.x ``ViTModel``)
- ``hf-vit-4``: ``encoder.layer.<i>.intermediate.dense`` / ``encoder.layer.<i>.output.dense`` (transformers 4.x)
- ``torchvision``: ``encoder_layer_<i>.mlp.0`` / ``encoder_layer_<i>.mlp.3`` (torchvision ``vit_b_16`` etc.)
- ``hf-dinov2``: ``encoder.layer.<i>.mlp.fc1`` / ``fc2`` (Hugging Face ``Dinov2Model``, 4.x and 5.x)

A block is the group GS-LoRA's group lasso acts on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..errors import GsloraError

FAMILIES: list[tuple[str, re.Pattern, tuple[str, str]]] = [
    ("timm", re.compile(r"^(?P<prefix>(?:.*\.)?blocks\.(?P<i>\d+)\.mlp)\.(?P<which>fc1|fc2)$"), ("fc1", "fc2")),
    ("hf-vit-5", re.compile(r"^(?P<prefix>(?:.*\.)?layers\.(?P<i>\d+)\.mlp)\.(?P<which>fc1|fc2)$"), ("fc1", "fc2")),
    (
        "hf-vit-4",
        re.compile(r"^(?P<prefix>(?:.*\.)?encoder\.layer\.(?P<i>\d+))\.(?P<which>intermediate\.dense|output\.dense)$"),
        ("intermediate.dense", "output.dense"),
    ),
    ("torchvision", re.compile(r"^(?P<prefix>(?:.*\.)?encoder_layer_(?P<i>\d+)\.mlp)\.(?P<which>0|3)$"), ("0", "3")),
    (
        "hf-dinov2",
        re.compile(r"^(?P<prefix>(?:.*\.)?encoder\.layer\.(?P<i>\d+)\.mlp)\.(?P<which>fc1|fc2)$"),
        ("fc1", "fc2"),
    ),
]


@dataclass(frozen=True)
class FFNBlock:
    index: int
    fc1: str  # full module name of the first FFN linear
    fc2: str  # full module name of the second FFN linear


def locate_ffn(model: nn.Module) -> tuple[str, list[FFNBlock]]:
    """Return (family, blocks in order). A model where no family matches is an error naming the model."""
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    for family, pattern, (first, second) in FAMILIES:
        found: dict[tuple[str, int], dict[str, str]] = {}
        for name in linears:
            m = pattern.match(name)
            if m:
                found.setdefault((m.group("prefix"), int(m.group("i"))), {})[m.group("which")] = name
        blocks = [(i, d) for (_, i), d in found.items() if first in d and second in d]
        if blocks:
            blocks.sort(key=lambda b: b[0])
            return family, [FFNBlock(index=i, fc1=d[first], fc2=d[second]) for i, d in blocks]
    raise GsloraError(
        f"found no Transformer FFN linears in {type(model).__name__}; supported layouts are timm ViT "
        "(blocks.i.mlp.fc1/fc2), Hugging Face ViT / DeiT / BEiT / Dinov2 (4.x and 5.x names) and torchvision ViT "
        "(encoder_layer_i.mlp.0/3)."
    )
