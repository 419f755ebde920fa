"""The baselines' loss terms have the magnitude of their published definitions (project issue 9).

Each test recomputes a term independently from the same tensors (plain autograd loops, no library helper for the term
under test) and compares it with what the method computes at its packaged defaults.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from gslora import RunConfig
from gslora.data.plan import make_plan, select_per_class
from gslora.methods import METHODS, TaskContext, get_method, method_defaults
from gslora.methods.base import StepState
from gslora.methods.common import batches_of, parameter_importance, random_wrong_labels
from gslora.models import create_model

RTOL = 1e-4


def _context(model, data, name):
    cfg = RunConfig(**{**method_defaults(name).get("run", {}), "tasks": "1x4", "epochs": 2, "batch_size": 16,
                       "replay_ratio": 0.2, "device": "cpu", "method": name, "save_adapters": False})
    plan = make_plan(data.classes, cfg.tasks, seed=cfg.seed)
    task = plan.tasks[0]
    remain = select_per_class(data.train.targets, task.remain, cfg.seed, cfg.replay_ratio)
    forget = select_per_class(data.train.targets, task.forget, cfg.seed, cfg.replay_ratio)
    original = copy.deepcopy(model).eval().requires_grad_(False)
    return TaskContext(task=task, position=0, num_tasks=1, num_classes=len(data.classes), config=cfg,
                       device=torch.device("cpu"), remain_data=Subset(data.train, remain),
                       forget_data=Subset(data.train, forget), original_model=original)


def _batch(dataset, n=16, start=0):
    xs, ys = zip(*[dataset[i] for i in range(start, min(start + n, len(dataset)))])
    return torch.stack(xs), torch.as_tensor(ys)


def _perturb(params, scale=2e-2, seed=0):
    """Move the student off the teacher / anchor so that distances and penalties are non-zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=gen))


def _per_sample_scores(model, dataset, names, kind):
    """Independent reference: a Python loop of one backward pass per sample (eval mode)."""
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    model.eval()
    total = [torch.zeros_like(p) for p in params]
    n = 0
    for i in range(len(dataset)):
        x, y = dataset[i]
        x, y = x.unsqueeze(0), torch.as_tensor([y])
        if kind == "fisher":
            obj = F.cross_entropy(model(x, y), y)
        else:
            logits = model(x)
            obj = (logits ** 2).sum() / logits.shape[-1]  # ‖logits‖² / C
        grads = torch.autograd.grad(obj, params)
        for t, g in zip(total, grads):
            t += g ** 2 if kind == "fisher" else g.abs()
        n += 1
    for p, f in zip(params, flags):
        p.requires_grad_(f)
    return {name: t / n for name, t in zip(names, total)}


def _close(a, b, rtol=RTOL):
    a, b = (v.detach() if isinstance(v, torch.Tensor) else v for v in (a, b))
    return float(a) == pytest.approx(float(b), rel=rtol)


# ---------------------------------------------------------------------------------------------------------------------
# Importances


@pytest.mark.parametrize("kind", ["fisher", "mas"])
def test_ewc_and_mas_importance_is_the_per_sample_definition(kind, micro_model, micro_data):
    name = {"fisher": "ewc", "mas": "mas"}[kind]
    ctx = _context(micro_model, micro_data, name)
    method = get_method(name)
    model = method.prepare(micro_model, ctx)
    omega, _ = method.anchors[0]
    names = list(omega)
    expected = _per_sample_scores(copy.deepcopy(ctx.original_model), ctx.remain_data, names, kind)
    for n in names:
        torch.testing.assert_close(omega[n], expected[n], rtol=RTOL, atol=1e-12)
    total = sum(float(o.sum()) for o in omega.values())
    # The batch-level score (the square of a batch-mean gradient) is much smaller for the Fisher: what the old code did.
    batch = parameter_importance(model, batches_of(ctx.remain_data, 32), kind, names)
    if kind == "fisher":
        assert total > 3 * sum(float(b.sum()) for b in batch.values())


def test_mas_objective_is_the_mean_over_classes_not_the_sum():
    class TwoParams(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.w2 = nn.Parameter(torch.tensor(0.5)), nn.Parameter(torch.tensor(-1.0))

        def forward(self, x, labels=None):
            return torch.stack([self.w1 * x[:, 0], self.w2 * x[:, 1]], dim=-1)

    model = TwoParams()
    xs = [(torch.tensor([[1.0, 2.0]]), torch.tensor([0])), (torch.tensor([[3.0, -1.0]]), torch.tensor([1]))]
    mas = parameter_importance(model, xs, "mas", per_sample=True)
    # d/dw1 of (z0² + z1²)/2 = w1·x0², averaged over the two samples; C = 2.
    assert mas["w1"].item() == pytest.approx((0.5 * 1.0 + 0.5 * 9.0) / 2, rel=1e-6)
    assert mas["w2"].item() == pytest.approx((1.0 * 4.0 + 1.0 * 1.0) / 2, rel=1e-6)


class NoVmap(nn.Module):
    """A model torch.func.vmap cannot trace (a data-dependent Python branch): the per-sample pass must fall back."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x, labels=None):
        if float(x.sum()) > 1e9:  # .item() on a batched tensor fails under vmap
            return self.lin(x) * 0
        return self.lin(x)


@pytest.mark.parametrize("kind", ["fisher", "mas"])
def test_per_sample_importance_falls_back_to_a_loop_when_vmap_cannot_trace(kind):
    torch.manual_seed(0)
    model = NoVmap()
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    data = list(zip(x, y.tolist()))
    got = parameter_importance(model, [(x[:6], y[:6]), (x[6:], y[6:])], kind, per_sample=True)
    expected = _per_sample_scores(model, data, [n for n, _ in model.named_parameters()], kind)
    for n in got:
        torch.testing.assert_close(got[n], expected[n], rtol=RTOL, atol=1e-12)


def test_per_sample_importance_scores_a_dropout_model_in_eval_mode(micro_data):
    model = create_model("vit_face_micro", micro_data.num_classes, seed=0, proj_drop_rate=0.1, attn_drop_rate=0.1)
    model.train()
    data = Subset(micro_data.train, list(range(12)))
    names = [n for n, _ in model.named_parameters() if n.startswith("backbone.blocks.0.")]
    got = parameter_importance(model, batches_of(data, 5), "fisher", names, per_sample=True)
    assert model.training  # mode restored
    expected = _per_sample_scores(model, data, names, "fisher")
    for n in names:
        torch.testing.assert_close(got[n], expected[n], rtol=RTOL, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Every loss at its packaged defaults


def _relabelled(method, y_f):
    """The wrong labels the method's next relabel() call draws (same generator state)."""
    gen = torch.Generator()
    gen.set_state(method.generator.get_state())
    return random_wrong_labels(y_f, method.remain_classes, gen)


@pytest.mark.parametrize("name", ["ewc", "mas"])
def test_regulariser_loss_at_packaged_defaults(name, micro_model, micro_data):
    ctx = _context(micro_model, micro_data, name)
    method = get_method(name)
    assert method.args.lam == {"ewc": 10.0, "mas": 0.005}[name]
    model = method.prepare(micro_model, ctx).eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta_star = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    omega = _per_sample_scores(copy.deepcopy(ctx.original_model), ctx.remain_data, names,
                               "fisher" if name == "ewc" else "mas")
    _perturb(method.trainable_parameters(model))
    (x_r, y_r), (x_f, y_f) = _batch(ctx.remain_data), _batch(ctx.forget_data)
    wrong = _relabelled(method, y_f)
    loss, logs = method.loss(model, (x_r, y_r), (x_f, y_f), StepState(epoch=0, step=0, total_steps=1, epochs=1))
    with torch.no_grad():
        named = dict(model.named_parameters())
        penalty = sum(float((omega[n] * (named[n] - theta_star[n]) ** 2).sum()) for n in names)
        ce = F.cross_entropy(model(torch.cat([x_r, x_f]), torch.cat([y_r, wrong])), torch.cat([y_r, wrong]))
    assert penalty > 0
    assert _close(logs["penalty"], penalty)
    assert _close(loss, float(ce) + method.args.lam * penalty)


@pytest.mark.parametrize("name", ["der", "derpp"])
def test_der_distillation_at_packaged_defaults(name, micro_model, micro_data):
    ctx = _context(micro_model, micro_data, name)
    method = get_method(name)
    assert method.args.lam == {"der": 0.01, "derpp": 0.005}[name]
    model = method.prepare(micro_model, ctx).eval()
    _perturb(method.trainable_parameters(model))
    (x_r, y_r), (x_f, y_f) = _batch(ctx.remain_data), _batch(ctx.forget_data)
    wrong = _relabelled(method, y_f)
    loss, logs = method.loss(model, (x_r, y_r), (x_f, y_f), StepState(epoch=0, step=0, total_steps=1, epochs=1))
    with torch.no_grad():
        # the GS-LoRA authors' DER term: torch.norm(outputs − teacher_outputs)², the whole (batch × classes) tensor
        dist = torch.norm(model(x_r) - ctx.original_model(x_r)) ** 2
        ce_f = F.cross_entropy(model(x_f, wrong), wrong)
        # with the margin (labels) on both sides the difference is the same: the margin cancels
        dist_margin = torch.norm(model(x_r, y_r) - ctx.original_model(x_r, y_r)) ** 2
    assert _close(dist, dist_margin, rtol=1e-3)
    assert _close(logs["logit_dist"], dist)
    if name == "der":
        assert _close(loss, float(ce_f) + 0.01 * float(dist))
    else:
        expected = float(ce_f) + 0.005 * float(dist) + 0.005 * logs["ce_replay"]
        assert _close(loss, expected)
    # a sum over the batch: twice the batch, twice the term
    double = method.logit_distance(model, torch.cat([x_r, x_r]))
    assert _close(double, 2 * float(dist))


def test_fdr_at_packaged_defaults(micro_model, micro_data):
    ctx = _context(micro_model, micro_data, "fdr")
    method = get_method("fdr")
    assert method.args.lam == 50.0
    model = method.prepare(micro_model, ctx).eval()
    _perturb(method.trainable_parameters(model))
    (x_r, y_r), (x_f, y_f) = _batch(ctx.remain_data), _batch(ctx.forget_data)
    wrong = _relabelled(method, y_f)
    loss, logs = method.loss(model, (x_r, y_r), (x_f, y_f), StepState(epoch=0, step=0, total_steps=1, epochs=1))
    with torch.no_grad():
        # the authors' FDR term: torch.norm(outputs − target_logits, 2, 1).mean()
        diff = model(x_r) - ctx.original_model(x_r)
        fdist = sum(float(torch.sqrt((d ** 2).sum())) for d in diff) / len(diff)
        ce_f = F.cross_entropy(model(x_f, wrong), wrong)
    assert _close(logs["fdist"], fdist)
    assert _close(loss, float(ce_f) + 50.0 * fdist)


def _hinton(student, teacher, t):
    p_t = F.softmax(teacher / t, dim=-1)
    return float((p_t * (p_t.log() - F.log_softmax(student / t, dim=-1))).sum(-1).mean() * t * t)


@pytest.mark.parametrize("name", ["scrub", "scrub-s"])
def test_scrub_steps_at_packaged_defaults(name, micro_model, micro_data):
    method = get_method(name)
    a = method.args
    # the public SCRUB code and the GS-LoRA authors' port: min step 0.99·CE + 0.001·KL, max step −KL, T = 2 (port)
    assert (a.gamma, a.alpha, a.forget_weight, a.temperature) == (0.99, 0.001, 1.0, 2.0)
    assert a.smoothing == (0.1 if name == "scrub-s" else 0.0)
    ctx = _context(micro_model, micro_data, name)
    model = method.prepare(micro_model, ctx).eval()
    params = method.trainable_parameters(model)
    _perturb(params)
    opt = torch.optim.SGD(params, lr=0.0)  # lr 0: the step leaves the weights where the hand computation saw them
    remain, forget = _batch(ctx.remain_data), _batch(ctx.forget_data)
    with torch.no_grad():
        teacher = ctx.original_model
        kl_f = _hinton(model(forget[0]), teacher(forget[0]), 2.0)
        ce_r = float(F.cross_entropy(model(*remain), remain[1]))
        kl_r = _hinton(model(remain[0]), teacher(remain[0]), 2.0)
    logs = method.train_step(model, remain, forget, opt, StepState(epoch=0, step=0, total_steps=2, epochs=2))
    assert kl_f > 0 and kl_r > 0
    assert _close(logs["max_kl_f"], kl_f)
    assert _close(logs["ce_r"], ce_r) and _close(logs["kl_r"], kl_r)
    expected = 0.99 * ce_r + 0.001 * kl_r + (0.1 * logs["swa_dist"] if name == "scrub-s" else 0.0)
    assert _close(logs["loss"], expected)


# ---------------------------------------------------------------------------------------------------------------------
# SSD: importances from the whole training set


class _Diag(nn.Module):
    """logits_k = w_k · x_k over 3 classes: SSD's Fisher importances can be computed by hand."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def forward(self, x, labels=None):
        return self.w * x


class _Listed(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = [(torch.tensor(x), y) for x, y in items]
        self.targets = [y for _, y in items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


# classes 0 (remaining), 1 (forgotten now), 2 (forgotten in an earlier task: no longer the model's data)
_TRAIN = [([1.0, 2.0, 0.5], 0), ([2.0, -1.0, 1.0], 0), ([0.5, 1.0, -2.0], 1), ([-1.0, 3.0, 1.0], 1),
          ([1.0, 1.0, 1.0], 2)]


def _hand_fisher(samples, w=(0.5, -1.0, 2.0)):
    """Mean over samples of (∂CE/∂w_k)² = ((p_k − [y = k])·x_k)² (SSD with importance batch size 1)."""
    import math

    total = [0.0, 0.0, 0.0]
    for x, y in samples:
        z = [wk * xk for wk, xk in zip(w, x)]
        e = [math.exp(v - max(z)) for v in z]
        p = [v / sum(e) for v in e]
        for k in range(3):
            total[k] += ((p[k] - (1.0 if y == k else 0.0)) * x[k]) ** 2
    return [t / len(samples) for t in total]


def _ssd_context(train, remain_idx, forget_idx, given=True):
    from gslora.data.plan import Task

    cfg = RunConfig(tasks="1x1", device="cpu", method="ssd", save_adapters=False)
    task = Task(index=2, forget=(1,), remain=(0,), old=(2,))
    return TaskContext(task=task, position=1, num_tasks=2, num_classes=3, config=cfg, device=torch.device("cpu"),
                       remain_data=Subset(train, remain_idx), forget_data=Subset(train, forget_idx),
                       train_data=train if given else None)


def test_ssd_global_importance_is_over_the_whole_training_set():
    train = _Listed(_TRAIN)
    ctx = _ssd_context(train, [0], [2])  # the replay subset is one image of class 0, the forget subset one of class 1
    method = get_method("ssd", importance_batch_size=1)
    model = method.prepare(_Diag(), ctx)
    imp_d, imp_f, info = method.importances(model, ctx)
    expected_d = _hand_fisher([(x, y) for x, y in _TRAIN if y in (0, 1)])  # every image of classes 0 and 1
    expected_f = _hand_fisher([_TRAIN[2]])
    assert imp_d["w"].tolist() == pytest.approx(expected_d, rel=1e-5)
    assert imp_f["w"].tolist() == pytest.approx(expected_f, rel=1e-5)
    assert imp_d["w"].tolist() != pytest.approx(_hand_fisher([_TRAIN[0]]), rel=1e-3)  # not the replay subset
    assert info["importance_images"] == 4 and "whole training split" in info["importance_data"]
    # and the dampening uses it: θ_k ← min(λ·[]_D / []_F, 1)·θ_k where []_F > α·[]_D
    alpha = 0.2  # selects w_1 only with []_D over the training set (w_0 and w_1 with the replay subset's)
    method = get_method("ssd", importance_batch_size=1, selection_weighting=alpha)
    model, info = method.finish(method.prepare(_Diag(), ctx), ctx)
    for k, w in enumerate((0.5, -1.0, 2.0)):
        d, f = expected_d[k], expected_f[k]
        want = w * min(d / f, 1.0) if f > alpha * d else w
        assert float(model.w[k]) == pytest.approx(want, rel=1e-5), k
    assert info["ssd_selected"] == sum(expected_f[k] > alpha * expected_d[k] for k in range(3)) > 0


def test_ssd_derives_the_training_split_from_the_subsets_and_says_when_it_has_none():
    train = _Listed(_TRAIN)
    expected_d = _hand_fisher([(x, y) for x, y in _TRAIN if y in (0, 1)])
    derived = _ssd_context(train, [0], [2], given=False)  # no train_data: the subsets' common dataset is the split
    method = get_method("ssd", importance_batch_size=1)
    imp_d, _, info = method.importances(method.prepare(_Diag(), derived), derived)
    assert imp_d["w"].tolist() == pytest.approx(expected_d, rel=1e-5)
    assert "parent of the replay / forget subsets" in info["importance_data"]
    # plain datasets (no common parent): the replay subset stands in, and method_info says so
    bare = _ssd_context(train, [0], [2], given=False)
    bare.remain_data, bare.forget_data = _Listed([_TRAIN[0]]), _Listed([_TRAIN[2]])
    imp_d, _, info = method.importances(method.prepare(_Diag(), bare), bare)
    assert imp_d["w"].tolist() == pytest.approx(_hand_fisher([_TRAIN[0]]), rel=1e-5)
    assert "replay subset" in info["importance_data"] and "no training split" in info["importance_data"]
    assert info["importance_images"] == 1


# ---------------------------------------------------------------------------------------------------------------------
# Run settings and names


def test_fine_tuning_baselines_decay_to_min_lr_1e_5():
    for name, cls in METHODS.items():
        run = method_defaults(name).get("run", {})
        if not getattr(cls, "trains", True) or name == "gslora":
            continue
        assert float(run.get("min_lr")) == 1e-5, name


def test_no_method_claims_to_be_lirf():
    assert "lirf" not in METHODS  # the stand-in is not LIRF (Ye et al. 2022)
    assert "uniform-kd" in METHODS
    doc = __import__(METHODS["uniform-kd"].__module__, fromlist=["_"]).__doc__
    assert "not** LIRF" in doc


def test_per_sample_importance_of_a_cosface_model_is_vectorised(micro_data):
    """The CosFace head's margin (applied when labels are given) traces under torch.func.vmap: EWC / MAS on gslora's
    own face models take the vectorised pass, not the per-sample loop."""
    from gslora.methods.common import _per_sample_grads_vmap

    model = create_model("vit_face_micro", micro_data.num_classes, seed=0).eval()
    assert type(model.head).__name__ == "CosFace"
    names = [n for n, _ in model.named_parameters() if n.startswith(("backbone.blocks.0.", "head."))]
    params = {n: p.detach() for n, p in model.named_parameters()}
    x, y = next(iter(batches_of(Subset(micro_data.train, list(range(6))), 6)))
    per = _per_sample_grads_vmap(model, params, x, y, "fisher")  # raised under vmap with F.one_hot
    expected = _per_sample_scores(model, Subset(micro_data.train, list(range(6))), names, "fisher")
    for n in names:
        torch.testing.assert_close(per[n].float().pow(2).sum(0) / 6, expected[n], rtol=RTOL, atol=1e-12)
