"""Rules for ops that repeat or cut a dim: ``repeat_interleave`` and ``tensor_split``.

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
from ._common import arg, input_arg
from .shapes import SizeOf

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
    marker = ctx.channels(repeats) if isinstance(repeats, torch.fx.Node) else None
    if isinstance(marker, SizeOf):  # pruned, the count would change with them
        ctx.pin(marker.atoms, "a repeat count read from a channel dim's size")
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
