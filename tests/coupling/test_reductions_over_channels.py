"""Reductions over channels, decided per path (:mod:`graphprune.coupling.rules.zeros`).

A sum or a norm across channels is exact under pruning when the removed channels are zero
in the masked original, which holds when every op from their producers keeps zero at zero.
Then the channels are pruned, and the shrunk model matches the masked original; a mean is
pruned and reported inexact; any other path, and a max, pins them.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune

from ..helpers import shrinks_exactly


class L2Normalised(nn.Module):
    """SSD's L2Norm and its spellings, which Torch-Pruning's test models use (``x / x.pow(2).sum(1).sqrt()``)."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.conv, self.bn, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        if self.form == "normalize":
            return self.head(F.normalize(y, dim=1))
        if self.form == "pow":
            n = y.pow(2).sum(1, keepdim=True).sqrt()
        elif self.form == "norm":
            n = y.norm(dim=1, keepdim=True)
        else:
            n = torch.linalg.vector_norm(y, 2, dim=1, keepdim=True)
        return self.head(y / (n + 1e-6))


@pytest.mark.parametrize("form", ["pow", "norm", "vector_norm", "normalize"])
@pytest.mark.parametrize("capture", ["fx", "export"])
def test_a_norm_over_channels_that_are_zero_where_removed_is_pruned_exactly(form, capture):
    plan, shrunk = shrinks_exactly(L2Normalised(form), torch.randn(2, 3, 6, 6), capture=capture)
    assert not plan.inexact
    assert shrunk.conv.weight.shape[0] == 8 and shrunk.head.weight.shape == (4, 8, 1, 1)


# Ops between the producer and the sum that keep zero at zero: the sum is the same without the removed channels.
KEEP_ZERO = {
    "relu, gelu": lambda y, z: F.gelu(F.relu(y)),
    "max pool, upsample": lambda y, z: F.interpolate(F.max_pool2d(y, 2), scale_factor=2.0),
    "product with any tensor": lambda y, z: y * torch.sigmoid(z),
    "product with a per-channel parameter": lambda y, z: y * z.mean((0, 2, 3), keepdim=True),
    "sum of zero paths": lambda y, z: F.relu(y) + y * 2,
    "clamp across zero": lambda y, z: y.clamp(-0.5, 0.5),
    "power": lambda y, z: y ** 3,
    "divided by a value without channels": lambda y, z: y / (z.sum(1, keepdim=True).abs() + 1),
    "zero padding": lambda y, z: F.pad(y, (1, 1, 1, 1))[..., 1:-1, 1:-1],
}
# Ops that do not: zero where removed in, non-zero out, so a sum over them counts the removed channels.
MAKE_NON_ZERO = {
    "sigmoid": lambda y, z: torch.sigmoid(y),
    "an added constant": lambda y, z: y + 1,
    "a clamp above zero": lambda y, z: y.clamp(min=1e-3),
    "exp": lambda y, z: torch.exp(y),
    "a sum with a tensor not zero there": lambda y, z: y + torch.sigmoid(z),
    "a division by the channels": lambda y, z: y / (y.abs() + 1) + 1 / (y.abs() + 1),
    "a padding with a value": lambda y, z: F.pad(y, (1, 1, 1, 1), value=0.5)[..., 1:-1, 1:-1],
}


class SummedOverChannels(nn.Module):
    """A gate from a sum over ``path(conv(x))``'s channels, multiplying the same features."""

    def __init__(self, path, reduce: str = "sum"):
        super().__init__()
        self.path, self.reduce = path, reduce
        self.conv, self.side, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y, z = self.conv(x), self.side(x)
        gate = getattr(self.path(y, z), self.reduce)(1, keepdim=True)
        return self.head(y) * torch.sigmoid(gate)


def _conv_group(model, x, capture="fx"):
    coupling = graphprune.couple(model, example_inputs=x, scope=graphprune.Scope(capture=capture))
    (group,) = [g for g in coupling.groups if {"conv", "conv_bias"} & set(g.sources)]  # fx, export
    return group


@pytest.mark.parametrize("path", KEEP_ZERO.values(), ids=KEEP_ZERO.keys())
@pytest.mark.parametrize("capture", ["fx", "export"])
def test_a_sum_over_a_path_that_keeps_zero_is_exact(path, capture):
    x = torch.randn(2, 3, 6, 6)
    plan, shrunk = shrinks_exactly(SummedOverChannels(path), x, capture=capture)
    assert not plan.inexact
    assert _conv_group(SummedOverChannels(path), x, capture).num_prunable == 8


@pytest.mark.parametrize("path", MAKE_NON_ZERO.values(), ids=MAKE_NON_ZERO.keys())
@pytest.mark.parametrize("capture", ["fx", "export"])
def test_a_sum_over_a_path_that_makes_zero_non_zero_pins_the_channels(path, capture):
    x = torch.randn(2, 3, 6, 6)
    group = _conv_group(SummedOverChannels(path), x, capture)
    assert group.pinned.all() and not group.inexact


def test_a_max_over_channels_pins_them_even_where_they_are_zero():
    # Zeros removed from a max over values that may all be negative change it.
    assert _conv_group(SummedOverChannels(KEEP_ZERO["relu, gelu"], "amax"), torch.randn(2, 3, 6, 6)).pinned.all()


@pytest.mark.parametrize("reduce", ["mean", "var", "std"])
def test_a_mean_over_channels_is_pruned_and_reported_inexact(reduce):
    model, x = SummedOverChannels(KEEP_ZERO["relu, gelu"], reduce).eval(), torch.randn(2, 3, 6, 6)
    with pytest.warns(graphprune.InexactWarning, match="counts them"):
        plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert any("counts them" in reason for reason in plan.inexact)
    shrunk = graphprune.apply(model, plan)
    assert shrunk.conv.out_channels == 4 and shrunk(x).shape == model(x).shape
    exact = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=x)
    assert not exact.inexact
    small = graphprune.apply(model, exact)
    assert small.conv.out_channels == 8 and graphprune.verify(model, exact, small, x) <= 1e-5


class ScaledL2Norm(nn.Module):
    """SSD's L2Norm as detection code writes it: a learned per-channel scale broadcast with ``expand_as``."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)
        self.weight = nn.Parameter(torch.rand(16) + 10.0)

    def forward(self, x):
        y = F.relu(self.conv(x))
        norm = y.pow(2).sum(1, keepdim=True).sqrt().clamp(min=1e-10)
        return self.head(self.weight[None, :, None, None].expand_as(y) * y / norm)


class EmbeddingNet(nn.Module):
    """A metric-learning head: a linear embedding normalised to unit length, then a classifier."""

    def __init__(self):
        super().__init__()
        self.embed, self.classify = nn.Linear(12, 16), nn.Linear(16, 5)

    def forward(self, x):
        e = self.embed(x)
        return self.classify(F.relu(torch.div(e, e.pow(2).sum(1, keepdim=True).sqrt())))


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize("make,x", [(ScaledL2Norm, (2, 3, 6, 6)), (EmbeddingNet, (4, 12))], ids=["ssd", "embedding"])
def test_l2_normalised_features_as_models_write_them_shrink_exactly(make, x, capture):
    plan, shrunk = shrinks_exactly(make(), torch.randn(*x), capture=capture)
    assert not plan.inexact
    widths = [p.shape[0] for n, p in shrunk.named_parameters() if n in ("conv.weight", "embed.weight", "weight")]
    assert widths and all(w == 8 for w in widths)
