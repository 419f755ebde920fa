"""Bring your own model: Hugging Face, torchvision and timm classifiers (and the authors' Face Transformer) in, the
same format out.

An imported model is a :class:`~gslora.models.registry.Classifier` whose backbone *is* the library's own module with
its final classifier linear replaced by ``nn.Identity`` (so it returns exactly what that linear received: the CLS
embedding after the final LayerNorm for ViT / DeiT / torchvision / timm, the pooled output for BEiT, CLS ⊕ mean patch
token for Dinov2), behind an input normalisation held in buffers. The classifier's weights become a
:class:`~gslora.models.heads.LinearHead`, so logits are identical to the library's.

The sidecar of a gslora checkpoint records how to rebuild the library module offline (``config["imported"]``: the HF
``config.json`` contents, the torchvision builder and its arguments, or the timm model name and arguments), and
:func:`export_native` writes the (forgotten, LoRA-merged) model back in the library's own format.

Nothing is unpickled beyond tensors: ``.pth`` / ``.bin`` files are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import GsloraError
from .heads import LinearHead
from .registry import Classifier, create_model

HF_CLASSES = (
    "ViTForImageClassification", "DeiTForImageClassification", "BeitForImageClassification",
    "Dinov2ForImageClassification",
)
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TORCHVISION_ARCHS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")
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


# --- Hugging Face ---------------------------------------------------------------------------------------------------
def _hf_model_class(arch: str):
    import transformers

    if arch not in HF_CLASSES:
        raise GsloraError(f"unsupported Hugging Face architecture {arch!r}; gslora imports {', '.join(HF_CLASSES)}.")
    return getattr(transformers, arch)


def _hf_preprocessing(folder: Path | None, hf_config, saved: dict | None) -> tuple[dict, dict | None]:
    size = hf_config.image_size
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    proc = saved
    if proc is None and folder is not None and (folder / "preprocessor_config.json").is_file():
        proc = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
    if proc is None:
        return _preprocessing(size, [0.0] * 3, [1.0] * 3, "none (no preprocessor_config.json)"), None
    normalize = proc.get("do_normalize", True)
    mean = proc.get("image_mean", [0.5] * 3) if normalize else [0.0] * 3
    std = proc.get("image_std", [0.5] * 3) if normalize else [1.0] * 3
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    extra = {k: proc[k] for k in ("size", "crop_size", "do_center_crop", "do_resize") if k in proc}
    policy, note = _hf_resize_crop(proc, size)
    if note:
        extra["resize_crop_note"] = note
    return _preprocessing(size, mean, std, "preprocessor_config.json", policy, **extra), proc


def _hf_size(value):
    """An HF ``size`` / ``crop_size`` → N (``shortest_edge``) or [H, W]; None when it is neither."""
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, dict):
        if value.get("height") and value.get("width"):
            return [int(value["height"]), int(value["width"])]
        if set(value) == {"shortest_edge"}:
            return int(value["shortest_edge"])
    return None


def _hf_resize_crop(proc: dict, image_size: int) -> tuple[dict, str | None]:
    """What the HF image processor does to an image: resize (``size``: height × width, or ``shortest_edge``;
    ``resample``), then with ``do_center_crop`` the centre ``crop_size`` (offset rounded down, as HF does).
    Anything that does not end at the model's input size is replaced by a straight resize, with a note why."""
    interpolation = _interpolation(proc.get("resample"))
    resize = _hf_size(proc.get("size")) if proc.get("do_resize", True) else None
    crop = _hf_size(proc.get("crop_size")) if proc.get("do_center_crop", False) else None
    square = [image_size, image_size]
    if proc.get("do_center_crop", False):
        if crop == square and (resize is not None or not proc.get("do_resize", True)):
            return {"resize": resize, "crop": image_size, "interpolation": interpolation, "crop_offset": "floor"}, None
        why = f"size {proc.get('size')!r}, crop_size {proc.get('crop_size')!r}"
    elif resize == square or (resize is None and not proc.get("do_resize", True)):
        return _straight(image_size, interpolation), None
    else:
        why = f"size {proc.get('size')!r} without a centre crop"
    return _straight(image_size, interpolation), (f"{why} does not end at the model's input size {image_size}; "
                                                  "images are resized straight to it")


def _hf_arch(hf_config) -> str:
    archs = list(getattr(hf_config, "architectures", None) or [])
    if "DeiTForImageClassificationWithTeacher" in archs:
        raise GsloraError("unsupported Hugging Face architecture DeiTForImageClassificationWithTeacher (its logits "
                          "average two heads); gslora imports " + ", ".join(HF_CLASSES) + ".")
    for arch in archs:
        if arch in HF_CLASSES:
            return arch
    guess = {"vit": "ViTForImageClassification", "deit": "DeiTForImageClassification",
             "beit": "BeitForImageClassification", "dinov2": "Dinov2ForImageClassification"}
    if not archs and hf_config.model_type in guess:
        return guess[hf_config.model_type]
    raise GsloraError(f"unsupported Hugging Face architecture {(archs or [hf_config.model_type])[0]!r}; gslora "
                      f"imports {', '.join(HF_CLASSES)}.")


def import_hf(folder: str | Path, preprocessing: dict | None = None) -> tuple[Classifier, list[str] | None]:
    """An HF image-classification folder (``config.json`` + weights) → (model, class names from ``id2label``)."""
    import transformers

    folder = Path(folder)
    try:
        hf_config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise GsloraError(f"cannot read the Hugging Face config in {folder} ({str(e).splitlines()[0]}).") from None
    arch = _hf_arch(hf_config)
    if not any((folder / name).is_file() for name in HF_WEIGHTS):
        raise GsloraError(f"{folder} has a config.json but no weights ({' or '.join(HF_WEIGHTS[::2])}).")
    cls = _hf_model_class(arch)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bars on the command line
    try:
        hf_model, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                             dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise GsloraError(f"cannot load {folder} as {arch} ({str(e).strip().splitlines()[0]}).") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    bad = info.get("missing_keys") or info.get("mismatched_keys")
    if bad:
        raise GsloraError(f"the weights in {folder} do not match its config.json ({arch}: "
                          f"{'missing' if info.get('missing_keys') else 'mismatched'} {sorted(bad)[:3]}).")
    prep, proc = _hf_preprocessing(folder, hf_model.config, None)
    prep = _apply_override(prep, preprocessing)
    model = _wrap(hf_model.float().eval(), "hf", "classifier", prep["image_size"], prep, {
        "library": "hf", "arch": f"hf:{arch}", "class": arch, "source": str(folder.resolve()),
        "hf_config": hf_model.config.to_dict(), "preprocessor_config": proc,
    })
    id2label = getattr(hf_config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(model.config["num_classes"])]
    default = all(re.fullmatch(r"LABEL_\d+", n) or not n for n in names)
    return model, (None if default else names)


def _build_hf(imported: dict) -> nn.Module:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    conf = dict(imported["hf_config"])
    config_class = CONFIG_MAPPING[conf["model_type"]]
    return _hf_model_class(imported["class"])(config_class.from_dict(conf)).float()


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


# --- timm -----------------------------------------------------------------------------------------------------------
def import_timm(path: str | Path, name: str, model_args: dict | None = None, preprocessing: dict | None = None,
                label_names: list[str] | None = None, state: dict | None = None
                ) -> tuple[Classifier, list[str] | None]:
    """A timm state dict (safetensors or tensors-only torch file) + the timm model name; or a folder written by timm
    (``config.json`` with ``architecture`` / ``pretrained_cfg`` + weights): :func:`import_timm_folder`."""
    import timm
    from timm.data import resolve_data_config

    state = read_state_dict(path) if state is None else state
    try:
        probe_cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - timm raises several kinds for unknown names
        probe_cfg = None
    if not timm.is_model(name):
        raise GsloraError(f"timm has no model {name!r}.")
    classifier = getattr(probe_cfg, "classifier", None) or "head"
    if not isinstance(classifier, str):
        raise GsloraError(f"unsupported timm architecture {name!r}: it has several classifier heads {classifier}.")
    if f"{classifier}.weight" not in state:
        raise GsloraError(f"the state dict {path} does not match timm {name} (no classifier {classifier}.weight).")
    kwargs = {**dict(model_args or {}), "num_classes": int(state[f"{classifier}.weight"].shape[0])}
    imported = {"library": "timm", "arch": f"timm:{name}", "name": name, "kwargs": kwargs,
                "source": str(Path(path).resolve())}
    try:
        timm_model = _build_timm(imported)
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:
        raise GsloraError(f"cannot build timm {name} with {kwargs} ({e}).") from None
    _check_and_load(timm_model, state, f"timm {name}", path)
    data_cfg = resolve_data_config({}, model=timm_model)
    size = getattr(getattr(timm_model, "patch_embed", None), "img_size", None) or data_cfg["input_size"][1:]
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    crop_pct = data_cfg.get("crop_pct") or 0.875  # timm's default when the config has none
    crop_mode = data_cfg.get("crop_mode") or "center"
    interpolation = _interpolation(data_cfg.get("interpolation"))
    extra = {}
    if crop_mode in ("center", "squash"):
        policy = crop_pct_policy(size, crop_pct, interpolation, square=crop_mode == "squash")
    else:
        policy = _straight(size, interpolation)
        extra["resize_crop_note"] = f"timm crop_mode {crop_mode!r} is not reproduced; images are resized straight"
    prep = _preprocessing(size, data_cfg["mean"], data_cfg["std"], "timm pretrained_cfg", policy,
                          crop_pct=crop_pct, crop_mode=crop_mode, interpolation=interpolation, **extra)
    prep = _apply_override(prep, preprocessing)
    names = label_names or (timm_model.pretrained_cfg or {}).get("label_names")
    model = _wrap(timm_model.eval(), "timm", classifier, size, prep, imported)
    return model, (list(names) if names and len(names) == model.config["num_classes"] else None)


def import_timm_folder(folder: str | Path, preprocessing: dict | None = None) -> tuple[Classifier, list[str] | None]:
    # timm has no public reader of a local folder's config.json (its public path, create_model("local-dir:..."),
    # also loads the weights, without our checks); this private one parses the legacy and current formats alike.
    # Tested on timm 1.0.x; pyproject pins timm < 1.1 for it.
    from timm.models._hub import load_model_config_from_path

    folder = Path(folder)
    try:
        pretrained_cfg, name, model_args = load_model_config_from_path(folder)
    except (KeyError, ValueError, OSError) as e:
        raise GsloraError(f"cannot read the timm config in {folder} ({e}).") from None
    weights = next((folder / w for w in ("model.safetensors", "pytorch_model.bin") if (folder / w).is_file()), None)
    if weights is None:
        raise GsloraError(f"{folder} has a timm config.json but no weights (model.safetensors or pytorch_model.bin).")
    return import_timm(weights, name, model_args, preprocessing, label_names=pretrained_cfg.get("label_names"))


def _build_timm(imported: dict) -> nn.Module:
    import timm

    return timm.create_model(imported["name"], pretrained=False, **imported["kwargs"])


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


# --- entry points ---------------------------------------------------------------------------------------------------
def build_imported(cfg: dict) -> Classifier:
    """Rebuild (randomly initialised, offline) the imported model a checkpoint sidecar describes."""
    imported = dict(cfg["imported"])
    builders = {"hf": _build_hf, "torchvision": _build_torchvision, "timm": _build_timm}
    if imported.get("library") not in builders:
        raise GsloraError(f"the checkpoint records an unknown import library {imported.get('library')!r}.")
    library_model = builders[imported["library"]](imported)
    _take_classifier(library_model, imported["classifier"])
    prep = cfg["preprocessing"]
    head = LinearHead(_embed_dim(cfg), cfg["num_classes"], bias=cfg.get("head_kwargs", {}).get("bias", True))
    backbone = ImportedBackbone(library_model, imported["library"], prep["mean"], prep["std"])
    return Classifier(backbone, head, image_size=int(prep["image_size"]), config=copy.deepcopy(cfg))


def _embed_dim(cfg: dict) -> int:
    return int(cfg["embed_dim"])


def import_model(path: str | Path, model: str | None = None, model_args: dict | None = None,
                 preprocessing: dict | None = None) -> tuple[Classifier, list[str] | None]:
    """Any supported non-gslora checkpoint → (model, class names or None when the checkpoint has none).

    ``path``: an HF folder, a timm folder, or a state-dict file; ``model``: ``torchvision:<arch>``,
    ``timm:<name>`` or ``vit_face`` (the authors' Face Transformer) for state-dict files."""
    path = Path(path)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise GsloraError(f"{path} is a folder without config.json; expected a Hugging Face or timm model folder.")
        try:
            conf = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise GsloraError(f"{config_file} is not valid JSON ({e}).") from None
        if "architecture" in conf and "model_type" not in conf:
            return import_timm_folder(path, preprocessing)
        if "model_type" not in conf:
            raise GsloraError(f"{config_file} is neither a Hugging Face config (no model_type) nor a timm one.")
        return import_hf(path, preprocessing)
    if not path.exists():
        raise GsloraError(f"checkpoint {path} does not exist.")
    if path.suffix not in STATE_SUFFIXES:
        raise GsloraError(f"cannot tell what {path} is; pass a gslora checkpoint, a Hugging Face folder or a state "
                          f"dict ({', '.join(STATE_SUFFIXES)}).")
    state = read_state_dict(path)
    if model is None or model == "vit_face":
        if is_face_transformer_state(state):
            return import_face_transformer(state, model_args, path), None
        if model == "vit_face":
            raise GsloraError(f"{path} is not a Face Transformer state dict (no patch_to_embedding / "
                              "transformer.layers.*).")
        guess = _guess_torchvision_arch(state)
        if model is None and guess is not None:
            return import_torchvision(path, guess, model_args, preprocessing, state=state)
        raise GsloraError(f"{path} is a state dict without a gslora sidecar; name its architecture with --model "
                          "torchvision:<arch> or timm:<name>.")
    if model.startswith("torchvision:"):
        return import_torchvision(path, model.split(":", 1)[1], model_args, preprocessing, state=state)
    if model.startswith("timm:"):
        return import_timm(path, model.split(":", 1)[1], model_args, preprocessing, state=state)
    raise GsloraError(f"unsupported --model {model!r} for a state dict; use torchvision:<arch>, timm:<name> or "
                      "vit_face.")


# --- classes --------------------------------------------------------------------------------------------------------
def read_class_file(path: str | Path) -> list[str]:
    """Class names of the model's outputs, in order: a JSON list, or one name per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise GsloraError(f"class file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise GsloraError(f"class file {path} is not valid JSON ({e}).") from None
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise GsloraError(f"class file {path} names {dup!r} twice.")
    return names


def select_head_rows(model: Classifier, rows: list[int]) -> None:
    """Keep only ``rows`` of the head, in that order (a new head of the same kind; the model is changed in place)."""
    old = model.head
    new = copy.deepcopy(old)
    with torch.no_grad():
        new.weight = nn.Parameter(old.weight.detach()[rows].clone())
        if getattr(old, "bias", None) is not None:
            new.bias = nn.Parameter(old.bias.detach()[rows].clone())
    if hasattr(new, "out_features"):
        new.out_features = len(rows)
    model.head = new
    model.config["num_classes"] = len(rows)


def align_classes(model: Classifier, model_classes: list[str] | None, data_classes: list[str],
                  head_subset: bool = False) -> tuple[list[str], dict]:
    """Make the model's outputs the data's classes, in the data's order; returns (classes, what was done).

    - names equal: nothing to do; same names in another order: the head rows are permuted (same function);
    - no names in the checkpoint and as many outputs as data classes: the data's (sorted folder) order is taken;
    - the data's classes a strict subset of the model's: with ``head_subset`` only their head rows are kept (the
      ImageNet-100 protocol); the original size, rows and class names are recorded in
      ``model.config["head_subset"]`` and the whole original head is kept beside the model (:func:`full_head`, for
      the missing-class check); otherwise an error.
    """
    data_classes = list(data_classes)
    n = model.config["num_classes"]
    if model_classes is None:
        if n == len(data_classes):
            return data_classes, {"classes_from": "data folder order (the checkpoint names no classes)"}
        raise GsloraError(f"the checkpoint names no classes and has {n} outputs but the data has "
                          f"{len(data_classes)} classes; pass --classes FILE with the name of each output.")
    model_classes = list(model_classes)
    if len(model_classes) != n:
        raise GsloraError(f"{len(model_classes)} class names for a model with {n} outputs.")
    if model_classes == data_classes:
        return data_classes, {"classes_from": "checkpoint"}
    index = {c: i for i, c in enumerate(model_classes)}
    unknown = [c for c in data_classes if c not in index]
    if unknown:
        raise GsloraError(f"{len(unknown)} data class(es) are not classes of the model (e.g. {unknown[0]!r}; the "
                          f"model's first classes: {', '.join(model_classes[:3])}); pass --classes FILE naming the "
                          "model's outputs, or use the data it was trained on.")
    rows = [index[c] for c in data_classes]
    if len(rows) == n:
        select_head_rows(model, rows)
        return data_classes, {"classes_from": "checkpoint, head rows put in the data's order"}
    if not head_subset:
        raise GsloraError(f"the data has {len(rows)} of the model's {n} classes; pass --head-subset to keep only "
                          "their head rows.")
    model.config["head_subset"] = {"of": n, "rows": rows, "original_classes": model_classes}
    full = copy.deepcopy(model.head).requires_grad_(False)
    select_head_rows(model, rows)
    # the whole original head, for the missing-class check (gslora.missing); a plain attribute, so it is neither a
    # parameter nor in the state dict (a checkpoint of the cut model holds the cut head only)
    object.__setattr__(model, FULL_HEAD, full)
    return data_classes, {"classes_from": f"checkpoint, head subset: {len(rows)} of {n} rows"}


FULL_HEAD = "_gslora_full_head"


def full_head(model: Classifier) -> nn.Module | None:
    """The original head (all its rows, as loaded) of a model whose head :func:`align_classes` cut with
    ``head_subset``; None when the head was not cut in this process (e.g. a checkpoint saved after the cut)."""
    return model.__dict__.get(FULL_HEAD)
