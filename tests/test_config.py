"""One config, resolved once: the API, the CLI and the comparison give the same resolved config."""

import dataclasses

import pytest
import yaml

from gslora import PretrainConfig, RunConfig, resolve, run_forgetting
from gslora.cli import _run_config, build_parser, main
from gslora.compare import method_config
from gslora.errors import GsloraError


def test_unset_settings_come_from_the_method_preset_then_the_global_default():
    ewc = resolve(RunConfig(method="ewc"))
    assert (ewc.lr, ewc.min_lr, ewc.weight_decay) == (1e-4, 1e-5, 0.05)  # configs/methods/ewc.yaml
    assert (ewc.epochs, ewc.batch_size, ewc.warmup_epochs) == (100, 48, 0)  # global defaults
    assert resolve(RunConfig(method="ewc", lr=3e-3)).lr == 3e-3  # what the user set wins
    assert (resolve(RunConfig()).lr, resolve(RunConfig()).max_steps) == (5e-3, 200)  # gslora's preset
    assert resolve(ewc) == ewc  # idempotent
    assert RunConfig().lr is None and not RunConfig().is_resolved() and ewc.is_resolved()


def test_api_cli_and_comparison_resolve_the_same_config():
    args = build_parser().parse_args(["forget", "--checkpoint", "m.safetensors", "--out", "o", "--method", "ewc",
                                      "--epochs", "2", "--set", "batch_size=8"])
    cli = _run_config(args)
    api = resolve(RunConfig(method="ewc", epochs=2, batch_size=8))
    assert cli == api and cli.lr == 1e-4
    assert method_config("ewc", {"epochs": 2, "batch_size": 8}, "4x20") == api


def test_api_and_cli_write_the_same_config_yaml(tmp_path, micro_model, micro_checkpoint, micro_data, micro_folder):
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    settings = {"tasks": "1x2", "epochs": 1, "batch_size": 16, "replay_ratio": 0.1, "device": "cpu",
                "save_adapters": False}
    assert main(["forget", "--checkpoint", str(micro_checkpoint), "--data", str(micro_folder), "--out", str(cli_out),
                 "--method", "ewc", "--no-progress"] + [f"--set={k}={v}" for k, v in settings.items()]) == 0
    cfg = RunConfig(method="ewc", data=str(micro_folder), **settings)
    run_forgetting(micro_model, micro_data.classes, micro_data, cfg, out_dir=api_out)
    api = yaml.safe_load((api_out / "config.yaml").read_text())
    assert api == yaml.safe_load((cli_out / "config.yaml").read_text())
    assert api == dataclasses.asdict(resolve(cfg)) and api["lr"] == 1e-4


def test_a_preset_may_only_choose_training_settings(monkeypatch):
    import gslora.presets as presets

    monkeypatch.setattr(presets, "method_preset", lambda name: {"run": {"tasks": "1x1"}})
    with pytest.raises(GsloraError, match="may not choose"):
        resolve(RunConfig())


def test_pretrain_warmup_follows_the_epochs_unless_set():
    from gslora.config import build_config

    assert build_config(PretrainConfig, None, [], epochs=3).resolved_warmup() == 0  # `gslora pretrain --epochs 3`
    assert PretrainConfig(epochs=3).validate().resolved_warmup() == 0
    assert PretrainConfig(epochs=20).resolved_warmup() == 2
    assert PretrainConfig(epochs=40).resolved_warmup() == 3
    assert PretrainConfig(epochs=3, warmup_epochs=1).resolved_warmup() == 1
    with pytest.raises(GsloraError, match="warmup_epochs must be in"):
        PretrainConfig(epochs=3, warmup_epochs=3).validate()


def test_a_missing_method_preset_is_an_error_and_gslora_plus_inherits_gslora():
    from gslora.errors import GsloraError
    from gslora.presets import method_preset

    with pytest.raises(GsloraError, match="unknown method 'nothing': there is no preset"):
        method_preset("nothing")
    plus, base = method_preset("gslora++"), method_preset("gslora")
    assert "inherit" not in plus
    differs = {k for k in base["args"] if plus["args"][k] != base["args"][k]}
    assert differs == {"prototype_weight_forget"} and plus["args"]["prototype_weight_forget"] == 0.01
    assert plus["run"] == base["run"]
