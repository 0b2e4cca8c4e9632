"""Sparsity regularisers over coupled channels: exact penalties, proximal steps, and prune-after-training."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune
from graphprune.rewrite import relative_difference

from examples.models import ResNet20


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


X = torch.randn(1, 3, 6, 6)


# The training tests are many tiny ops: extra threads only add contention on a shared CI machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def _randomised(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def test_group_lasso_is_the_sum_of_each_channels_l2_norm_over_every_slice():
    model = _randomised(ConvBN())
    reg = graphprune.GroupLasso(model, 0.3, example_inputs=X)
    c, bn, h = model.conv, model.bn, model.head
    per_channel = (c.weight.pow(2).sum((1, 2, 3)) + c.bias.pow(2) + bn.weight.pow(2) + bn.bias.pow(2)
                   + h.weight.pow(2).sum((0, 2, 3))).sqrt()
    penalty = reg(model)
    assert torch.allclose(penalty, 0.3 * per_channel.sum(), rtol=1e-6)
    penalty.backward()
    # d/dw ||w_c|| = w_c / ||w_c||: every slice of a channel is pulled towards zero together.
    assert torch.allclose(c.weight.grad, 0.3 * c.weight.detach() / per_channel.detach().view(-1, 1, 1, 1), rtol=1e-5)
    assert torch.allclose(h.weight.grad, 0.3 * h.weight.detach() / per_channel.detach().view(1, -1, 1, 1), rtol=1e-5)
    assert torch.allclose(reg.norms()[0], per_channel.detach(), rtol=1e-6)


def test_bn_scale_l1_penalises_and_soft_thresholds_only_the_norm_scales():
    model = _randomised(ConvBN())
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.5, -0.05, 0.2, -1.0]))
    reg = graphprune.BNScaleL1(model, 2.0, example_inputs=X, channels={0: [0, 1, 2]})
    assert torch.allclose(reg(model), torch.tensor(2.0 * 0.75))
    conv_before = model.conv.weight.detach().clone()
    reg.prox_step(lr=0.05)  # threshold 0.1
    assert torch.allclose(model.bn.weight, torch.tensor([0.4, 0.0, 0.1, -1.0]))  # channel 3 not selected
    assert torch.equal(model.conv.weight, conv_before)


def test_selection_is_checked():
    model = ConvBN()
    with pytest.raises(graphprune.InputError, match="not a prunable group"):
        graphprune.GroupLasso(model, 0.1, example_inputs=X, channels={1: [0]})  # the head's output is pinned
    with pytest.raises(graphprune.InputError, match="has 4 channels"):
        graphprune.GroupLasso(model, 0.1, example_inputs=X, channels={0: [4]})
    with pytest.raises(graphprune.InputError, match="non-negative"):
        graphprune.GroupLasso(model, -1.0, example_inputs=X)
    with pytest.raises(graphprune.InputError, match="no trainable norm"):
        graphprune.BNScaleL1(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)), 0.1, example_inputs=X)
    reg = graphprune.GroupLasso(model, 0.1, example_inputs=X)
    with pytest.raises(graphprune.InputError, match="another model"):
        reg(ConvBN())


def test_attach_needs_one_learning_rate():
    model = ConvBN()
    reg = graphprune.GroupLasso(model, 0.1, example_inputs=X)
    opt = torch.optim.SGD([{"params": [model.conv.weight], "lr": 0.1}, {"params": [model.head.weight], "lr": 0.2}])
    with pytest.raises(graphprune.InputError, match="learning rates"):
        reg.attach(opt)


def test_from_plan_rejects_a_plan_of_another_model():
    plan = graphprune.plan(ResNet20(widths=(4, 8, 16), blocks=1), 0.5, example_inputs=torch.randn(1, 1, 16, 16))
    with pytest.raises(graphprune.PlanError):
        graphprune.GroupLasso.from_plan(ConvBN(), plan, 0.1)


def _train(model, steps, *, reg=None, penalty=None):
    """Regress the outputs of a fixed random teacher on random inputs; reg adds a proximal step, penalty a loss term."""
    torch.manual_seed(0)
    teacher = ResNet20(widths=(4, 8, 16), blocks=1).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if reg is not None:
        reg.attach(opt)
    model.train()
    for _ in range(steps):
        x = torch.randn(16, 1, 16, 16)
        with torch.no_grad():
            target = teacher(x)
        loss = F.mse_loss(model(x), target)
        if penalty is not None:
            loss = loss + penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_proximal_group_lasso_empties_the_planned_channels_so_pruning_them_is_lossless():
    torch.manual_seed(0)
    model = ResNet20(widths=(4, 8, 16), blocks=1)
    x = torch.randn(8, 1, 16, 16)
    plan = graphprune.plan(model, 0.5, example_inputs=x[:1])
    reg = graphprune.GroupLasso.from_plan(model, plan, 0.5)
    selected = {g.id: g.removed for g in plan.groups if g.removed}
    assert len(selected) >= 4  # the stem/residual groups and each block's inner conv

    # Untrained, the planned channels matter: pruning them changes the outputs a lot.
    with torch.no_grad():
        assert relative_difference(model.eval()(x), graphprune.apply(model, plan)(x)) > 1e-2

    _train(model, 300, reg=reg)
    norms = reg.norms()
    for gid, removed in selected.items():
        kept = [c for c in range(len(norms[gid])) if c not in removed]
        assert norms[gid][removed].max() < 1e-6
        assert norms[gid][kept].min() > 1e-2  # only the selected channels were pushed to zero
    shrunk = graphprune.apply(model, plan)
    with torch.no_grad():
        assert relative_difference(model(x), shrunk(x)) < 1e-3
    assert graphprune.verify(model, plan, shrunk, x) < 1e-4


def test_group_lasso_as_a_loss_term_shrinks_whole_groups():
    torch.manual_seed(0)
    model = ResNet20(widths=(4, 8, 16), blocks=1)
    plan = graphprune.plan(model, 0.5, example_inputs=torch.randn(1, 1, 16, 16))
    reg = graphprune.GroupLasso.from_plan(model, plan, 0.05)
    start = reg.norms()
    _train(model, 300, penalty=reg)
    end = reg.norms()
    for g in plan.groups:
        if g.removed:
            assert (end[g.id][g.removed] < 0.1 * start[g.id][g.removed]).all()
