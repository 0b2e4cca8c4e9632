"""Channel-mixing norms: LayerNorm (approximate, and said so) and GroupNorm (whole groups, exact)."""

import warnings

import pytest
import torch
from torch import nn
from torchvision.models.convnext import LayerNorm2d

import graphprune
from graphprune.coupling import Role
from graphprune.planning import Plan

from ..helpers import fingerprint


def _groups(model, x):
    coupling = graphprune.couple(model, example_inputs=x)
    return {tuple(g.sources): g for g in coupling.groups}


class PreNormBlock(nn.Module):
    """A transformer-style block: a residual stream under a LayerNorm, and an MLP hidden width."""

    def __init__(self, affine=True):
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.ln = nn.LayerNorm(8, elementwise_affine=affine)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)
        self.ln_f = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.fc2(nn.functional.gelu(self.fc1(self.ln(x))))
        return self.head(self.ln_f(x))


def test_layer_norm_channels_are_prunable_but_marked_inexact():
    groups = _groups(PreNormBlock(), torch.randn(2, 4, 5))
    assert set(groups) == {("embed", "fc2"), ("fc1",), ("head",)}
    stream, hidden = groups[("embed", "fc2")], groups[("fc1",)]
    assert stream.prunable and not stream.pinned.any()
    assert stream.inexact == (  # a coupling is read-only: its groups hold tuples
        "LayerNorm normalises over removed channels at ln",
        "LayerNorm normalises over removed channels at ln_f",
    )
    assert {(m.use.tensor, m.use.role) for m in stream.members if m.use.tensor.startswith("ln")} == {
        ("ln.weight", Role.NORM), ("ln.bias", Role.BIAS), ("ln_f.weight", Role.NORM), ("ln_f.bias", Role.BIAS),
    }
    assert hidden.inexact == ()


def test_layer_norm_plan_is_approximate_and_says_why():
    torch.manual_seed(0)
    model, x = PreNormBlock(), torch.randn(2, 4, 5)
    before = fingerprint(model)
    with pytest.warns(graphprune.InexactWarning, match="approximate: 2 normalisation"):
        plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert not plan.exact and len(plan.inexact) == 2
    assert "not exact: LayerNorm normalises over removed channels at ln" in plan.summary()
    assert Plan.from_json(plan.to_json()).inexact == plan.inexact
    shrunk = graphprune.apply(model, plan)
    assert shrunk.ln.normalized_shape == (4,) and shrunk.ln_f.weight.shape == (4,)
    assert shrunk(x).shape == (2, 4, 3)
    verdict = graphprune.verdict(model, plan, shrunk, x)
    assert not verdict.exact and str(verdict).startswith("not exact: LayerNorm")
    # A different mean and variance: far above round-off, which is why it is reported.
    assert verdict.difference > 1e-3
    assert fingerprint(model) == before


def test_exact_only_keeps_layer_norm_groups_and_prunes_the_rest_exactly():
    torch.manual_seed(0)
    model, x = PreNormBlock(), torch.randn(2, 4, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", graphprune.InexactWarning)
        plan = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=x)
    assert plan.exact and plan.inexact == []
    removed = {tuple(g.sources): len(g.removed) for g in plan.groups}
    assert removed == {("embed", "fc2"): 0, ("fc1",): 8, ("head",): 0}
    shrunk = graphprune.apply(model, plan)
    assert shrunk.fc1.out_features == 8 and shrunk.ln.normalized_shape == (8,)
    verdict = graphprune.verdict(model, plan, shrunk, x)
    assert verdict.exact and verdict.difference < 1e-5


def test_layer_norm_without_affine_parameters_keeps_its_channels():
    groups = _groups(PreNormBlock(affine=False), torch.randn(2, 4, 5))
    assert groups[("embed", "fc2")].pinned.all()


class ConvNeXtBlock(nn.Module):
    """torchvision's LayerNorm2d (permute, F.layer_norm, permute) and a (C,1,1) layer scale via get_attr."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = LayerNorm2d(8)
        self.pw1 = nn.Conv2d(8, 16, 1)
        self.pw2 = nn.Conv2d(16, 8, 1)
        self.layer_scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.pw2(nn.functional.gelu(self.pw1(self.norm(self.dw(x)))))
        return self.head(x + self.layer_scale * y)


def test_layer_norm_2d_through_permutes_with_layer_scale():
    torch.manual_seed(0)
    model, x = ConvNeXtBlock(), torch.randn(2, 3, 8, 8)
    groups = _groups(model, x)
    stream = next(g for sources, g in groups.items() if "stem" in sources)
    assert any("layer_norm" in reason for reason in stream.inexact)
    assert {(m.use.tensor, m.use.role) for m in stream.members} >= {
        ("norm.weight", Role.DIRECT), ("norm.bias", Role.DIRECT), ("layer_scale", Role.DIRECT),
        ("dw.weight", Role.PRODUCER), ("pw1.weight", Role.CONSUMER), ("head.weight", Role.CONSUMER),
    }
    with pytest.warns(graphprune.InexactWarning):
        plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert [(e.old, e.new) for e in plan.graph_edits] == [(8, 4)]  # the normalized_shape constant
    shrunk = graphprune.apply(model, plan)
    assert shrunk.layer_scale.shape == (4, 1, 1) and shrunk.pw1.in_channels == 4
    assert shrunk(x).shape == (2, 2, 4, 4)
    assert not graphprune.verdict(model, plan, shrunk, x).exact

    exact = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=x)
    shrunk = graphprune.apply(model, exact)
    assert shrunk.pw1.out_channels == 8 and shrunk.layer_scale.shape == (8, 1, 1)
    assert graphprune.verify(model, exact, shrunk, x) < 1e-5


class GroupNormNet(nn.Module):
    def __init__(self, functional=False):
        super().__init__()
        self.functional = functional
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.conv(x)
        if self.functional:
            x = nn.functional.group_norm(x, 4, self.gn.weight, self.gn.bias)
        else:
            x = self.gn(x)
        return self.head(torch.relu(x))


def _randomise(model):
    with torch.no_grad():
        model.gn.weight.uniform_(0.5, 1.5)
        model.gn.bias.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("functional", [False, True])
def test_group_norm_prunes_whole_groups_exactly(functional):
    torch.manual_seed(0)
    model, x = _randomise(GroupNormNet(functional)), torch.randn(2, 3, 6, 6)
    group = next(g for sources, g in _groups(model, x).items() if "conv" in sources)
    assert group.size == 4 and group.inexact == ()  # four norm groups of two channels: one channel each
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    kept = [c for c in range(8) if c // 2 in plan.groups[0].kept]
    assert plan.tensors["conv.weight"].keep[0] == kept and plan.exact
    shrunk = graphprune.apply(model, plan)
    if functional:
        assert [(e.old, e.new) for e in plan.graph_edits] == [(4, 2)]
    else:
        assert (shrunk.gn.num_groups, shrunk.gn.num_channels) == (2, 4)
    assert graphprune.verify(model, plan, shrunk, x) < 1e-5


def test_group_norm_with_one_group_keeps_its_channels():
    model = GroupNormNet()
    model.gn = nn.GroupNorm(1, 8)
    group = _groups(model, torch.randn(1, 3, 4, 4))[("conv",)]
    assert group.size == 1 and graphprune.plan(model, 0.5, example_inputs=torch.randn(1, 3, 4, 4)).removed_channels == 0
