"""Issue 8: forgetting to a validation target, back-off trials, proximal group sparsity, loaders and presets."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from gslora import RunConfig, run_forgetting
from gslora.config import parse_target
from gslora.data.plan import make_plan, select_per_class
from gslora.engine import passes, repeated, train_task
from gslora.errors import GsloraError
from gslora.forget import next_trial
from gslora.lora import block_is_zero
from gslora.methods import TaskContext, get_method
from gslora.presets import resolve


def _ctx(model, data, cfg, position=0):
    cfg = resolve(cfg)
    plan = make_plan(data.classes, cfg.tasks, seed=cfg.seed)
    task = plan.tasks[position]
    remain = select_per_class(data.train.targets, task.remain, cfg.seed, cfg.replay_ratio)
    forget = select_per_class(data.train.targets, task.forget, cfg.seed, cfg.replay_ratio)
    return TaskContext(task=task, position=position, num_tasks=len(plan.tasks), num_classes=len(data.classes),
                       config=cfg, device=torch.device("cpu"), remain_data=Subset(data.train, remain),
                       forget_data=Subset(data.train, forget),
                       original_model=copy.deepcopy(model).eval().requires_grad_(False))


def _cfg(**kw):
    base = dict(tasks="2x4", batch_size=16, replay_ratio=0.2, device="cpu", save_adapters=False, max_steps=12,
                eval_every=0, augment=False)
    return RunConfig(**{**base, **kw})


def test_target_strings_parse_and_bad_ones_name_the_metrics():
    assert parse_target("acc_f<=2, acc_r_drop<=1.5") == {"acc_f": 2.0, "acc_r_drop": 1.5}
    assert parse_target("") == {}
    with pytest.raises(GsloraError, match="acc_f, acc_o, probe_f, probe_keep, acc_r_drop"):
        parse_target("acc_x<=2")
    with pytest.raises(GsloraError, match="METRIC<=NUMBER"):
        RunConfig(target="acc_f>=2").validate()


def test_large_alpha_makes_blocks_exactly_zero_for_good(micro_model, micro_data):
    cfg = _cfg(method_args={"alpha": 50.0})
    method = get_method("gslora", alpha=50.0)
    ctx = _ctx(micro_model, micro_data, cfg)
    before = copy.deepcopy(micro_model.state_dict())
    work = method.prepare(micro_model, ctx)
    summary = train_task(work, method, ctx)
    assert summary["steps"] == 12
    assert all(block_is_zero(method.groups))  # B of every block exactly 0 after every step
    assert all(float(b.detach().abs().max()) == 0.0 for ps in method.groups.params for b in ps[1::2])
    merged, info = method.finish(work, ctx)
    assert info["selected_blocks"] == [] and all(d == 0.0 for d in info["delta_norms"])
    after = merged.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)  # nothing merged


def test_moderate_alpha_keeps_some_blocks_and_zero_alpha_prox_equals_penalty(micro_model, micro_data):
    def run(**args):
        torch.manual_seed(0)
        model = copy.deepcopy(micro_model)
        method = get_method("gslora", **args)
        ctx = _ctx(model, micro_data, _cfg())
        work = method.prepare(model, ctx)
        train_task(work, method, ctx)
        selected = [not z for z in block_is_zero(method.groups)]
        merged, _ = method.finish(work, ctx)
        return merged.state_dict(), selected

    prox, sel_prox = run(alpha=0.0, sparsity="prox")
    pen, _ = run(alpha=0.0, sparsity="penalty")
    assert all(torch.equal(prox[k], pen[k]) for k in prox)  # alpha 0: both variants give the same update
    assert all(sel_prox)


def test_forget_loader_reshuffles_on_every_pass():
    ds = TensorDataset(torch.arange(32).float(), torch.arange(32))
    loader = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    stream = passes(loader)
    first, second = next(stream)[1], next(stream)[1]
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(32))
    assert not torch.equal(first, second)


def test_small_forget_subset_is_repeated_to_fill_a_batch():
    ds = TensorDataset(torch.zeros(5, 1), torch.arange(5))
    assert len(repeated(ds, 48)) == 20  # at most 4 copies
    assert len(repeated(ds, 12)) == 15
    assert repeated(ds, 4) is ds


def test_early_stop_at_the_first_check_meeting_the_target_keeps_that_model(micro_model, micro_data):
    method = get_method("gslora")
    ctx = _ctx(micro_model, micro_data, _cfg(max_steps=100, eval_every=5, target_checks=2))
    work = method.prepare(micro_model, ctx)
    seen = []

    def check(model):
        seen.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return len(seen) >= 3, {"call": len(seen)}  # the target holds from the third check on

    summary = train_task(work, method, ctx, check=check)
    assert summary["steps"] == 20 and len(seen) == 4  # checks at 5, 10, 15 (met), 20 (met twice in a row): stop
    assert summary["stopped_early"] and summary["target_met"]
    now = {n: p for n, p in work.named_parameters() if p.requires_grad}
    assert all(torch.equal(now[n], seen[-1][n]) for n in now)  # the returned model is the one checked last


@pytest.mark.parametrize("anchor", [0.0, 10.0])
def test_missed_retention_target_is_retried_with_a_stronger_anchor_or_half_the_lr(micro_model, micro_data, anchor):
    cfg = _cfg(tasks="1x4", target="acc_f<=100,acc_r_drop<=-1000", max_trials=2, eval_every=4, target_checks=1,
               method_args={"anchor_weight": anchor})
    result = run_forgetting(micro_model, micro_data.classes, micro_data, cfg)
    row = result.rows[0]
    from gslora.report.tables import task_line

    if anchor:  # GS-LoRA's embedding anchor: x3 at the same lr, and the task line says so
        assert [(t["lr_scale"], t["anchor_scale"]) for t in row["trials"]] == [(1.0, 1.0), (1.0, 3.0)]
        assert "anchor x3" in task_line(row, 1)
    else:
        assert [(t["lr_scale"], t["anchor_scale"]) for t in row["trials"]] == [(1.0, 1.0), (0.5, 1.0)]
        assert "anchor" not in task_line(row, 1)
    assert row["trials"][0]["targets_met"] == {"acc_f": True, "acc_r_drop": False}
    assert row["trials"][0]["steps"] == 4  # acc_f<=100 holds at the first check
    assert row["targets"]["val"]["acc_r_drop"] is False and row["chosen_trial"] in (1, 2)


def test_retention_target_counts_as_met_within_one_validation_image():
    from gslora.forget import targets_met

    one_image = {"acc_f": 0.0, "acc_r": 90.0, "acc_o": None, "acc_r_drop": 100 / 35, "h_mean": 90.0,
                 "acc_r_resolution": 100 / 35}
    assert targets_met(one_image, {"acc_f": 2.0, "acc_r_drop": 2.0}) == {"acc_f": True, "acc_r_drop": True}
    two_images = {**one_image, "acc_r_drop": 5.8}
    assert targets_met(two_images, {"acc_r_drop": 2.0}) == {"acc_r_drop": False}
    assert targets_met({**one_image, "acc_r_resolution": 0.5}, {"acc_r_drop": 2.0}) == {"acc_r_drop": False}


def test_next_trial_goes_up_on_missed_forgetting_and_never_repeats():
    def rec(scale, **met):
        return {"lr_scale": scale, "targets_met": met}

    assert next_trial([]) == (1.0, 1.0)
    assert next_trial([rec(1.0, acc_f=False, acc_r_drop=True)]) == (2.0, 1.0)
    assert next_trial([rec(1.0, acc_f=True, acc_r_drop=False)]) == (0.5, 1.0)
    trials = [rec(1.0, acc_f=True, acc_r_drop=False), rec(0.5, acc_f=False, acc_r_drop=True)]
    assert next_trial(trials) is None  # the search turned back: it ends
    up = [rec(1.0, acc_f=False, acc_r_drop=True), rec(2.0, acc_f=False, acc_r_drop=True)]
    assert next_trial(up) == (4.0, 1.0)
    assert next_trial([*up, rec(4.0, acc_f=True, acc_r_drop=False)]) is None  # 2 was tried


def test_no_half_lr_trial_after_a_trial_that_needed_its_whole_budget_to_forget():
    def rec(scale, stopped_early, checks=5, **met):
        return {"lr_scale": scale, "stopped_early": stopped_early, "checks": checks, "targets_met": met}

    assert next_trial([rec(1.0, True, acc_f=True, acc_r_drop=False)]) == (0.5, 1.0)  # forgot with steps to spare
    assert next_trial([rec(1.0, False, acc_f=True, acc_r_drop=False)]) is None  # forgot only at the budget's end
    # without periodic checks (eval_every 0) no trial can stop early: the half-lr trial is still made
    assert next_trial([rec(1.0, False, checks=0, acc_f=True, acc_r_drop=False)]) == (0.5, 1.0)
    # a missed forgetting target still doubles the lr, whatever the steps
    assert next_trial([rec(1.0, False, acc_f=False, acc_r_drop=True)]) == (2.0, 1.0)
    # after doubling, a retention miss at the end of the budget ends the search: the chosen trial is the best so far
    assert next_trial([rec(1.0, False, acc_f=False, acc_r_drop=True), rec(2.0, False, acc_f=True,
                                                                          acc_r_drop=False)]) is None


def test_an_anchored_method_strengthens_its_anchor_after_a_retention_miss():
    def rec(lr, anchor, **met):
        return {"lr_scale": lr, "anchor_scale": anchor, "stopped_early": True, "checks": 3, "targets_met": met}

    assert next_trial([rec(1.0, 1.0, acc_f=True, acc_r_drop=False)], anchored=True) == (1.0, 3.0)
    assert next_trial([rec(1.0, 1.0, acc_f=True, acc_r_drop=False), rec(1.0, 3.0, acc_f=True, acc_r_drop=False)],
                      anchored=True) == (1.0, 9.0)
    # the stronger anchor forgot too little: twice the lr, the anchor kept
    assert next_trial([rec(1.0, 1.0, acc_f=True, acc_r_drop=False), rec(1.0, 3.0, acc_f=False, acc_r_drop=True)],
                      anchored=True) == (2.0, 3.0)
    assert next_trial([rec(1.0, 1.0, acc_f=False, acc_r_drop=True)], anchored=True) == (2.0, 1.0)
    # the anchor only grows and the lr only doubles: no pair repeats; a trial meeting every target ends the search
    assert next_trial([rec(1.0, 1.0, acc_f=True, acc_r_drop=False), rec(1.0, 3.0, acc_f=False, acc_r_drop=True),
                       rec(2.0, 3.0, acc_f=True, acc_r_drop=False), rec(2.0, 9.0, acc_f=True, acc_r_drop=True)],
                      anchored=True) is None  # everything met: no further trial


def test_single_step_preset_is_applied_to_one_task_and_user_values_win():
    single = resolve(RunConfig(tasks="1x10"))
    assert single.protocol == "single_step"
    assert single.method_args["bound"] == 110.0 and single.method_args["alpha_warmup_epochs"] == 20
    continual = resolve(RunConfig(tasks="4x10"))
    assert continual.protocol == "continual" and "bound" not in continual.method_args
    mine = resolve(RunConfig(tasks="1x10", method_args={"bound": 70.0}))
    assert mine.method_args["bound"] == 70.0
    assert resolve(single) == single  # idempotent
    assert resolve(RunConfig(epochs=5)).max_steps == 0  # epochs set by the user: the budget is 5 epochs
    assert resolve(RunConfig()).max_steps > 0
    forced = resolve(RunConfig(tasks="1x10", protocol="continual"))
    assert "bound" not in forced.method_args


def test_per_task_beta_and_fresh_zero_adapters_at_every_task(micro_model, micro_data):
    method = get_method("gslora", beta=[0.1, 0.3, 0.5])
    cfg = _cfg(tasks="4x2")
    for position, beta in enumerate([0.1, 0.3, 0.5, 0.5]):
        ctx = _ctx(micro_model, micro_data, cfg, position)
        work = method.prepare(micro_model, ctx)
        assert method.beta == beta
        assert all(float(b.detach().abs().max()) == 0.0 for ps in method.groups.params for b in ps[1::2])
        train_task(work, method, ctx)
        micro_model, _ = method.finish(work, ctx)


def test_results_report_targets_trials_and_selected_blocks(micro_model, micro_data):
    cfg = _cfg(tasks="1x4", max_trials=1, eval_every=4, target_checks=1)
    row = run_forgetting(micro_model, micro_data.classes, micro_data, cfg).rows[0]
    assert set(row["targets"]) == {"spec", "val", "test"}
    assert set(row["targets"]["test"]) == {"acc_f", "acc_r_drop", "probe_keep"}  # the default target
    assert row["steps"] == row["trials"][0]["steps"] <= 12
    assert set(row["method_info"]["selected_blocks"]) <= set(range(len(row["method_info"]["group_norms"])))


def test_trial_choice_prefers_all_targets_then_validation_h_over_a_collapsed_trial():
    from gslora.forget import _better

    def trial(acc_f_met, kept, h):
        return {"targets_met": {"acc_f": acc_f_met, "acc_r_drop": kept}, "val": {"h_mean": h}}

    collapsed = trial(True, False, 6.4)  # forgot, but validation Acc_r fell to a few percent
    balanced = trial(False, True, 70.0)  # missed acc_f by a few points, kept the rest
    assert _better(balanced, collapsed) and not _better(collapsed, balanced)
    everything = trial(True, True, 50.0)
    assert _better(everything, balanced)
    assert _better(trial(True, False, 60.0), trial(False, False, 60.0))  # tie on H: forgetting met wins


def test_check_images_skip_the_task_subsets_and_stay_per_class():
    from gslora.forget import check_images

    targets = [i % 3 for i in range(30)]  # 10 images of each of 3 classes
    exclude = {0, 3, 6, 1}
    got = check_images(targets, [0, 1], exclude, per_class=4, seed=5)
    assert len(got) == 8 and not set(got) & exclude
    assert sorted(targets[i] for i in got) == [0] * 4 + [1] * 4
    assert got == check_images(targets, [0, 1], exclude, per_class=4, seed=5)  # seeded
    assert check_images(targets, [0, 1], exclude, per_class=0, seed=5) == []


def test_check_set_joins_unused_training_images_to_validation(micro_model, micro_data):
    cfg = _cfg(tasks="1x4", max_trials=1, eval_every=4, target_checks=1, check_train_images=2)
    row = run_forgetting(micro_model, micro_data.classes, micro_data, cfg).rows[0]
    n_val = len(micro_data.val)
    assert row["check"]["train_images"] == 2 * len(micro_data.classes)
    assert row["check"]["images"] == n_val + row["check"]["train_images"]
    few = _cfg(tasks="1x4", max_trials=1, eval_every=4, target_checks=1, check_train_images=2, shots=2)
    assert run_forgetting(micro_model, micro_data.classes, micro_data, few).rows[0]["check"]["train_images"] == 0


def test_margin_forgetting_ramps_its_margin_over_the_budget(micro_model, micro_data):
    from gslora.methods.base import StepState
    method = get_method("gslora", forget_loss="margin", forget_margin=64.0, forget_margin_ramp=True)
    ctx = _ctx(micro_model, micro_data, _cfg(max_steps=100))
    work = method.prepare(micro_model, ctx)
    remain = next(iter(DataLoader(ctx.remain_data, batch_size=8)))
    forget = next(iter(DataLoader(ctx.forget_data, batch_size=8)))
    x_f, y_f = forget
    own = work.head(work.embed(x_f)).float()
    gap = (own.gather(1, y_f[:, None]).squeeze(1) - own.scatter(1, y_f[:, None], float("-inf")).amax(1)).detach()

    def forget_term(step):
        _, logs = method.loss(work, remain, forget, StepState(epoch=0, step=step, total_steps=100, epochs=1, lr=1e-3))
        return logs["forget"]

    for step in (0, 49, 99):  # the margin at step t is 64 (t + 1) / 100
        assert forget_term(step) == pytest.approx(float(torch.relu(gap + 64.0 * (step + 1) / 100).mean()), rel=1e-4)
    method.finish(work, ctx)
    assert resolve(RunConfig(tasks="4x10")).method_args == {}  # the margin loss is the packaged continual default
    assert resolve(RunConfig(tasks="1x10")).method_args["forget_loss"] == "ce"  # the paper's single-step values


def test_periodic_check_scores_only_forgotten_classes_with_the_full_sets_numbers(micro_model, micro_data):
    from torch.utils.data import ConcatDataset

    from gslora.evaluate import class_counts
    from gslora.forget import _subset_of_classes

    nc = len(micro_data.classes)
    extra = list(range(0, len(micro_data.train), 3))
    full = ConcatDataset([micro_data.val, Subset(micro_data.train, extra)])
    keep = {0, 2}
    for check_set, dataset in ((full, full), ("val", micro_data.val)):
        part = _subset_of_classes(micro_data, check_set, keep)
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
        assert sorted(part.indices) == [i for i, t in enumerate(labels) if t in keep]
        c_all, t_all = class_counts(micro_model, dataset, nc)
        c_part, t_part = class_counts(micro_model, part, nc)
        for c in range(nc):
            assert (int(c_part[c]), int(t_part[c])) == ((int(c_all[c]), int(t_all[c])) if c in keep else (0, 0))


def test_periodic_check_scores_earlier_forgotten_classes_only_for_an_acc_o_target():
    from gslora.data.plan import Task
    from gslora.forget import checked_classes

    task = Task(index=2, forget=(3, 4), remain=(5, 6), old=(0, 1))
    assert checked_classes(task, parse_target("acc_f<=2,acc_r_drop<=2")) == {"acc_f": [3, 4]}
    assert checked_classes(task, parse_target("acc_f<=2,acc_o<=2")) == {"acc_f": [3, 4], "acc_o": [0, 1]}
    assert checked_classes(task, parse_target("acc_o<=5")) == {"acc_o": [0, 1]}


def test_min_forget_sizes_the_forget_subset_apart_from_the_replay(micro_model, micro_data):
    cfg = _cfg(tasks="1x2", replay_ratio=0.01, min_replay=3, min_forget=1, max_trials=1)
    row = run_forgetting(micro_model, micro_data.classes, micro_data, cfg).rows[0]
    assert row["forget_images"] == 2 and row["replay_images"] == 3 * row["n_remain"]
    assert RunConfig(min_replay=3).forget_minimum == 3 and RunConfig(min_replay=3, min_forget=1).forget_minimum == 1


def test_the_margin_ramps_over_the_whole_budget_through_the_checks(micro_model, micro_data):
    """The forgetting margin grows with the step, whatever the periodic checks say, until training stops."""
    method = get_method("gslora")
    ctx = _ctx(micro_model, micro_data, _cfg(max_steps=40, eval_every=5, target_checks=4))
    work = method.prepare(micro_model, ctx)
    margins, calls = [], []
    step = method.train_step

    def recording_step(model, remain, forget, optimizer, state):
        margins.append(method._margin(state))
        return step(model, remain, forget, optimizer, state)

    method.train_step = recording_step

    def check(model):
        calls.append(1)
        return len(calls) in (2, 4, 5, 6, 7), {}  # met at step 10, missed at 15, met from 20 on (4 in a row at 35)

    summary = train_task(work, method, ctx, check=check)
    assert summary["steps"] == 35 and summary["stopped_early"]
    assert margins == pytest.approx([method.args.forget_margin * (s + 1) / 40 for s in range(35)])


def test_the_policy_decides_stop_or_hold_and_another_policy_changes_the_trials(micro_model, micro_data):
    """One object owns targets, stopping, trials and the choice: the default from the config, and a subclass (as the
    benchmarks' experiments are) changes the run without touching the runner or the engine."""
    from types import SimpleNamespace

    from gslora.policy import TargetPolicy

    policy = TargetPolicy.from_config(_cfg(target="acc_f<=2,acc_r_drop<=2", target_checks=2, max_trials=3))
    assert policy.forgetting == {"acc_f": 2.0}
    met, missed = SimpleNamespace(met=True), SimpleNamespace(met=False)
    assert policy.decide([met]) == "hold" and policy.decide([missed, met, met]) == "stop"
    assert policy.decide([met, missed]) == "hold"

    class OneTrialAtHalfLr(TargetPolicy):
        def next_trial(self, trials, method=None):
            return None if trials else (0.5, 1.0)

    cfg = _cfg(tasks="1x2", target="acc_f<=-1", max_trials=3, eval_every=4, target_checks=1)
    row = run_forgetting(micro_model, micro_data.classes, micro_data, cfg,
                         policy=OneTrialAtHalfLr.from_config(cfg)).rows[0]
    assert [t["lr_scale"] for t in row["trials"]] == [0.5]
    default = run_forgetting(micro_model, micro_data.classes, micro_data, cfg).rows[0]
    assert [t["lr_scale"] for t in default["trials"]] == [1.0, 2.0, 4.0]  # never met: the lr doubles each time
