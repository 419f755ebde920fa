"""Depth inside the loop: the in-loop probe against scikit-learn, probe targets that stop a task, the collapse term
that trains only the adapters."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_targets import _cfg, _ctx

from gslora import run_forgetting
from gslora.config import parse_target
from gslora.depth import RIDGE_ALPHAS, _design, collapse_loss, keep, probe_accuracy
from gslora.engine import train_task
from gslora.methods import get_method


def _blobs(seed=0, classes=6, per_class=5, dim=12, spread=0.8):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(per_class)
    emb = torch.randn(len(y), dim, generator=g) + spread * torch.randn(classes, dim, generator=g)[y]
    return emb, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_loop_probe_equals_scikit_learn_ridge_with_leave_one_out(seed):
    from sklearn.linear_model import RidgeClassifier, RidgeClassifierCV

    emb, y = _blobs(seed)
    score = [0, 1, 2]
    got = probe_accuracy(emb, y, score)
    x, labels = _design(emb).numpy(), y.numpy()
    # the ridge strength: scikit-learn's leave-one-out choice (its efficient LOO, squared error)
    assert got["alpha"] == RidgeClassifierCV(alphas=RIDGE_ALPHAS, fit_intercept=False).fit(x, labels).alpha_
    # the accuracy: refit without each image, predict it, score the images of `score`
    pred = []
    for i in range(len(labels)):
        rest = np.arange(len(labels)) != i
        pred.append(RidgeClassifier(alpha=got["alpha"], fit_intercept=False).fit(x[rest], labels[rest])
                    .predict(x[i:i + 1])[0])
    scored = np.isin(labels, score)
    expected = 100.0 * float(np.mean(np.asarray(pred)[scored] == labels[scored]))
    assert got["acc"] == pytest.approx(expected) and got["images"] == int(scored.sum())
    assert 0 < got["acc"] < 100  # a case where the probe is neither perfect nor blind


def test_probe_is_blind_on_collapsed_features_and_none_without_two_classes():
    emb, y = _blobs(3, spread=4.0)
    assert probe_accuracy(emb, y)["acc"] == 100.0
    same = torch.ones_like(emb)
    assert probe_accuracy(same, y)["acc"] <= 100.0 / 6 + 1e-9  # no feature tells them apart: chance or less
    assert probe_accuracy(emb[:5], y[:5])["acc"] is None  # one class
    assert keep(40.0, 80.0) == 50.0 and keep(None, 80.0) is None and keep(10.0, 0.0) is None


def test_collapse_term_is_one_on_class_means_zero_on_equal_means_and_lowers_the_probe():
    emb, y = _blobs(4, spread=3.0)
    means = torch.stack([emb[y == c].mean(0) for c in range(6)])
    assert float(collapse_loss(means[y], y)) == pytest.approx(1.0)  # every image on its class mean
    shifted = emb - means[y] + means.mean(0)  # every class moved to one common mean
    assert float(collapse_loss(shifted, y)) < 0.05
    assert float(collapse_loss(emb[y == 0], y[y == 0])) == 0.0  # one class: nothing to collapse
    start = float(collapse_loss(emb, y))
    assert 0.2 < start < 1.0
    emb2 = emb.clone().requires_grad_(True)
    opt = torch.optim.Adam([emb2], lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        collapse_loss(emb2, y).backward()
        opt.step()
    assert float(collapse_loss(emb2.detach(), y)) < 0.5 * start
    assert probe_accuracy(emb2.detach(), y)["acc"] < probe_accuracy(emb, y)["acc"]


def test_one_probe_fit_scores_several_groups_as_separate_fits_would():
    from gslora.depth import probe_accuracies

    emb, y = _blobs(seed=4)
    got = probe_accuracies(emb, y, {"now": [0, 1], "earlier": [2, 3, 4], "none": [], "all": None})
    for name, score in (("now", [0, 1]), ("earlier", [2, 3, 4]), ("all", None)):
        assert got[name] == probe_accuracy(emb, y, score)
    assert got["none"]["acc"] is None and got["none"]["images"] == 0


def test_probe_targets_parse():
    assert parse_target("acc_f<=2,probe_f<=70,probe_keep<=85") == {"acc_f": 2.0, "probe_f": 70.0, "probe_keep": 85.0}


def test_a_probe_target_stops_a_task_like_the_other_targets_and_is_reported(micro_model, micro_data):
    # an easy probe target holds at the first checks, like acc_f: the task stops early
    easy = _cfg(tasks="1x4", max_steps=40, max_trials=1, eval_every=4, target_checks=1,
                target="acc_f<=100,probe_keep<=1000")
    row = run_forgetting(copy.deepcopy(micro_model), micro_data.classes, micro_data, easy).rows[0]
    assert row["trials"][0]["stopped_early"] and row["steps"] == 4
    assert row["targets"]["val"] == {"acc_f": True, "probe_keep": True}
    for key in ("probe_f", "probe_keep"):
        assert row[key] is not None and row["check"][key] is not None
    # one no model can reach: the task trains its whole budget and misses it; with every other target met no
    # second trial follows (another lr costs a whole budget for depth the trials did not buy)
    hard = _cfg(tasks="1x4", max_steps=12, max_trials=3, eval_every=4, target_checks=1,
                target="acc_f<=100,probe_f<=-1")
    row = run_forgetting(copy.deepcopy(micro_model), micro_data.classes, micro_data, hard).rows[0]
    assert [t["stopped_early"] for t in row["trials"]] == [False] and row["steps"] == 12
    assert row["targets"]["val"]["probe_f"] is False and row["targets"]["test"]["probe_f"] is False


def test_trials_after_a_missed_probe_target_follow_the_other_targets():
    from gslora.policy import next_trial

    def trial(scale, **met):
        return {"lr_scale": scale, "targets_met": met, "checks": 3, "stopped_early": False}

    assert next_trial([trial(1.0, acc_f=True, acc_r_drop=True, probe_keep=False)]) is None
    assert next_trial([trial(1.0, acc_f=False, acc_r_drop=True, probe_keep=False)]) == (2.0, 1.0)
    stopped = {**trial(1.0, acc_f=True, acc_r_drop=False, probe_keep=True), "stopped_early": True}
    assert next_trial([stopped]) == (0.5, 1.0)
    # a whole budget spent because the probe never held says nothing about how fast the accuracy targets were met:
    # retention comes first, half the lr is tried
    assert next_trial([trial(1.0, acc_f=True, acc_r_drop=False, probe_keep=False)]) == (0.5, 1.0)
    assert next_trial([trial(1.0, acc_f=True, acc_r_drop=False, probe_keep=True)]) is None


def test_collapse_term_trains_only_the_adapters(micro_model, micro_data):
    cfg = _cfg(tasks="1x4", max_steps=3, method_args={"collapse_weight": 5.0})
    ctx = _ctx(micro_model, micro_data, cfg)
    method = get_method("gslora", **ctx.config.method_args)
    before = {k: v.clone() for k, v in micro_model.state_dict().items()}
    work = method.prepare(micro_model, ctx)
    trainable = {n for n, p in work.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    summary = train_task(work, method, ctx)
    assert summary["steps"] == 3 and summary["last_logs"]["feature"] > 0
    base = {n: p for n, p in work.named_parameters() if "lora_" not in n}
    inner = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in base.items()}
    assert all(torch.equal(before[k], v) for k, v in inner.items() if k in before)
    assert any(float(p.detach().abs().max()) > 0 for ps in method.groups.params for p in ps[1::2])  # B moved


def test_collapse_weight_zero_adds_no_term(micro_model, micro_data):
    ctx = _ctx(micro_model, micro_data, _cfg(tasks="1x4", method_args={"collapse_weight": 0.0}))
    method = get_method("gslora", **ctx.config.method_args)
    work = method.prepare(micro_model, ctx)
    x, y = next(iter(torch.utils.data.DataLoader(ctx.forget_data, batch_size=8)))
    assert method.feature_term(work.embed(x), y, None) is None


def test_collapse_also_holds_the_earlier_forgotten_classes_whose_images_the_batch_keeps(micro_model, micro_data):
    ctx = _ctx(micro_model, micro_data, _cfg(tasks="1x4", method_args={"collapse_weight": 2.0}))
    method = get_method("gslora", **ctx.config.method_args)
    method.prepare(micro_model, ctx)
    method.old_classes = torch.tensor([7])  # as if class 7 was forgotten earlier and old_forget_shots kept images
    emb, y = _blobs(seed=3, classes=3, per_class=4)
    y = torch.tensor([5, 6, 7])[y]  # classes 5, 6 forgotten now, 7 earlier
    term = float(method.feature_term(emb, y, None))
    assert term == pytest.approx(2.0 * float(collapse_loss(emb, y)))
    assert term != pytest.approx(2.0 * float(collapse_loss(emb[y != 7], y[y != 7])))  # the old images count


def test_head_forgetting_is_not_held_to_a_probe_target_it_cannot_move(micro_model, micro_data):
    cfg = _cfg(tasks="1x4", max_steps=12, max_trials=3, eval_every=4, target_checks=1, method="head",
               target="acc_f<=100,probe_f<=-1")
    row = run_forgetting(copy.deepcopy(micro_model), micro_data.classes, micro_data, cfg).rows[0]
    assert row["targets"]["spec"] == "acc_f<=100" and len(row["trials"]) == 1
    assert row["probe_f"] is not None  # still reported


def test_embedding_anchor_is_zero_at_the_task_start_and_trains_only_the_adapters(micro_model, micro_data):
    from gslora.methods.gslora import embedding_anchor

    cfg = _cfg(tasks="1x4", max_steps=4, method_args={"anchor_weight": 50.0, "collapse_weight": 5.0})
    ctx = _ctx(micro_model, micro_data, cfg)
    method = get_method("gslora", **ctx.config.method_args)
    before = {k: v.clone() for k, v in micro_model.state_dict().items()}
    work = method.prepare(micro_model, ctx)
    x, _ = next(iter(torch.utils.data.DataLoader(ctx.remain_data, batch_size=8)))
    assert float(embedding_anchor(work, x, work.embed(x)).detach()) == pytest.approx(0.0, abs=1e-10)  # B = 0: no change
    summary = train_task(work, method, ctx)
    assert summary["steps"] == 4 and summary["last_logs"]["anchor"] > 0  # the adapters moved the replay embeddings
    inner = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in work.named_parameters()
             if "lora_" not in n}
    assert all(torch.equal(before[k], v) for k, v in inner.items() if k in before)
    emb = work.embed(x)
    loss = embedding_anchor(work, x, emb)
    loss.backward()
    grads = {n for n, p in work.named_parameters() if p.grad is not None and float(p.grad.abs().max()) > 0}
    assert grads and all("lora_" in n for n in grads)
    with torch.no_grad(), work.disable_adapter():
        start = work.embed(x)
    expected = (torch.nn.functional.normalize(emb.detach(), dim=-1)
                - torch.nn.functional.normalize(start, dim=-1)).pow(2).sum(-1).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_each_task_reports_the_probe_of_the_earlier_forgotten_classes_before_and_after_it(micro_model, micro_data):
    from torch.utils.data import Subset

    from gslora.depth import model_probe
    from gslora.report.tables import results_csv, task_line

    cfg = _cfg(tasks="2x2", max_steps=8, max_trials=1, eval_every=4, target_checks=1, target="acc_f<=100")
    result = run_forgetting(copy.deepcopy(micro_model), micro_data.classes, micro_data, cfg)
    first, second = result.rows
    assert first["probe_o"] is None and first["probe_o_before"] is None  # nothing forgotten before task 1
    # task 2 starts from task 1's model and probes the same test images (every class has data): its "before" is
    # task 1's own probe of the classes it forgot
    assert second["probe_o_before"] == pytest.approx(first["probe_f"])
    old = result.plan.tasks[1].old
    assert old == result.plan.tasks[0].forget
    assert second["probe_o"] == pytest.approx(model_probe(result.model, Subset(micro_data.test, range(
        len(micro_data.test))), "cpu", old))
    assert "earlier-forgotten" in task_line(second, 2) and "earlier-forgotten" not in task_line(first, 2)
    assert "probe_o_before,probe_o" in results_csv(result.results).splitlines()[0]
