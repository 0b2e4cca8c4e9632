"""The verbs compose: couple -> plan -> apply, with records; what a Coupling carries, what a plan says about itself,
and what a trace error suggests."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision
from torch import nn

import graphprune

from ..helpers import fingerprint

X = torch.randn(1, 3, 32, 32)


def _resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18()


@pytest.mark.parametrize("budget", [0.5, graphprune.Budget(macs=0.5), graphprune.Budget(params=0.4, allocation="uniform"),
                                    graphprune.Budget(0.3, round_to=8, overrides={"layer4": 0.0})],
                         ids=["ratio", "macs", "params-uniform", "ratio-overrides"])
def test_plan_of_a_coupling_is_the_plan_of_the_model(budget):
    model = _resnet()
    before = fingerprint(model)
    coupling = graphprune.couple(model, example_inputs=X)
    from_coupling = graphprune.plan(coupling, budget)
    direct = graphprune.plan(model, budget, example_inputs=X)
    assert from_coupling.to_json() == direct.to_json()
    assert fingerprint(model) == before
    small = graphprune.apply(model, from_coupling)
    assert graphprune.verify(model, from_coupling, small, X) <= 1e-4


def test_plan_of_a_coupling_with_a_scope_is_the_plan_of_the_model_with_it():
    model = _resnet()
    scope = graphprune.Scope(ignore=["layer4"])
    coupling = graphprune.couple(model, example_inputs=X, scope=scope)
    assert coupling.scope is scope
    assert graphprune.plan(coupling, 0.5).to_json() == graphprune.plan(model, 0.5, example_inputs=X, scope=scope).to_json()
    assert graphprune.plan(coupling, 0.5).to_json() != graphprune.plan(model, 0.5, example_inputs=X).to_json()


def test_a_coupling_carries_its_inputs_and_scope_so_plan_refuses_them_again():
    model = _resnet()
    coupling = graphprune.couple(model, example_inputs=X)
    with pytest.raises(graphprune.InputError, match="a Coupling carries its example inputs and scope"):
        graphprune.plan(coupling, 0.5, example_inputs=X)
    with pytest.raises(graphprune.InputError, match="a Coupling carries its example inputs and scope"):
        graphprune.plan(coupling, 0.5, scope=graphprune.Scope())
    with pytest.raises(graphprune.InputError, match="a Coupling carries its example inputs and scope"):
        graphprune.plan(coupling, 0.5, example_inputs=X, scope=graphprune.Scope(ignore=["fc"]))


class _Opaque(nn.Module):
    """A block torch.fx cannot trace into (data-dependent control flow)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


class WithOpaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = _Opaque()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.stem(x))))


def test_a_coupling_carries_its_model_example_args_and_leaf_modules():
    model = WithOpaque()
    x = torch.randn(2, 3, 8, 8)
    scope = graphprune.Scope(ignore=["block"], leaf_modules=["block"])
    coupling = graphprune.couple(model, example_inputs=x, scope=scope)
    assert coupling.model is model
    assert isinstance(coupling.example_args, tuple) and len(coupling.example_args) == 1
    assert torch.equal(coupling.example_args[0], x)
    assert coupling.leaf_modules == ("block",)
    assert coupling.scope is scope
    assert isinstance(coupling.gm, torch.fx.GraphModule)
    assert [n.target for n in coupling.gm.graph.find_nodes(op="call_module")] == ["stem", "block", "head"]
    assert coupling.nodes["stem"].op == "call_module"
    assert isinstance(coupling.groups, tuple) and isinstance(coupling.uses, tuple)
    # The opaque block's channels are kept; the plan made from the coupling says which leaves it needs.
    the_plan = graphprune.plan(coupling, 0.5)
    assert the_plan.leaf_modules == ["block"]
    assert the_plan.removed_channels == 0
    # Default scope and inputs: a 224x224 image, no leaves.
    resnet = _resnet()
    default = graphprune.couple(resnet)
    assert default.example_args[0].shape == (1, 3, 224, 224) and default.leaf_modules == ()
    assert default.scope == graphprune.Scope()
    # Tensors by canonical name, and the module paths of a group (as Budget(overrides=) matches them).
    assert default.tensors["conv1.weight"] is resnet.conv1.weight
    assert default.module_paths(default.groups[1]) == ["layer1.0.conv1"]


def test_a_coupling_and_its_groups_are_read_only():
    coupling = graphprune.couple(_resnet(), example_inputs=X)
    with pytest.raises(dataclasses.FrozenInstanceError):
        coupling.groups = ()
    with pytest.raises(TypeError):
        coupling.tensors["conv1.weight"] = torch.zeros(1)
    group = next(g for g in coupling.groups if g.prunable)
    with pytest.raises(dataclasses.FrozenInstanceError):
        group.size = 3
    for array in (group.pinned, group.channel_ids, coupling.channel_of_atom):
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            array[0] = array[0]
    assert isinstance(group.sources, tuple) and isinstance(group.members, tuple) and isinstance(group.inexact, tuple)


def test_a_groups_member_arrays_are_read_only():
    """A member's positions and channels (and its tensor use's atoms) are part of the group: a planner that
    edited them in place would corrupt the coupling for every later plan made from it."""
    coupling = graphprune.couple(_resnet(), example_inputs=X)
    group = next(g for g in coupling.groups if g.prunable)
    for member in group.members:
        for array in (member.positions, member.channels, member.use.atoms):
            assert not array.flags.writeable


def test_summary_counts_the_groups_and_lists_the_pruned_ones():
    model = _resnet()
    the_plan = graphprune.plan(model, graphprune.Budget(0.5, overrides={"layer4": 0.0, "layer3": 0.0}), example_inputs=X)
    pruned = [g for g in the_plan.groups if g.removed]
    n, k = len(the_plan.groups), len(pruned)
    assert 0 < k < n
    lines = the_plan.summary().splitlines()
    assert lines[0] == f"ResNet: {n} groups, {k} of them pruned, {the_plan.removed_channels} channels removed"
    assert lines[1].strip() == the_plan.budget.describe() == "budget: ratio 0.5"
    group_lines = [line for line in lines if line.strip().startswith("group ")]
    assert len(group_lines) == k
    assert [int(line.split()[1].rstrip(":")) for line in group_lines] == [g.id for g in pruned]
    for line, g in zip(group_lines, pruned):
        assert f"{g.channels} -> {g.channels - len(g.removed)}" in line
    # Nothing pruned: no group lines at all.
    none = graphprune.plan(model, 0.0, example_inputs=X)
    lines = none.summary().splitlines()
    assert lines[0] == f"ResNet: {len(none.groups)} groups, 0 of them pruned, 0 channels removed"
    assert not [line for line in lines if line.strip().startswith("group ")]


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow in the model's own forward
            return self.conv(x)
        return x


def test_trace_error_of_the_models_own_forward_suggests_shrink_submodule_not_a_leaf_name():
    with pytest.raises(graphprune.TraceError) as info:
        graphprune.shrink(Branchy(), 0.5, example_inputs=torch.randn(1, 3, 8, 8))
    text = str(info.value)
    assert "x.sum() > 0" in text
    assert "shrink_submodule" in text
    assert "leaf_modules=['" not in text  # no submodule name would help: the forward itself is untraceable


def test_trace_error_of_an_untraceable_submodule_names_it():
    with pytest.raises(graphprune.TraceError) as info:
        graphprune.shrink(WithOpaque(), 0.5, example_inputs=torch.randn(1, 3, 8, 8))
    text = str(info.value)
    assert "x.sum() > 0" in text
    assert "leaf_modules=['block']" in text and "ignore=['block']" in text
    # ... and following the hint works: the model shrinks, the opaque block's channels kept whole.
    scope = graphprune.Scope(leaf_modules=["block"], ignore=["block"])
    small = graphprune.shrink(WithOpaque(), 0.5, example_inputs=torch.randn(1, 3, 8, 8), scope=scope)
    assert small.stem.out_channels == 8 and small.block.conv.in_channels == 8


def test_the_verbs_pause_the_collector_only_while_they_run_and_leave_a_disabled_one_disabled():
    import gc

    states = []

    class Probe(nn.Module):  # its forward runs inside the capture and the rewrite's check
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 32, 3)
            self.head = nn.Conv2d(32, 2, 1)

        def forward(self, x):
            states.append(gc.isenabled())
            return self.head(torch.relu(self.conv(x)))

    model, x = Probe(), torch.randn(1, 3, 8, 8)
    graphprune.shrink(model, 0.5, example_inputs=x)
    assert states and not any(states) and gc.isenabled()
    states.clear()
    graphprune.shrink(model, graphprune.Budget(macs=0.5), example_inputs=x)
    assert gc.isenabled() and True in states  # a measured budget's rounds run with the collector on
    with pytest.raises(graphprune.InputError):
        graphprune.couple(model, example_inputs=x, scope=graphprune.Scope(leaf_modules=["nothing"]))
    assert gc.isenabled()
    gc.disable()
    try:
        graphprune.shrink(model, 0.5, example_inputs=x)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_every_kept_list_of_a_plan_is_its_own():
    """A plan is a record a person may edit: a layer's weight, bias, norm and the next layer's inputs keep the same
    channels, but editing one tensor's kept list must not edit another's."""
    plan = graphprune.plan(_resnet(), 0.5, example_inputs=X)
    lists = [keep for edit in plan.tensors.values() for keep in edit.keep.values()]
    assert len(lists) > 100 and len({id(keep) for keep in lists}) == len(lists)
    assert len({tuple(keep) for keep in lists}) < len(lists) / 3  # many are equal, none is shared
