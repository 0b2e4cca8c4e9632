"""Every failure is a graphprune error that names the node and the user's line, and never modifies the model."""

import pytest
import torch
import torchvision
from torch import nn

import graphprune

from ..helpers import fingerprint


class Roll(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.bn(self.conv(x))
        x = torch.roll(x, 1, dims=1)  # mixes channel indices: no rule
        return self.head(x)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.conv(x)
        return x


def _unchanged_after(model, call):
    before = fingerprint(model)
    training = [m.training for m in model.modules()]
    with pytest.raises(graphprune.GraphPruneError) as info:
        call()
    assert fingerprint(model) == before
    assert training == [m.training for m in model.modules()]
    return info.value


def test_op_without_rule_names_node_and_source_line():
    model = Roll().train()
    err = _unchanged_after(model, lambda: graphprune.shrink(model, 0.5, example_inputs=torch.randn(2, 3, 8, 8)))
    assert isinstance(err, graphprune.UnsupportedOpError)
    text = str(err)
    assert "call_function[target=torch.roll]" in text
    assert "test_errors.py" in text and "torch.roll(x, 1, dims=1)" in text
    assert "hint:" in text and "ignore" in text and "register" in text


def test_untraceable_model_gets_trace_error_with_hint():
    model = Branchy()
    err = _unchanged_after(model, lambda: graphprune.shrink(model, 0.5, example_inputs=torch.randn(1, 3, 8, 8)))
    assert isinstance(err, graphprune.TraceError)
    assert "x.sum() > 0" in str(err) and "leaf_modules" in str(err)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "0.5", True, None])
def test_bad_ratio(ratio):
    model = torchvision.models.resnet18()
    err = _unchanged_after(model, lambda: graphprune.shrink(model, ratio))
    assert isinstance(err, graphprune.InputError) and "ratio" in str(err)


def test_not_a_module():
    with pytest.raises(graphprune.InputError, match="torch.nn.Module"):
        graphprune.shrink(lambda x: x, 0.5)


def test_example_inputs_that_do_not_fit_name_the_node():
    model = torchvision.models.resnet18()
    err = _unchanged_after(model, lambda: graphprune.shrink(model, 0.5, example_inputs=torch.randn(1, 4, 32, 32)))
    assert isinstance(err, graphprune.InputError)
    assert "call_module[target=conv1]" in str(err) and "example_inputs" in str(err)


def test_default_inputs_need_a_3_channel_conv():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(graphprune.InputError, match="example_inputs"):
        graphprune.shrink(model, 0.5)
    shrunk = graphprune.shrink(model, 0.5, example_inputs=torch.randn(3, 5))
    assert shrunk[0].out_features == 2 and shrunk[2].in_features == 2


def test_unknown_importance_and_ignore_names():
    model = torchvision.models.resnet18()
    with pytest.raises(graphprune.InputError, match="importance"):
        graphprune.shrink(model, 0.5, importance="magic")
    with pytest.raises(graphprune.InputError, match="layer9"):
        graphprune.shrink(model, 0.5, scope=graphprune.Scope(ignore=["layer9"]))


def test_plan_for_another_model_is_refused():
    plan = graphprune.plan(torchvision.models.resnet18(), 0.5, example_inputs=torch.randn(1, 3, 32, 32))
    with pytest.raises(graphprune.PlanError, match="made for a ResNet with other parameters"):
        graphprune.apply(torchvision.models.resnet34(), plan)
    with pytest.raises(graphprune.PlanError):
        graphprune.apply(torchvision.models.vgg11(), plan)
    shrunk = graphprune.apply(torchvision.models.resnet18(), plan)
    with pytest.raises(graphprune.PlanError):  # already shrunk
        graphprune.apply(shrunk, plan)


def test_successful_calls_leave_the_model_bit_identical_and_inplace_does_not():
    model = torchvision.models.resnet18().train()
    before = fingerprint(model)
    shrunk = graphprune.shrink(model, 0.5, example_inputs=torch.randn(2, 3, 32, 32))
    assert fingerprint(model) == before and model.training
    assert shrunk.layer1[0].conv1.out_channels == 32 and model.layer1[0].conv1.out_channels == 64
    same = graphprune.shrink(model, 0.5, example_inputs=torch.randn(2, 3, 32, 32), inplace=True)
    assert same is model and model.layer1[0].conv1.out_channels == 32
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
