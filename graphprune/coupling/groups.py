"""Channels and groups: what the join graph of atoms says must be removed together.

Channels are the connected components of the join graph over atoms (union-find in numpy: there is
one node per atom); *groups* are the connected components over the layers that produce them (a
networkx graph, drawn by ``graphprune inspect --dot``): a group's channels are removed by one decision.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .context import Role, RuleContext, TensorUse, concat_atoms

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["GroupMember", "ChannelGroup", "form_groups", "smallest_in_component"]


@dataclass(frozen=True, eq=False)
class GroupMember:
    """The part of a tensor use that belongs to one group: ``positions`` along the dim, and their channels.

    ``whole``: the use's positions are the group's channels, in order (``positions`` and ``channels`` are both
    ``0..size-1``), as for most layers; scorers then read per-position values as per-channel ones. False is
    always safe: it only means the general path.
    """

    use: TensorUse
    positions: np.ndarray
    channels: np.ndarray
    whole: bool = False


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Channels that are removed together, and every tensor slice they touch."""

    id: int
    size: int
    channel_ids: np.ndarray  # global channel id of each of the group's channels
    members: tuple[GroupMember, ...]
    pinned: np.ndarray  # bool per channel
    sources: tuple[str, ...]  # FX nodes that produce the group's channels
    inexact: tuple[str, ...] = ()  # why removing any of these channels is not exact

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "inexact", tuple(self.inexact))
        for array in (self.channel_ids, self.pinned):
            array.setflags(write=False)  # see couple(): a coupling is read-only

    @functools.cached_property
    def prunable(self) -> bool:
        has_producer = any(m.use.role == Role.PRODUCER for m in self.members)
        return has_producer and not bool(self.pinned.all())

    @property
    def num_prunable(self) -> int:
        return int((~self.pinned).sum()) if self.prunable else 0

    def removal_order(self, scores: np.ndarray) -> np.ndarray:
        """The channels a plan may remove, least important first (ties to the lower index).

        Pinned channels are left out, and so is the most important channel of every tensor slice that has
        no pinned channel: a tensor may index only part of a group (a depthwise conv on one piece of a
        split, as in MambaOut), and removing all of that part would leave it with no channels at all.
        """
        if not self.prunable:
            return np.zeros(0, dtype=np.int64)
        free = np.nonzero(~self.pinned)[0]
        ranked = free[np.argsort(scores[free], kind="stable")]
        rank = np.full(self.size, -1, dtype=np.int64)
        rank[ranked] = np.arange(len(ranked))
        kept = np.zeros(self.size, dtype=bool)
        seen = set()
        for member in self.members:
            channels = member.channels
            # A layer's weight, bias and norm slice the same channels; whole members all slice every channel.
            key = None if member.whole else channels.tobytes()
            if key in seen:
                continue
            seen.add(key)
            if not self.pinned[channels].any():
                kept[channels[np.argmax(rank[channels])]] = True
        return ranked[~kept[ranked]]


def smallest_in_component(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each of ``n`` nodes joined pairwise by the edges ``a[i] -- b[i]``, the smallest node of its connected
    component.

    The join graph has one node per atom (tens of thousands), so this is union-find in numpy rather than a
    networkx graph of Python objects: every root hooks onto the smallest root it is joined to, then pointers
    jump to their roots, until every edge joins one root.

    >>> smallest_in_component(6, np.array([4, 1, 2]), np.array([2, 5, 5])).tolist()
    [0, 1, 1, 3, 1, 1]
    """
    label = np.arange(n, dtype=np.int64)
    while a.size:
        la, lb = label[a], label[b]
        if np.array_equal(la, lb):
            break
        low = np.minimum(la, lb)
        np.minimum.at(label, la, low)
        np.minimum.at(label, lb, low)
        while True:  # pointer jumping: every node to its root
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped
    return label


def consumer_mirrors(ctx: RuleContext) -> np.ndarray:
    """Per space, whether it only mirrors channels made elsewhere: the atoms a ``get_attr`` gave a weight's dim
    that its op then read as inputs (``F.conv2d``'s weight dim 1, every conv of an exported graph).

    Such a space is joined index by index to the channels it reads. Those may come from several layers (a
    conv over a concatenation); linking them through the mirror would make one group of layers that a
    module rule keeps apart, so a mirror does not connect groups.
    """
    mirror = np.zeros(len(ctx.spaces), dtype=bool)
    read = {n.name for n in ctx.gm.graph.find_nodes(op="get_attr")}
    by_start = {s.start: i for i, s in enumerate(ctx.spaces) if s.node in read}
    for use in ctx.uses.values():
        if use.role != Role.CONSUMER or not len(use.atoms):
            continue
        i = by_start.get(int(use.atoms[0]))
        if i is None:
            continue
        space = ctx.spaces[i]
        if space.node == use.node and np.array_equal(use.atoms, np.arange(space.start, space.start + space.size)):
            mirror[i] = True
    return mirror


def form_groups(ctx: RuleContext) -> tuple[np.ndarray, list[ChannelGroup], nx.Graph]:
    """Channels (connected components of the atom joins) and groups (of the layers whose atoms are joined).

    Returns each atom's channel id, the groups, and the layer graph: one node per layer that allocated
    atoms (attributes ``node``, ``size`` and ``group``), an edge where two layers' channels are joined.
    """
    import networkx as nx  # here, not at import: a twelfth of a second of every CLI start

    n = ctx.n_atoms
    # Channels: connected components of the atom join graph.
    joined = [np.concatenate(side) for side in zip(*ctx.joins)] if ctx.joins else [np.zeros(0, np.int64)] * 2
    # A channel's id is its smallest atom's rank among the components' smallest atoms: np.unique's inverse,
    # without its sort.
    smallest = smallest_in_component(n, *joined)
    roots = smallest == np.arange(n)
    channel_of_atom = (np.cumsum(roots) - 1)[smallest]
    n_channels = int(roots.sum())

    # Groups: connected components of the layers (spaces) whose atoms are joined.
    sizes = np.array([s.size for s in ctx.spaces], dtype=np.int64)
    space_of_atom = np.repeat(np.arange(len(ctx.spaces)), sizes)
    mirror = consumer_mirrors(ctx)
    space_graph = nx.Graph()
    for i, s in enumerate(ctx.spaces):
        space_graph.add_node(i, node=s.node, size=s.size)
    from_space, to_space = space_of_atom[joined[0]], space_of_atom[joined[1]]
    across = (from_space != to_space) & ~mirror[from_space] & ~mirror[to_space]
    # The distinct pairs, sorted as np.unique(axis=0) would sort them, through one integer key per pair.
    keys = np.unique(from_space[across] * len(ctx.spaces) + to_space[across])
    space_graph.add_edges_from(zip(*(side.tolist() for side in np.divmod(keys, len(ctx.spaces)))))
    group_of_space = np.empty(len(ctx.spaces), dtype=np.int64)
    components = sorted((sorted(c) for c in nx.connected_components(space_graph)), key=lambda c: c[0])
    for g, spaces in enumerate(components):
        group_of_space[spaces] = g

    # Each channel's group, and its index inside the group (ordered by first atom: deterministic). A channel
    # belongs where its first atom outside a consumer mirror is (a mirror alone: its own, unprunable group).
    rank = np.arange(n) + n * mirror[space_of_atom].astype(np.int64)
    first_rank = np.full(n_channels, 2 * n, dtype=np.int64)
    np.minimum.at(first_rank, channel_of_atom, rank)
    first_atom = first_rank % max(n, 1)
    group_of_channel = group_of_space[space_of_atom[first_atom]]
    # A mirror whose every channel belongs elsewhere is no group of its own; it is drawn in its channels' group.
    kept = np.unique(group_of_channel)
    renumber = np.full(len(components), -1, dtype=np.int64)
    renumber[kept] = np.arange(len(kept))
    components = [[s for s in components[g] if not mirror[s] or renumber[g] >= 0] for g in kept]
    group_of_channel = renumber[group_of_channel]
    for i in range(len(ctx.spaces)):
        own = renumber[group_of_space[i]]
        start = ctx.spaces[i].start
        space_graph.nodes[i]["group"] = int(own if own >= 0 or not ctx.spaces[i].size
                                            else group_of_channel[channel_of_atom[start]])
    order = np.lexsort((first_atom, group_of_channel))
    local = np.empty(n_channels, dtype=np.int64)
    counts = np.bincount(group_of_channel, minlength=len(components))
    starts = np.cumsum(counts) - counts  # also right for a model without any channel (no groups)
    local[order] = np.arange(n_channels) - np.repeat(starts, counts)

    pinned = np.zeros(n_channels, dtype=bool)
    for atoms, _ in ctx.pins:
        pinned[channel_of_atom[atoms]] = True

    inexact: list[list[str]] = [[] for _ in components]
    for atoms, reason in ctx.inexact:
        for g in np.unique(group_of_channel[channel_of_atom[atoms]]):
            if reason not in inexact[g]:
                inexact[g].append(reason)

    members = _members(ctx, channel_of_atom, group_of_channel, local, counts)

    groups = []
    for g, spaces in enumerate(components):
        in_group = order[starts[g]:starts[g] + counts[g]]
        groups.append(
            ChannelGroup(
                id=g,
                size=int(counts[g]),
                channel_ids=in_group,
                members=members[g],
                pinned=pinned[in_group],
                sources=[ctx.spaces[s].node for s in spaces],
                inexact=inexact[g],
            )
        )
    return channel_of_atom, groups, space_graph


def _members(ctx: RuleContext, channel_of_atom: np.ndarray, group_of_channel: np.ndarray, local: np.ndarray,
             counts: np.ndarray) -> list[list[GroupMember]]:
    """Each group's members: every tensor use split by the groups its channels belong to.

    The uses' atoms are looked up in one pass over their concatenation (a few numpy calls for the whole graph,
    not five per use); a use in one group, as most are, gets views of the results.
    """
    members: list[list[GroupMember]] = [[] for _ in counts]  # counts: each group's channels
    uses = [use for use in ctx.uses.values() if len(use.atoms)]
    if not uses:
        return members
    atoms, bounds = concat_atoms(uses)
    starts, lengths = bounds[:-1], np.diff(bounds)
    channels = channel_of_atom[atoms]
    groups_here, locals_here = group_of_channel[channels], local[channels]
    positions = np.arange(len(channels)) - np.repeat(starts, lengths)
    for array in (positions, locals_here):
        array.setflags(write=False)  # see couple(): a coupling is read-only, and so are the views made below
    first = groups_here[starts]
    single = np.minimum.reduceat(groups_here, starts) == np.maximum.reduceat(groups_here, starts)
    in_order = np.logical_and.reduceat(locals_here == positions, starts)
    whole = single & in_order & (lengths == counts[first])
    for use, start, n, g, one, all_in_order in zip(uses, starts.tolist(), lengths.tolist(), first.tolist(),
                                                   single.tolist(), whole.tolist()):
        if one:
            end = start + n
            members[g].append(GroupMember(use, positions[start:end], locals_here[start:end], all_in_order))
            continue
        use_groups, use_channels = groups_here[start:start + n], channels[start:start + n]
        for g in np.unique(use_groups):
            where = np.nonzero(use_groups == g)[0]
            mine = local[use_channels[where]]
            where.setflags(write=False)
            mine.setflags(write=False)
            members[g].append(GroupMember(use, where, mine))
    return members
