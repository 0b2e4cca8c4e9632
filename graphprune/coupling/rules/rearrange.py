"""Rules for ops that move channels between the channel dim and space, or permute them in groups:
``PixelShuffle``/``PixelUnshuffle``, ``Fold``/``Unfold`` and ``ChannelShuffle``.

Each output channel of a pixel shuffle (or a fold) is built from ``r*r`` consecutive input channels,
so those are joined into one channel: removing it removes its ``r*r`` filters upstream, and the
shuffle's layout stays valid. Going the other way (unshuffle, unfold), every input channel becomes
``r*r`` consecutive output channels, its atoms repeated. A channel shuffle transposes a
``groups x C/groups`` grid, so position i of every group is joined: kept channels stay a grid.

>>> import torch, graphprune
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.PixelShuffle(2),
...                           torch.nn.Conv2d(4, 2, 1))
>>> small = graphprune.shrink(net, 0.5, example_inputs=torch.randn(1, 3, 4, 4))
>>> small[0].out_channels, small[2].in_channels
(8, 2)
"""

from __future__ import annotations

import math

import numpy as np
import torch.nn.functional as F
from torch import nn

from ..channels import Block, ChannelMap, LayoutError
from ..registry import Registry
from ._common import arg, input_arg, join_rows

__all__ = ["RULES"]

RULES = Registry()


def _setting(ctx, node, attr: str, index: int, name: str):
    """A module's attribute, or the same setting passed to the function."""
    return getattr(ctx.module(node), attr) if node.op == "call_module" else arg(node, index, name)


def _channel_block(ctx, node, spatial: int) -> tuple[ChannelMap, int, np.ndarray | None]:
    """The input's channel map, its channel dim (``spatial`` trailing dims are space) and that dim's atoms;
    refuses channels anywhere else."""
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    cdim = len(shape) - spatial - 1
    if cmap.dims - {cdim}:
        raise LayoutError(f"{_name(node)} input carries channels on dims {sorted(cmap.dims - {cdim})} besides dim {cdim}")
    block = cmap.block_at(cdim)
    if block is not None and len(block.dims) != 1:
        raise LayoutError(f"{_name(node)} of a dim that is part of a {len(block.dims)}-D channel block")
    return cmap, cdim, None if block is None else block.atoms


def _name(node) -> str:
    return "the layer" if node.op == "call_module" else getattr(node.target, "__name__", str(node.target))


def _gather(ctx, node, cdim: int, atoms: np.ndarray | None, per: int) -> ChannelMap:
    """``per`` consecutive channels make one output channel: join them; the output's dim holds one atom each."""
    if atoms is None:
        return ChannelMap()
    return ChannelMap.single(cdim, join_rows(ctx, atoms, len(atoms) // per)[:, 0])


@RULES.module(nn.PixelShuffle)
@RULES.function(F.pixel_shuffle)
def pixel_shuffle(ctx, node):
    """``(*, C*r*r, H, W) -> (*, C, H*r, W*r)``: the ``r*r`` input channels of each output channel are joined."""
    _, cdim, atoms = _channel_block(ctx, node, 2)
    r = int(_setting(ctx, node, "upscale_factor", 1, "upscale_factor"))
    return _gather(ctx, node, cdim, atoms, r * r)


@RULES.module(nn.PixelUnshuffle)
@RULES.function(F.pixel_unshuffle)
def pixel_unshuffle(ctx, node):
    """``(*, C, H*r, W*r) -> (*, C*r*r, H, W)``: each input channel becomes ``r*r`` consecutive channels."""
    _, cdim, atoms = _channel_block(ctx, node, 2)
    r = int(_setting(ctx, node, "downscale_factor", 1, "downscale_factor"))
    return ChannelMap() if atoms is None else ChannelMap.single(cdim, np.repeat(atoms, r * r))


def _kernel_entries(ctx, node, index: int) -> int:
    size = _setting(ctx, node, "kernel_size", index, "kernel_size")
    return math.prod(size) if isinstance(size, (tuple, list)) else int(size) ** 2


@RULES.module(nn.Unfold)
@RULES.function(F.unfold)
def unfold(ctx, node):
    """``(N, C, H, W) -> (N, C*k*k, L)``: each channel becomes its ``k*k`` kernel taps, consecutive."""
    _, cdim, atoms = _channel_block(ctx, node, 2)
    kk = _kernel_entries(ctx, node, 1)  # F.unfold(input, kernel_size, ...)
    return ChannelMap() if atoms is None else ChannelMap.single(cdim, np.repeat(atoms, kk))


@RULES.module(nn.Fold)
@RULES.function(F.fold)
def fold(ctx, node):
    """``(N, C*k*k, L) -> (N, C, H, W)``: the ``k*k`` taps of each channel are joined into it (summed over
    overlapping blocks, channel by channel)."""
    _, cdim, atoms = _channel_block(ctx, node, 1)
    kk = _kernel_entries(ctx, node, 2)  # F.fold(input, output_size, kernel_size, ...)
    return _gather(ctx, node, cdim, atoms, kk)


@RULES.module(nn.ChannelShuffle)
@RULES.function(F.channel_shuffle, F.native_channel_shuffle)
def channel_shuffle(ctx, node):
    """Transposes ``groups x C/groups`` channels: position i of every group is one channel (joined), so the
    kept channels stay a grid and ``groups`` stays what it was."""
    x = input_arg(node)
    cmap, cdim, atoms = _channel_block(ctx, node, len(ctx.shape(x)) - 2)
    if atoms is None:
        return cmap
    groups = int(_setting(ctx, node, "groups", 1, "groups"))
    grid = atoms.reshape(groups, -1)
    join_rows(ctx, np.ascontiguousarray(grid.T).reshape(-1), grid.shape[1])
    return cmap.without(cdim).with_block(Block((cdim,), np.ascontiguousarray(grid.T).reshape(-1)))
