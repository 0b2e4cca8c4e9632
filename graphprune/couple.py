"""Stage 2: build the dependency graph of coupled channels.

Walks the traced graph in order and asks each node's rule how channels flow
through it. The results live on the graph itself (``node.meta["graphprune"]``
holds each node's :class:`~graphprune.channels.ChannelMap`). Rules record:

- *joins*: atoms that must be pruned together (the two sides of a residual add);
- *pins*: atoms that must never be pruned (model outputs, channel-mixing ops);
- *tensor uses*: which dim of which parameter or buffer is indexed by which atoms;
- *inexact marks*: atoms whose removal changes what the kept channels compute
  (a LayerNorm's statistics run over them), so the rewrite is an approximation.

Channels are then the connected components of the join graph over atoms, and
*groups* are the connected components over the layers that produce them: a
group's channels are removed by one decision. Both use networkx.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch
import torch.fx
from torch import nn

from .channels import Block, ChannelMap, LayoutError
from .errors import InputError, UnsupportedOpError
from .registry import Registry

__all__ = ["Role", "TensorUse", "ShapeEdit", "GroupMember", "ChannelGroup", "Coupling", "RuleContext", "couple", "META_KEY"]

META_KEY = "graphprune"


class Role:
    """What a tensor slice is to its channel; it decides how scorers and masks treat it."""

    PRODUCER = "producer"  # an output filter or feature: weight rows that create the channel
    CONSUMER = "consumer"  # an input slice: weight columns that read the channel
    NORM = "norm"  # a per-channel scale (BatchNorm weight)
    BIAS = "bias"  # a per-channel shift (conv/linear/norm bias)
    BUFFER = "buffer"  # per-channel state (running statistics)
    DIRECT = "direct"  # a parameter used directly in the graph (get_attr)

    WEIGHTS = (PRODUCER, CONSUMER, NORM)
    MASKED = (PRODUCER, CONSUMER, NORM, BIAS, DIRECT)


@dataclass
class TensorUse:
    """One dim of one parameter or buffer, indexed by atoms."""

    tensor: str
    dim: int
    atoms: np.ndarray
    role: str
    node: str


@dataclass
class ShapeEdit:
    """An integer constant in the graph (a ``view`` size) that counts kept channels along ``axis`` of ``block``."""

    node: str
    path: tuple[Any, ...]
    old: int
    block: Block
    axis: int


@dataclass
class GroupMember:
    """The part of a tensor use that belongs to one group: ``positions`` along the dim, and their channels."""

    use: TensorUse
    positions: np.ndarray
    channels: np.ndarray


@dataclass
class ChannelGroup:
    """Channels that are removed together, and every tensor slice they touch."""

    id: int
    size: int
    channel_ids: np.ndarray  # global channel id of each of the group's channels
    members: list[GroupMember]
    pinned: np.ndarray  # bool per channel
    sources: list[str]  # FX nodes that produce the group's channels
    inexact: list[str] = field(default_factory=list)  # why removing any of these channels is not exact

    @property
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
        kept = set()
        for member in self.members:
            channels = np.unique(member.channels)
            if not self.pinned[channels].any():
                kept.add(int(channels[np.argmax(rank[channels])]))
        return ranked[~np.isin(ranked, sorted(kept))]


@dataclass
class _Space:
    start: int
    size: int
    node: str


class _TensorIndex:
    """Canonical names of parameters and buffers, so tied tensors are sliced once."""

    def __init__(self, root: nn.Module):
        self.name_of: dict[int, str] = {}
        self.aliases: dict[str, list[str]] = defaultdict(list)
        self.tensors: dict[str, torch.Tensor] = {}
        named = list(root.named_parameters(remove_duplicate=False)) + list(root.named_buffers(remove_duplicate=False))
        for name, tensor in named:
            canonical = self.name_of.setdefault(id(tensor), name)
            self.aliases[canonical].append(name)
            self.tensors.setdefault(canonical, tensor)


class RuleContext:
    """What a rule may read and record. One context serves a whole walk over the graph."""

    def __init__(self, gm: torch.fx.GraphModule, ignored: Sequence[str]):
        self.gm = gm
        self.node: torch.fx.Node | None = None
        self._ignored = tuple(ignored)
        self._index = _TensorIndex(gm)
        self.spaces: list[_Space] = []
        self.n_atoms = 0
        self.joins: list[tuple[np.ndarray, np.ndarray]] = []
        self.pins: list[tuple[np.ndarray, str]] = []
        self.uses: dict[tuple[str, int], TensorUse] = {}
        self.shape_edits: list[ShapeEdit] = []
        self.inexact: list[tuple[np.ndarray, str]] = []

    # -- reading ------------------------------------------------------------------
    def channels(self, arg: Any) -> ChannelMap | None:
        """The channel map of an argument: None for non-tensors and constants."""
        if isinstance(arg, torch.fx.Node):
            return arg.meta.get(META_KEY)
        return None

    def shape(self, arg: Any) -> torch.Size | None:
        """The propagated shape of a tensor-valued node (None if it is not a single tensor)."""
        if isinstance(arg, torch.fx.Node):
            meta = arg.meta.get("tensor_meta")
            return getattr(meta, "shape", None)
        if isinstance(arg, torch.Tensor):
            return arg.shape
        return None

    def module(self, node: torch.fx.Node | None = None) -> nn.Module:
        node = node or self.node
        return self.gm.get_submodule(node.target)

    # -- recording ----------------------------------------------------------------
    def new_channels(self, size: int) -> np.ndarray:
        """Allocate ``size`` fresh atoms produced by the current node."""
        start = self.n_atoms
        self.spaces.append(_Space(start, size, self.node.name))
        self.n_atoms += size
        return np.arange(start, start + size, dtype=np.int64)

    def join(self, a: np.ndarray, b: np.ndarray) -> None:
        """Require two equally shaped atom arrays to be pruned index by index together."""
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise LayoutError(f"cannot couple channel arrays of shapes {a.shape} and {b.shape}")
        self.joins.append((a.ravel(), b.ravel()))

    def pin(self, atoms: np.ndarray, reason: str) -> None:
        """Never prune these atoms (an interface, or an op whose result depends on every channel)."""
        atoms = np.asarray(atoms).ravel()
        if atoms.size:
            self.pins.append((atoms, f"{reason} at {self.node.name if self.node else '?'}"))

    def mark_inexact(self, atoms: np.ndarray, reason: str) -> None:
        """Removing any of these atoms changes what the kept channels compute (a norm's statistics).

        Such channels may still be pruned, but the plan says so: its groups carry ``reason``
        and :func:`graphprune.verdict` reports "not exact" instead of a round-off figure.
        """
        atoms = np.asarray(atoms).ravel()
        if atoms.size:
            self.inexact.append((atoms, f"{reason} at {self.node.name if self.node else '?'}"))

    def use_tensor(self, owner: str, attr: str, dim: int, atoms: np.ndarray | None, role: str) -> None:
        """Record that ``owner.attr`` (a parameter or buffer) is indexed by ``atoms`` along ``dim``."""
        if atoms is None:
            return
        tensor = getattr(self.gm.get_submodule(owner), attr, None)
        if tensor is None:
            return
        name = self._index.name_of.get(id(tensor))
        if name is None:
            raise UnsupportedOpError(
                f"{owner}.{attr} is not a registered parameter or buffer", node=self.node,
                hint="register it with register_parameter/register_buffer so it can be sliced",
            )
        atoms = np.asarray(atoms, dtype=np.int64)
        if atoms.shape != (tensor.shape[dim],):
            raise LayoutError(f"{name} has {tensor.shape[dim]} entries along dim {dim}, the rule gave {atoms.shape}")
        if any(self._is_ignored(alias) for alias in self._index.aliases[name]):
            self.pin(atoms, f"{name} belongs to an ignored module")
        key = (name, dim)
        if key in self.uses:  # shared weights: a second call must index the same channels
            existing = self.uses[key]
            if not np.array_equal(existing.atoms, atoms):
                self.join(existing.atoms, atoms)
            if existing.role == Role.DIRECT and role != Role.DIRECT:
                # A get_attr records a generic direct use; the op that consumes the tensor
                # (F.conv2d, F.linear...) knows what it is to the channel, e.g. a producer.
                existing.role = role
        else:
            self.uses[key] = TensorUse(name, dim, atoms, role, self.node.name)

    def edit_shape(self, path: tuple[Any, ...], old: int, block: Block, axis: int) -> None:
        """Record that an integer argument of the current node counts channels of ``block`` along ``axis``."""
        self.shape_edits.append(ShapeEdit(self.node.name, path, old, block, axis))

    def module_ignored(self, name: str) -> bool:
        """Whether the submodule ``name`` is, or is inside, a module the user asked to ignore."""
        return any(prefix == "" or name == prefix or name.startswith(prefix + ".") for prefix in self._ignored)

    def _is_ignored(self, tensor_name: str) -> bool:
        return any(prefix == "" or tensor_name.startswith(prefix + ".") for prefix in self._ignored)

    def tensor(self, name: str) -> torch.Tensor:
        return self._index.tensors[name]

    def aliases(self, name: str) -> list[str]:
        return self._index.aliases[name]


@dataclass
class Coupling:
    """The result of stage 2: atoms, channels, groups, and the tensors and constants they index."""

    gm: torch.fx.GraphModule
    ctx: RuleContext
    channel_of_atom: np.ndarray
    groups: list[ChannelGroup]
    graph: nx.Graph = field(repr=False)
    example_args: tuple[Any, ...] = ()
    leaf_modules: tuple[str, ...] = ()

    @property
    def uses(self) -> list[TensorUse]:
        return list(self.ctx.uses.values())


def _flatten_maps(value: Any) -> Iterable[ChannelMap]:
    if isinstance(value, ChannelMap):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _flatten_maps(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _flatten_maps(v)


def _untracked_like(meta: Any) -> Any:
    """An empty channel map for every tensor in a (possibly nested) output, None elsewhere."""
    if meta is None:
        return None
    if hasattr(meta, "shape") and hasattr(meta, "dtype"):
        return ChannelMap()
    if isinstance(meta, (list, tuple)):
        return [_untracked_like(m) for m in meta]
    if isinstance(meta, dict):
        return {k: _untracked_like(v) for k, v in meta.items()}
    return None


def _check_output(node: torch.fx.Node, result: Any, meta: Any) -> None:
    """A rule's result must describe the tensor the node really produces."""
    if isinstance(result, ChannelMap):
        shape = getattr(meta, "shape", None)
        if shape is None:
            raise LayoutError("the rule returned channels for a value that is not a tensor")
        for block in result.blocks:
            if any(d < 0 or d >= len(shape) for d in block.dims):
                raise LayoutError(f"the rule returned a block over dims {block.dims} of a {len(shape)}-D tensor")
            expected = tuple(shape[d] for d in block.dims)
            if block.atoms.shape != expected:
                raise LayoutError(f"the rule returned {block.atoms.shape} atoms for dims of size {expected}")
    elif isinstance(result, (list, tuple)) and isinstance(meta, (list, tuple)):
        for r, m in zip(result, meta):
            _check_output(node, r, m)


def _resolve_ignored(root: nn.Module, ignore: Iterable[Any]) -> list[str]:
    by_id = {id(m): name for name, m in root.named_modules()}
    names = set(by_id.values())
    out = []
    for item in ignore:
        if isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise InputError(f"ignore lists a {type(item).__name__} that is not a submodule of the model")
            out.append(by_id[id(item)])
        elif isinstance(item, str):
            if item not in names:
                close = sorted(n for n in names if item in n)[:5]
                raise InputError(
                    f"ignore names {item!r}, which is not a submodule of the model",
                    hint=f"did you mean one of {close}?" if close else "see model.named_modules() for valid names",
                )
            out.append(item)
        else:
            raise InputError(f"ignore takes module names or module objects, not {type(item).__name__}")
    return out


def couple(gm: torch.fx.GraphModule, registry: Registry, *, ignore: Iterable[Any] = (), model: nn.Module | None = None) -> Coupling:
    """Run every node's rule over a shape-propagated graph and form channels and groups."""
    ignored = _resolve_ignored(model if model is not None else gm, ignore)
    # Tracing keeps qualified names, so names in the original model and in gm agree.
    ctx = RuleContext(gm, ignored)
    for node in gm.graph.nodes:
        ctx.node = node
        meta = node.meta.get("tensor_meta")
        if node.op == "placeholder":
            result = _untracked_like(meta)
        elif node.op == "get_attr":
            result = _get_attr(ctx, node, meta)
        elif node.op == "output":
            for cmap in _flatten_maps(_collect(node.args)):
                ctx.pin(cmap.all_atoms(), "model output")
            result = None
        else:
            result = _run_rule(ctx, node, registry, meta)
        node.meta[META_KEY] = result
    ctx.node = None
    return _form_groups(gm, ctx)


def _collect(args: Any) -> Any:
    return torch.fx.node.map_arg(args, lambda n: n.meta.get(META_KEY))


def _get_attr(ctx: RuleContext, node: torch.fx.Node, meta: Any) -> Any:
    shape = getattr(meta, "shape", None)
    if shape is None:
        return None
    owner, _, attr = node.target.rpartition(".")
    module = ctx.gm.get_submodule(owner)
    if attr not in module._parameters:
        # A buffer is fixed data (an index table, a mask, a coordinate grid): it carries no channels, so an
        # op that meets it with channels pins them rather than slicing it. The exception is a floating
        # per-channel vector, one dim longer than 1 (an offset of shape 1xCx1x1, running statistics read
        # by F.batch_norm): it is sliced like a parameter.
        per_channel = meta.dtype.is_floating_point and sum(size > 1 for size in shape) == 1
        if not per_channel:
            return ChannelMap()
    blocks = []
    for dim, size in enumerate(shape):
        if size > 1:
            atoms = ctx.new_channels(size)
            ctx.use_tensor(owner, attr, dim, atoms, Role.DIRECT)
            blocks.append(Block((dim,), atoms))
    return ChannelMap(tuple(blocks))


def _run_rule(ctx: RuleContext, node: torch.fx.Node, registry: Registry, meta: Any) -> Any:
    rule = registry.rule_for(node, ctx.gm)
    tracked = any(_flatten_maps([n.meta.get(META_KEY) for n in node.all_input_nodes]))
    if rule is None:
        if not tracked:  # nothing prunable flows through it, so whatever it does is safe
            return _untracked_like(meta)
        if node.op == "call_module" and ctx.module_ignored(node.target):
            # An ignored module is opaque: keep every channel it reads; what it writes is fixed.
            for cmap in _flatten_maps([n.meta.get(META_KEY) for n in node.all_input_nodes]):
                ctx.pin(cmap.all_atoms(), "input of an ignored module")
            return _untracked_like(meta)
        if node.op == "call_module":
            what = f"module {type(ctx.module(node)).__qualname__}"
        elif node.op == "call_function":
            what = f"function {getattr(node.target, '__name__', node.target)}"
        else:
            what = f"method Tensor.{node.target}"
        raise UnsupportedOpError(
            f"graphprune has no channel rule for {what}, and its inputs carry prunable channels",
            node=node,
            hint="register a rule for it (see docs/custom_rules.md: registry = graphprune.default_registry(); "
            "@registry.module/function/method(...)), or keep its channels with ignore=[...] / leaf_modules=[...]",
        )
    try:
        result = rule(ctx, node)
        _check_output(node, result, meta)
    except LayoutError as exc:
        raise UnsupportedOpError(
            f"cannot map channels through this op: {exc}",
            node=node,
            hint="list the enclosing module in ignore=[...] to keep its channels, or register a rule that handles this layout",
        ) from exc
    return result


def _form_groups(gm: torch.fx.GraphModule, ctx: RuleContext) -> Coupling:
    n = ctx.n_atoms
    # Channels: connected components of the atom join graph.
    atom_graph = nx.Graph()
    for a, b in ctx.joins:
        atom_graph.add_edges_from(zip(a.tolist(), b.tolist()))
    label = np.arange(n, dtype=np.int64)
    for component in nx.connected_components(atom_graph):
        ids = np.fromiter(component, dtype=np.int64)
        label[ids] = ids.min()
    _, channel_of_atom = np.unique(label, return_inverse=True)
    n_channels = int(channel_of_atom.max()) + 1 if n else 0

    # Groups: connected components of the layers (spaces) whose atoms are joined.
    sizes = np.array([s.size for s in ctx.spaces], dtype=np.int64)
    space_of_atom = np.repeat(np.arange(len(ctx.spaces)), sizes)
    space_graph = nx.Graph()
    for i, s in enumerate(ctx.spaces):
        space_graph.add_node(i, node=s.node, size=s.size)
    for a, b in ctx.joins:
        pairs = np.unique(np.stack([space_of_atom[a], space_of_atom[b]], axis=1), axis=0)
        space_graph.add_edges_from((int(x), int(y)) for x, y in pairs if x != y)
    group_of_space = np.empty(len(ctx.spaces), dtype=np.int64)
    components = sorted((sorted(c) for c in nx.connected_components(space_graph)), key=lambda c: c[0])
    for g, spaces in enumerate(components):
        group_of_space[spaces] = g
        for s in spaces:
            space_graph.nodes[s]["group"] = g

    # Each channel's group, and its index inside the group (ordered by first atom: deterministic).
    first_atom = np.full(n_channels, n, dtype=np.int64)
    np.minimum.at(first_atom, channel_of_atom, np.arange(n))
    group_of_channel = group_of_space[space_of_atom[first_atom]]
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

    members: list[list[GroupMember]] = [[] for _ in components]
    for use in ctx.uses.values():
        channels = channel_of_atom[use.atoms]
        groups_here = group_of_channel[channels]
        for g in np.unique(groups_here):
            positions = np.nonzero(groups_here == g)[0]
            members[g].append(GroupMember(use, positions, local[channels[positions]]))

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
    return Coupling(gm, ctx, channel_of_atom, groups, space_graph)
