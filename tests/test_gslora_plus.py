"""GS-LoRA++ (SPEC §4): the prototype term, few-shot forgetting, missing classes and the constrained benchmark."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from gslora import RunConfig, run_forgetting
from gslora.compare import run_comparison, setting_plans
from gslora.config import from_dict
from gslora.data.plan import Task, make_plan
from gslora.engine import train_task
from gslora.errors import GsloraError
from gslora.evaluate import class_counts, task_metrics
from gslora.losses import prototype_loss, prototype_terms
from gslora.methods import Method, StepState, TaskContext, get_method
from gslora.methods import gslora as gslora_module
from gslora.models import create_model
from gslora.practical import DataConstraintError, missing_classes
from gslora.presets import resolve

FAST = {"device": "cpu", "save_adapters": False, "target": "", "max_steps": 6}


# --- the prototype term ----------------------------------------------------------------------------------------------

def _kl_by_hand(p_logits, q_logits):
    p = [math.exp(v) for v in p_logits]
    p = [v / sum(p) for v in p]
    q = [math.exp(v) for v in q_logits]
    q = [v / sum(q) for v in q]
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


@pytest.mark.parametrize("bound", [2.0, 0.01])  # the hinge active / saturated
def test_prototype_loss_equals_a_hand_computed_two_class_example(bound):
    # class 0 is forgotten (one forget sample), class 1 remains (one remain sample); 3-d embeddings
    protos = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]]
    e_f, e_r = [-0.5, 1.0, 1.5], [0.2, 1.0, 0.0]
    kl_f, kl_r = _kl_by_hand(protos[0], e_f), _kl_by_hand(protos[1], e_r)
    w_f, w_r = 0.3, 0.7
    expected = w_f * max(0.0, bound - kl_f) + w_r * kl_r
    t = torch.tensor
    loss, got_f, got_r = prototype_terms(t([e_f]), t([protos[0]]), t([e_r]), t([protos[1]]), w_f, w_r, bound)
    assert got_f.item() == pytest.approx(kl_f, rel=1e-5) and got_r.item() == pytest.approx(kl_r, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert prototype_loss(t([e_f]), t([protos[0]]), t([e_r]), t([protos[1]]), w_f, w_r, bound).item() == \
        pytest.approx(expected, rel=1e-5)
    if bound < kl_f:  # saturated: only the remain half is left
        assert loss.item() == pytest.approx(w_r * kl_r, rel=1e-5)
    else:
        assert loss.item() > w_r * kl_r + 1e-3


def _spy_prototypes(monkeypatch):
    """Record every prototype computation: the weights of the model it was given and the datasets."""
    calls = []
    real = gslora_module.class_prototypes

    def spy(model, datasets, num_classes, device):
        calls.append({"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                      "lora": any("lora" in n for n, _ in model.named_parameters()), "datasets": datasets})
        return real(model, datasets, num_classes, device)

    monkeypatch.setattr(gslora_module, "class_prototypes", spy)
    return calls


def test_prototypes_are_computed_once_per_task_from_the_start_of_task_model(micro_model, micro_data, monkeypatch):
    calls = _spy_prototypes(monkeypatch)
    method = get_method("gslora++")
    ends = []
    real_finish = method.finish

    def finish(model, ctx):  # the merged model at the end of each task = the model the next task starts from
        merged, info = real_finish(model, ctx)
        ends.append({k: v.detach().clone() for k, v in merged.state_dict().items()})
        return merged, info

    method.finish = finish
    start = {k: v.detach().clone() for k, v in micro_model.state_dict().items()}
    cfg = RunConfig(tasks="2x4", replay_ratio=0.2, **FAST)
    res = run_forgetting(micro_model, micro_data.classes, micro_data, cfg, method=method)
    assert [r["steps"] for r in res.rows] == [6, 6]
    assert len(calls) == 2  # once per task, not per step
    assert not any(c["lora"] for c in calls)  # before LoRA is attached
    for call, expected in zip(calls, [start, ends[0]]):
        assert all(torch.equal(call["state"][k], v) for k, v in expected.items())
    assert not all(torch.equal(calls[1]["state"][k], v) for k, v in start.items())  # task 1 changed the model
    # the last task's prototypes: the mean embedding of each class over that task's subsets, under its start model
    model = copy.deepcopy(micro_model)
    model.load_state_dict(calls[1]["state"])
    model.eval()
    with torch.no_grad():
        samples = [ds[i] for ds in calls[1]["datasets"] for i in range(len(ds))]
        for c in {int(y) for _, y in samples}:
            xs = torch.stack([x for x, y in samples if int(y) == c])
            assert torch.allclose(method.prototypes[c], model.embed(xs).mean(0), atol=1e-5)


def test_per_task_w_f_is_used_at_its_task_and_logged_per_step(micro_model, micro_data):
    weights = [0.1, 0.5, 0.02]
    method = get_method("gslora++", prototype_weight_forget=weights, prototype_bound=3.0)
    cfg = RunConfig(tasks="4x3", replay_ratio=0.2, **FAST)
    res = run_forgetting(micro_model, micro_data.classes, micro_data, cfg, method=method)
    for row, w in zip(res.rows, [0.1, 0.5, 0.02, 0.02]):  # the last value repeats
        pro = row["method_info"]["prototype"]
        assert pro["w_f"] == w and pro["w_r"] == 0.0 and pro["bound"] == 3.0
        assert pro["step"] == list(range(row["steps"]))  # one entry per step
        for total, kl_f in zip(pro["pro"], pro["kl_f"]):  # the logged term is w_f of this task times the hinge
            assert total == pytest.approx(w * max(0.0, 3.0 - kl_f), abs=2e-4)
    assert res.rows[0]["method_info"]["prototype"]["pro"] != res.rows[1]["method_info"]["prototype"]["pro"]
    with pytest.raises(GsloraError, match="prototype_weight_forget"):
        get_method("gslora++", prototype_weight_forget=[0.1, -1.0])


@pytest.mark.parametrize("head", ["cosface", "linear"])
def test_the_prototype_term_acts_on_the_embedding_with_either_head(head, micro_data):
    torch.manual_seed(0)
    model = create_model("vit_face_micro", micro_data.num_classes, head=head)
    method = get_method("gslora++", prototype_weight_forget=1.0, prototype_weight_remain=0.5, beta=0.0)
    plan = make_plan(micro_data.classes, "1x4")
    task = plan.tasks[0]
    cfg = resolve(RunConfig(tasks="1x4", device="cpu"))
    remain = Subset(micro_data.train, [i for i, y in enumerate(micro_data.train.targets) if y in task.remain][:16])
    forget = Subset(micro_data.train, [i for i, y in enumerate(micro_data.train.targets) if y in task.forget][:8])
    ctx = TaskContext(task=task, position=0, num_tasks=1, num_classes=micro_data.num_classes, config=cfg,
                      device=torch.device("cpu"), remain_data=remain, forget_data=forget)
    work = method.prepare(model, ctx)

    def batch(ds):
        return torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor([ds[i][1] for i in range(len(ds))])

    loss, logs = method.loss(work, batch(remain), batch(forget), StepState(epoch=0, step=0, total_steps=1, epochs=1))
    assert all(math.isfinite(logs[k]) for k in ("pro", "pro_kl_f", "pro_kl_r"))
    assert logs["pro"] == pytest.approx(max(0.0, 18.0 - logs["pro_kl_f"]) + 0.5 * logs["pro_kl_r"], rel=1e-4)
    loss.backward()  # with beta 0 the forget batch reaches the LoRA weights through the prototype term only
    grads = [p.grad for p in method.trainable_parameters(work) if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


# --- few-shot --------------------------------------------------------------------------------------------------------

class Counting(Method):
    """One weight; records the labels of every remain and forget batch."""

    name = "counting"

    def __init__(self):
        self.args = None
        self.remain, self.forget = [], []

    def prepare(self, model, ctx):
        return model

    def loss(self, model, remain, forget, state):
        self.remain.append(remain[1].tolist())
        self.forget.append(forget[1].tolist())
        return (model.weight ** 2).sum(), {}


@pytest.mark.parametrize("n_remain, n_forget", [(8, 20), (20, 8)])
def test_an_epoch_runs_as_many_steps_as_the_longer_loader(n_remain, n_forget):
    data = lambda n, first: TensorDataset(torch.zeros(n, 1), torch.arange(first, first + n))  # noqa: E731
    remain, forget = data(n_remain, 0), data(n_forget, 100)
    cfg = resolve(RunConfig(tasks="1x1", epochs=3, max_steps=0, batch_size=4, device="cpu", augment=False))
    ctx = TaskContext(task=Task(1, (1,), (0,), ()), position=0, num_tasks=1, num_classes=2, config=cfg,
                      device=torch.device("cpu"), remain_data=remain, forget_data=forget)
    method = Counting()
    summary = train_task(nn.Linear(1, 1), method, ctx)
    longer = max(n_remain, n_forget)
    assert summary["steps"] == summary["budget"] == 3 * longer // 4
    for seen, n, first in ((method.remain, n_remain, 0), (method.forget, n_forget, 100)):
        per_epoch = [sorted(sum(seen[e * longer // 4:(e + 1) * longer // 4], [])) for e in range(3)]
        for labels in per_epoch:  # the shorter loader cycles: every image at least once per epoch
            assert set(labels) == set(range(first, first + n))


def test_the_few_shot_preset_gives_k_images_per_class_batch_4_and_the_per_task_weights(micro_model, micro_data):
    cfg = resolve(RunConfig(method="gslora++", tasks="2x4", shots=3, device="cpu"))
    assert cfg.protocol == "few_shot" and cfg.batch_size == 4
    assert cfg.method_args == {"prototype_weight_forget": [0.015, 0.06, 0.025, 0.012], "prototype_bound": 50.0,
                               "alpha": 0.1, "forget_loss": "ce"}
    assert resolve(RunConfig(method="gslora++", tasks="2x4", device="cpu")).batch_size == 48  # full data: unchanged
    res = run_forgetting(micro_model, micro_data.classes, micro_data,
                         from_dict(RunConfig, {**FAST, "method": "gslora++", "tasks": "2x4", "shots": 3}))
    for r in res.rows:
        assert r["replay_images"] == 3 * r["n_remain"] and r["forget_images"] == 3 * r["n_forget"]
        assert r["method_info"]["prototype"]["bound"] == 50.0
    assert [r["method_info"]["prototype"]["w_f"] for r in res.rows] == [0.015, 0.06]


# --- missing classes -------------------------------------------------------------------------------------------------

def test_missing_classes_are_drawn_per_group_and_named_ones_are_checked(micro_data):
    plan = make_plan(micro_data.classes, "4x4")
    missing = missing_classes(RunConfig(missing_ratio=0.5), plan, micro_data.classes)
    groups = [t.forget for t in plan.tasks[1:]] + [plan.tasks[-1].remain]
    assert [len(set(g) & set(missing)) for g in groups] == [2, 2, 2, 2]  # half of every group of 4
    assert missing == missing_classes(RunConfig(missing_ratio=0.5), plan, micro_data.classes)  # seeded
    assert missing != missing_classes(RunConfig(missing_ratio=0.5, seed=7), plan, micro_data.classes)
    named = [micro_data.classes[plan.tasks[0].remain[0]]]
    assert missing_classes(RunConfig(missing_classes=named), plan, micro_data.classes) == (plan.tasks[0].remain[0],)
    with pytest.raises(GsloraError, match="forgotten in task 1"):
        missing_classes(RunConfig(missing_classes=[plan.tasks[0].forget[0]]), plan, micro_data.classes)
    with pytest.raises(GsloraError, match="no replay data"):
        missing_classes(RunConfig(missing_classes=list(plan.tasks[-1].remain)), plan, micro_data.classes)


def test_acc_m_is_the_missing_classes_accuracy_and_they_get_no_replay_images(micro_model, micro_data, monkeypatch):
    import gslora.forget as forget_module

    seen = []
    real = forget_module.train_task

    def spy(model, method, ctx, **kw):
        seen.append({int(ctx.remain_data.dataset.targets[i]) for i in ctx.remain_data.indices})
        return real(model, method, ctx, **kw)

    monkeypatch.setattr(forget_module, "train_task", spy)
    cfg = RunConfig(method="gslora", tasks="2x4", missing_ratio=0.5, replay_ratio=0.2, **FAST)
    res = run_forgetting(micro_model, micro_data.classes, micro_data, cfg)
    plan = res.plan
    missing = set(missing_classes(cfg, plan, micro_data.classes))
    assert len(missing) == 8  # half of the 16 classes left after task 1 (2 of task 2's 4, 6 of the other 12)
    for row, task, replayed in zip(res.rows, plan.tasks, seen):
        gone = missing & set(task.remain)
        assert replayed == set(task.remain) - gone  # no replay image of a missing class
        assert row["n_missing"] == len(gone) and sorted(row["missing"]) == sorted(micro_data.classes[c] for c in gone)
    # the last task's numbers, recomputed from the final model on the test split (unmasked, as the paper scores it)
    res.model.config.pop("masked_classes")
    correct, total = class_counts(res.model, micro_data.test, micro_data.num_classes)
    last, task = res.rows[-1], plan.tasks[-1]
    gone = sorted(missing & set(task.remain))
    kept = [c for c in task.remain if c not in missing]
    assert last["acc_m"] == pytest.approx(100.0 * int(correct[gone].sum()) / int(total[gone].sum()))
    assert last["acc_r"] == pytest.approx(100.0 * int(correct[kept].sum()) / int(total[kept].sum()))
    # the metric itself: perfect on the kept classes, zero on the missing ones
    counts = (torch.tensor([8] * 10 + [0] * 10), torch.tensor([8] * 20))
    t = Task(1, (0, 1), tuple(range(2, 20)), ())
    m = task_metrics(counts, counts, counts, t, missing=tuple(range(10, 20)))
    assert m["acc_r"] == 100.0 and m["acc_m"] == 0.0 and m["pretrained"]["acc_m"] == 0.0
    assert task_metrics(counts, counts, counts, t)["acc_m"] is None  # no missing classes: no Acc_m


# --- the constrained benchmark ---------------------------------------------------------------------------------------

def test_the_benchmark_marks_a_method_that_cannot_run_under_the_constraint(micro_model, micro_data, tmp_path):
    assert setting_plans("few-shot", 20) == [("few-shot", "4x4")]
    out = tmp_path / "few"
    comp = run_comparison(micro_model, micro_data.classes, micro_data, "few-shot", "head,retrain-full",
                          base_config={"device": "cpu", "save_adapters": False, "epochs": 1},
                          method_args={"head": {"mode": "mask"}}, out_dir=out)
    by = {e["method"]: e for e in comp["methods"]}
    assert by["retrain-full"]["status"] == "not run" and not by["retrain-full"]["runs"]
    assert "every training image" in by["retrain-full"]["error"]
    assert by["head"]["status"] == "ok"
    assert [r["replay_images"] for r in by["head"]["runs"][0]["tasks"]] == [4 * 16, 4 * 12, 4 * 8, 4 * 4]
    assert by["head"]["runs"][0]["config"]["batch_size"] == 4 and "few-shot: 4 images" in comp["constraint"]
    md = (out / "comparison.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| retrain (full)"))
    assert "not run: retrain-full needs every training image" in row
    with open(out / "comparison.csv", newline="") as f:
        assert {(r["method"], r["status"]) for r in csv.DictReader(f)} == {("head", "ok"), ("retrain-full", "not run")}
    with pytest.raises(DataConstraintError):  # the same refusal outside the comparison
        run_forgetting(copy.deepcopy(micro_model), micro_data.classes, micro_data,
                       RunConfig(method="retrain-full", tasks="1x2", shots=2, **FAST))


def test_the_missing_setting_reports_acc_m_next_to_acc_r(micro_model, micro_data, tmp_path):
    out = tmp_path / "missing"
    comp = run_comparison(micro_model, micro_data.classes, micro_data, "missing", "head",
                          base_config={"device": "cpu", "save_adapters": False, "epochs": 1},
                          method_args={"head": {"mode": "mask"}}, out_dir=out)
    rows = comp["methods"][0]["runs"][0]["tasks"]
    assert [r["n_missing"] for r in rows] == [8, 6, 4, 2] and all(r["acc_m"] is not None for r in rows)
    table = [line for line in (out / "comparison.md").read_text().splitlines() if line.startswith("| ")]
    cells = [c.strip() for c in table[1].split("|")[1:-1]]
    assert cells[2:6] == ["H ↑", "Acc_r ↑", "Acc_m ↑", "Acc_f ↓"]
    head_cells = [c.strip() for c in table[3].split("|")[1:-1]]
    assert head_cells[4] == f"{rows[0]['acc_m']:.1f}"
    assert (out / "plots" / "acc_m.png").is_file()
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["plots"] == ["plots/h_mean.png", "plots/acc_m.png"] and "missing classes" in saved["constraint"]
    with open(out / "comparison.csv", newline="") as f:
        assert [float(r["acc_m"]) for r in csv.DictReader(f)] == pytest.approx([r["acc_m"] for r in rows])


def test_benchmark_cli_missing_setting(micro_checkpoint, micro_data, tmp_path, capsys, monkeypatch):
    from gslora.cli import main

    monkeypatch.setattr("gslora.data.load_data", lambda *a, **k: micro_data)  # the 16 px micro faces of the fixture
    out = tmp_path / "cli"
    args = ["benchmark", "--checkpoint", str(micro_checkpoint), "--data", "faces", "--setting", "missing",
            "--methods", "head,retrain-full", "--out", str(out), "--epochs", "1", "--device", "cpu", "--no-progress",
            "--method-set", "head.mode=mask"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Acc_m ↑" in printed and "not run: retrain-full needs" in printed and "plots/acc_m.png" in printed
    saved = json.loads((out / "comparison.json").read_text())
    head = saved["methods"][0]["runs"][0]
    assert head["config"]["missing_ratio"] == 0.5 and head["config"]["data"] == "faces"
