"""The loss terms of GS-LoRA (the paper's method) and GS-LoRA++ (the GS-LoRA++ paper), as pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F


def bounded_forget_loss(logits: torch.Tensor, labels: torch.Tensor, bound: float) -> torch.Tensor:
    """max(0, BND − CE): pushes the batch-mean CE on forgotten classes up, but only until it reaches ``bound``."""
    return F.relu(bound - F.cross_entropy(logits, labels))


def margin_forget_loss(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-sample hinge mean(max(0, z_y − max_{c≠y} z_c + margin)) on margin-free logits: each forget sample is pushed
    until its own class trails the best other class by ``margin``, then left alone (the CE hinge keeps pushing the
    batch mean towards BND, moving samples that are long forgotten). Only the own class is pushed down: the best
    other class is a constant (raising it too cost the remaining classes more; docs/results/DECISIONS.md)."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(1).detach()
    return F.relu(own - others + margin).mean()


def group_lasso(groups: Iterable[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Σ_g sqrt(Σ_{P∈g} ‖P‖_F²) over the LoRA groups (one group per Transformer block)."""
    terms = [torch.sqrt(sum(p.pow(2).sum() for p in g)) for g in groups]
    return torch.stack(terms).sum()


def prototype_kl(emb: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Per sample KL(softmax(p_y) ‖ softmax(emb)), softmax over the embedding dimensions."""
    log_p = F.log_softmax(prototypes, dim=-1)
    log_q = F.log_softmax(emb, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def prototype_terms(emb_f, proto_f, emb_r, proto_r, w_forget: float, w_remain: float,
                    bound: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_pro, mean KL over the forget batch, mean KL over the remain batch) of GS-LoRA++ (the GS-LoRA++ paper):

        L_pro = w_f · max(0, BND_pro − mean KL(forget)) + w_r · mean KL(remain)

    The forget half pushes the forget embeddings away from their class prototypes until their mean KL reaches
    ``bound``; the remain half pulls the remaining embeddings towards theirs. A half whose weight is 0 adds nothing
    (its KL is still returned, for the log; an empty batch has KL 0)."""
    kl_f = prototype_kl(emb_f, proto_f).mean() if emb_f.shape[0] else emb_f.new_zeros(())
    kl_r = prototype_kl(emb_r, proto_r).mean() if emb_r.shape[0] else emb_r.new_zeros(())
    loss = w_forget * F.relu(bound - kl_f)
    if w_remain:
        loss = loss + w_remain * kl_r
    return loss, kl_f, kl_r


def prototype_loss(emb_f, proto_f, emb_r, proto_r, w_forget: float, w_remain: float, bound: float) -> torch.Tensor:
    """GS-LoRA++'s L_pro = w_f · max(0, BND_pro − mean KL(forget)) + w_r · mean KL(remain)."""
    return prototype_terms(emb_f, proto_f, emb_r, proto_r, w_forget, w_remain, bound)[0]
