"""Resize / centre-crop from the model's preprocessing: what the HF image processor, timm's pretrained_cfg or the
torchvision weights do to an image is recorded in the model config and done when a folder is loaded for it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from gslora.data import load_data
from gslora.data.folder import resize_and_crop
from gslora.errors import GsloraError
from gslora.models import create_model
from gslora.models.importers import import_model

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def _folder(root, size=(50, 37)):
    """Two classes of random non-square RGB images (width × height ``size``); returns (root, first image)."""
    rng = np.random.default_rng(0)
    for c in ("p", "q"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root, root / "p" / "0.png"


def _as_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


def _loaded(root, model, path) -> torch.Tensor:
    """The image at ``path`` as gslora loads it for ``model`` (whichever split it fell in)."""
    data = load_data(str(root), image_size=model.image_size, seed=1, preprocessing=model.config.get("preprocessing"))
    for ds in (data.train, data.val, data.test):
        if path in ds.paths:
            return ds[ds.paths.index(path)][0]
    raise AssertionError(path)


def _hf_folder(tmp_path, processor: dict):
    import transformers

    conf = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                  image_size=32, patch_size=8, num_labels=2, id2label={0: "p", 1: "q"},
                                  label2id={"p": 0, "q": 1})
    transformers.ViTForImageClassification(conf).save_pretrained(tmp_path / "hf")
    proc = {"do_normalize": True, "image_mean": MEAN, "image_std": STD, "do_rescale": True,
            "rescale_factor": 1 / 255, "image_processor_type": "DeiTImageProcessor", **processor}
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(proc))
    return tmp_path / "hf"


@pytest.mark.parametrize("size,resize", [({"height": 40, "width": 40}, [40, 40]), ({"shortest_edge": 40}, 40)])
def test_hf_processor_resize_and_centre_crop_are_applied(tmp_path, size, resize):
    root, sample = _folder(tmp_path / "data")
    folder = _hf_folder(tmp_path, {"do_resize": True, "size": size, "do_center_crop": True,
                                   "crop_size": {"height": 32, "width": 32}, "resample": 3})
    model, _ = import_model(folder)
    prep = model.config["preprocessing"]
    assert prep["resize_crop"] == {"resize": resize, "crop": 32, "interpolation": "bicubic", "crop_offset": "floor"}
    got = _loaded(root, model, sample)
    with Image.open(sample) as im:  # by hand: PIL resize (40 × 40, or shorter side 40 → 54 × 40), centre 32 × 32
        im = im.convert("RGB")
        w, h = (40, 40) if isinstance(resize, list) else (int(40 * 50 / 37), 40)
        im = im.resize((w, h), Image.BICUBIC)
        by_hand = _as_tensor(TF.center_crop(im, [32, 32]))
        # and by the library: transformers' own PIL image processor with that config
        from transformers import DeiTImageProcessorPil

        proc = DeiTImageProcessorPil(size=size, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                                     resample=3, image_mean=MEAN, image_std=STD)
        hf_pixels = proc(Image.open(sample).convert("RGB"), return_tensors="pt")["pixel_values"][0]
    assert got.shape == (3, 32, 32) and torch.equal(got, by_hand)
    norm = (got - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(norm, hf_pixels, atol=1e-5)


def test_hf_processor_without_crop_resizes_straight_with_its_resample(tmp_path):
    root, sample = _folder(tmp_path / "data")
    model, _ = import_model(_hf_folder(tmp_path, {"do_resize": True, "size": {"height": 32, "width": 32},
                                                  "resample": 3}))
    assert model.config["preprocessing"]["resize_crop"] == {"resize": [32, 32], "crop": None,
                                                            "interpolation": "bicubic"}
    with Image.open(sample) as im:
        assert torch.equal(_loaded(root, model, sample), _as_tensor(im.convert("RGB").resize((32, 32), Image.BICUBIC)))
    # a processor whose output is not the model's input size: resized straight, with a note why
    model, _ = import_model(_hf_folder(tmp_path, {"size": {"shortest_edge": 40}, "resample": 2}))
    prep = model.config["preprocessing"]
    assert prep["resize_crop"]["resize"] == [32, 32] and "does not end at the model's input size" in \
        prep["resize_crop_note"]


def test_timm_crop_pct_and_interpolation_match_timms_own_transform(tmp_path):
    import timm
    from safetensors.torch import save_file
    from timm.data import create_transform

    root, sample = _folder(tmp_path / "data")
    args = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}
    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=2, **args).state_dict(),
              str(tmp_path / "tm.safetensors"))
    model, _ = import_model(tmp_path / "tm.safetensors", "timm:vit_tiny_patch16_224", args)
    prep = model.config["preprocessing"]
    assert prep["resize_crop"] == {"resize": 17, "crop": 16, "interpolation": "bicubic", "crop_offset": "round"}
    got = _loaded(root, model, sample)
    transform = create_transform(input_size=(3, 16, 16), crop_pct=0.9, crop_mode="center", interpolation="bicubic",
                                 mean=prep["mean"], std=prep["std"])
    with Image.open(sample) as im:
        expected = transform(im.convert("RGB"))
    norm = (got - torch.tensor(prep["mean"]).view(3, 1, 1)) / torch.tensor(prep["std"]).view(3, 1, 1)
    assert torch.allclose(norm, expected, atol=1e-5)


def test_torchvision_weights_transform_resize_256_crop_224():
    from torchvision.models import ViT_B_16_Weights

    from gslora.models.libraries.common import _interpolation

    t = ViT_B_16_Weights.IMAGENET1K_V1.transforms()
    policy = {"resize": int(t.resize_size[0]), "crop": int(t.crop_size[0]), "interpolation": _interpolation(
        t.interpolation), "crop_offset": "round"}  # what import_torchvision records for vit_b_16 at 224 px
    assert policy == {"resize": 256, "crop": 224, "interpolation": "bilinear", "crop_offset": "round"}
    rng = np.random.default_rng(1)
    for w, h in ((300, 257), (257, 300), (411, 333)):  # odd margins: the crop offset rounds as torchvision does
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ours = _as_tensor(resize_and_crop(im, 224, policy))
        norm = (ours - torch.tensor(t.mean).view(3, 1, 1)) / torch.tensor(t.std).view(3, 1, 1)
        assert torch.allclose(norm, t(im), atol=1e-5)


def test_override_crop_pct_and_interpolation(tmp_path):
    root, sample = _folder(tmp_path / "data")
    folder = _hf_folder(tmp_path, {"size": {"height": 32, "width": 32}, "resample": 2})
    model, _ = import_model(folder, preprocessing={"crop_pct": 0.5, "interpolation": "bicubic"})
    assert model.config["preprocessing"]["resize_crop"] == {"resize": 64, "crop": 32, "interpolation": "bicubic",
                                                            "crop_offset": "round"}
    with Image.open(sample) as im:
        by_hand = TF.center_crop(TF.resize(im.convert("RGB"), 64, TF.InterpolationMode.BICUBIC), [32, 32])
    assert torch.equal(_loaded(root, model, sample), _as_tensor(by_hand))
    model, _ = import_model(folder, preprocessing={"crop_pct": None})  # null: straight to the input size
    assert model.config["preprocessing"]["resize_crop"]["resize"] == [32, 32]
    assert model.config["preprocessing"]["resize_crop"]["crop"] is None
    with pytest.raises(GsloraError, match=r"crop_pct must be a number in \(0, 1\]"):
        import_model(folder, preprocessing={"crop_pct": 1.5})
    with pytest.raises(GsloraError, match="interpolation must be one of"):
        import_model(folder, preprocessing={"interpolation": "cubic"})
    from gslora import RunConfig
    from gslora.config import build_config

    cfg = build_config(RunConfig, None, ["preprocessing.crop_pct=0.875"])
    model, _ = import_model(folder, preprocessing=cfg.preprocessing)
    assert model.config["preprocessing"]["resize_crop"]["resize"] == 36  # floor(32 / 0.875)


def test_gslora_models_keep_the_straight_bilinear_resize(tmp_path):
    root, sample = _folder(tmp_path / "data")
    model = create_model("vit_face_micro", 2)
    assert "resize_crop" not in model.config.get("preprocessing", {})
    got = _loaded(root, model, sample)
    with Image.open(sample) as im:
        assert torch.equal(got, _as_tensor(im.convert("RGB").resize((16, 16), Image.BILINEAR)))
    data = load_data(str(root), image_size=16, seed=1)  # no preprocessing given: the same
    assert data.train.resize_crop is None and data.train.subset([0]).resize_crop is None
