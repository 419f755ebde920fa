"""DETR-family detectors (Hugging Face transformers): build from a small config, load from a local folder, save, and
find the FFN linears GS-LoRA edits.

Supported: ``DeformableDetrForObjectDetection`` and ``DetrForObjectDetection`` (same layout: ``model.encoder.layers.i``
and ``model.decoder.layers.i``, each with an FFN ``fc1 → act → fc2``; transformers 5.x nests them under ``.mlp``).
A local folder is what ``save_pretrained`` writes (``config.json`` + ``model.safetensors``), e.g. a downloaded copy of
SenseTime/deformable-detr or facebook/detr-resnet-50; nothing is ever downloaded here.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import GsloraError
from ..files import atomic_write_dir
from ..models.ffn import FFNBlock

DETECTORS = ("deformable_detr", "detr")
SIDECAR = "gslora_detection.json"  # class names, pre-training stats, task history beside the HF files

# the tiny configurations of the demo and the tests: timm-style names, shapes visible here
TINY_CONFIGS: dict[str, dict] = {
    # 6 + 6 layers as the paper's Deformable DETR (12 LoRA groups), everything else shrunk for a CPU
    "deformable_detr_tiny": dict(arch="deformable_detr", d_model=64, encoder_layers=6, decoder_layers=6,
                                 encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_attention_heads=4,
                                 decoder_attention_heads=4, num_queries=20, num_feature_levels=3,
                                 encoder_n_points=2, decoder_n_points=2, backbone_width=16),
    # the demo's detector: 3 + 3 layers (6 LoRA groups) and 10 queries, about half the CPU time per step of the
    # 6 + 6 model (docs/detection.md has the measurements behind the choice)
    "deformable_detr_demo": dict(arch="deformable_detr", d_model=64, encoder_layers=3, decoder_layers=3,
                                 encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_attention_heads=4,
                                 decoder_attention_heads=4, num_queries=10, num_feature_levels=3,
                                 encoder_n_points=2, decoder_n_points=2, backbone_width=16),
    # the smallest model the tests build (2 + 2 layers)
    "deformable_detr_micro": dict(arch="deformable_detr", d_model=32, encoder_layers=2, decoder_layers=2,
                                  encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                                  decoder_attention_heads=2, num_queries=10, num_feature_levels=2,
                                  encoder_n_points=2, decoder_n_points=2, backbone_width=8),
    "detr_tiny": dict(arch="detr", d_model=64, encoder_layers=6, decoder_layers=6, encoder_ffn_dim=128,
                      decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4, num_queries=20,
                      backbone_width=16),
}


def _resnet_backbone(width: int, out_features: list[str]):
    from transformers import ResNetConfig

    return ResNetConfig(num_channels=3, embedding_size=width, hidden_sizes=[width, 2 * width, 4 * width, 8 * width],
                        depths=[1, 1, 1, 1], layer_type="basic", out_features=out_features)


def build_detector(name_or_config: str | dict, class_names: list[str], seed: int = 1337, **overrides) -> nn.Module:
    """A randomly initialised detector from a named tiny config (:data:`TINY_CONFIGS`) or a dict of the same keys
    (``arch``: deformable_detr | detr, ``backbone_width``: a small ResNet from scratch, the rest go to the
    transformers config). No weights are downloaded."""
    spec = dict(TINY_CONFIGS[name_or_config]) if isinstance(name_or_config, str) else dict(name_or_config)
    if isinstance(name_or_config, str) and name_or_config not in TINY_CONFIGS:
        raise GsloraError(f"unknown detector {name_or_config!r}; choose one of {', '.join(TINY_CONFIGS)} or a folder "
                          "with a transformers DETR / Deformable DETR model.")
    spec.update(overrides)
    arch = spec.pop("arch", "deformable_detr")
    width = spec.pop("backbone_width", 16)
    labels = {"id2label": dict(enumerate(class_names)), "label2id": {n: i for i, n in enumerate(class_names)}}
    common = dict(num_labels=len(class_names), auxiliary_loss=True, dropout=0.0, **labels)
    with torch.random.fork_rng(devices=[]):  # the initialisation is seeded without touching the caller's RNG
        torch.manual_seed(seed)
        model = _build(arch, width, spec, common)
    return trainable_backbone(model)


def _build(arch: str, width: int, spec: dict, common: dict) -> nn.Module:
    if arch == "deformable_detr":
        from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

        levels = spec.get("num_feature_levels", 4)
        stages = ["stage2", "stage3", "stage4"][-min(3, levels):] if levels > 1 else ["stage4"]
        cfg = DeformableDetrConfig(backbone_config=_resnet_backbone(width, stages), **common, **spec)
        model = DeformableDetrForObjectDetection(cfg)
        _focal_prior_init(model)
    elif arch == "detr":
        from transformers import DetrConfig, DetrForObjectDetection

        cfg = DetrConfig(backbone_config=_resnet_backbone(width, ["stage4"]), **common, **spec)
        model = DetrForObjectDetection(cfg)
    else:
        raise GsloraError(f"unknown detector architecture {arch!r}; choose one of {', '.join(DETECTORS)}.")
    return model


def _focal_prior_init(model: nn.Module, prior: float = 0.01) -> None:
    """Deformable DETR's reference initialisation, which transformers 5.x no longer applies: class logits start at
    the prior probability 0.01 (bias −log(99)) so the focal loss does not begin by pushing every query's score down
    from 0.5, and the box heads' last layer starts at zero with the size logits at −2."""
    with torch.no_grad():
        for head in model.class_embed:
            head.bias.fill_(-math.log((1 - prior) / prior))
        for head in model.bbox_embed:
            head.layers[-1].weight.zero_()
            head.layers[-1].bias.zero_()
            head.layers[-1].bias[2:] = -2.0


def backbone_network(model: nn.Module) -> nn.Module:
    """The convolutional backbone inside a DETR-family detector (``model.backbone.model``: a transformers
    ``*Backbone`` whose output has ``feature_maps``, or a timm features-only network)."""
    return unwrap(model).model.backbone.model


def trainable_backbone(model: nn.Module) -> nn.Module:
    """Make a from-scratch backbone trainable: transformers replaces its batch norms by frozen ones (right for an
    ImageNet backbone, an identity for a random one) and freezes stem and stages by a name pattern (``"stage.1"``)
    that never matches transformers' own ResNet (``stages.1``), i.e. the whole backbone. Here every backbone weight
    trains and the frozen batch norms become ordinary ``BatchNorm2d`` again; :func:`freeze_batch_norm` turns them
    back (same state-dict keys) once pre-training is over."""
    net = backbone_network(model)
    frozen = _frozen_bn_class(model)
    _swap_norms(net, frozen, lambda child: nn.BatchNorm2d(child.weight.numel()))
    for p in net.parameters():
        p.requires_grad_(True)
    return model


def freeze_batch_norm(model: nn.Module) -> nn.Module:
    """Every ``BatchNorm2d`` of the detector's backbone back to the model family's frozen batch norm (same running
    statistics and affine values, so eval outputs do not change); a no-op for a model that has none. Forgetting runs
    start with this: a live batch norm would keep updating its statistics in train mode, changing a model GS-LoRA
    promises to leave untouched outside its adapters."""
    frozen = _frozen_bn_class(model)
    _swap_norms(unwrap(model).model.backbone, nn.BatchNorm2d, lambda child: frozen(child.num_features))
    return model


def _swap_norms(module: nn.Module, kind: type, make) -> None:
    """Replace every ``kind`` submodule of ``module`` by ``make(child)`` carrying the same weight, bias and running
    statistics (recursively, in place)."""
    for name, child in module.named_children():
        if isinstance(child, kind):
            new = make(child).to(child.weight.device)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(new, key).copy_(getattr(child, key))
            module._modules[name] = new
        else:
            _swap_norms(child, kind, make)


def _frozen_bn_class(model: nn.Module) -> type:
    inner = unwrap(model)
    module = importlib.import_module(type(inner).__module__)
    name = {"deformable_detr": "DeformableDetrFrozenBatchNorm2d", "detr": "DetrFrozenBatchNorm2d"}[arch_of(inner)]
    return getattr(module, name)


def arch_of(model: nn.Module) -> str:
    """``deformable_detr`` or ``detr`` (reads through a PEFT wrapper)."""
    inner = unwrap(model)
    mtype = getattr(getattr(inner, "config", None), "model_type", None)
    if mtype not in DETECTORS:
        raise GsloraError(f"{type(inner).__name__} is not a supported detector; gslora detection takes transformers "
                          "DeformableDetrForObjectDetection or DetrForObjectDetection.")
    return mtype


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    base = getattr(model, "base_model", None)
    if base is not None and base is not model and hasattr(base, "model"):
        return base.model
    return model


_FFN = re.compile(r"^(?:.*\.)?(?P<part>encoder|decoder)\.layers\.(?P<i>\d+)(?:\.mlp)?\.(?P<which>fc1|fc2)$")


def locate_detr_ffn(model: nn.Module) -> list[FFNBlock]:
    """One group per Transformer layer: the encoder's layers first (0..E−1), then the decoder's (E..E+D−1); each
    group is that layer's FFN (fc1, fc2). Heads, attention, norms and the backbone are not in any group."""
    found: dict[tuple[str, int], dict[str, str]] = {}
    for name, m in unwrap(model).named_modules():
        if isinstance(m, nn.Linear):
            match = _FFN.match(name)
            if match:
                found.setdefault((match.group("part"), int(match.group("i"))), {})[match.group("which")] = name
    enc = sorted((i, d) for (p, i), d in found.items() if p == "encoder" and len(d) == 2)
    dec = sorted((i, d) for (p, i), d in found.items() if p == "decoder" and len(d) == 2)
    if not enc and not dec:
        raise GsloraError(f"found no encoder / decoder FFN layers in {type(model).__name__}; supported detectors are "
                          "transformers DeformableDetrForObjectDetection and DetrForObjectDetection.")
    return [FFNBlock(index=k, fc1=d["fc1"], fc2=d["fc2"]) for k, (_, d) in enumerate(enc + dec)]


def attach_detr_lora(model: nn.Module, rank: int = 8, alpha: float = 8.0, dropout: float = 0.0):
    """:func:`gslora.lora.attach_lora` on the detector's 12 (E + D) FFN groups. Returns (peft_model, LoraGroups).

    PEFT asks every model for its input embeddings to find weights tied to them; DETR-family models have no token
    embeddings (their tied weights are the per-layer heads, which LoRA never touches), so while PEFT wraps the model
    it is told there are none."""
    from ..lora import attach_lora

    blocks = locate_detr_ffn(model)
    inner = unwrap(model)
    inner.get_input_embeddings = nn.Identity  # an instance attribute: no parameters, nothing tied
    try:
        return attach_lora(model, rank=rank, alpha=alpha, dropout=dropout, blocks=blocks)
    finally:
        del inner.get_input_embeddings


def group_names(model: nn.Module) -> list[str]:
    """``enc0 … enc5, dec0 … dec5``: the name of each LoRA group, in locator order."""
    names = []
    for b in locate_detr_ffn(model):
        m = _FFN.match(b.fc1)
        names.append(f"{m.group('part')[:3]}{m.group('i')}")
    return names


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_detector(model: nn.Module, folder: str | Path, class_names: list[str], extra: dict | None = None) -> Path:
    """``save_pretrained`` (config.json + model.safetensors) plus a JSON sidecar, written atomically as one folder.
    The folder loads back with :func:`load_detector` or plain ``from_pretrained``."""
    inner = unwrap(model)

    def write(tmp: Path):
        inner.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / SIDECAR).write_text(json.dumps({"classes": list(class_names), **(extra or {})}, indent=2))

    return atomic_write_dir(folder, write)


def load_detector(folder: str | Path) -> tuple[nn.Module, dict]:
    """A detector from a local folder (``config.json`` + weights, as ``save_pretrained`` writes them). Returns (model,
    meta); meta["classes"] are the category names (from the sidecar, else the config's ``id2label``)."""
    folder = Path(folder).expanduser()
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise GsloraError(f"{folder} is not a detector folder: it has no config.json (give a folder written by "
                          "save_pretrained, e.g. a local copy of SenseTime/deformable-detr).")
    mtype = json.loads(cfg_file.read_text()).get("model_type")
    if mtype == "deformable_detr":
        from transformers import DeformableDetrForObjectDetection as cls
    elif mtype == "detr":
        from transformers import DetrForObjectDetection as cls
    else:
        raise GsloraError(f"{folder} holds a {mtype!r} model; gslora detection takes deformable_detr or detr.")
    if not any((folder / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json")):
        raise GsloraError(f"{folder} has no model.safetensors; save the model with safe_serialization=True "
                          "(gslora never unpickles a .bin file it was handed).")
    model = cls.from_pretrained(str(folder), use_safetensors=True)
    meta = {}
    if (folder / SIDECAR).is_file():
        meta = json.loads((folder / SIDECAR).read_text())
    if "classes" not in meta:
        id2label = model.config.id2label
        meta["classes"] = [id2label[i] for i in sorted(id2label)]
    return model, meta
