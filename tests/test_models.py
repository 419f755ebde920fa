"""Model registry, parameter counts, FFN locator on timm / Hugging Face / torchvision ViTs, LoRA merge."""

import pytest
import torch

from gslora.errors import GsloraError
from gslora.evaluate import tunable_ratio
from gslora.lora import attach_lora, delta_norms, merge_lora
from gslora.models import count_parameters, create_model, load_checkpoint, locate_ffn, save_checkpoint


def test_paper_face_transformer_has_the_papers_size_and_tunable_ratio():
    model = create_model("vit_face", num_classes=100)
    assert count_parameters(model) == 19_157_504
    peft_model, groups = attach_lora(model, rank=8)
    lora = sum(p.numel() for ps in groups.params for p in ps)
    assert lora == 245_760
    assert len(groups.params) == 6 and all(len(g) == 4 for g in groups.params)
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == lora  # all else frozen
    assert round(tunable_ratio(lora, 19_157_504), 2) == 1.28


def test_locator_on_timm_vit():
    family, blocks = locate_ffn(create_model("vit_face_micro", 5))
    assert family == "timm" and [b.index for b in blocks] == [0, 1, 2]
    assert blocks[1].fc1 == "backbone.blocks.1.mlp.fc1" and blocks[1].fc2 == "backbone.blocks.1.mlp.fc2"


def test_locator_on_hugging_face_vit():
    from transformers import ViTConfig, ViTForImageClassification

    model = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                                intermediate_size=64, image_size=16, patch_size=8, num_labels=4))
    family, blocks = locate_ffn(model)
    assert family in ("hf-vit-5", "hf-vit-4") and len(blocks) == 3
    names = {n for n, _ in model.named_modules()}
    assert all(b.fc1 in names and b.fc2 in names for b in blocks)
    fc1 = model.get_submodule(blocks[0].fc1)
    assert fc1.in_features == 32 and fc1.out_features == 64  # fc1 expands, fc2 projects back
    assert model.get_submodule(blocks[0].fc2).out_features == 32


def test_locator_on_transformers_4_naming():
    from torch import nn

    class Layer(nn.Module):  # the transformers 4.x ViTLayer layout, including the attention's own output.dense
        def __init__(self):
            super().__init__()
            self.attention = nn.Module()
            self.attention.output = nn.Module()
            self.attention.output.dense = nn.Linear(8, 8)
            self.intermediate = nn.Module()
            self.intermediate.dense = nn.Linear(8, 16)
            self.output = nn.Module()
            self.output.dense = nn.Linear(16, 8)

    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.layer = nn.ModuleList([Layer(), Layer()])
    family, blocks = locate_ffn(model)
    assert family == "hf-vit-4"
    assert [(b.fc1, b.fc2) for b in blocks] == [
        (f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense") for i in range(2)]


def test_locator_on_torchvision_vit():
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=3)
    family, blocks = locate_ffn(model)
    assert family == "torchvision"
    assert [(b.fc1, b.fc2) for b in blocks] == [
        (f"encoder.layers.encoder_layer_{i}.mlp.0", f"encoder.layers.encoder_layer_{i}.mlp.3") for i in range(2)]
    peft_model, groups = attach_lora(model, rank=2)  # PEFT accepts the located names
    assert len(groups.params) == 2


def test_locator_error_names_the_model():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(GsloraError, match="Sequential"):
        locate_ffn(model)


def test_merged_model_matches_model_with_adapter():
    torch.manual_seed(0)
    model = create_model("vit_face_micro", 6).eval()
    peft_model, groups = attach_lora(model, rank=4, alpha=4.0)
    with torch.no_grad():  # give the adapter a non-zero update (B starts at zero)
        for ps in groups.params:
            for p in ps:
                p.normal_(0, 0.1)
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        with_adapter = peft_model(x)
    assert max(delta_norms(groups)[0]) > 0
    merged = merge_lora(peft_model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(merged(x), with_adapter, atol=1e-4)


def test_adapter_loads_with_peft(tmp_path):
    from peft import PeftModel

    from gslora.lora import save_adapter

    torch.manual_seed(0)
    base = create_model("vit_face_micro", 6).eval()
    reference = create_model("vit_face_micro", 6).eval()
    reference.load_state_dict(base.state_dict())
    peft_model, groups = attach_lora(base, rank=2, alpha=2.0)
    with torch.no_grad():
        for ps in groups.params:
            for p in ps:
                p.normal_(0, 0.1)
    save_adapter(peft_model, tmp_path / "task1")
    loaded = PeftModel.from_pretrained(reference, tmp_path / "task1").eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), peft_model(x), atol=1e-5)


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    model = create_model("vit_face_micro", 4)
    path = save_checkpoint(model, tmp_path / "m.safetensors", ["a", "b", "c", "d"], history=[{"task": 1}])
    loaded, meta = load_checkpoint(path)
    assert meta["classes"] == ["a", "b", "c", "d"] and meta["history"] == [{"task": 1}]
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    # weights of another architecture under this sidecar: a clear error
    other = create_model("vit_face_micro", 7)
    save_checkpoint(other, tmp_path / "o.safetensors", [str(i) for i in range(7)])
    (tmp_path / "o.json").write_text((tmp_path / "m.json").read_text())
    with pytest.raises(GsloraError, match="does not match"):
        load_checkpoint(tmp_path / "o.safetensors")


def test_seeded_creation_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    a = create_model("vit_face_micro", 3, seed=11)
    assert torch.equal(torch.rand(1), expected_next)  # the global stream did not move
    b = create_model("vit_face_micro", 3, seed=11)
    c = create_model("vit_face_micro", 3, seed=12)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.head.weight, c.head.weight)


def test_any_timm_vit_can_be_the_backbone(tmp_path):
    model = create_model("timm:vit_tiny_patch16_224", 5, seed=0, img_size=32, patch_size=8).eval()
    assert model.image_size == 32
    family, blocks = locate_ffn(model)
    assert family == "timm" and len(blocks) == 12
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    path = save_checkpoint(model, tmp_path / "t.safetensors", list("abcde"))
    loaded, _ = load_checkpoint(path)  # rebuilt from the sidecar's config
    with torch.no_grad():
        x = torch.rand(1, 3, 32, 32)
        assert torch.allclose(loaded.eval()(x), model(x), atol=1e-5)
