"""Every public function checks its arguments and says what is wrong, before touching anything.

(The ratio, unknown importances, unknown ignore names, untraceable models and plans from
another model are covered in tests/capture/test_errors.py; the verbs themselves in test_verbs.py.)
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import graphprune
from graphprune.workflows.iterative import prunable_channels

from ..helpers import fingerprint

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


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _refused(model, call, error=graphprune.InputError, *fragments):
    before = fingerprint(model)
    with pytest.raises(error) as info:
        call()
    assert fingerprint(model) == before and _first_conv(model).out_channels == 8
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text, text
    return text


def _never(what):
    def call(*args, **kwargs):
        raise AssertionError(f"{what} was called before the arguments were checked")
    return call


class _Wrapper(nn.Module):
    """A model holding the test model as its submodule ``body``, for shrink_submodule."""

    def __init__(self):
        super().__init__()
        self.body = _model()

    def forward(self, x):
        return self.body(x)


# Each verb: which arguments it takes, the model it is called on, and the call, with a budget and keyword arguments.
VERBS = {
    "plan": ({"budget", "scope", "hardware", "importance"}, _model,
             lambda m, budget, kw: graphprune.plan(m, budget, **kw)),
    "shrink": ({"budget", "scope", "hardware", "importance"}, _model,
               lambda m, budget, kw: graphprune.shrink(m, budget, **kw)),
    "couple": ({"scope"}, _model, lambda m, budget, kw: graphprune.couple(m, **kw)),
    "iterative": ({"budget", "scope", "hardware", "importance"}, _model,
                  lambda m, budget, kw: graphprune.iterative(m, budget, steps=1, train=_never("train"),
                                                             evaluate=lambda m: 1.0, verbose=False, **kw)),
    "sensitivity": ({"scope", "importance"}, _model,
                    lambda m, budget, kw: graphprune.sensitivity(m, _never("evaluate_fn"), (0.5,), **kw)),
    "shrink_submodule": ({"budget", "scope", "hardware", "importance"}, _Wrapper,
                         lambda m, budget, kw: graphprune.shrink_submodule(m, "body", budget, **kw)),
    "prunable_channels": ({"scope"}, _model, lambda m, budget, kw: prunable_channels(m, **kw)),
}

# (what the case is about, the keyword arguments (built inside the call: a bad record fails as it is made),
#  the budget, the fragments the message must contain)
CASES = [
    # Scopes, and what they name.
    ("scope", lambda: {"scope": graphprune.Scope(ignore="0")}, ("ignore takes a list", "ignore=['0']")),
    ("scope", lambda: {"scope": graphprune.Scope(ignore=3)}, ("ignore takes a list of names, not int",)),
    ("scope", lambda: {"scope": graphprune.Scope(ignore=[None])}, ("ignore takes module names or modules, not NoneType",)),
    ("scope", lambda: {"scope": graphprune.Scope(ignore=["7"])}, ("'7'", "not a submodule")),
    ("scope", lambda: {"scope": graphprune.Scope(ignore=[nn.Conv2d(1, 1, 1)])}, ("not a submodule",)),
    ("scope", lambda: {"scope": graphprune.Scope(leaf_modules="0")}, ("leaf_modules takes a list", "leaf_modules=['0']")),
    ("scope", lambda: {"scope": graphprune.Scope(leaf_modules=[nn.ReLU()])}, ("leaf_modules takes module names, not ReLU",)),
    ("scope", lambda: {"scope": graphprune.Scope(leaf_modules=["head"])}, ("leaf_modules names ['head']",)),
    ("scope", lambda: {"scope": graphprune.Scope(rules={})}, ("rules must be a graphprune.Registry", "default_registry")),
    ("scope", lambda: {"scope": "0"}, ("scope must be a graphprune.Scope, not str", "graphprune.Scope(ignore=")),
    ("scope", lambda: {"scope": {"ignore": ["0"]}}, ("scope must be a graphprune.Scope, not dict",)),
    ("scope", lambda: {"scope": ["0"]}, ("scope must be a graphprune.Scope, not list",)),
    # Importance criteria.
    ("importance", lambda: {"importance": 3}, ("unknown importance 3",)),
    ("importance", lambda: {"importance": "L2"}, ("unknown importance 'L2'", "'l2'")),
    # Example inputs.
    ("inputs", lambda: {"example_inputs": "x"}, ("example_inputs must be a tensor",)),
    ("inputs", lambda: {"example_inputs": (X, X)}, ("2 example inputs given", "takes 1")),
    ("inputs", lambda: {"example_inputs": {"y": X}}, ("example_inputs names ['y']",)),
    # Hardware records.
    ("hardware", lambda: {"hardware": "cpu"}, ("hardware must be a graphprune.Hardware, not str", "graphprune.Hardware(")),
    ("hardware", lambda: {"hardware": {"device": "cpu"}}, ("hardware must be a graphprune.Hardware, not dict",)),
    ("hardware", lambda: {"hardware": graphprune.Hardware(num_threads=0)}, ("num_threads must be a positive integer, got 0",)),
    ("hardware", lambda: {"hardware": graphprune.Hardware("tpu")}, ("device must be 'cpu' or 'cuda[:N]', got 'tpu'",)),
    # Budgets: a plain ratio or a Budget record, nothing else.
    ("budget", lambda: {"budget": "0.5"}, ("the budget is a ratio (a number in [0, 1)) or a graphprune.Budget, not '0.5'",)),
    ("budget", lambda: {"budget": {"macs": 0.5}}, ("or a graphprune.Budget, not {'macs': 0.5}",)),
    ("budget", lambda: {"budget": None}, ("or a graphprune.Budget, not None",)),
    ("budget", lambda: {"budget": True}, ("or a graphprune.Budget, not True",)),
    ("budget", lambda: {"budget": 1.5}, ("ratio must be a fraction in [0, 1), got 1.5",)),
    ("budget", lambda: {"budget": graphprune.Budget(ratio=0.5, macs=0.5)},
     ("give exactly one of ratio, macs, params, latency (got ['ratio', 'macs'])", "Budget(macs=0.5)")),
    ("budget", lambda: {"budget": graphprune.Budget()}, ("give exactly one of ratio, macs, params, latency (got none)",)),
    ("budget", lambda: {"budget": graphprune.Budget(macs=0.0)}, ("macs must be a fraction in (0, 1], got 0.0",)),
    ("budget", lambda: {"budget": graphprune.Budget(params=1.5)}, ("params must be a fraction in (0, 1], got 1.5",)),
    ("budget", lambda: {"budget": graphprune.Budget(0.5, allocation="uniform")}, ("allocation applies to a MACs",)),
    ("budget", lambda: {"budget": graphprune.Budget(0.5, overrides={"nothing.*": 0.5})},
     ("overrides pattern(s) ['nothing.*'] match no module that produces channels",)),
]


def _verb_cases():
    for verb, (takes, _, _) in VERBS.items():
        for i, (kind, kwargs, fragments) in enumerate(CASES):
            if kind in takes or kind == "inputs":
                yield pytest.param(verb, kwargs, fragments, id=f"{verb}-{kind}-{i}")


@pytest.mark.parametrize("verb, kwargs, fragments", list(_verb_cases()))
def test_every_verb_refuses_bad_records_and_arguments(verb, kwargs, fragments):
    _, build, call = VERBS[verb]
    model = build()

    def run():
        kw = {"example_inputs": X, **kwargs()}
        budget = kw.pop("budget", 0.5)
        return call(model, budget, kw)

    _refused(model, run, graphprune.InputError, *fragments)


@pytest.mark.parametrize("make, fragment", [
    (lambda: graphprune.Scope(ignore="fc"), "ignore takes a list of modules or names, not the string 'fc'"),
    (lambda: graphprune.Scope(leaf_modules="fc"), "leaf_modules takes a list of names, not the string 'fc'"),
    (lambda: graphprune.Scope(rules=[]), "rules must be a graphprune.Registry, not list"),
    (lambda: graphprune.Budget(ratio=0.5, macs=0.5), "give exactly one of ratio, macs, params, latency"),
    (lambda: graphprune.Budget(macs=0.5, latency=0.5), "give exactly one of ratio, macs, params, latency"),
    (lambda: graphprune.Budget(ratio=-0.1), "ratio must be a fraction in [0, 1), got -0.1"),
    (lambda: graphprune.Budget(ratio="0.5"), "ratio must be a fraction in [0, 1), got '0.5'"),
    (lambda: graphprune.Budget(latency=float("nan")), "latency must be a fraction in (0, 1], got nan"),
    (lambda: graphprune.Budget(0.5, overrides=[("layer1", 0.5)]), "overrides maps module-path patterns to ratios"),
    (lambda: graphprune.Budget(0.5, overrides={"layer1": 1.0}), "overrides['layer1'] must be a fraction in [0, 1)"),
    (lambda: graphprune.Budget(0.5, overrides={3: 0.5}), "overrides keys are module-path patterns"),
    (lambda: graphprune.Budget(0.5, max_ratio=1.5), "max_ratio must be a fraction in [0, 1]"),
    (lambda: graphprune.Budget(0.5, round_to=0), "round_to must be a positive int or 'auto', got 0"),
    (lambda: graphprune.Budget(0.5, round_to="8"), "round_to must be a positive int or 'auto', got '8'"),
    (lambda: graphprune.Budget(0.5, round_to=True), "round_to must be a positive int or 'auto', got True"),
    (lambda: graphprune.Budget(0.5, tradeoff=0.5), "tradeoff applies to a MACs, params or latency budget"),
    (lambda: graphprune.Budget(macs=0.5, tradeoff=2.0), "tradeoff must be a fraction in [0, 1]"),
    (lambda: graphprune.Budget(macs=0.5, allocation="local"), "allocation must be one of global, uniform, got 'local'"),
    (lambda: graphprune.Budget(0.5, exact_only="yes"), "exact_only must be True or False"),
    (lambda: graphprune.Hardware(num_threads=0), "num_threads must be a positive integer, got 0"),
    (lambda: graphprune.Hardware(num_threads=1.5), "num_threads must be a positive integer, got 1.5"),
    (lambda: graphprune.Hardware(num_threads=True), "num_threads must be a positive integer, got True"),
    (lambda: graphprune.Hardware("gpu"), "device must be 'cpu' or 'cuda[:N]', got 'gpu'"),
    (lambda: graphprune.Hardware(dtype="int8"), "dtype must be one of float32, bfloat16, float16, got 'int8'"),
    (lambda: graphprune.Hardware(batch_size=0), "batch_size must be a positive integer, got 0"),
    (lambda: graphprune.Hardware(runtime="jit"), "unknown runtime 'jit'"),
    (lambda: graphprune.Hardware(runtime="cudagraphs"), "CUDA graphs need a CUDA device, not 'cpu'"),
    (lambda: graphprune.Hardware(channels_last="yes"), "channels_last must be True, False or None"),
    (lambda: graphprune.Hardware(grid_points=0), "grid_points must be a positive integer, got 0"),
    (lambda: graphprune.Hardware(min_run_time=0), "min_run_time must be a positive number, got 0"),
    (lambda: graphprune.Hardware(model_min_run_time=float("inf")), "model_min_run_time must be a positive number, got inf"),
])
def test_records_refuse_bad_fields_as_they_are_made(make, fragment):
    with pytest.raises(graphprune.InputError) as info:
        make()
    assert fragment in str(info.value), str(info.value)


def test_records_are_frozen():
    import dataclasses

    for record in (graphprune.Budget(0.5), graphprune.Scope(), graphprune.Hardware()):
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.ratio = 0.9
    overrides = {"0": 0.5}
    budget = graphprune.Budget(0.5, overrides=overrides)
    overrides["3"] = 0.9  # the record took a copy
    assert dict(budget.overrides) == {"0": 0.5}
    with pytest.raises(TypeError):
        budget.overrides["3"] = 0.9


@pytest.mark.parametrize("kwargs, fragment", [
    (lambda: {"importance": "L2"}, "unknown importance 'L2'"),
    (lambda: {"hardware": "cpu"}, "hardware must be a graphprune.Hardware, not str"),
    (lambda: {"budget": graphprune.Budget(0.5, overrides={"nothing.*": 0.5})}, "match no module"),
    (lambda: {"budget": "0.5"}, "graphprune.Budget"),
    (lambda: {"scope": "0"}, "scope must be a graphprune.Scope"),
], ids=["importance", "hardware", "overrides", "budget", "scope"])
def test_iterative_checks_its_arguments_before_calling_evaluate(kwargs, fragment):
    """The user's evaluate() may take minutes (a validation set): a bad argument must fail before it runs."""
    model = _model()
    kw = {"example_inputs": X, **kwargs()}
    budget = kw.pop("budget", 0.5)
    _refused(model, lambda: graphprune.iterative(model, budget, steps=1, train=_never("train"),
                                                 evaluate=_never("evaluate"), verbose=False, **kw),
             graphprune.InputError, fragment)


def test_plan_on_all_ranks_refuses_bad_records_on_every_rank(tmp_path):
    import torch.distributed as dist

    from graphprune.workflows.distributed import plan_on_all_ranks, shrink_distributed

    model = _model()
    with pytest.raises(graphprune.InputError, match="torch.distributed is not initialized"):
        plan_on_all_ranks(model, 0.5, example_inputs=X)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        for fn in (plan_on_all_ranks, shrink_distributed):
            _refused(model, lambda: fn(model, "0.5", example_inputs=X), graphprune.InputError, "graphprune.Budget")
            _refused(model, lambda: fn(model, 0.5, example_inputs=X, scope="0"), graphprune.InputError,
                     "scope must be a graphprune.Scope, not str")
            _refused(model, lambda: fn(model, 0.5, example_inputs=X, hardware="cpu"), graphprune.InputError,
                     "hardware must be a graphprune.Hardware, not str")
            _refused(model, lambda: fn(model, graphprune.Budget(0.5, overrides={"nothing": 0.5}), example_inputs=X),
                     graphprune.InputError, "match no module")
        assert plan_on_all_ranks(model, 0.5, example_inputs=X).to_json() == graphprune.plan(model, 0.5, example_inputs=X).to_json()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("inplace", ["yes", 1, None])
def test_inplace_must_be_a_bool_and_is_checked_before_any_work(model, inplace):
    _refused(model, lambda: graphprune.shrink(model, 0.5, example_inputs=X, inplace=inplace),
             graphprune.InputError, "inplace must be True or False")


def test_apply_arguments(model, plan):
    _refused(model, lambda: graphprune.apply(model, plan.to_json()), graphprune.InputError, "Plan.from_json")
    _refused(model, lambda: graphprune.apply(model, plan.to_dict()), graphprune.InputError, "expected a graphprune Plan, got dict")
    _refused(model, lambda: graphprune.apply(model, plan, inplace="yes"), graphprune.InputError, "inplace")
    _refused(model, lambda: graphprune.apply(model, plan, scope=graphprune.Scope(rules=[])), graphprune.InputError,
             "Registry")
    _refused(model, lambda: graphprune.apply(model, plan, scope="0"), graphprune.InputError,
             "scope must be a graphprune.Scope, not str")
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
        with pytest.raises(graphprune.InputError, match="model_min_run_time must be a positive number"):
            graphprune.measure_latency(model, X, graphprune.Hardware(model_min_run_time=bad))
    for bad in (0, 1.5, True):
        with pytest.raises(graphprune.InputError, match="num_threads must be a positive integer"):
            graphprune.measure_latency(model, X, graphprune.Hardware(num_threads=bad))
    for bad in ("cpu", {"num_threads": 1}, 1):
        with pytest.raises(graphprune.InputError, match="hardware must be a graphprune.Hardware"):
            graphprune.measure_latency(model, X, bad)
    with pytest.raises(graphprune.InputError, match="inputs must be a tensor"):
        graphprune.measure_latency(model, "x")
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
