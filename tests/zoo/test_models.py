"""Every torchvision VGG and ResNet, at several ratios: the rewrite is proven equivalent on the kept channels.

A few are captured with ``torch.export`` too, and held to the same proofs (the user's class comes back).
"""

import math

import pytest
import torch
import torchvision

import graphprune

from ..helpers import fingerprint, spread_batchnorm

VGG = ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
RESNET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2"]
RATIOS = [0.0, 0.3, 0.5, 0.9]
CAPTURED = [(name, "fx") for name in VGG + RESNET] + [(name, "export") for name in ("vgg11_bn", "resnet18", "resnet50")]


@pytest.fixture(scope="module", params=CAPTURED, ids=[f"{n}-{c}" for n, c in CAPTURED])
def coupled(request):
    name, method = request.param
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    spread_batchnorm(model, bias=0.2)  # so that a slicing mistake in the statistics shows
    x = torch.randn(2, 3, 64, 64)
    coupling = graphprune.couple(model, example_inputs=x, scope=graphprune.Scope(capture=method))
    assert coupling.captured.method == method
    with torch.no_grad():
        reference = model(x)
    return name, model, x, coupling, reference, fingerprint(model)


def _planned_params(model, plan):
    named = dict(model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    for edit in plan.tensors.values():
        if edit.name in named:
            kept = [len(edit.keep.get(d, range(s))) for d, s in enumerate(edit.shape)]
            total -= named[edit.name].numel() - math.prod(kept)
    return total


@pytest.mark.parametrize("ratio", RATIOS)
def test_shrink_is_equivalent_on_kept_channels(coupled, ratio):
    name, model, x, coupling, reference, print_before = coupled
    plan = graphprune.plan(coupling, ratio, importance="l2")
    shrunk = graphprune.apply(model, plan)

    with torch.no_grad():
        out = shrunk(x)
    assert out.shape == reference.shape
    assert graphprune.count_params(shrunk) == _planned_params(model, plan)
    if ratio == 0:
        assert not plan.tensors and not plan.graph_edits
        torch.testing.assert_close(out, reference, rtol=0, atol=0)
        assert graphprune.count_params(shrunk) == graphprune.count_params(model)
    else:
        assert graphprune.count_params(shrunk) < graphprune.count_params(model)
        for group in plan.groups:
            if group.removed:
                assert len(group.removed) == min(round(ratio * group.channels), group.channels - 1)
        assert graphprune.verify(model, plan, shrunk, x) <= 1e-4
    assert type(shrunk) is type(model)  # no graph constant needed rewriting
    if ratio == RATIOS[-1]:  # hashing a big model is slow: check once, after every ratio ran
        assert fingerprint(model) == print_before


def test_planned_widths_reach_the_modules():
    model = torchvision.models.resnet50()
    plan = graphprune.plan(model, 0.5, example_inputs=torch.randn(1, 3, 64, 64))
    shrunk = graphprune.apply(model, plan)
    assert shrunk.conv1.out_channels == 32 and shrunk.bn1.num_features == 32
    assert shrunk.layer1[0].conv3.out_channels == 128 == shrunk.layer1[0].downsample[0].out_channels
    assert shrunk.layer4[2].conv3.out_channels == 1024 == shrunk.fc.in_features
    assert shrunk.fc.out_features == 1000
    assert shrunk.conv1.in_channels == 3
