"""Every public function checks its arguments and says what is wrong, before touching anything.

(The ratio, unknown importances, unknown ignore names, untraceable models and plans from
another model are covered in test_errors.py.)
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import graphprune

from .helpers import fingerprint

X = torch.randn(1, 3, 8, 8)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))


@pytest.fixture
def model():
    return _model()


@pytest.fixture
def plan(model):
    return graphprune.plan(model, 0.5, example_inputs=X)


def _refused(model, call, error=graphprune.InputError, *fragments):
    before = fingerprint(model)
    with pytest.raises(error) as info:
        call()
    assert fingerprint(model) == before and model[0].out_channels == 8
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text, text
    return text


@pytest.mark.parametrize("kwargs, fragments", [
    ({"ignore": "0"}, ("ignore takes a list", "ignore=['0']")),
    ({"ignore": 3}, ("ignore takes a list of names, not int",)),
    ({"ignore": [None]}, ("ignore takes module names or modules, not NoneType",)),
    ({"ignore": ["7"]}, ("'7'", "not a submodule")),
    ({"ignore": [nn.Conv2d(1, 1, 1)]}, ("not a submodule",)),
    ({"leaf_modules": "0"}, ("leaf_modules takes a list", "leaf_modules=['0']")),
    ({"leaf_modules": [nn.ReLU()]}, ("leaf_modules takes module names, not ReLU",)),
    ({"leaf_modules": ["head"]}, ("leaf_modules names ['head']",)),
    ({"rules": {}}, ("rules must be a graphprune.Registry", "default_registry")),
    ({"importance": 3}, ("unknown importance 3",)),
    ({"importance": "L2"}, ("unknown importance 'L2'", "'l2'")),
    ({"example_inputs": "x"}, ("example_inputs must be a tensor",)),
    ({"example_inputs": (X, X)}, ("2 example inputs given", "takes 1")),
    ({"example_inputs": {"y": X}}, ("example_inputs names ['y']",)),
])
@pytest.mark.parametrize("verb", ["plan", "shrink", "analyze"])
def test_planning_arguments(model, verb, kwargs, fragments):
    kwargs = {"example_inputs": X, **kwargs}
    fn = getattr(graphprune, verb)
    if verb == "analyze":
        if "importance" in kwargs:
            pytest.skip("analyze takes no importance")
        call = lambda: fn(model, **kwargs)  # noqa: E731
    else:
        call = lambda: fn(model, 0.5, **kwargs)  # noqa: E731
    _refused(model, call, graphprune.InputError, *fragments)


@pytest.mark.parametrize("inplace", ["yes", 1, None])
def test_inplace_must_be_a_bool_and_is_checked_before_any_work(model, inplace):
    _refused(model, lambda: graphprune.shrink(model, 0.5, example_inputs=X, inplace=inplace),
             graphprune.InputError, "inplace must be True or False")


def test_apply_arguments(model, plan):
    _refused(model, lambda: graphprune.apply(model, plan.to_json()), graphprune.InputError, "Plan.from_json")
    _refused(model, lambda: graphprune.apply(model, plan.to_dict()), graphprune.InputError, "expected a graphprune Plan, got dict")
    _refused(model, lambda: graphprune.apply(model, plan, inplace="yes"), graphprune.InputError, "inplace")
    _refused(model, lambda: graphprune.apply(model, plan, rules=[]), graphprune.InputError, "Registry")
    with pytest.raises(graphprune.InputError, match="torch.nn.Module"):
        graphprune.apply(model.state_dict(), plan)


def test_a_plan_for_a_model_of_the_same_class_but_other_widths_is_refused(plan):
    other = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 2, 1))
    _refused_other = fingerprint(other)
    with pytest.raises(graphprune.PlanError, match="made for a Sequential with other parameters"):
        graphprune.apply(other, plan)
    assert fingerprint(other) == _refused_other


def test_verify_arguments(model, plan):
    shrunk = graphprune.apply(model, plan)
    assert graphprune.verify(model, plan, shrunk) <= 1e-4  # inputs drawn from the plan's shapes
    with pytest.raises(graphprune.InputError, match="as shrunk, got str"):
        graphprune.verify(model, plan, "shrunk", X)
    with pytest.raises(graphprune.InputError, match="expected a graphprune Plan, got NoneType"):
        graphprune.verify(model, None, shrunk, X)
    with pytest.raises(graphprune.InputError, match="torch.nn.Module"):
        graphprune.verify(None, plan, shrunk, X)
    with pytest.raises(graphprune.InputError, match="inputs must be a tensor"):
        graphprune.verify(model, plan, shrunk, 3.0)
    with pytest.raises(graphprune.PlanError, match="other parameters"):
        graphprune.verify(shrunk, plan, shrunk, X)  # the shrunk model is not what the plan was made for
    no_shapes = graphprune.Plan.from_json(plan.to_json())
    no_shapes.inputs = [None]
    with pytest.raises(graphprune.InputError, match="verify needs inputs"):
        graphprune.verify(model, no_shapes, shrunk)


def test_mask_arguments(model, plan):
    with pytest.raises(graphprune.InputError, match="expected a graphprune Plan, got dict"):
        graphprune.mask(model, {})
    masked = graphprune.mask(model, plan)
    assert masked is not model and masked[0].weight.shape == model[0].weight.shape


@pytest.mark.parametrize("text, error, fragment", [
    ("{not json", graphprune.PlanError, "invalid JSON"),
    ("[1, 2]", graphprune.PlanError, "a plan is a JSON object, not list"),
    ('{"format_version": 1}', graphprune.PlanError, "not a valid graphprune plan"),
    ('{"format_version": 99}', graphprune.PlanError, "plan format 99 is not supported"),
    (3, graphprune.InputError, "takes the JSON text, not int"),
])
def test_plan_from_json_arguments(text, error, fragment):
    with pytest.raises(error, match=fragment):
        graphprune.Plan.from_json(text)


def test_plan_from_json_with_a_damaged_field(plan):
    data = json.loads(plan.to_json())
    data["groups"][0]["members"][0] = {"tensor": "0.weight"}  # fields missing
    with pytest.raises(graphprune.PlanError, match="not a valid graphprune plan"):
        graphprune.Plan.from_json(json.dumps(data))
    assert graphprune.Plan.from_json(plan.to_json().encode()).to_json() == plan.to_json()  # bytes work too


def test_stats_arguments(model):
    with pytest.raises(graphprune.InputError, match="torch.nn.Module"):
        graphprune.count_params(None)
    with pytest.raises(graphprune.InputError, match="torch.nn.Module"):
        graphprune.count_macs("model", X)
    with pytest.raises(graphprune.InputError, match="inputs must be a tensor"):
        graphprune.count_macs(model, "x")
    for bad in (0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(graphprune.InputError, match="min_run_time must be a positive number"):
            graphprune.measure_latency(model, X, min_run_time=bad)
    for bad in (0, 1.5, True):
        with pytest.raises(graphprune.InputError, match="num_threads must be a positive integer"):
            graphprune.measure_latency(model, X, num_threads=bad)
    assert graphprune.count_params(model) == sum(p.numel() for p in model.parameters())


def test_registry_keys_are_checked():
    registry = graphprune.default_registry()
    with pytest.raises(TypeError, match="nn.Module classes"):
        registry.module("Conv2d")
    with pytest.raises(TypeError, match="nn.Module classes"):
        registry.resizer(torch.relu)
    with pytest.raises(TypeError, match="method names"):
        registry.method(len)
    with pytest.raises(TypeError, match="functions"):
        registry.function("relu")
