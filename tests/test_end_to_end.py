"""A tiny continual run in seconds: forgotten classes fall, remaining classes hold, the run folder is complete."""

import json

from gslora import RunConfig, load_checkpoint, run_forgetting


def test_pretrained_micro_model_recognises_faces(micro_stats):
    assert micro_stats["test_acc"] > 60.0


def test_continual_gslora_forgets_and_retains(micro_model, micro_data, tmp_path):
    cfg = RunConfig(tasks="2x4", epochs=10, batch_size=16, replay_ratio=0.3, lr=3e-3, device="cpu")  # GS-LoRA's
    res = run_forgetting(micro_model, micro_data.classes, micro_data, cfg, out_dir=tmp_path / "run")  # defaults
    rows = res.rows
    assert len(rows) == 2
    for r in rows:
        assert r["acc_f"] <= 0.5 * r["before"]["acc_f"], r
        assert r["acc_r"] >= r["pretrained"]["acc_r"] - 10.0, r
        assert r["drop"] > 0 and r["h_mean"] > 0
    assert rows[1]["acc_o"] is not None and rows[1]["acc_o"] < 30.0
    out = tmp_path / "run"
    for name in ("results.json", "results.csv", "results.md", "config.yaml", "plan.json", "final.safetensors",
                 "final.json", "plots/accuracies.png", "plots/group_norms.png",
                 "adapters/task1/adapter_config.json", "adapters/task1/adapter_model.safetensors"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert [t["task"] for t in saved["tasks"]] == [1, 2]
    model, meta = load_checkpoint(out / "final.safetensors")
    assert [h["task"] for h in meta["history"]] == [1, 2]
    assert sorted(meta["history"][0]["forgotten"]) == sorted(rows[0]["forget"])


def test_gslora_plus_plus_prototype_term_runs_and_is_logged(micro_model, micro_data):
    from gslora.methods import get_method

    method = get_method("gslora", lora_alpha=8.0, bound=60.0, beta=1.0, prototype_weight_forget=0.01,
                        prototype_bound=18.0)
    cfg = RunConfig(tasks="1x3", epochs=6, batch_size=16, replay_ratio=0.3, lr=3e-3, device="cpu")
    res = run_forgetting(micro_model, micro_data.classes, micro_data, cfg, method=method)
    assert method.prototypes is not None and method.prototypes.shape == (20, 32)
    assert res.rows[0]["acc_f"] < res.rows[0]["before"]["acc_f"]
