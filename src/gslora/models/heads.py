"""Classification heads. CosFace (Wang et al., 2018) as in the paper's face model; a plain linear head otherwise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosFace(nn.Module):
    """logits_j = s · (cos θ_j − m·[j = y]); the margin is applied only when labels are given (training)."""

    def __init__(self, in_features: int, num_classes: int, s: float = 64.0, m: float = 0.35):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.s, self.m = float(s), float(m)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(emb, dim=-1), F.normalize(self.weight, dim=-1))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosine(emb)
        if labels is not None:  # a comparison, not F.one_hot, whose range check torch.func.vmap cannot trace
            is_true = torch.arange(cos.shape[-1], device=cos.device) == labels.unsqueeze(-1)
            cos = cos - self.m * is_true.to(cos.dtype)
        return self.s * cos

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, s={self.s}, m={self.m}"


class LinearHead(nn.Linear):
    """A linear classifier that accepts (and ignores) labels, so every head has the same call signature."""

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(emb)


def make_head(kind: str, in_features: int, num_classes: int, **kwargs) -> nn.Module:
    if kind == "cosface":
        return CosFace(in_features, num_classes, **kwargs)
    if kind == "linear":
        return LinearHead(in_features, num_classes, bias=kwargs.get("bias", True))
    raise ValueError(f"unknown head {kind!r}; expected 'cosface' or 'linear'")
