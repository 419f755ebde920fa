"""Loss terms against hand-computed values, and the group lasso's gradient."""

import math

import torch

from gslora.losses import bounded_forget_loss, group_lasso, margin_forget_loss, prototype_kl, prototype_loss


def test_bounded_forget_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    ce1 = -math.log(1 / (1 + math.e))
    ce = (ce0 + ce1) / 2
    assert math.isclose(bounded_forget_loss(logits, labels, bound=5.0).item(), 5.0 - ce, rel_tol=1e-6)
    # past the bound the hinge is flat: zero loss and zero gradient
    x = logits.clone().requires_grad_(True)
    loss = bounded_forget_loss(x, labels, bound=0.5 * ce)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0


def test_bounded_loss_gradient_raises_forget_ce():
    x = torch.tensor([[3.0, 0.0, 0.0]], requires_grad=True)
    bounded_forget_loss(x, torch.tensor([0]), bound=100.0).backward()
    # descending the loss lowers the true-class logit and raises the others
    assert x.grad[0, 0] > 0 and (x.grad[0, 1:] < 0).all()


def test_group_lasso_value_and_gradient():
    a = torch.tensor([3.0, 0.0], requires_grad=True)
    b = torch.tensor([[4.0]], requires_grad=True)
    c = torch.tensor([0.0, 6.0, 8.0], requires_grad=True)
    value = group_lasso([[a, b], [c]])
    assert math.isclose(value.item(), 5.0 + 10.0, rel_tol=1e-6)  # sqrt(9 + 16) + sqrt(36 + 64)
    value.backward()
    # d/dP sqrt(sum ||P||^2) = P / group norm
    assert torch.allclose(a.grad, torch.tensor([3.0, 0.0]) / 5.0)
    assert torch.allclose(b.grad, torch.tensor([[4.0]]) / 5.0)
    assert torch.allclose(c.grad, torch.tensor([0.0, 6.0, 8.0]) / 10.0)


def test_prototype_kl_is_zero_for_identical_and_positive_otherwise():
    p = torch.tensor([[1.0, 2.0, 3.0]])
    assert prototype_kl(p.clone(), p).abs().item() < 1e-6
    q = torch.tensor([[3.0, 2.0, 1.0]])
    sp, sq = torch.softmax(p, -1), torch.softmax(q, -1)
    expected = (sp * (sp.log() - sq.log())).sum().item()
    assert math.isclose(prototype_kl(q, p).item(), expected, rel_tol=1e-5)
    loss = prototype_loss(q, p, q, p, w_forget=0.5, w_remain=2.0, bound=10.0)
    assert math.isclose(loss.item(), 0.5 * (10.0 - expected) + 2.0 * expected, rel_tol=1e-5)


def test_old_forgotten_classes_get_their_own_hinge():
    from gslora.methods.gslora import GSLoRA

    method = GSLoRA(forget_loss="ce")  # the paper's bounded CE (the margin hinge is per sample anyway)
    logits = torch.tensor([[-5.0, 5.0, 0.0], [4.0, 0.0, 0.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    bound = method.args.bound
    method.old_classes = torch.tensor([], dtype=torch.long)
    assert torch.isclose(method._forget_term(logits, y), bounded_forget_loss(logits, y, bound))
    method.old_classes = torch.tensor([0])  # class 0 was forgotten in an earlier task
    expected = bounded_forget_loss(logits[:1], y[:1], bound) + bounded_forget_loss(logits[1:], y[1:], bound)
    assert torch.isclose(method._forget_term(logits, y), expected)


def test_margin_forget_loss_is_a_per_sample_hinge_on_the_logit_gap():
    logits = torch.tensor([[5.0, 1.0, 2.0], [0.0, 4.0, 1.0]])
    labels = torch.tensor([0, 0])
    # sample 0: own 5, best other 2 -> 5 - 2 + 1 = 4; sample 1: own 0, best other 4 -> max(0, 0 - 4 + 1) = 0
    assert margin_forget_loss(logits, labels, margin=1.0).item() == 2.0
    assert margin_forget_loss(logits, labels, margin=0.0).item() == 1.5
    # a sample past the margin gets no gradient; only the own class is pushed down, the other logits are left alone
    x = logits.clone().requires_grad_(True)
    margin_forget_loss(x, labels, margin=1.0).backward()
    assert x.grad[0, 0] > 0 and torch.count_nonzero(x.grad[0, 1:]) == 0 and torch.count_nonzero(x.grad[1]) == 0
