"""Rules for ops that move or reshape dims: flatten, view, permute, indexing, concatenation, shape queries."""

from __future__ import annotations

import builtins
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
from torch import nn

from ..channels import Block, ChannelMap, LayoutError, reshape_channels, reshape_groups
from ..registry import Registry
from ._common import arg, arg_path, fix_untracked_dims, input_arg, join_along, keep_whole, op_name, pass_through, project

__all__ = ["RULES", "index_channels", "index_along", "keep_count", "slice_block"]

RULES = Registry()


@RULES.module(nn.Flatten, nn.Unflatten)
@RULES.function(torch.flatten)
@RULES.method("flatten", "unflatten")
def flatten(ctx, node):
    """Merges dims: a channel becomes a run of consecutive features (C×H×W into a Linear)."""
    x = input_arg(node)
    cmap = ctx.channels(x)
    if not cmap:
        return ChannelMap()
    out, _, pinned = reshape_channels(cmap, ctx.shape(x), ctx.shape(node))
    ctx.pin(pinned, "channel folded into an untracked dim")
    return out


def _size_args(node: torch.fx.Node) -> tuple[list, tuple]:
    """The target sizes of a view/reshape, and the argument path where they start."""
    if node.op == "call_method":
        rest = node.args[1:]
        if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
            return list(rest[0]), (1,)
        if not rest and "shape" in node.kwargs:
            return list(node.kwargs["shape"]), ("shape",)
        return list(rest), ()
    return list(arg(node, 1, "shape")), arg_path(node, 1, "shape")


@RULES.function(torch.reshape)
@RULES.method("view", "reshape")
def reshape(ctx, node):
    """A view/reshape: channels follow the elements; integer sizes of channel dims are rewritten."""
    x = input_arg(node)
    cmap = ctx.channels(x)
    if not cmap:
        _tie_run_time_sizes(ctx, node, ChannelMap())
        return ChannelMap()
    out, changed = _viewed(ctx, cmap, ctx.shape(x), ctx.shape(node))
    sizes, prefix = _size_args(node)
    if len(sizes) != len(ctx.shape(node)):  # the shape is one value built at run time (x.size()[:-1] + (h, d))
        if changed:
            raise LayoutError("a view whose target shape is one value built at run time: the channel sizes inside "
                              "it cannot be rewritten (pass the sizes as separate arguments)")
        return out
    _tie_run_time_sizes(ctx, node, out)
    for d in changed:
        value = sizes[d]
        if isinstance(value, int) and value != -1:
            block = out.block_at(d)
            path = prefix + (d,) if prefix != () else (1 + d,)
            ctx.edit_shape(path, value, block, block.dims.index(d))
    for block in out.blocks:
        # One -1 among literal sizes is what the literals leave (Llama's view(1, 8, -1, 8) of heads x head_dim),
        # so whole rows may go; a size computed at run time is not rewritten, so rows must stay.
        if len(block.dims) > 1 and any(not isinstance(sizes[d], int) for d in block.dims):
            _keep_grid(ctx, block)
    return out


def _viewed(ctx, cmap: ChannelMap, in_shape, out_shape) -> tuple[ChannelMap, list[int]]:
    """Channels through a view of ``in_shape`` as ``out_shape``, and the output dims whose size they set; a
    channel folded into an untracked dim is pinned."""
    cmap = _rows_across_groups(ctx, cmap, in_shape, out_shape)
    out, changed, pinned = reshape_channels(cmap, in_shape, out_shape)
    ctx.pin(pinned, "channel folded into an untracked dim")
    return out, changed


def _rows_across_groups(ctx, cmap: ChannelMap, in_shape, out_shape) -> ChannelMap:
    """A view that sends the dims of one channel block to different output dims keeps its leading rows whole.

    MViT's pooling views ``[B, heads, head_dim, N]`` as ``[B * heads, head_dim, T, H, W]``:
    heads join the batch, head_dim becomes the conv's channel dim. A block can only be cut
    along whole slices, so its atoms are joined along the dims outside the first group of
    dims the view maps together (each head's head_dim becomes part of the head's channel):
    the heads stay prunable and head_dim keeps its size. Joining never makes a plan unsound.
    """
    cmap = cmap.normalized(len(in_shape))
    group_of = {d: g for g, (in_dims, _) in enumerate(reshape_groups(in_shape, out_shape)) for d in in_dims}
    blocks = []
    for block in cmap.blocks:
        first = min(group_of[d] for d in block.dims)
        blocks.append(project(ctx, block, [d for d in block.dims if group_of[d] == first]))
    return ChannelMap(tuple(blocks))


def _keep_grid(ctx, block: Block) -> None:
    """A block split over several dims at run-time sizes (``view(b, g, c // g, h, w)``, a channel shuffle).

    The pruned tensor is viewed with sizes computed from its own channel count, which
    only matches the original layout if the kept channels form a grid. Joining each
    row's position i with row 0's keeps every row and removes the same positions from
    all of them (no constant records the row count, so rows must stay).
    """
    rows = block.atoms.reshape(-1, block.atoms.shape[-1])
    for row in rows[1:]:
        ctx.join(rows[0], row)


def _permutation(ndim: int, order) -> list[int]:
    order = [int(d) % ndim for d in order]
    old_to_new = [0] * ndim
    for new, old in enumerate(order):
        old_to_new[old] = new
    return old_to_new


@RULES.function(torch.permute)
@RULES.method("permute")
def permute(ctx, node):
    """Reorders dims: channels move with their dim."""
    x = input_arg(node)
    cmap = ctx.channels(x) or ChannelMap()
    ndim = len(ctx.shape(x))
    rest = node.args[1:] if node.op == "call_method" else node.args[1:2]
    order = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
    if not order:
        order = node.kwargs.get("dims")
    return cmap.normalized(ndim).remap(_permutation(ndim, order))


@RULES.function(torch.transpose, torch.swapaxes)
@RULES.method("transpose", "swapaxes")
def transpose(ctx, node):
    """Swaps two dims: channels move with their dim."""
    x = input_arg(node)
    cmap = ctx.channels(x) or ChannelMap()
    ndim = len(ctx.shape(x))
    a, b = int(arg(node, 1, "dim0")) % ndim, int(arg(node, 2, "dim1")) % ndim
    order = list(range(ndim))
    order[a], order[b] = order[b], order[a]
    return cmap.normalized(ndim).remap(_permutation(ndim, order))


@RULES.method("size", "dim", "numel")
@RULES.function(builtins.len, torch.numel)
def shape_query(ctx, node):
    """Reads sizes: an int computed at run time. ``x.size(d)`` of a channel dim remembers its channels."""
    if op_name(node) not in ("size", "sym_size"):
        return None
    x = input_arg(node)
    sizes = _sizes_of(ctx, x)
    dim = arg(node, 1, "dim")
    return sizes if dim is None else sizes[int(dim)]


_METADATA = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"})


@RULES.function(builtins.getattr)
def tensor_attribute(ctx, node):
    """``x.shape`` and other metadata: not a tensor, nothing to prune."""
    if ctx.shape(node) is None and node.args[1] == "shape":
        return _sizes_of(ctx, node.args[0])
    if ctx.shape(node) is None and node.args[1] in _METADATA:
        return None
    raise LayoutError(f"tensor attribute .{node.args[1]} is not supported")


@RULES.function(operator.getitem)
def getitem(ctx, node):
    """Picks an element of a tuple, or indexes a tensor with ints, slices, None and index tensors.

    Slicing a channel dim (``x[:, 16:64]``) keeps those channels' atoms and rewrites the bounds to counts of
    kept channels. An int or an index tensor on a channel dim is handled by :func:`index_channels`.
    """
    x, index = node.args
    value = ctx.channels(x)
    if isinstance(value, (list, tuple)):
        return value[index]
    if isinstance(value, dict):
        return value[index]
    in_shape = ctx.shape(x)
    if in_shape is None:
        return None
    cmap = (value or ChannelMap()).normalized(len(in_shape))
    if not cmap:
        return ChannelMap()
    items = _expand_index(index if isinstance(index, tuple) else (index,), len(in_shape))
    # A bound's place in the node's args: (1, position) in a tuple index, (1,) for a lone slice.
    paths = [None if position is None else ((1, position) if isinstance(index, tuple) else (1,)) for position, _ in items]
    return index_channels(ctx, cmap, in_shape, [item for _, item in items], paths, ctx.shape(node))


def _expand_index(index: tuple, ndim: int) -> list[tuple[int | None, object]]:
    """Each index item with its position in the user's index (None for the ``:`` an Ellipsis or a short index
    stands for). A boolean mask consumes as many dims as it has."""
    def consumed(item):
        if item is None:
            return 0
        if isinstance(item, torch.fx.Node) and _is_mask(item):
            return len(item.meta["tensor_meta"].shape)
        return 1

    items = list(enumerate(index))
    if any(i is Ellipsis for _, i in items):
        at = next(k for k, (_, i) in enumerate(items) if i is Ellipsis)
        used = sum(consumed(i) for _, i in items if i is not Ellipsis)
        items = items[:at] + [(None, slice(None))] * (ndim - used) + items[at + 1:]
    used = sum(consumed(i) for _, i in items)
    return items + [(None, slice(None))] * (ndim - used)


def _is_mask(item: torch.fx.Node) -> bool:
    meta = item.meta.get("tensor_meta")
    return meta is not None and meta.dtype == torch.bool


def index_channels(ctx, cmap: ChannelMap, in_shape, items: list, paths: list, out_shape) -> ChannelMap:
    """Channels through ``x[items]``: one item per indexed dim (an int, a slice, None for a new axis, or an
    index tensor), with where the node holds each slice's bounds (``paths``, for the shape edits).

    Follows PyTorch's order: ints select first, then index tensors gather; adjacent index tensors put their
    dims in their place, scattered ones put them in front.

    - A slice of a channel dim keeps the atoms in range (:func:`slice_block`).
    - An int on one axis of a multi-dim block (``qkv[0]`` of a ``3 x heads x head_dim`` block) keeps that axis
      whole and takes its row; on a channel dim of its own it names one channel, which is pinned with every
      channel before it so the int stays right.
    - An index tensor on a channel dim (a relative-position table ``biases[:, idx]``) holds positions as data,
      which cannot be renumbered: that dim keeps all its entries (pinned, or joined into whole rows of a
      multi-dim block) and the gathered dims carry no channels.
    """
    slots: list[tuple[str, int | None]] = []  # output slots in order: ("dim", input dim), ("new", None), ("adv", None)
    selected: dict[int, int] = {}
    sliced: dict[int, tuple[slice, tuple]] = {}
    gathered: set[int] = set()
    d_in = 0
    for item, path in zip(items, paths):
        if item is None:
            slots.append(("new", None))
        elif isinstance(item, bool):
            raise LayoutError("indexing with a Python bool")
        elif isinstance(item, int):
            selected[d_in] = item
            d_in += 1
        elif isinstance(item, slice):
            if item != slice(None):
                sliced[d_in] = (item, path)
            slots.append(("dim", d_in))
            d_in += 1
        elif isinstance(item, torch.fx.Node):
            if ctx.channels(item):
                raise LayoutError("indexing with a tensor that itself carries channels")
            if ctx.shape(item) is None:
                raise LayoutError("indexing with a value that is not a tensor")
            width = len(ctx.shape(item)) if _is_mask(item) else 1
            gathered.update(range(d_in, d_in + width))
            d_in += width
            slots.append(("adv", None))
        else:
            raise LayoutError(f"indexing with {type(item).__name__}")
    slots.extend(("dim", d) for d in range(d_in, len(in_shape)))  # the dims a short index leaves whole
    adv = [k for k, (kind, _) in enumerate(slots) if kind == "adv"]
    if adv:
        together = adv == list(range(adv[0], adv[0] + len(adv)))
        basic = [s for s in slots if s[0] != "adv"]
        at = adv[0] if together else 0
        n_adv = len(out_shape) - len(basic)
        slots = basic[:at] + [("adv", None)] * n_adv + basic[at:]
    old_to_new = {d: k for k, (kind, d) in enumerate(slots) if kind == "dim"}
    blocks = []
    for b in cmap.blocks:
        for d in [d for d in b.dims if d in sliced]:
            item, path = sliced[d]
            b = slice_block(ctx, b, in_shape[d], item, {"start": path + ("start",), "stop": path + ("stop",)}, d)
        for d in [d for d in b.dims if d in selected]:
            b = _select(ctx, b, d, selected[d], in_shape[d])
            if b is None:
                break
        if b is None:
            continue
        blocks.append(b)
    kept = keep_whole(ctx, ChannelMap(tuple(blocks)), gathered, "positions gathered by an index tensor")
    return ChannelMap(tuple(Block(tuple(old_to_new[d] for d in b.dims), b.atoms) for b in kept.blocks))


def _select(ctx, block: Block, dim: int, index: int, size: int) -> Block | None:
    """``x[..., i, ...]`` on channel dim ``dim`` of ``block``: the block without that dim, None if nothing is left."""
    i = index % size
    if len(block.dims) == 1:
        # The int names a position: it stays right only if that channel and every one before it stay (after, for
        # a negative int, which counts from the end).
        ctx.pin(block.atoms[i:] if index < 0 else block.atoms[:i + 1], "a channel picked by an int")
        return None
    axis = block.dims.index(dim)
    join_along(ctx, block.atoms, axis)
    return Block(tuple(d for d in block.dims if d != dim), np.take(block.atoms, i, axis=axis))


@RULES.function(torch.index_select)
@RULES.method("index_select")
def index_select(ctx, node):
    """``x.index_select(dim, idx)``: ``x[:, idx]`` along ``dim`` (see :func:`index_channels`)."""
    x = input_arg(node)
    dim = int(arg(node, 1, "dim")) % len(ctx.shape(x))
    return index_along(ctx, node, x, [slice(None)] * dim + [arg(node, 2, "index")])


def index_along(ctx, node, x, items: list) -> ChannelMap:
    """:func:`index_channels` for a node that indexes ``x`` with ``items`` and no bounds to rewrite (a gather, an
    int, the whole-dim slices before them)."""
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    return index_channels(ctx, cmap, shape, items, [None] * len(items), ctx.shape(node))


def slice_block(ctx, block: Block, size: int, item: slice, paths: dict[str, tuple], dim: int | None = None) -> Block:
    """``x[:, a:b]`` on a channel dim: keeps atoms a..b-1; a and b become counts of kept channels before them.
    ``paths`` says where the node holds each bound (``"start"``, ``"stop"``), for the shape edit.

    On one axis of a multi-dim block (``dim``: the head_dim of ``heads x head_dim``, sliced by rotary
    embeddings' ``rotate_half``) the bounds stay constant instead: every row along that axis is joined into
    one channel, so the axis keeps its size and only whole rows (heads) can go.
    """
    bounds = (item.start, item.stop)
    if not isinstance(item.step, (int, type(None))) or any(not isinstance(v, (int, type(None))) for v in bounds):
        raise LayoutError(f"slicing a channel dim with {item}: only constant bounds can be rewritten")
    if len(block.dims) > 1:  # the axis keeps its size, so any constant bounds stay right (out[..., :-1])
        axis = block.dims.index(dim)
        join_along(ctx, block.atoms, axis)
        return Block(block.dims, np.take(block.atoms, np.arange(*item.indices(size)), axis=axis))
    if any(v is not None and v < 0 for v in bounds):
        raise LayoutError(f"slicing a channel dim with {item}: only non-negative bounds can be rewritten")
    start, stop = item.start or 0, size if item.stop is None else min(item.stop, size)
    if item.step not in (None, 1):  # every third entry (YOLO's keypoint visibilities): kept as they are
        ctx.pin(block.atoms, f"a channel dim sliced with step {item.step}")
        return Block(block.dims, block.atoms[start:stop:item.step])
    for attr, bound in (("start", item.start), ("stop", item.stop)):
        if bound and not (attr == "stop" and bound >= size and bound > 2**31):  # 0, None and "to the end" stay
            prefix = block.atoms[:min(bound, size)]
            ctx.edit_shape(paths[attr], bound, Block((block.dims[0],), prefix), 0)
    return Block(block.dims, block.atoms[start:stop])


@RULES.function(torch.split, torch.chunk)
@RULES.method("split", "chunk")
def split(ctx, node):
    """Cuts a tensor into pieces along a dim; a channel dim's atoms are cut the same way.

    Explicit sizes (``split(x, [a, b], 1)``) become kept counts per piece; equal ones stay equal. Equal pieces
    (``x.chunk(2, dim=1)``, ``split(x, 16, 1)``) are computed from the pruned size at run
    time, so the pieces must keep the same count: position i of every piece is one channel.
    Cutting one axis of a multi-dim block keeps that axis whole (its rows are joined), as slicing does.
    """
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    chunks = op_name(node) == "chunk"
    how = arg(node, 1, "chunks" if chunks else "split_size_or_sections")
    dim = int(arg(node, 2, "dim", 0)) % len(shape)
    metas = node.meta["tensor_meta"]
    sizes = [m.shape[dim] for m in metas]
    block = cmap.block_at(dim)
    if block is None:
        return [cmap for _ in sizes]
    if len(block.dims) != 1:
        # One axis of a heads x (q, k, v) block (EfficientViT's LiteMLA): whole rows go, the cut axis stays.
        axis = block.dims.index(dim)
        join_along(ctx, block.atoms, axis)
        cuts = np.cumsum(sizes)[:-1]
        others = ChannelMap(tuple(b for b in cmap.blocks if b is not block))
        return [others.with_block(Block(block.dims, piece)) for piece in np.split(block.atoms, cuts, axis=axis)]
    rest = cmap.without(dim)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pieces = [block.atoms[a:a + n] for a, n in zip(starts, sizes)]
    if isinstance(how, (list, tuple)):
        position = arg_path(node, 1, "split_size_or_sections")[0]
        for k, (value, piece) in enumerate(zip(how, pieces)):
            if not isinstance(value, int):
                raise LayoutError("split sizes computed at run time cannot be rewritten")
            ctx.edit_shape((position, k), value, Block((dim,), piece), 0)
        if len(pieces) > 1 and len(set(how)) == 1:
            # Equal sizes usually come from one attribute (ultralytics' C2PSA: split((self.c, self.c), 1)): pieces
            # that keep equal widths let that attribute say the new ones, so the user's class can come back.
            for piece in pieces[1:]:
                ctx.join(pieces[0], piece)
    else:
        last = sizes[-1]
        if len(set(sizes[:-1])) != 1 or last > sizes[0]:
            raise LayoutError(f"pieces of a channel dim of {shape[dim]} that are not equal: {sizes}")
        # A dim that does not divide evenly ends in a shorter piece (chunk(3) of 88 channels: 30, 30, 28). The
        # first `last` positions of every piece are joined and the rest kept, so with r positions gone the pieces
        # are 30 - r, 30 - r and 28 - r: what chunk and split compute from the pruned size.
        for piece in pieces[:-1]:
            ctx.pin(piece[last:], "the positions a shorter last piece lacks")
        if last < sizes[0]:
            # An emptied last piece would not be a piece at all (chunk(2) of 1 channel gives one tensor), and the
            # pinned positions above do not stop the plan from removing every joined one.
            ctx.pin(pieces[0][:1], "the shorter last piece keeps one position, so the count of pieces stays")
        for piece in pieces[1:]:
            ctx.join(pieces[0][:last], piece[:last])
        if not chunks:
            if not isinstance(how, int):
                raise LayoutError("a split size computed at run time cannot be rewritten")
            ctx.edit_shape(arg_path(node, 1, "split_size_or_sections"), how, Block((dim,), pieces[0]), 0)
    return [rest.with_block(Block((dim,), piece)) for piece in pieces]


@RULES.function(torch.cat, torch.concat, torch.concatenate)
def cat(ctx, node):
    """Concatenation: the output's channel dim lists each input's channels in turn.

    The other dims must agree, so their channels are joined; a dim that one input leaves
    untracked cannot shrink in the others (a multi-dim block is joined along it, a single
    one pinned). An input whose concatenated dim is untracked gets fixed (pinned) channels of its own.
    """
    tensors = list(arg(node, 0, "tensors"))
    ndim = len(ctx.shape(node))
    dim = int(arg(node, 1, "dim", 0)) % ndim
    maps = [(ctx.channels(t) or ChannelMap()).normalized(ndim) for t in tensors]
    if not any(maps):
        return ChannelMap()
    # A class token split off a heads x head_dim tensor meets the pooled tokens, whose head_dim no longer shrinks.
    maps = fix_untracked_dims(ctx, maps, [ctx.shape(t) for t in tensors], skip=frozenset({dim}))
    others = [m.without(dim) for m in maps]
    joined = _join_same_dims(ctx, others, [ctx.shape(t) for t in tensors])
    if all(m.block_at(dim) is None for m in maps):
        return joined  # a token dim (ViT's class token and patches): no channels along it
    if any(m.block_at(dim) is not None and len(m.block_at(dim).dims) > 1 for m in maps):
        return joined.with_block(_cat_blocks(ctx, [m.block_at(dim) for m in maps], dim))
    pieces = []
    for t, cmap in zip(tensors, maps):
        atoms = cmap.at(dim)
        if atoms is None:
            atoms = ctx.new_channels(ctx.shape(t)[dim])
            ctx.pin(atoms, "concatenated input without prunable channels")
        pieces.append(atoms)
    return joined.with_block(Block((dim,), np.concatenate(pieces)))


def _cat_blocks(ctx, blocks: list[Block | None], dim: int) -> Block:
    """Concatenation along one axis of multi-dim blocks (the two halves of ``rotate_half`` over head_dim): every
    row along that axis becomes one channel, and row i of every input is the same, so whole rows go together."""
    first = blocks[0]
    if any(b is None or b.dims != first.dims for b in blocks):
        raise LayoutError(f"concatenating along dim {dim}, part of a {len(first.dims) if first else 0}-D channel block, "
                          "with inputs whose blocks differ")
    axis = first.dims.index(dim)
    for b in blocks:
        join_along(ctx, b.atoms, axis)
        ctx.join(np.take(first.atoms, 0, axis=axis), np.take(b.atoms, 0, axis=axis))
    return Block(first.dims, np.concatenate([b.atoms for b in blocks], axis=axis))


@RULES.function(torch.stack)
def stack(ctx, node):
    """Stacking same-shaped tensors along a new dim: their channels meet index by index and are joined (as in an
    add), an input whose dim is untracked pins the others' channels there, and dims from the new one on shift by one."""
    tensors = list(arg(node, 0, "tensors"))
    ndim = len(ctx.shape(node)) - 1
    dim = int(arg(node, 1, "dim", 0)) % (ndim + 1)
    maps = [(ctx.channels(t) or ChannelMap()).normalized(ndim) for t in tensors]
    if not any(maps):
        return ChannelMap()
    joined = _join_same_dims(ctx, maps, [ctx.shape(t) for t in tensors])
    return ChannelMap(tuple(Block(tuple(d + (d >= dim) for d in block.dims), block.atoms) for block in joined.blocks))


def _join_same_dims(ctx, maps: list[ChannelMap], shapes) -> ChannelMap:
    """Inputs of the same shape that meet dim by dim (outside the concatenated dim)."""
    result: dict[tuple, Block] = {}
    for cmap in maps:
        for block in cmap.blocks:
            if block.dims in result:
                ctx.join(result[block.dims].atoms, block.atoms)
            elif any(set(block.dims) & set(k) for k in result):
                raise LayoutError("concatenated inputs carry differently shaped channel blocks")
            else:
                result[block.dims] = block
    for cmap in maps:
        for dims, block in result.items():
            if cmap.block_at(dims[0]) is None:
                ctx.pin(block.atoms, "concatenated with an input whose channels are fixed")
    return ChannelMap(tuple(result.values()))


@RULES.method("expand_as", "view_as", "reshape_as")
def like(ctx, node):
    """``x.view_as(y)`` and friends: x takes y's shape, read from y at run time.

    ``expand_as`` only broadcasts, so x's channels pass, and a size-1 dim of x broadcast over a channel dim of y
    takes y's channels: its size is read from y at run time and every copy is the same (``F.normalize`` exported:
    ``x / norm.clamp_min(eps).expand_as(x)``). ``view_as``/``reshape_as`` view x as y's shape (LeViT's
    ``bn(x.flatten(0, 1)).reshape_as(x)``): pruned, y's channel dims hold y's kept channels, so the viewed
    channels must be the same ones there (joined); a dim that carries channels on one side only is kept whole.
    """
    if op_name(node) == "expand_as":
        return _expanded_as(ctx, node)
    x, y = input_arg(node), arg(node, 1, "other")
    in_shape, out_shape = ctx.shape(x), ctx.shape(y)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(in_shape))
    theirs = (ctx.channels(y) or ChannelMap()).normalized(len(out_shape))
    out, _ = _viewed(ctx, cmap, in_shape, out_shape)
    for block in out.blocks:
        other = theirs.block_at(block.dims[0])
        if other is None:
            ctx.pin(block.atoms, f"viewed as a tensor whose dim {block.dims[0]} has no channels")
        elif other.dims == block.dims:
            ctx.join(block.atoms, other.atoms)
        else:
            raise LayoutError(f"Tensor.{op_name(node)} meets channel blocks over dims {block.dims} and {other.dims}")
    for other in theirs.blocks:
        if out.block_at(other.dims[0]) is None:
            ctx.pin(other.atoms, "a view sized by a tensor's channels, over dims without channels")
    return out


def _expanded_as(ctx, node) -> ChannelMap | None:
    out = pass_through(ctx, node)
    x, y = input_arg(node), arg(node, 1, "other")
    in_shape, out_shape = ctx.shape(x), ctx.shape(node)
    if out is None or in_shape is None:
        return out
    offset = len(out_shape) - len(in_shape)
    broadcast = {d for d in range(len(out_shape)) if d < offset or (in_shape[d - offset] == 1 and out_shape[d] != 1)}
    theirs = (ctx.channels(y) or ChannelMap()).normalized(len(out_shape))
    return ChannelMap(out.blocks + tuple(b for b in theirs.blocks if set(b.dims) <= broadcast))


@RULES.method("expand")
def expand(ctx, node):
    """``x.expand(n, -1, -1)``: broadcasts size-1 dims and may prepend dims; channel dims keep their size.

    A channel dim's size given as a literal (rather than -1) is rewritten to the kept count.
    """
    x = input_arg(node)
    cmap = ctx.channels(x)
    in_shape, out_shape = ctx.shape(x), ctx.shape(node)
    if not cmap:
        return ChannelMap()
    offset = len(out_shape) - len(in_shape)
    out = cmap.normalized(len(in_shape)).remap([d + offset for d in range(len(in_shape))])
    sizes, prefix = _size_args(node)
    for block in out.blocks:
        for axis, d in enumerate(block.dims):
            if out_shape[d] != in_shape[d - offset]:
                raise LayoutError(f"expand changes the size of channel dim {d - offset}")
            value = sizes[d]
            if isinstance(value, int) and value != -1:
                ctx.edit_shape(prefix + (d,) if prefix != () else (1 + d,), value, block, axis)
    return out


@RULES.function(torch.unbind)
@RULES.method("unbind")
def unbind(ctx, node):
    """Splits a dim into its slices (``q, k, v = qkv.unbind(0)``).

    A dim that is one axis of a multi-dim channel block (the 3 of a ``3 x heads x head_dim``
    block) keeps all its slices: position i of every slice is joined into one channel.
    Channels on the unbound dim alone would each become a separate tensor, so they are pinned.
    """
    x = input_arg(node)
    ndim = len(ctx.shape(x))
    dim = int(arg(node, 1, "dim", 0)) % ndim
    cmap = (ctx.channels(x) or ChannelMap()).normalized(ndim)
    moved = [d if d < dim else d - 1 for d in range(ndim)]
    rest = ChannelMap(tuple(Block(tuple(moved[d] for d in b.dims), b.atoms) for b in cmap.blocks if dim not in b.dims))
    block = cmap.block_at(dim)
    count = ctx.shape(x)[dim]
    if block is None:
        return [rest] * count
    if len(block.dims) == 1:
        ctx.pin(block.atoms, "unbind of a channel dim")
        return [rest] * count
    axis = block.dims.index(dim)
    slices = [np.take(block.atoms, i, axis=axis) for i in range(count)]
    for piece in slices[1:]:
        ctx.join(slices[0], piece)
    dims = tuple(moved[d] for d in block.dims if d != dim)
    return [rest.with_block(Block(dims, piece)) for piece in slices]


@RULES.function(torch.unsqueeze)
@RULES.method("unsqueeze")
def unsqueeze(ctx, node):
    """Inserts a size-1 dim: channels move with their dims."""
    x = input_arg(node)
    ndim = len(ctx.shape(x))
    at = int(arg(node, 1, "dim")) % (ndim + 1)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(ndim)
    return cmap.remap([d if d < at else d + 1 for d in range(ndim)])


@RULES.function(torch.squeeze)
@RULES.method("squeeze")
def squeeze(ctx, node):
    """Removes size-1 dims; a single channel squeezed away can no longer be sliced, so it is pinned."""
    x = input_arg(node)
    shape = ctx.shape(x)
    ndim = len(shape)
    dims = arg(node, 1, "dim")
    if dims is None:
        gone = {d for d in range(ndim) if shape[d] == 1}
    else:
        gone = {int(d) % ndim for d in (dims if isinstance(dims, (tuple, list)) else [dims]) if shape[int(d) % ndim] == 1}
    cmap = (ctx.channels(x) or ChannelMap()).normalized(ndim)
    blocks = []
    for block in cmap.blocks:
        if set(block.dims) & gone:
            ctx.pin(block.atoms, "a single channel squeezed away")
            continue
        blocks.append(block)
    new = [d - sum(1 for g in gone if g < d) for d in range(ndim)]
    return ChannelMap(tuple(blocks)).remap(new)


@dataclass(frozen=True)
class SizeOf:
    """An int read at run time from the size of a channel dim (``C`` in ``B, N, C = x.shape``).

    After pruning it counts ``atoms``' kept channels, so a view that uses it as a size
    ties the viewed channels to those, index by index.
    """

    atoms: np.ndarray


@dataclass(frozen=True)
class DerivedSize:
    """An int computed from channel counts (``D // heads``). A view of those same channels may use it (the grid
    of ShuffleNet's ``view(b, 2, c // 2, h, w)`` stays valid); sizing anything else by it would hide the count
    from the plan, so those channels are pinned there."""

    atoms: np.ndarray


def _sizes_of(ctx, x) -> tuple[SizeOf | None, ...]:
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    out = []
    for d in range(len(shape)):
        block = cmap.block_at(d)
        out.append(SizeOf(block.atoms) if block is not None and len(block.dims) == 1 else None)
    return tuple(out)


def _tie_run_time_sizes(ctx, node: torch.fx.Node, out: ChannelMap) -> None:
    """A view whose size is another tensor's channel count (``reshape(B, N, C)``, C read from x).

    Pruned, that size follows the other tensor's kept channels, so the viewed dim must keep
    as many: its channels are joined with those index by index. A dim that carries no
    channels of its own cannot follow, so the channels it was sized by are pinned.
    """
    sizes, _ = _size_args(node)
    viewed = (ctx.channels(input_arg(node)) or ChannelMap()).all_atoms()
    for d, value in enumerate(sizes):
        marker = ctx.channels(value) if isinstance(value, torch.fx.Node) else None
        if isinstance(marker, DerivedSize):
            if not np.isin(marker.atoms, viewed).all():
                ctx.pin(marker.atoms, "a view sized by arithmetic on another tensor's channel count")
            continue
        if not isinstance(marker, SizeOf):
            continue
        block = out.block_at(d)
        if block is not None and len(block.dims) == 1 and block.atoms.shape == marker.atoms.shape:
            ctx.join(block.atoms, marker.atoms)
        elif block is None:
            ctx.pin(marker.atoms, "a view sized by a channel count, over a dim without channels")
        else:
            raise LayoutError(f"dim {d} is sized at run time by another tensor's channels, but is part of a multi-dim block")


@RULES.method("new_full", "new_zeros", "new_ones", "new_empty", "new_tensor")
def fresh_tensor(ctx, node):
    """``x.new_full(size, value)`` and the like: a new tensor that takes only ``x``'s dtype and device, so none of
    ``x``'s channels reach it (YOLO's anchor strides). A size read from a channel dim pins those channels."""
    for value in _flat(list(node.args[1:]) + list(node.kwargs.values())):
        keep_count(ctx, value, "a new tensor sized by a channel dim")
    return ChannelMap()


def keep_count(ctx, value, reason: str) -> None:
    """``value`` is used as a fixed number (a size, a padding, a repeat count): if it was read from channel counts
    (a :class:`SizeOf` or :class:`DerivedSize`), those channels are pinned so that it keeps its value."""
    marker = ctx.channels(value) if isinstance(value, torch.fx.Node) else None
    if isinstance(marker, (SizeOf, DerivedSize)):
        ctx.pin(marker.atoms, reason)


def _flat(values) -> list:
    out = []
    for v in values:
        out.extend(_flat(v) if isinstance(v, (list, tuple)) else [v])
    return out
