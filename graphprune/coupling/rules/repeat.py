"""Rules for ops that repeat or cut a dim: ``repeat_interleave``, ``repeat``, ``unfold`` and ``tensor_split``.

``repeat_interleave(x, r, dim)`` holds each index of ``dim`` r times in a row, so a channel
dim's atoms are repeated the same way (as ``flatten`` repeats a channel over its pixels):
removing a channel removes its r copies, which is what the smaller tensor computes. The
count must not change with pruning, so a count read from a channel dim's size pins those
channels; per-index counts (a tensor) pin the repeated channels.

>>> import torch, graphprune
>>> class Net(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.a, self.b = torch.nn.Conv1d(2, 4, 1), torch.nn.Conv1d(4, 3, 1)
...     def forward(self, x):
...         return self.b(self.a(x).repeat_interleave(2, dim=2))
>>> small = graphprune.shrink(Net(), 0.5, example_inputs=torch.randn(1, 2, 5))
>>> small.a.out_channels, small.b.in_channels
(2, 2)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx

from ..channels import Block, ChannelMap, LayoutError
from ..registry import Registry
from ._common import arg, input_arg, keep_whole
from .shapes import keep_count

__all__ = ["RULES"]

RULES = Registry()


@RULES.function(torch.repeat_interleave)
@RULES.method("repeat_interleave")
def repeat_interleave(ctx, node):
    """Repeats each index of ``dim`` in place: a channel dim's atoms are repeated; other dims pass through."""
    x = input_arg(node)
    in_shape, out_shape = ctx.shape(x), ctx.shape(node)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(in_shape))
    repeats = arg(node, 1, "repeats")
    if repeats is None:  # torch.repeat_interleave(counts): the result is an index tensor, not x's elements
        if cmap:
            raise LayoutError("repeat_interleave(counts) of a tensor that carries channels")
        return ChannelMap()
    keep_count(ctx, repeats, "a repeat count read from a channel dim's size")  # pruned, it would change with them
    if not cmap:
        return ChannelMap()
    dim = arg(node, 2, "dim")
    if dim is None:
        raise LayoutError("repeat_interleave without dim flattens a tensor that carries channels")
    dim = int(dim) % len(in_shape)
    block = cmap.block_at(dim)
    if block is None:
        return cmap
    if len(block.dims) != 1:
        raise LayoutError(f"repeating dim {dim}, which is part of a {len(block.dims)}-D channel block")
    if ctx.shape(repeats) is not None and len(ctx.shape(repeats)) > 0 and ctx.shape(repeats)[0] > 1:
        ctx.pin(block.atoms, "per-index repeat counts of a channel dim")
        return cmap.without(dim)
    if arg(node, 3, "output_size") is not None:
        raise LayoutError("repeat_interleave of a channel dim with a literal output_size")
    count, rest = divmod(out_shape[dim], in_shape[dim])
    if rest:
        raise LayoutError(f"repeat_interleave turns {in_shape[dim]} entries into {out_shape[dim]}, not a multiple")
    return cmap.without(dim).with_block(Block((dim,), np.repeat(block.atoms, count)))


@RULES.method("repeat", "tile")
@RULES.function(torch.tile)
def repeat(ctx, node):
    """``x.repeat(b, 1, 1, 1)`` and ``x.tile(reps)`` tile each dim: a channel dim repeated r times holds its atoms
    r times over (removing a channel removes each copy); new leading dims carry none.

    A count computed at run time keeps its value, which the shapes give: the sizes it is computed from are spatial,
    or channel counts that are then kept (SAM2 tiles a window table by H // window)."""
    x = input_arg(node)
    shape, out_shape = ctx.shape(x), ctx.shape(node)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    rest = node.args[1:]
    reps = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else list(rest)
    reps = reps or list(node.kwargs.get("repeats", node.kwargs.get("dims", ())))
    reps = [1] * (len(shape) - len(reps)) + reps  # tile's short reps count from the last dim
    offset = len(reps) - len(shape)
    blocks = []
    for block in cmap.blocks:
        counts = []
        for d in block.dims:
            keep_count(ctx, reps[d + offset], "a repeat count computed from a channel count")  # SAM2's H // window
            counts.append(out_shape[d + offset] // shape[d])
        blocks.append(Block(tuple(d + offset for d in block.dims), np.tile(block.atoms, counts)))
    return ChannelMap(tuple(blocks))


@RULES.method("unfold")
def unfold(ctx, node):
    """``x.unfold(dim, size, step)``: windows along ``dim`` (halo attention's blocks). The windows overlap, so
    channels on ``dim`` stay whole; the other dims keep theirs, and the new trailing window dim carries none."""
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    dim = int(arg(node, 1, "dimension")) % len(shape)
    return keep_whole(ctx, cmap, {dim}, "a dim cut into overlapping windows")


@RULES.function(torch.tensor_split)
@RULES.method("tensor_split")
def tensor_split(ctx, node):
    """Cuts a dim into pieces at given indices (MViT splits off the class token): channels elsewhere pass to every piece.

    Cutting a channel dim would need its indices rewritten, so it is refused.
    """
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    dim = int(arg(node, 2, "dim", 0)) % len(shape)
    if cmap.block_at(dim) is not None:
        raise LayoutError(f"tensor_split of channel dim {dim}")
    return [cmap for _ in node.meta["tensor_meta"]]
