"""Hardware-aware widths: every kept width a multiple of round_to, groups consistent, rewrite exact."""

import pytest
import torch
import torchvision
from torch import nn

import graphprune
from graphprune import Budget, Hardware
from graphprune.planning.budget import resolve_round_to
from graphprune.planning.scope import allowed_kept


def _widths(model):
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out += [(name, "out", m.out_channels), (name, "in", m.in_channels)]
        elif isinstance(m, nn.Linear):
            out += [(name, "in", m.in_features)]
    return out


@pytest.mark.parametrize("factory,kwargs,round_to", [
    (torchvision.models.resnet18, {"ratio": 0.3}, 16),
    (torchvision.models.mobilenet_v2, {"ratio": 0.37}, 8),
    (torchvision.models.resnet18, {"macs": 0.55}, 8),
])
def test_every_width_is_a_multiple(factory, kwargs, round_to):
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(1, 3, 32, 32)
    plan = graphprune.plan(model, Budget(round_to=round_to, **kwargs), example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    dense = {(n, s): w for n, s, w in _widths(model)}
    for name, side, width in _widths(shrunk):
        if width != dense[(name, side)]:  # a pruned width; unpruned ones keep the model's own
            assert width % round_to == 0, (name, side, width)
    for g in plan.groups:
        kept = g.channels - len(g.removed)
        assert kept == g.channels or kept % round_to == 0
    assert plan.removed_channels > 0
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-4


def test_auto_rounding_per_device_and_dtype():
    assert resolve_round_to("auto", Hardware("cuda", "bfloat16")) == 8
    assert resolve_round_to("auto", Hardware("cuda:0", "float16")) == 8
    assert resolve_round_to("auto", Hardware("cuda", "float32")) == 4
    cpu = 16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else 8
    assert resolve_round_to("auto", Hardware("cpu", "float32")) == cpu
    assert resolve_round_to("auto", Hardware()) == cpu and resolve_round_to("auto", Hardware("cpu", "bfloat16")) == cpu
    assert resolve_round_to(None, Hardware()) == 1 and resolve_round_to(16, Hardware()) == 16
    assert resolve_round_to(16, Hardware("cuda", "bfloat16")) == 16  # a number is used as given, whatever the hardware
    # Planning for a CUDA bf16 deployment on a CPU-only machine: widths are multiples of 8.
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    plan = graphprune.plan(model, Budget(0.3, round_to="auto"), example_inputs=x,
                           hardware=Hardware("cuda", torch.bfloat16))
    assert plan.budget.round_to == 8
    assert all((g.channels - len(g.removed)) % 8 == 0 for g in plan.groups if g.removed)


def test_allowed_kept_respects_the_floor():
    assert allowed_kept(64, min_kept=20, round_to=8) == [64, 56, 48, 40, 32, 24]
    assert allowed_kept(20, min_kept=1, round_to=8) == [20, 16, 8]
    assert allowed_kept(6, min_kept=1, round_to=8) == [6]
    assert allowed_kept(5, min_kept=3, round_to=1) == [5, 4, 3]


def test_rounding_keeps_a_group_whole_when_it_cannot_round():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 12, 3), nn.ReLU(), nn.Conv2d(12, 2, 1))
    x = torch.randn(1, 3, 12, 12)
    plan = graphprune.plan(model, Budget(0.5, round_to=8), example_inputs=x)
    kept = {g.sources[0]: g.channels - len(g.removed) for g in plan.groups}
    assert kept["_0"] == 6 and kept["_2"] == 8
    assert graphprune.verify(model, plan, graphprune.apply(model, plan), x) <= 1e-4
