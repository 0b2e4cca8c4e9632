"""Runtimes a latency is measured in: eager, torch.compile, CUDA graphs (the last needs a GPU)."""

import copy
import json
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import graphprune
from graphprune import Budget, Hardware, InputError
from graphprune.measure import host_allocator
from graphprune.measure.runtimes import runner

from ..helpers import time_models_by
from ..planning.test_budget import Tiny


def test_unknown_or_impossible_runtimes_are_refused():
    with pytest.raises(InputError, match="unknown runtime 'jit'"):
        Hardware(runtime="jit")
    with pytest.raises(InputError, match="CUDA graphs need a CUDA device, not 'cpu'"):
        Hardware(runtime="cudagraphs")
    model, x = Tiny().eval(), torch.randn(1, 3, 16, 16)
    with pytest.raises(InputError, match="unknown runtime"):
        graphprune.plan(model, Budget(latency=0.5), example_inputs=x, hardware=Hardware(runtime="onnx"))


def test_a_runner_makes_the_calls_it_is_asked_for_once_warmed_up():
    model, calls = torch.nn.Linear(4, 2).eval(), []
    model.register_forward_hook(lambda *_: calls.append(1))
    forward = runner(model, (torch.ones(1, 4),), "eager", calls=3)
    assert len(calls) == 3  # the warm-up
    with torch.inference_mode():
        assert forward().shape == (1, 2)
    assert len(calls) == 6


def test_compiled_models_of_one_class_are_each_compiled_past_the_recompile_limit():
    # Dynamo keeps graphs on forward's code object and, past recompile_limit differently shaped entries, runs
    # eagerly without an error. A latency plan compiles many widths of one class; each must really be compiled.
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    models = [graphprune.shrink(Tiny().eval(), ratio, example_inputs=x) for ratio in (0.25, 0.5, 0.75)]
    assert len({m.body[0].out_channels for m in models}) == 3 and all(type(m) is Tiny for m in models)
    before = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(recompile_limit=1), torch.inference_mode():
        for m in models:
            forward = runner(copy.deepcopy(m), (x,), "compile")
            assert torch.allclose(forward(), m(x), atol=1e-5)
    assert counters["stats"]["unique_graphs"] - before == 3
    assert all("forward" not in m.__dict__ for m in models)  # the caller's models keep their class's forward


def test_hardware_leaves_the_model_alone_and_keys_compiled_layers_as_eager(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, x = Tiny().eval(), torch.randn(1, 3, 16, 16)
    assert Hardware(runtime="compile").key_prefix() == Hardware().key_prefix()  # layers timed eagerly: one cache
    # Whole models stand in by MACs, so only the table is timed here (a real compiled plan is the slow test below).
    dense_macs = graphprune.count_macs(model, x)
    time_models_by(monkeypatch, lambda hw, m, args: graphprune.count_macs(m, x) / dense_macs)
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    plan = graphprune.plan(model, Budget(latency=0.6), example_inputs=x, hardware=Hardware(runtime="compile"))
    assert plan.budget.runtime == "compile" and plan.budget.hardware == Hardware().key_prefix()
    assert plan.budget.allocator == host_allocator()  # how it was measured, recorded
    assert "forward" not in model.__dict__


@pytest.mark.slow
def test_latency_plan_measured_compiled(tmp_path):
    torch.manual_seed(0)
    model, x = Tiny().eval(), torch.randn(1, 3, 32, 32)
    hw = Hardware(cache=str(tmp_path / "lat.json"), runtime="compile", model_min_run_time=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", graphprune.BudgetWarning)
        plan = graphprune.plan(model, Budget(latency=0.7), example_inputs=x, hardware=hw)
    assert plan.budget.runtime == "compile" and plan.budget.measured < plan.budget.dense
    assert graphprune.verify(model, plan, graphprune.apply(model, plan), x) <= 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_latency_plan_in_cuda_graphs(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model, x = Tiny().eval(), torch.randn(1, 3, 64, 64)
    plan = graphprune.plan(model, Budget(latency=0.8), example_inputs=x,
                           hardware=Hardware("cuda", torch.bfloat16, batch_size=128, runtime="cudagraphs"))
    assert plan.budget.runtime == "cudagraphs" and plan.budget.measured <= plan.budget.dense
    keys = json.loads((tmp_path / "latency.json").read_text())
    assert keys and all("|cudagraphs|" in k for k in keys)  # layers timed in graphs too: their own cache entries
