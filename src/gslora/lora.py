"""LoRA on the FFN linears of every Transformer block (via PEFT), parameter groups per block, merge, export.

The adapter of each forgetting task is a standard PEFT LoRA adapter: ``PeftModel.from_pretrained(base, folder)``
loads it onto the model the task started from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from .files import atomic_write_dir
from .models.ffn import FFNBlock, locate_ffn


@dataclass
class LoraGroups:
    """The LoRA parameters of each block: the groups of GS-LoRA's group lasso."""

    blocks: list[FFNBlock]
    params: list[list[nn.Parameter]]  # per block: A_fc1, B_fc1, A_fc2, B_fc2
    modules: list[list[nn.Module]]  # per block: the two PEFT LoRA layers


def attach_lora(model: nn.Module, rank: int = 8, alpha: float = 8.0,
                dropout: float = 0.0, blocks: list[FFNBlock] | None = None) -> tuple[PeftModel, LoraGroups]:
    """Wrap ``model`` with LoRA (B = 0 at start) on both FFN linears of every block; everything else is frozen.

    The LoRA scaling is ``alpha / rank`` (the authors used 1/8, i.e. alpha = 1 at rank 8). ``blocks``: the groups
    to use (default: :func:`gslora.models.ffn.locate_ffn`; detection models pass their own locator's).
    """
    if blocks is None:
        _, blocks = locate_ffn(model)
    targets = [name for b in blocks for name in (b.fc1, b.fc2)]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    peft_model = get_peft_model(model, config)
    inner = peft_model.base_model.model
    params, modules = [], []
    for b in blocks:
        layers = [inner.get_submodule(b.fc1), inner.get_submodule(b.fc2)]
        modules.append(layers)
        params.append([p for layer in layers for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight)])
    return peft_model, LoraGroups(blocks=blocks, params=params, modules=modules)


def group_norms(groups: LoraGroups) -> list[float]:
    """sqrt(sum of squared Frobenius norms) of each block's LoRA matrices: what the group lasso penalises."""
    with torch.no_grad():
        return [float(torch.sqrt(sum(p.float().pow(2).sum() for p in ps))) for ps in groups.params]


def delta_norms(groups: LoraGroups) -> tuple[list[float], list[float]]:
    """Per block: ‖ΔW‖_F of the actual weight change (scaling·B·A over fc1 and fc2), and the same relative to ‖W‖_F."""
    absolute, relative = [], []
    with torch.no_grad():
        for layers in groups.modules:
            d2, w2 = 0.0, 0.0
            for layer in layers:
                delta = layer.get_delta_weight("default").float()
                d2 += float(delta.pow(2).sum())
                w2 += float(layer.base_layer.weight.float().pow(2).sum())
            absolute.append(d2**0.5)
            relative.append((d2 / w2) ** 0.5 if w2 > 0 else 0.0)
    return absolute, relative


def prox_group_b(groups: LoraGroups, step: float | list[float]) -> list[bool]:
    """The proximal step of the group lasso on each block's B matrices (B_fc1, B_fc2): group soft-thresholding
    B ← B · max(0, 1 − τ / ‖B‖) with τ = step · sqrt(number of B entries), i.e. ``step`` per entry (with Adam, whose
    steps are about lr per entry, ``step = alpha · lr`` makes alpha the share of a full step a group must exceed).
    A block whose ‖B‖ ≤ τ becomes exactly zero, and so does its update ΔW = s·B·A
    (A, which starts at Kaiming scale, is left alone: it carries no update while B is zero).
    ``step`` may be a list (one per block). Returns, per block, whether it is now exactly zero."""
    off = []
    steps = step if isinstance(step, list) else [step] * len(groups.params)
    with torch.no_grad():
        for ps, st in zip(groups.params, steps):
            bs = ps[1::2]
            threshold = st * sum(b.numel() for b in bs) ** 0.5
            norm = torch.sqrt(sum(b.float().pow(2).sum() for b in bs))
            factor = torch.clamp(1 - threshold / norm.clamp(min=1e-30), min=0.0)
            for b in bs:
                b.mul_(factor.to(b.dtype))
            off.append(bool(factor == 0) or bool(norm == 0))
    return off


def block_is_zero(groups: LoraGroups) -> list[bool]:
    """Per block: its LoRA update is exactly zero (every B entry is 0)."""
    with torch.no_grad():
        return [all(not bool(b.any()) for b in ps[1::2]) for ps in groups.params]


def save_adapter(peft_model: PeftModel, folder: str | Path, groups: LoraGroups | None = None,
                 keep: list[int] | None = None) -> Path:
    """Write the adapter in PEFT's format (adapter_config.json + adapter_model.safetensors), atomically.

    ``keep`` (block indices, with ``groups``): store only those blocks' LoRA layers; the others are exactly zero and
    are left out of the weights and of ``target_modules``, so PEFT attaches nothing there."""
    def write(tmp: Path):
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        if keep is None or groups is None:
            return
        drop = [b for b in groups.blocks if b.index not in keep]
        names = [n for b in drop for n in (b.fc1, b.fc2)]
        weights = Path(tmp) / "adapter_model.safetensors"
        tensors = load_file(str(weights))
        tensors = {k: v for k, v in tensors.items() if not any(f".{n}.lora_" in k for n in names)}
        save_file(tensors, str(weights))
        cfg_path = Path(tmp) / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["target_modules"] = sorted(t for t in cfg["target_modules"] if t not in names)
        cfg_path.write_text(json.dumps(cfg, indent=2))

    return atomic_write_dir(folder, write)


def merge_lora(peft_model: PeftModel) -> nn.Module:
    """Fold the LoRA update into the base weights and return the plain model (no LoRA layers left)."""
    return peft_model.merge_and_unload()
