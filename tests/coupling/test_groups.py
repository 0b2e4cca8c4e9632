"""How a coupling splits every tensor use among groups: checked against the plain per-use definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, seed, settings

import graphprune
from graphprune.base.errors import GraphPruneError

from ..strategies import net_specs


def _expected_members(coupling) -> dict[tuple[int, str, int], tuple[list[int], list[int], bool]]:
    """Each (group, tensor, dim)'s positions and channels, use by use, as the definition reads: a use's positions
    go to the group of their channel, and a member is whole when it is its group's channels in order."""
    local = np.empty(coupling.n_channels, dtype=np.int64)
    group_of = np.empty(coupling.n_channels, dtype=np.int64)
    for g in coupling.groups:
        local[g.channel_ids] = np.arange(g.size)
        group_of[g.channel_ids] = g.id
    sizes = {g.id: g.size for g in coupling.groups}
    out = {}
    for use in coupling.uses:
        channels = coupling.channel_of_atom[use.atoms]
        for g in np.unique(group_of[channels]):
            positions = np.nonzero(group_of[channels] == g)[0]
            mine = local[channels[positions]]
            whole = len(positions) == len(use.atoms) == sizes[g] and np.array_equal(mine, np.arange(sizes[g]))
            out[int(g), use.tensor, use.dim] = (positions.tolist(), mine.tolist(), bool(whole))
    return out


def _members(coupling):
    return {(g.id, m.use.tensor, m.use.dim): (m.positions.tolist(), m.channels.tolist(), m.whole)
            for g in coupling.groups for m in g.members}


def _check(coupling) -> None:
    assert _members(coupling) == _expected_members(coupling)
    assert not coupling.channel_of_atom.flags.writeable and not any(u.atoms.flags.writeable for u in coupling.uses)
    for g in coupling.groups:
        for m in g.members:
            assert not m.positions.flags.writeable and not m.channels.flags.writeable


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenet_v3_small", "shufflenet_v2_x0_5",
                                  "squeezenet1_0"])
def test_members_follow_the_definition_on_torchvision(name):
    """densenet's consumers read concatenations (members of many groups), shufflenet's split channels."""
    coupling = graphprune.couple(getattr(torchvision.models, name)().eval(), example_inputs=torch.randn(1, 3, 64, 64))
    _check(coupling)
    assert any(m.whole for g in coupling.groups for m in g.members)


@seed(20261203)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                HealthCheck.filter_too_much])
@given(net_specs())
def test_members_follow_the_definition_on_random_networks(spec):
    try:
        coupling = graphprune.couple(spec.build(), example_inputs=spec.example_input())
    except GraphPruneError:
        return  # refused by name: the fuzz test holds those to its property
    _check(coupling)
