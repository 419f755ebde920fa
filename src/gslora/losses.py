"""The loss terms of GS-LoRA (SPEC §3) and GS-LoRA++ (SPEC §4), as pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F


def bounded_forget_loss(logits: torch.Tensor, labels: torch.Tensor, bound: float) -> torch.Tensor:
    """max(0, BND − CE): pushes the batch-mean CE on forgotten classes up, but only until it reaches ``bound``."""
    return F.relu(bound - F.cross_entropy(logits, labels))


def group_lasso(groups: Iterable[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Σ_g sqrt(Σ_{P∈g} ‖P‖_F²) over the LoRA groups (one group per Transformer block)."""
    terms = [torch.sqrt(sum(p.pow(2).sum() for p in g)) for g in groups]
    return torch.stack(terms).sum()


def prototype_kl(emb: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Per sample KL(softmax(p_y) ‖ softmax(emb)), softmax over the embedding dimensions."""
    log_p = F.log_softmax(prototypes, dim=-1)
    log_q = F.log_softmax(emb, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def prototype_loss(emb_f, proto_f, emb_r, proto_r, w_forget: float, w_remain: float, bound: float) -> torch.Tensor:
    """GS-LoRA++'s L_pro = w_f · max(0, BND_pro − mean KL(forget)) + w_r · mean KL(remain)."""
    loss = w_forget * F.relu(bound - prototype_kl(emb_f, proto_f).mean())
    if w_remain:
        loss = loss + w_remain * prototype_kl(emb_r, proto_r).mean()
    return loss
