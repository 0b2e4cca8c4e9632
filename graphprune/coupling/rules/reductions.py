"""Rules for reductions (``x.mean([2, 3])``, ``torch.sum``...): reduced dims disappear or become size 1.

Reducing over untracked dims (spatial, batch) lets the channels through, renumbered
when ``keepdim`` is False. Reducing over a channel dim mixes every channel into one
value, which pruning would change (a mean over fewer channels), so those channels are
pinned. A block over several dims reduced over some of them (radix x C summed over radix)
loses whole slices across the reduced dims instead, which leaves every kept value whole.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F

from ..channels import Block, ChannelMap
from ..registry import Registry
from ._common import arg, input_arg, keep_whole
from .elementwise import broadcast_join

__all__ = ["RULES"]

RULES = Registry()


@RULES.function(torch.mean, torch.sum, torch.amax, torch.amin)
@RULES.method("mean", "sum", "amax", "amin")
def reduction(ctx, node):
    """Reduces over the given dims: channels on other dims pass through; reduced channels are pinned."""
    return _reduce(ctx, node, arg(node, 1, "dim"), bool(arg(node, 2, "keepdim", False)))


@RULES.function(torch.norm, torch.linalg.vector_norm)
@RULES.method("norm")
def norm(ctx, node):
    """``x.norm(p, dim, keepdim)``, ``vector_norm(x, ord, dim, keepdim)``: a reduction over ``dim`` (every dim when None)."""
    return _reduce(ctx, node, arg(node, 2, "dim"), bool(arg(node, 3, "keepdim", False)))


@RULES.function(torch.var, torch.std)
@RULES.method("var", "std")
def variance(ctx, node):
    """``torch.var(x, dim, keepdim=...)`` and ``std``: a reduction over ``dim`` (timm's ``simple_norm``)."""
    return _reduce(ctx, node, arg(node, 1, "dim"), bool(arg(node, 3, "keepdim", False)))


@RULES.function(torch.var_mean, torch.std_mean)
def variance_and_mean(ctx, node):
    """``torch.var_mean``: two reductions over the same dims."""
    out = variance(ctx, node)
    return (out, out)


@RULES.function(torch.max, torch.min)
@RULES.method("max", "min")
def max_min(ctx, node):
    """``x.max(dim)`` gives (values, indices), both reduced over ``dim``; ``x.max()`` reduces every dim; ``torch.max(x,
    y)`` is the element-wise maximum."""
    other = arg(node, 1, "other")
    if isinstance(other, torch.fx.Node) and ctx.shape(other) is not None:
        return broadcast_join(ctx, node, [input_arg(node), other])
    dim = arg(node, 1, "dim")
    out = _reduce(ctx, node, dim, bool(arg(node, 2, "keepdim", False)))
    return out if dim is None else (out, out)


def _reduce(ctx, node, dims, keepdim: bool) -> ChannelMap:
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    ndim = len(shape)
    if dims is None or dims == [] or isinstance(dims, bool):  # torch.var(x, unbiased): every dim
        reduced = set(range(ndim))
    else:
        reduced = {int(d) % ndim for d in (dims if isinstance(dims, (tuple, list)) else [dims])}
    # Part of a multi-dim block (stacked radix x C branches summed over radix): slices across the reduced dims
    # go whole, so every kept output keeps all its terms.
    kept = keep_whole(ctx, cmap, reduced, "reduction over a channel dim")
    if keepdim:
        return kept
    return ChannelMap(tuple(Block(tuple(d - sum(r < d for r in reduced) for d in b.dims), b.atoms) for b in kept.blocks))


@RULES.function(F.normalize)
def normalize(ctx, node):
    """Divides by a norm over ``dim``: channels on that dim are pinned (the norm runs over all of them), others pass through."""
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    dim = int(arg(node, 2, "dim", 1)) % len(shape)
    block = cmap.block_at(dim)
    if block is not None:
        ctx.pin(block.atoms, "normalised over a channel dim")
    return cmap
