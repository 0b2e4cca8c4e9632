"""Stage 2's verb: walk the captured graph, ask each node's rule how channels flow, and freeze the result.

The rules' results live on the graph itself: ``node.meta["graphprune"]`` holds each node's
:class:`~graphprune.coupling.channels.ChannelMap`. An op that carries channels but has no rule
raises :class:`~graphprune.UnsupportedOpError` naming the FX node and the user's source line.

>>> import torch, torchvision
>>> from graphprune.capture import capture
>>> c = couple(capture(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64)))
>>> len(c.groups), c.groups[1].size, c.groups[1].sources[:2]
(13, 64, ('layer1_0_conv1',))
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx
from torch import nn

from ..base.errors import UnsupportedOpError
from ..capture import Captured
from ..capture.graph import nodes_by_name
from .channels import Block, ChannelMap, LayoutError
from .context import META_KEY, Role, RuleContext, ShapeEdit, TensorUse, concat_atoms
from .groups import ChannelGroup, form_groups
from .registry import Registry
from .scope import Scope, as_scope

if TYPE_CHECKING:  # networkx is imported where the layer graph is built: a twelfth of a second of every CLI start
    import networkx as nx

__all__ = ["Coupling", "couple"]


@dataclass(frozen=True, eq=False)
class Coupling:
    """Stage 2's result, read-only: the captured model, its channel groups and every tensor slice they index.

    ``groups`` are the sets of channels removed together; ``uses`` say which dim of which parameter
    or buffer (by canonical name: tied tensors once) is indexed by which atoms; ``shape_edits`` are the
    integer constants of the graph that count channels; ``graph`` is the layer graph (networkx) that
    ``graphprune inspect --dot`` draws.
    """

    captured: Captured
    scope: Scope
    channel_of_atom: np.ndarray
    groups: tuple[ChannelGroup, ...]
    graph: nx.Graph = field(repr=False)
    uses: tuple[TensorUse, ...] = ()
    shape_edits: tuple[ShapeEdit, ...] = ()
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict, repr=False)  # canonical name -> tensor
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)  # every name of a tensor

    @property
    def model(self) -> nn.Module:
        return self.captured.model

    @property
    def gm(self) -> torch.fx.GraphModule:
        return self.captured.gm

    @property
    def example_args(self) -> tuple[Any, ...]:
        return self.captured.args

    @property
    def leaf_modules(self) -> tuple[str, ...]:
        return self.captured.leaf_modules

    @property
    def n_channels(self) -> int:
        return int(self.channel_of_atom.max()) + 1 if len(self.channel_of_atom) else 0

    @functools.cached_property
    def use_atoms(self) -> tuple[np.ndarray, np.ndarray]:
        """Every use's atoms end to end, and the bounds of each use's run (:func:`.context.concat_atoms`)."""
        atoms, bounds = concat_atoms(self.uses)
        atoms.setflags(write=False)
        bounds.setflags(write=False)
        return atoms, bounds

    @functools.cached_property
    def nodes(self) -> Mapping[str, torch.fx.Node]:
        """The graph's nodes by name."""
        return MappingProxyType(nodes_by_name(self.gm))

    def module_paths(self, group: ChannelGroup) -> list[str]:
        """The qualified module paths that produce a group's channels (``layer4.0.conv1``); the FX node name
        where no module produces them (a functional op)."""
        names = []
        for source in group.sources:
            node = self.nodes.get(source)
            if node is not None and node.op == "call_module":
                names.append(str(node.target))
            elif node is not None and node.op == "get_attr":  # a tensor the graph reads (F.conv2d, an export)
                names.append(str(node.target).rpartition(".")[0] or str(node.target))
            else:
                names.append(source)
        return names


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


def couple(captured: Captured, scope: Scope | None = None) -> Coupling:
    """Run every node's rule over a captured graph and form channels and groups."""
    scope = as_scope(scope)
    gm = captured.gm
    # Tracing keeps qualified names, so names in the original model and in gm agree.
    ctx = RuleContext(gm, scope.ignored_names(captured.model))
    registry = scope.registry
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
    channel_of_atom, groups, graph = form_groups(ctx)
    # A coupling is a fact about the model: planners read it, never edit it (an edited array would silently
    # change every plan made from it). form_groups makes its members' arrays read-only.
    for array in (channel_of_atom, *(u.atoms for u in ctx.uses.values())):
        array.setflags(write=False)
    used = {use.tensor for use in ctx.uses.values()}
    return Coupling(
        captured=captured, scope=scope, channel_of_atom=channel_of_atom, groups=tuple(groups), graph=graph,
        uses=tuple(ctx.uses.values()), shape_edits=tuple(ctx.shape_edits),
        tensors=MappingProxyType({name: ctx.tensor(name) for name in sorted(used)}),
        aliases=MappingProxyType({name: tuple(ctx.aliases(name)) for name in sorted(used)}),
    )


def _collect(args: Any) -> Any:
    return torch.fx.node.map_arg(args, lambda n: n.meta.get(META_KEY))


def _get_attr(ctx: RuleContext, node: torch.fx.Node, meta: Any) -> Any:
    shape = getattr(meta, "shape", None)
    if shape is None:
        return None
    owner, _, attr = node.target.rpartition(".")
    module = ctx.submodule(owner)
    if attr not in module._parameters and attr not in module._buffers:
        return ChannelMap()  # a plain tensor attribute (an export lifts it as a constant: ultralytics' stride)
    if attr not in module._parameters:
        # A buffer is fixed data (an index table, a mask, a coordinate grid): it carries no channels, so an
        # op that meets it with channels pins them rather than slicing it. The exception is a floating
        # per-channel vector, one dim longer than 1 (an offset of shape 1xCx1x1, running statistics read
        # by F.batch_norm): it is sliced like a parameter.
        # A non-persistent buffer is not state at all but derived from the config (rotary embeddings' inv_freq).
        per_channel = meta.dtype.is_floating_point and sum(size > 1 for size in shape) == 1
        if not per_channel or attr in module._non_persistent_buffers_set:
            return ChannelMap()
    blocks = []
    for dim, size in enumerate(shape):
        if size > 1:
            atoms = ctx.new_channels(size)
            ctx.use_tensor(owner, attr, dim, atoms, Role.DIRECT)
            blocks.append(Block((dim,), atoms))
    return ChannelMap(tuple(blocks))


def _run_rule(ctx: RuleContext, node: torch.fx.Node, registry: Registry, meta: Any) -> Any:
    rule = registry.rule_for_module(ctx.module(node)) if node.op == "call_module" else registry.rule_for(node, ctx.gm)
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
            "@registry.module/function/method(...)), or keep its channels with graphprune.Scope(ignore=[...]) / Scope(leaf_modules=[...])",
        )
    try:
        result = rule(ctx, node)
        _check_output(node, result, meta)
    except LayoutError as exc:
        raise UnsupportedOpError(
            f"cannot map channels through this op: {exc}",
            node=node,
            hint="list the enclosing module in graphprune.Scope(ignore=[...]) to keep its channels, or register a rule that handles this layout",
        ) from exc
    return result
