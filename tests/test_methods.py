"""The baselines of SPEC §7 (+ head forgetting and SSD): each forgets on a tiny task, and each one's defining piece
(importances, penalties, distillation, SCRUB's max/min alternation, SSD's selection) does what it claims."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from gslora import RunConfig, run_forgetting
from gslora.data.plan import make_plan, select_per_class
from gslora.methods import METHODS, TaskContext, get_method, method_defaults
from gslora.methods.base import StepState
from gslora.methods.common import batches_of, distill_kl, parameter_importance, random_wrong_labels

BASELINES = sorted(m for m in METHODS if m != "gslora")

# Tiny-task settings: a few epochs are enough when the learning rate is raised for the fine-tuning baselines.
FAST_RUN = {"lr": 1e-3, "min_lr": 1e-5}
FAST_ARGS = {"ssd": {"selection_weighting": 2.0},  # α = 10 selects almost nothing on the 32-wide micro model
             "fdr": {"lam": 1.0},  # λ = 50 (on s = 64 CosFace logits) keeps the model too close to forget in 4 epochs
             "retrain-full": {"pretrain": {"max_steps": 120, "batch_size": 32, "lr": 3e-3}}}  # a short recipe
FAST_RUN_FOR = {"head": {"lr": 1e-2}}  # a linear head alone needs a larger step to move in 32 steps


def _config(name, **kw):
    base = {**method_defaults(name).get("run", {}), **FAST_RUN, "tasks": "1x4", "epochs": 4, "batch_size": 16,
            "replay_ratio": 0.2, "device": "cpu", "method": name, "save_adapters": False}
    return RunConfig(**{**base, **kw})


def _context(model, data, cfg, position=0):
    plan = make_plan(data.classes, cfg.tasks, seed=cfg.seed)
    task = plan.tasks[position]
    remain = select_per_class(data.train.targets, task.remain, cfg.seed, cfg.replay_ratio)
    forget = select_per_class(data.train.targets, task.forget, cfg.seed, cfg.replay_ratio)
    original = copy.deepcopy(model).eval().requires_grad_(False)
    return TaskContext(task=task, position=position, num_tasks=len(plan.tasks), num_classes=len(data.classes),
                       config=cfg, device=torch.device("cpu"), remain_data=Subset(data.train, remain),
                       forget_data=Subset(data.train, forget), original_model=original)


def _batch(dataset, n=16):
    xs, ys = zip(*[dataset[i] for i in range(min(n, len(dataset)))])
    return torch.stack(xs), torch.as_tensor(ys)


def test_every_method_is_registered_with_a_defaults_file():
    expected = {"gslora", "l2", "ewc", "mas", "lwf", "der", "derpp", "fdr", "scrub", "scrub-s", "uniform-kd", "retrain",
                "retrain-full", "head", "ssd"}
    assert expected <= set(METHODS)
    for name in expected:
        assert "args" in method_defaults(name), name
        get_method(name)  # defaults are complete and valid


@pytest.mark.parametrize("name", BASELINES)
def test_method_forgets_on_a_tiny_task(name, micro_model, micro_data):
    cfg = _config(name, **FAST_RUN_FOR.get(name, {}))
    before = {n: p.detach().clone() for n, p in micro_model.named_parameters()}
    method = get_method(name, **FAST_ARGS.get(name, {}))
    res = run_forgetting(micro_model, micro_data.classes, micro_data, cfg, method=method)
    (row,) = res.rows
    assert row["acc_f"] < row["before"]["acc_f"] - 5.0, row
    assert 0 < row["tunable_ratio"] <= 100.0
    if name in ("retrain", "retrain-full"):
        assert row["tunable_ratio"] == 100.0 and row["before"]["acc_f"] == row["pretrained"]["acc_f"]
    else:
        assert row["tunable_ratio"] < 100.0  # the head (at least) stays frozen
        head_same = torch.equal(before["head.weight"], res.model.head.weight)
        assert head_same == (name != "head"), "only head forgetting may change the head"


def test_relabelled_forget_labels_are_wrong_and_from_the_remaining_classes():
    y = torch.tensor([3, 3, 7, 7, 9] * 20)
    remain = (0, 1, 2, 4, 5)
    wrong = random_wrong_labels(y, remain, torch.Generator().manual_seed(0))
    assert set(wrong.tolist()) <= set(remain) and not (wrong == y).any()
    assert len(set(wrong.tolist())) > 1  # random, not a constant


class TwoParams(nn.Module):
    """logits = [w1·x0, w2·x1]: a model whose importances can be computed by hand."""

    def __init__(self, w1, w2):
        super().__init__()
        self.w1, self.w2 = nn.Parameter(torch.tensor(w1)), nn.Parameter(torch.tensor(w2))

    def forward(self, x, labels=None):
        return torch.stack([self.w1 * x[:, 0], self.w2 * x[:, 1]], dim=-1)


def test_ewc_and_mas_importances_match_a_hand_computed_example():
    model = TwoParams(0.5, -1.0)
    xs = [(torch.tensor([[1.0, 2.0]]), torch.tensor([0])), (torch.tensor([[3.0, -1.0]]), torch.tensor([1]))]
    fisher = parameter_importance(model, xs, "fisher")
    mas = parameter_importance(model, xs, "mas")
    exp_f, exp_m = [0.0, 0.0], [0.0, 0.0]
    for (x, y) in xs:
        x0, x1 = float(x[0, 0]), float(x[0, 1])
        z0, z1 = 0.5 * x0, -1.0 * x1
        p0 = math.exp(z0) / (math.exp(z0) + math.exp(z1))
        t0 = 1.0 if int(y) == 0 else 0.0
        g1 = (p0 - t0) * x0  # dCE/dw1 = (p0 − [y=0])·x0
        g2 = ((1 - p0) - (1 - t0)) * x1  # dCE/dw2 = (p1 − [y=1])·x1
        exp_f[0] += g1**2 / 2
        exp_f[1] += g2**2 / 2
        exp_m[0] += abs(2 * 0.5 * x0**2) / 2 / 2  # d((z0² + z1²)/C)/dw1 = 2·w1·x0²/C, C = 2 classes
        exp_m[1] += abs(2 * -1.0 * x1**2) / 2 / 2
    assert fisher["w1"].item() == pytest.approx(exp_f[0], rel=1e-5)
    assert fisher["w2"].item() == pytest.approx(exp_f[1], rel=1e-5)
    assert mas["w1"].item() == pytest.approx(exp_m[0], rel=1e-5)
    assert mas["w2"].item() == pytest.approx(exp_m[1], rel=1e-5)
    assert model.w1.requires_grad and model.training  # flags and mode restored


@pytest.mark.parametrize("name", ["l2", "ewc", "mas"])
def test_regularisation_penalties_accumulate_across_tasks(name, micro_model, micro_data):
    method = get_method(name)
    cfg = _config(name, tasks="2x3", epochs=2)
    res = run_forgetting(micro_model, micro_data.classes, micro_data, cfg, method=method)
    assert len(method.anchors) == 2  # one (Ω, θ*) per task
    (om1, th1), (om2, th2) = method.anchors
    assert any(not torch.equal(th1[n], th2[n]) for n in th1)  # θ* of task 2 is the model after task 1
    if name == "l2":
        assert om1 is None and om2 is None
    else:
        assert any(not torch.allclose(om1[n], om2[n]) for n in om1)  # Ω recomputed on task 2's remain subset
    named = dict(res.model.named_parameters())
    by_hand = sum(((named[n] - ref).pow(2) * (1 if om is None else om[n])).sum()
                  for om, th in method.anchors for n, ref in th.items())
    total = method.penalty(res.model)
    assert float(total) == pytest.approx(float(by_hand), rel=1e-5)
    last_only = sum(((named[n] - ref).pow(2) * (1 if om2 is None else om2[n])).sum() for n, ref in th2.items())
    assert float(total) > float(last_only) > 0  # task 1's anchor still pulls


def test_distill_kl_is_hintons_term():
    s, t = torch.randn(5, 7) * 20, torch.randn(5, 7) * 20
    p_t, log_s = F.softmax(t / 2, -1), F.log_softmax(s / 2, -1)
    manual = 4 * (p_t * (p_t.log() - log_s)).sum(-1).mean()
    assert float(distill_kl(s, t, 2.0)) == pytest.approx(float(manual), rel=1e-4)
    assert float(distill_kl(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)


def test_lwf_distillation_is_non_zero_and_finite(micro_model, micro_data):
    cfg = _config("lwf")
    ctx = _context(micro_model, micro_data, cfg)
    method = get_method("lwf")
    model = method.prepare(micro_model, ctx)
    opt = torch.optim.AdamW(method.trainable_parameters(model), lr=1e-3)
    remain, forget = _batch(ctx.remain_data), _batch(ctx.forget_data)
    kds = []
    for step in range(4):
        logs = method.train_step(model, remain, forget, opt, StepState(epoch=0, step=step, total_steps=4, epochs=1))
        kds.append(logs["kd"])
    assert kds[0] == pytest.approx(0.0, abs=1e-5)  # student == teacher before the first update
    assert all(math.isfinite(k) for k in kds) and kds[-1] > 1e-6
    loss, logs = method.loss(model, remain, forget, StepState(epoch=0, step=4, total_steps=5, epochs=1))
    assert math.isfinite(float(loss.detach())) and logs["kd"] > 0


@pytest.mark.parametrize("name", ["scrub", "scrub-s"])
def test_scrub_alternates_max_and_min_steps(name, micro_model, micro_data):
    method = get_method(name, max_fraction=0.5)
    cfg = _config(name, epochs=4)
    res = run_forgetting(micro_model, micro_data.classes, micro_data, cfg, method=method)
    steps = res.rows[0]["steps"]
    per_epoch = steps // 4
    kinds = method.step_kinds
    assert kinds[: 4 * per_epoch] == ["max", "min"] * (2 * per_epoch)  # epochs 0-1: max, min, max, min, ...
    assert kinds[4 * per_epoch:] == ["min"] * (2 * per_epoch)  # epochs 2-3: min steps only
    info = res.rows[0]["method_info"]
    assert info["max_steps"] == 2 * per_epoch and info["min_steps"] == steps


def test_scrub_max_step_raises_the_forget_divergence(micro_model, micro_data):
    cfg = _config("scrub")
    ctx = _context(micro_model, micro_data, cfg)
    method = get_method("scrub", gamma=0.0, alpha=0.0)  # isolate the max step (the min step then does nothing)
    model = method.prepare(micro_model, ctx)
    params = method.trainable_parameters(model)
    with torch.no_grad():  # student == teacher is a minimum of the divergence (zero gradient): nudge the student off it
        gen = torch.Generator().manual_seed(0)
        for p in params:
            p.add_(1e-2 * torch.randn(p.shape, generator=gen))
    opt = torch.optim.SGD(params, lr=1e-3)
    remain, forget = _batch(ctx.remain_data), _batch(ctx.forget_data)
    state = StepState(epoch=0, step=0, total_steps=10, epochs=10)
    divs = [method.train_step(model, remain, forget, opt, state)["max_kl_f"] for _ in range(3)]
    assert 0 < divs[0] < divs[1] < divs[2]
    assert method.step_kinds == ["max", "min"] * 3


def test_ssd_changes_only_the_parameters_its_criterion_selects(micro_model, micro_data):
    cfg = _config("ssd")
    ctx = _context(micro_model, micro_data, cfg)
    method = get_method("ssd", selection_weighting=2.0)
    before = {n: p.detach().clone() for n, p in micro_model.named_parameters()}
    names = [n for n in before if not n.startswith("head.")]
    task = ctx.task  # []_D: every training image of the task's classes (Foster et al.), not the replay subset
    classes = set(task.remain + task.forget)
    whole = Subset(micro_data.train, [i for i, t in enumerate(micro_data.train.targets) if t in classes])
    imp_r = parameter_importance(micro_model, batches_of(whole, 32), "fisher", names)
    imp_f = parameter_importance(micro_model, batches_of(ctx.forget_data, 32), "fisher", names)
    model, info = method.finish(method.prepare(micro_model, ctx), ctx)
    after = dict(model.named_parameters())
    n_sel = 0
    for n in before:
        if n.startswith("head."):
            assert torch.equal(after[n], before[n])
            continue
        selected = imp_f[n] > 2.0 * imp_r[n]
        changed = after[n] != before[n]
        assert not (changed & ~selected).any(), n  # nothing outside the selection moves
        beta = (imp_r[n] / imp_f[n]).clamp(max=1.0)
        assert torch.allclose(after[n][selected], (before[n] * beta)[selected], atol=1e-7)
        n_sel += int(selected.sum())
    assert n_sel > 0 and info["trainable_params"] == n_sel


def test_retrain_starts_from_a_fresh_model(micro_model, micro_data):
    cfg = _config("retrain")
    ctx = _context(micro_model, micro_data, cfg)
    fresh = get_method("retrain").prepare(micro_model, ctx)
    assert fresh is not micro_model
    assert not torch.equal(fresh.head.weight, micro_model.head.weight)
    assert all(p.requires_grad for p in fresh.parameters())


RF_ARGS = {"pretrain": {"max_steps": 40, "batch_size": 32, "lr": 3e-3}}


def _spy_pretrain(monkeypatch):
    """Record the data bundle every call of gslora.pretrain.pretrain trains on."""
    import gslora.pretrain

    seen, real = [], gslora.pretrain.pretrain

    def spy(model, data, cfg, progress=False):
        seen.append(data)
        return real(model, data, cfg, progress=progress)

    monkeypatch.setattr(gslora.pretrain, "pretrain", spy)
    return seen


def test_retrain_full_trains_on_every_remaining_image_and_no_forgotten_one(micro_model, micro_data, monkeypatch):
    bundles = _spy_pretrain(monkeypatch)
    cfg = _config("retrain-full", tasks="2x3")
    method = get_method("retrain-full", **RF_ARGS)
    res = run_forgetting(micro_model, micro_data.classes, micro_data, cfg, method=method)
    targets = micro_data.train.targets
    last = res.plan.tasks[-1]
    gone = set(last.forget) | set(last.old)
    every_remaining = [i for i, t in enumerate(targets) if t in last.remain]
    assert method.train_indices == every_remaining  # all of them, not the replay subset
    assert len(every_remaining) > 3 * res.rows[-1]["replay_images"]
    assert not gone & {targets[i] for i in method.train_indices}
    assert len(bundles) == 2  # one retrain per task
    for task, bundle in zip(res.plan.tasks, bundles):
        assert set(bundle.train.targets) == set(task.remain)  # every remaining class, no forgotten one
        assert torch.equal(bundle.train.images,
                           micro_data.train.images[[i for i, t in enumerate(targets) if t in task.remain]])
        assert not set(task.forget + task.old) & set(bundle.val.targets)
        assert len(bundle.test) == 0
    for task, row in zip(res.plan.tasks, res.rows):
        assert row["acc_f"] <= 5.0 and row["tunable_ratio"] == 100.0  # never taught the forgotten classes
        info = row["method_info"]
        assert info["retrain_seconds"] > 0 and info["train_images"] == sum(t in task.remain for t in targets)
    assert res.model.head.weight.shape[0] == micro_data.num_classes  # the full-size head


def test_retrain_full_reads_only_remaining_images_of_the_split_it_is_given(micro_model, micro_data):
    class Recording(torch.utils.data.Dataset):
        """A training split without ``subset``: records every item read."""

        def __init__(self, ds):
            self.ds, self.targets, self.classes, self.read = ds, ds.targets, ds.classes, set()

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            self.read.add(i)
            return self.ds[i]

    cfg = _config("retrain-full")
    ctx = _context(micro_model, micro_data, cfg)
    train = Recording(micro_data.train)
    ctx.train_data, ctx.val_data = train, micro_data.val
    method = get_method("retrain-full", **RF_ARGS)
    model, info = method.finish(method.prepare(micro_model, ctx), ctx)
    remaining = {i for i, t in enumerate(micro_data.train.targets) if t in ctx.task.remain}
    assert train.read == remaining == set(method.train_indices)
    assert info["train_data"] == "train_data" and info["val_images"] == sum(
        t in ctx.task.remain for t in micro_data.val.targets) > 0
    assert "validation images of the remaining classes" in info["validation"]
    assert model is not micro_model and not model.training


def test_retrain_full_without_a_training_split_is_a_clear_error(micro_model, micro_data):
    from gslora.errors import GsloraError

    cfg = _config("retrain-full")
    ctx = _context(micro_model, micro_data, cfg)
    ctx.remain_data = Subset(copy.copy(micro_data.train), list(ctx.remain_data.indices))  # no common parent
    method = get_method("retrain-full", **RF_ARGS)
    with pytest.raises(GsloraError, match="whole training split"):
        method.finish(method.prepare(micro_model, ctx), ctx)


def test_the_paper_retrain_is_labelled_as_such():
    from gslora.methods import method_label

    assert method_label("retrain") == "retrain (paper)"
    assert method_label("retrain-full") == "retrain (full)"
    assert method_label("ewc") == "ewc"


def test_head_mask_mode_trains_nothing_and_zeroes_forgotten_rows(micro_model, micro_data):
    cfg = _config("head")
    method = get_method("head", mode="mask")
    res = run_forgetting(micro_model, micro_data.classes, micro_data, cfg, method=method)
    row = res.rows[0]
    assert row["steps"] == 0 and row["acc_f"] < row["before"]["acc_f"]
    task = res.plan.tasks[0]
    assert torch.count_nonzero(res.model.head.weight[list(task.forget)]) == 0


def test_bad_method_args_name_the_key():
    from gslora.errors import GsloraError

    with pytest.raises(GsloraError, match="lam"):
        get_method("ewc", lam=-1.0)
    with pytest.raises(GsloraError, match="mode"):
        get_method("head", mode="erase")



def test_a_failed_vmap_falls_back_with_one_warning(caplog):
    """Per-sample gradients: when torch.func.vmap cannot trace the model, the loop gives the same numbers and the
    fallback is said once (not silently, not once per batch)."""
    import logging

    from gslora.methods import common

    class Picky(torch.nn.Module):  # a data-dependent branch: vmap cannot batch it
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x, labels=None):
            return self.lin(x) * (2.0 if x.sum() > 0 else 1.0)

    torch.manual_seed(0)
    model = Picky()
    data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])) for _ in range(3)]
    common._VMAP_WARNED.discard("Picky")
    with caplog.at_level(logging.WARNING, logger="gslora.methods.common"):
        scores = common.parameter_importance(model, data, "fisher", per_sample=True)
    warned = [r for r in caplog.records if "vmap failed" in r.getMessage()]
    assert len(warned) == 1 and "Picky" in warned[0].getMessage()
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, y in data:
        for i in range(4):
            out = model(x[i:i + 1])
            grads = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y[i:i + 1]), list(model.parameters()))
            for (n, _), g in zip(model.named_parameters(), grads):
                expected[n] += g.pow(2)
    for n in expected:
        assert torch.allclose(scores[n], expected[n] / 12, atol=1e-6)
