"""Split sizes read from module attributes, or written as literals over a shared module: ``apply`` accepts its
own plan (issue 17's self-rejected plans) and the rewrite is exact.

The rewrite must see the dense sizes the plan recorded: the model is captured before any module is resized,
so a forward that reads ``self.block1.out_channels`` recorded the old value, which the plan's edit rewrites.
"""

import pytest
import torch
from torch import nn

import graphprune

from ..helpers import fingerprint, spread_batchnorm


class SplitByAttributes(nn.Module):
    """``torch.split(y, (first, second), 1)`` with the sizes read from the blocks that produce them."""

    def __init__(self):
        super().__init__()
        self.block1 = nn.Conv2d(3, 6, 3, padding=1)
        self.block2 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.left = nn.Conv2d(6, 5, 1)
        self.right = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        y = self.bn(torch.cat([self.block1(x), self.block2(x)], 1))
        first, second = self.block1.out_channels, self.block2.out_channels
        a, b = torch.split(y, (first, second), 1)
        return self.left(a) + self.right(b)


class SharedSplit(nn.Module):
    """``torch.split(y, [16, 16, 8], 1)`` with literal sizes; every piece goes through one shared module."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 40, 3, padding=1)
        self.bn = nn.BatchNorm2d(40)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(40, 4, 1)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        a, b, c = torch.split(y, [16, 16, 8], 1)
        a = torch.cat([self.shared(a[:, :8]), a[:, 8:]], 1)
        b = torch.cat([self.shared(b[:, :8]), b[:, 8:]], 1)
        return self.head(torch.cat([a, b, self.shared(c)], 1))


@pytest.mark.parametrize("factory", [SplitByAttributes, SharedSplit])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.75])
def test_apply_accepts_its_own_plan_for_split_sizes_and_is_exact(factory, ratio):
    torch.manual_seed(0)
    model = spread_batchnorm(factory()).eval()
    x = torch.randn(2, 3, 8, 8)
    before = fingerprint(model)
    plan = graphprune.plan(model, ratio, example_inputs=x)
    assert plan.capture == "fx" and plan.graph_edits and any(g.removed for g in plan.groups)
    shrunk = graphprune.apply(model, plan)
    again = graphprune.apply(model, graphprune.Plan.from_json(plan.to_json()))  # replayed, as load does
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-5
    assert graphprune.verify(model, plan, again, x) <= 1e-5
    assert graphprune.count_params(shrunk) < graphprune.count_params(model)
    assert fingerprint(model) == before
