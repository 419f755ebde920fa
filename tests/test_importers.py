"""Bring your own model: HF / torchvision / timm checkpoints written by each library itself are imported, forgotten
and exported back; the authors' Face Transformer maps onto vit_face with their outputs."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from gslora import RunConfig, run_forgetting
from gslora.errors import GsloraError
from gslora.models import create_model, load_checkpoint, locate_ffn, save_checkpoint
from gslora.models.exporters import export_native
from gslora.models.importers import import_model, read_state_dict
from gslora.record import MASK_LOGIT

SIZE, PATCH, WIDTH = 16, 4, 32
FORGET_CFG = dict(tasks="1x2", epochs=2, batch_size=16, replay_ratio=0.3, lr=3e-3, device="cpu",
                  method_args={"lora_alpha": 8.0, "bound": 20.0, "beta": 1.0})


def _hf(kind: str, classes: list[str]):
    import transformers

    configs = {"vit": ("ViTConfig", "ViTForImageClassification"), "deit": ("DeiTConfig", "DeiTForImageClassification"),
               "beit": ("BeitConfig", "BeitForImageClassification"),
               "dinov2": ("Dinov2Config", "Dinov2ForImageClassification")}
    conf_name, model_name = configs[kind]
    extra = {"drop_path_rate": 0.0} if kind == "beit" else {}
    conf = getattr(transformers, conf_name)(
        hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=SIZE,
        patch_size=PATCH, num_labels=len(classes), id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)}, **extra)
    torch.manual_seed(0)
    return getattr(transformers, model_name)(conf).eval()


def _torchvision(num_classes: int):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=SIZE, patch_size=PATCH, num_layers=2, num_heads=2, hidden_dim=WIDTH,
                              mlp_dim=64, num_classes=num_classes).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zero-initialises the head
    return model


TIMM_ARGS = {"img_size": SIZE, "patch_size": PATCH, "embed_dim": WIDTH, "depth": 2, "num_heads": 2}


def _timm(num_classes: int):
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **TIMM_ARGS).eval()


def _x(n=4):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _norm(x, mean, std):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# --- import: the library's outputs, exactly --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["vit", "deit", "beit", "dinov2"])
def test_hf_folder_imports_with_identical_logits_and_lora_targets(kind, tmp_path):
    from transformers import ViTImageProcessor

    hf = _hf(kind, ["a", "b", "c"])
    hf.save_pretrained(tmp_path / "m")
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.4] * 3, image_std=[0.2] * 3).save_pretrained(
        tmp_path / "m")
    model, classes = import_model(tmp_path / "m")
    assert classes == ["a", "b", "c"] and model.image_size == SIZE
    assert model.config["preprocessing"]["mean"] == [0.4] * 3
    x = _x()
    with torch.no_grad():
        assert torch.allclose(model(x), hf(pixel_values=_norm(x, [0.4] * 3, [0.2] * 3)).logits, atol=1e-5)
    assert len(locate_ffn(model)[1]) == 2
    # the gslora checkpoint rebuilds it offline from the sidecar
    save_checkpoint(model, tmp_path / "g.safetensors", classes)
    again, meta = load_checkpoint(tmp_path / "g.safetensors")
    with torch.no_grad():
        assert torch.allclose(again.eval()(x), model(x), atol=1e-6)
    assert meta["model"]["imported"]["library"] == "hf"


def test_torchvision_and_timm_state_dicts_import_with_identical_logits(tmp_path):
    tv = _torchvision(5)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    model, classes = import_model(tmp_path / "tv.pth", "torchvision:VisionTransformer", {"num_heads": 2})
    x = _x()
    with torch.no_grad():
        assert torch.allclose(model(x), tv(x), atol=1e-5)  # no torchvision weights entry: no normalisation
    assert classes is None and len(locate_ffn(model)[1]) == 2
    tm = _timm(5)
    save_file(tm.state_dict(), str(tmp_path / "tm.safetensors"))
    model, _ = import_model(tmp_path / "tm.safetensors", "timm:vit_tiny_patch16_224", TIMM_ARGS)
    prep = model.config["preprocessing"]
    assert prep["from"] == "timm pretrained_cfg" and model.image_size == SIZE
    with torch.no_grad():
        assert torch.allclose(model(x), tm(_norm(x, prep["mean"], prep["std"])), atol=1e-5)


def test_torchvision_named_arch_takes_imagenet_preprocessing_and_categories(tmp_path):
    import torchvision

    tv = torchvision.models.vit_b_32(weights=None, image_size=64)
    torch.save(tv.state_dict(), tmp_path / "b32.pth")
    model, classes = import_model(tmp_path / "b32.pth", "torchvision:vit_b_32")
    assert model.config["preprocessing"]["from"] == "none (no torchvision weights entry)"  # 64 px: no weights entry
    tv224 = {k: v for k, v in tv.state_dict().items()}
    tv224["encoder.pos_embedding"] = torch.zeros(1, 50, 768)
    torch.save(tv224, tmp_path / "b32-224.pth")
    model, classes = import_model(tmp_path / "b32-224.pth")  # a named architecture is recognised by its shapes
    assert model.config["arch"] == "torchvision:vit_b_32"
    assert model.config["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert model.config["preprocessing"]["resize_crop"] == {"resize": 256, "crop": 224, "interpolation": "bilinear",
                                                            "crop_offset": "round"}  # the weights' transforms
    assert len(classes) == 1000 and classes[0] == "tench"


# --- errors: one clear sentence ---------------------------------------------------------------------------------------
def test_import_errors_are_clear(tmp_path):
    tv = _torchvision(5)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    with pytest.raises(GsloraError, match="does not match torchvision vit_b_16"):
        import_model(tmp_path / "tv.pth", "torchvision:vit_b_16")
    with pytest.raises(GsloraError, match="name its architecture with --model"):
        import_model(tmp_path / "tv.pth")
    hf = _hf("vit", ["a", "b"])
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(GsloraError, match="has a config.json but no weights"):
        import_model(tmp_path / "hf")
    from transformers import SwinConfig, SwinForImageClassification

    SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1], num_heads=[1],
                                          window_size=2, num_labels=2)).save_pretrained(tmp_path / "swin")
    with pytest.raises(GsloraError, match="unsupported Hugging Face architecture 'SwinForImageClassification'"):
        import_model(tmp_path / "swin")

    import argparse  # anything that needs unpickling an arbitrary object is refused

    torch.save({"weights": torch.zeros(2), "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth")
    with pytest.raises(GsloraError, match="refusing to load .* unpickling arbitrary Python objects"):
        read_state_dict(tmp_path / "pickled.pth")


# --- load → forget → export → reload with the original library ------------------------------------------------------
def _forget_and_export(model, classes, micro_data, tmp_path):
    res = run_forgetting(model, classes, micro_data, RunConfig(**FORGET_CFG), force=True)  # an untrained model
    forgotten = res.model.eval()
    assert res.rows[0]["steps"] > 0
    merged = [n for n, _ in forgotten.named_parameters() if "lora_" in n]
    assert not merged
    history = [{"task": 1, "method": "gslora", "forgotten": res.rows[0]["forget"]}]
    return forgotten, export_native(forgotten, tmp_path / "native", classes, history), res.rows[0]["forget"]


def test_hf_forget_export_reloads_with_transformers(micro_data, tmp_path):
    from transformers import AutoModelForImageClassification, ViTImageProcessor

    hf = _hf("vit", micro_data.classes)
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    hf.save_pretrained(tmp_path / "m")
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(tmp_path / "m")
    model, classes = import_model(tmp_path / "m")
    model, folder, forgot = _forget_and_export(model, classes, micro_data, tmp_path)
    again = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    x = _x()
    with torch.no_grad():
        assert torch.allclose(again(pixel_values=_norm(x, [0.5] * 3, [0.5] * 3)).logits, model(x), atol=1e-5)
    assert sorted(again.config.gslora["forgotten"]) == sorted(forgot)
    assert again.config.id2label[0] == classes[0] and (folder / "preprocessor_config.json").is_file()
    changed = [k for k, v in again.state_dict().items() if k in before and not torch.equal(v, before[k])]
    head = [k for k in changed if k.startswith("classifier.")]
    assert changed and all(".mlp.fc" in k for k in changed if k not in head)  # the FFN linears moved (LoRA merged)
    rows = [classes.index(c) for c in forgot]  # and the head only where it masks the forgotten classes
    w, b = again.classifier.weight, again.classifier.bias
    keep = [i for i in range(len(classes)) if i not in rows]
    assert (w[rows] == 0).all() and (b[rows] == MASK_LOGIT).all()
    assert torch.equal(w[keep], before["classifier.weight"][keep])
    assert torch.equal(b[keep], before["classifier.bias"][keep])


def test_torchvision_forget_export_reloads_with_torchvision(micro_data, tmp_path):
    tv = _torchvision(micro_data.num_classes)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    model, _ = import_model(tmp_path / "tv.pth", "torchvision:VisionTransformer", {"num_heads": 2})
    model, folder, _ = _forget_and_export(model, micro_data.classes, micro_data, tmp_path)
    again = _torchvision(micro_data.num_classes)
    again.load_state_dict(load_file(str(folder / "model.safetensors")))
    x = _x()
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-5)
        assert not torch.allclose(again(x), tv(x), atol=1e-4)


def test_timm_forget_export_reloads_with_timm(micro_data, tmp_path):
    import timm

    tm = _timm(micro_data.num_classes)
    save_file(tm.state_dict(), str(tmp_path / "tm.safetensors"))
    model, _ = import_model(tmp_path / "tm.safetensors", "timm:vit_tiny_patch16_224", TIMM_ARGS)
    prep = model.config["preprocessing"]
    model, folder, _ = _forget_and_export(model, micro_data.classes, micro_data, tmp_path)
    again = _timm(micro_data.num_classes)
    again.load_state_dict(load_file(str(folder / "model.safetensors")))
    local = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = _x()
    with torch.no_grad():
        assert torch.allclose(again(_norm(x, prep["mean"], prep["std"])), model(x), atol=1e-5)
        assert torch.allclose(local(_norm(x, prep["mean"], prep["std"])), model(x), atol=1e-5)
    assert local.pretrained_cfg["label_names"] == micro_data.classes


# --- the authors' Face Transformer ----------------------------------------------------------------------------------
def _face_state(width=32, depth=2, mlp=64, patch=4, size=16, classes=5, rank=4):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    n = (size // patch) ** 2
    sd = {"pos_embedding": r(1, n + 1, width), "cls_token": r(1, 1, width),
          "patch_to_embedding.weight": r(width, patch * patch * 3), "patch_to_embedding.bias": r(width),
          "mlp_head.0.weight": 1 + r(width), "mlp_head.0.bias": r(width), "loss.weight": r(classes, width)}
    for i in range(depth):
        t = f"transformer.layers.{i}"
        sd.update({f"{t}.0.fn.norm.weight": 1 + r(width), f"{t}.0.fn.norm.bias": r(width),
                   f"{t}.0.fn.fn.to_qkv.weight": r(3 * width, width), f"{t}.0.fn.fn.to_out.0.weight": r(width, width),
                   f"{t}.0.fn.fn.to_out.0.bias": r(width), f"{t}.1.fn.norm.weight": 1 + r(width),
                   f"{t}.1.fn.norm.bias": r(width),
                   f"{t}.1.fn.fn.net.0.weight": r(mlp, width), f"{t}.1.fn.fn.net.0.bias": r(mlp),
                   f"{t}.1.fn.fn.net.0.lora_A": r(rank, width), f"{t}.1.fn.fn.net.0.lora_B": r(mlp, rank),
                   f"{t}.1.fn.fn.net.3.weight": r(width, mlp), f"{t}.1.fn.fn.net.3.bias": r(width),
                   f"{t}.1.fn.fn.net.3.lora_A": r(rank, mlp), f"{t}.1.fn.fn.net.3.lora_B": r(width, rank)})
    return sd


def _face_reference(sd, img, heads=2, patch=4, scaling=0.25):
    """Their forward, written out: (p1 p2 c) patches → linear → cls ⊕ → + pos → [x + attn(LN x)] [x + ff(LN x)] with
    dots · dim^-0.5 and loralib's unmerged LoRA (x Aᵀ Bᵀ · alpha/r) → LN(cls) → CosFace cosine · 64."""
    b, c, h, w = img.shape
    x = img.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    x = x.reshape(b, (h // patch) * (w // patch), patch * patch * c)
    x = x @ sd["patch_to_embedding.weight"].T + sd["patch_to_embedding.bias"]
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x], 1) + sd["pos_embedding"]
    dim = x.shape[-1]
    depth = len({k.split(".")[2] for k in sd if k.startswith("transformer.layers.")})

    def lora_linear(z, p):
        out = z @ sd[f"{p}.weight"].T + sd[f"{p}.bias"]
        return out + (z @ sd[f"{p}.lora_A"].T @ sd[f"{p}.lora_B"].T) * scaling

    for i in range(depth):
        t = f"transformer.layers.{i}"
        z = F.layer_norm(x, (dim,), sd[f"{t}.0.fn.norm.weight"], sd[f"{t}.0.fn.norm.bias"], eps=1e-5)
        q, k, v = (z @ sd[f"{t}.0.fn.fn.to_qkv.weight"].T).chunk(3, dim=-1)
        q, k, v = (u.reshape(b, -1, heads, dim // heads).transpose(1, 2) for u in (q, k, v))
        attn = (torch.einsum("bhid,bhjd->bhij", q, k) * dim ** -0.5).softmax(-1)
        out = torch.einsum("bhij,bhjd->bhid", attn, v).transpose(1, 2).reshape(b, -1, dim)
        x = x + out @ sd[f"{t}.0.fn.fn.to_out.0.weight"].T + sd[f"{t}.0.fn.fn.to_out.0.bias"]
        z = F.layer_norm(x, (dim,), sd[f"{t}.1.fn.norm.weight"], sd[f"{t}.1.fn.norm.bias"], eps=1e-5)
        x = x + lora_linear(F.gelu(lora_linear(z, f"{t}.1.fn.fn.net.0")), f"{t}.1.fn.fn.net.3")
    emb = F.layer_norm(x[:, 0], (dim,), sd["mlp_head.0.weight"], sd["mlp_head.0.bias"], eps=1e-5)
    return emb, 64.0 * F.normalize(emb) @ F.normalize(sd["loss.weight"]).T


def test_authors_face_transformer_checkpoint_reproduces_their_outputs(tmp_path):
    sd = _face_state()
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "Backbone_VIT_Epoch_100.pth")
    model, classes = import_model(tmp_path / "Backbone_VIT_Epoch_100.pth", None, {"num_heads": 2})
    assert classes is None and model.config["arch"] == "vit_face"
    model.eval()
    img = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    emb_ref, logits_ref = _face_reference(sd, img, scaling=1.0 / 4)  # lora_alpha 1, rank 4
    with torch.no_grad():
        assert torch.allclose(model.embed(img), emb_ref, atol=1e-5)
        assert torch.allclose(model(img), logits_ref, atol=1e-4)
    # the rebuilt vit_face (from its sidecar) computes the same
    save_checkpoint(model, tmp_path / "face.safetensors", [str(i) for i in range(5)])
    again, _ = load_checkpoint(tmp_path / "face.safetensors")
    with torch.no_grad():
        assert torch.allclose(again.eval().embed(img), emb_ref, atol=1e-5)


def test_vit_face_is_the_face_transformer_and_timm_scale_is_an_option():
    model = create_model("vit_face", num_classes=100)
    blk = model.backbone.blocks[0]
    assert blk.attn.scale == pytest.approx(512 ** -0.5) and not blk.attn.fused_attn
    assert blk.attn.attn_drop.p == 0.0 and blk.attn.proj_drop.p == 0.1
    assert blk.mlp.drop1.p == 0.1 and blk.mlp.drop2.p == 0.1 and model.backbone.pos_drop.p == 0.1
    assert blk.norm1.eps == 1e-5
    standard = create_model("vit_face", num_classes=100, attention_scale="head")
    assert standard.backbone.blocks[0].attn.scale == pytest.approx(64 ** -0.5)
    assert math.isclose(sum(p.numel() for p in model.parameters()), 19_157_504)


# --- classes --------------------------------------------------------------------------------------------------------
def test_classes_align_by_name_permute_and_head_subset(tmp_path):
    from gslora.models.importers import align_classes, read_class_file

    hf = _hf("vit", ["a", "b", "c", "d"])
    hf.save_pretrained(tmp_path / "m")
    model, classes = import_model(tmp_path / "m")
    x = _x()
    with torch.no_grad():
        full = model(x)
    names, info = align_classes(model, classes, ["d", "b", "a", "c"])
    with torch.no_grad():
        assert torch.allclose(model(x), full[:, [3, 1, 0, 2]])
    with pytest.raises(GsloraError, match="pass --head-subset"):
        align_classes(model, names, ["a", "c"])
    names, info = align_classes(model, names, ["c", "d"], head_subset=True)
    with torch.no_grad():
        assert torch.allclose(model(x), full[:, [2, 3]])
    assert model.config["num_classes"] == 2 and model.config["head_subset"]["of"] == 4
    save_checkpoint(model, tmp_path / "sub.safetensors", names)  # the subset model round-trips
    again, meta = load_checkpoint(tmp_path / "sub.safetensors")
    with torch.no_grad():
        assert torch.allclose(again.eval()(x), full[:, [2, 3]], atol=1e-6)
    with pytest.raises(GsloraError, match="not classes of the model"):
        align_classes(model, names, ["c", "zebra"])
    (tmp_path / "classes.txt").write_text("x\ny\n\nz\n")
    assert read_class_file(tmp_path / "classes.txt") == ["x", "y", "z"]
    assert align_classes(create_model("vit_face_micro", 3), None, ["p", "q", "r"])[0] == ["p", "q", "r"]


def test_every_method_runs_with_a_linear_head(micro_data, tmp_path):
    from gslora.methods import list_methods

    _hf("vit", micro_data.classes).save_pretrained(tmp_path / "m")
    base, _ = import_model(tmp_path / "m")
    for name in list_methods():
        model = copy.deepcopy(base)
        res = run_forgetting(model, micro_data.classes, micro_data,
                             RunConfig(tasks="1x2", epochs=1, batch_size=16, replay_ratio=0.2, device="cpu",
                                       method=name), force=True)  # an untrained model
        row = res.rows[0]
        assert row["acc_r"] is not None and math.isfinite(row["acc_r"]), name
        assert type(res.model.head).__name__ == "LinearHead", name


def test_imported_backbones_expose_blocks_and_embeddings(tmp_path):
    hf = _hf("vit", ["a", "b"])
    hf.save_pretrained(tmp_path / "m")
    torch.save(_torchvision(2).state_dict(), tmp_path / "tv.pth")
    save_file(_timm(2).state_dict(), str(tmp_path / "tm.safetensors"))
    for model in (import_model(tmp_path / "m")[0],
                  import_model(tmp_path / "tv.pth", "torchvision:VisionTransformer", {"num_heads": 2})[0],
                  import_model(tmp_path / "tm.safetensors", "timm:vit_tiny_patch16_224", TIMM_ARGS)[0]):
        b = model.backbone
        assert len(b.blocks) == 2 and sum(p.numel() for p in b.patch_embed.parameters()) > 0
        names = {n for n, _ in model.named_parameters()}
        assert not any(n.startswith("backbone.blocks") for n in names)  # nothing registered twice


def test_hf_folder_loads_with_4x_and_5x_weight_names(tmp_path):
    hf = _hf("vit", ["a", "b", "c"])
    hf.save_pretrained(tmp_path / "m")  # transformers 5 writes the 4.x names (encoder.layer.i.attention.attention.*)
    assert any(".encoder.layer.0.attention.attention.query." in k for k in load_file(str(tmp_path / "m" /
                                                                                      "model.safetensors")))
    x = _x()
    model4, _ = import_model(tmp_path / "m")
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()},  # the 5.x module names
              str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
    assert any(".layers.0.mlp.fc1." in k for k in load_file(str(tmp_path / "m" / "model.safetensors")))
    model5, _ = import_model(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(model4(x), model5(x)) and torch.allclose(model5(x), hf(pixel_values=x).logits,
                                                                        atol=1e-5)


def test_vit_face_checkpoints_written_before_the_face_transformer_keep_their_blocks():
    from gslora.models.checkpoint import create_from_config

    legacy = {"arch": "vit_face", "num_classes": 3, "head": "cosface", "overrides": {"depth": 1}, "head_kwargs": {}}
    model = create_from_config(legacy)
    blk = model.backbone.blocks[0]
    assert blk.attn.scale == pytest.approx(64 ** -0.5) and blk.attn.attn_drop.p == 0.1 and blk.norm1.eps == 1e-6
    assert model.config == legacy
    now = create_model("vit_face", 3, depth=1)
    assert create_from_config(now.config).backbone.blocks[0].attn.scale == pytest.approx(512 ** -0.5)
# --- the command line: the same inputs for forget, evaluate and audit ------------------------------------------------
def _cli(capsys, *argv):
    from gslora.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _forget(ckpt, data, out, *extra):
    return ("forget", "--checkpoint", ckpt, "--data", data, "--out", out, "--epochs", "1", "--no-progress",
            "--set", "batch_size=8", "--device", "cpu", "--tasks", "1x2", "--force", *extra)  # untrained models


def _folder_classes(folder):
    return sorted(p.name for p in (folder / "train").iterdir())


def test_cli_forget_hf_folder_exports_an_hf_folder(capsys, tmp_path, micro_folder):
    from transformers import AutoModelForImageClassification

    classes = _folder_classes(micro_folder)
    _hf("vit", classes[::-1]).save_pretrained(tmp_path / "m")  # another order: matched by name
    out = tmp_path / "run"
    code, stdout, err = _cli(capsys, *_forget(tmp_path / "m", micro_folder, out))
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    again = AutoModelForImageClassification.from_pretrained(str(out / "final")).eval()
    gs, meta = load_checkpoint(out / "final.safetensors")
    x = _x()
    with torch.no_grad():
        assert torch.allclose(again(pixel_values=x).logits, gs.eval()(x), atol=1e-5)  # no preprocessor: x as is
    assert sorted(again.config.gslora["forgotten"]) == sorted(results["tasks"][0]["forget"])
    assert [again.config.id2label[i] for i in range(len(classes))] == classes
    # evaluate and audit read the exported folder like any checkpoint; the history comes with it
    code, stdout, err = _cli(capsys, "evaluate", "--checkpoint", out / "final", "--data", micro_folder, "--device",
                             "cpu")
    assert code == 0, err
    assert "forgotten (history)" in stdout
    code, stdout, err = _cli(capsys, "audit", out, "--epochs", "1", "--relearn-epochs", "0", "--device", "cpu",
                             "--no-progress")  # the original is the HF folder the run recorded
    assert code == 0, err
    audit = json.loads((out / "audit" / "audit.json").read_text())
    assert audit["original_checkpoint"] == str((tmp_path / "m").resolve())


def test_cli_forget_torchvision_and_timm_state_dicts(capsys, tmp_path, micro_folder):
    import timm

    n = len(_folder_classes(micro_folder))
    tv = _torchvision(n)
    torch.save(tv.state_dict(), tmp_path / "vit.pth")
    code, _, err = _cli(capsys, *_forget(tmp_path / "vit.pth", micro_folder, tmp_path / "tv-run", "--model",
                                         "torchvision:VisionTransformer", "--model-arg", "num_heads=2"))
    assert code == 0, err
    again = _torchvision(n)
    again.load_state_dict(load_file(str(tmp_path / "tv-run" / "final" / "model.safetensors")))
    gs, _ = load_checkpoint(tmp_path / "tv-run" / "final.safetensors")
    x = _x()
    with torch.no_grad():
        assert torch.allclose(again(x), gs.eval()(x), atol=1e-5)
    save_file(_timm(n).state_dict(), str(tmp_path / "model.safetensors"))
    args = [a for k, v in TIMM_ARGS.items() for a in ("--model-arg", f"{k}={v}")]
    code, _, err = _cli(capsys, *_forget(tmp_path / "model.safetensors", micro_folder, tmp_path / "timm-run",
                                         "--model", "timm:vit_tiny_patch16_224", *args))
    assert code == 0, err
    local = timm.create_model(f"local-dir:{tmp_path / 'timm-run' / 'final'}", pretrained=True).eval()
    gs, meta = load_checkpoint(tmp_path / "timm-run" / "final.safetensors")
    prep = meta["model"]["preprocessing"]
    with torch.no_grad():
        assert torch.allclose(local(_norm(x, prep["mean"], prep["std"])), gs.eval()(x), atol=1e-5)


def test_cli_bad_imports_exit_2_without_a_run_folder(capsys, tmp_path, micro_folder):
    from transformers import SwinConfig, SwinForImageClassification

    torch.save(_torchvision(20).state_dict(), tmp_path / "vit.pth")
    hf = _hf("vit", ["a", "b"])
    hf.save_pretrained(tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1], num_heads=[1],
                                          window_size=2, num_labels=2)).save_pretrained(tmp_path / "swin")
    capsys.readouterr()  # the libraries' own progress output while writing the inputs
    cases = [
        ((tmp_path / "vit.pth", "--model", "torchvision:vit_b_16"), "does not match torchvision vit_b_16"),
        ((tmp_path / "noweights",), "has a config.json but no weights"),
        ((tmp_path / "swin",), "unsupported Hugging Face architecture 'SwinForImageClassification'"),
        ((tmp_path / "vit.pth",), "name its architecture with --model"),
    ]
    for i, ((ckpt, *extra), message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        code, _, err = _cli(capsys, *_forget(ckpt, micro_folder, out, *extra))
        assert code == 2 and message in err, err
        assert err.startswith("gslora: error: ") and err.count("\n") == 1
        assert not out.exists()




def test_runs_started_before_the_preprocessing_setting_still_resume(tmp_path):
    from gslora.config import to_dict
    from gslora.rundir import RunFolder

    saved = to_dict(RunConfig())
    del saved["preprocessing"]  # a run folder written before the setting existed
    RunFolder(tmp_path)._compare(saved, to_dict(RunConfig()))
    with pytest.raises(GsloraError, match="used preprocessing"):
        RunFolder(tmp_path)._compare(saved, to_dict(RunConfig(preprocessing={"mean": [0.5] * 3})))


def test_preprocessing_override_from_the_config(tmp_path):
    from gslora.config import build_config

    cfg = build_config(RunConfig, None, ["preprocessing.mean=[0.1, 0.2, 0.3]", "preprocessing.std=[1, 1, 1]"])
    _hf("vit", ["a", "b"]).save_pretrained(tmp_path / "m")
    model, _ = import_model(tmp_path / "m", preprocessing=cfg.preprocessing)
    assert model.config["preprocessing"]["mean"] == [0.1, 0.2, 0.3] and model.config["preprocessing"]["from"] == \
        "override"
    assert torch.allclose(model.backbone.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(GsloraError, match="unknown preprocessing override 'size'"):
        import_model(tmp_path / "m", preprocessing={"size": 3})
