"""Rules for reductions (``x.mean([2, 3])``, ``torch.sum``...): reduced dims disappear or become size 1.

Reducing over untracked dims (spatial, batch) lets the channels through, renumbered
when ``keepdim`` is False. Reducing over a channel dim mixes every channel into one value.
Where the removed channels are zero in the masked original (:mod:`.zeros`: the path from
their producers keeps zero at zero), a sum or a norm over them is the same over the kept
channels alone, so nothing is pinned; a mean or a variance then changes only by its count,
and the channels are marked inexact, as a LayerNorm's are. Otherwise, and for a max or a
min, the channels are pinned. A block over several dims reduced over some of them (radix x
C summed over radix) loses whole slices across the reduced dims instead, which leaves every
kept value whole.

>>> import torch
>>> from graphprune.capture import capture
>>> from graphprune.coupling import couple
>>> class L2Norm(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.conv, self.head = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 4, 1)
...     def forward(self, x):
...         y = torch.relu(self.conv(x))
...         return self.head(y / y.pow(2).sum(1, keepdim=True).sqrt())
>>> [(g.size, g.prunable) for g in couple(capture(L2Norm(), torch.randn(1, 3, 4, 4))).groups]
[(8, True), (4, False)]
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F

from ..channels import Block, ChannelMap
from ..registry import Registry
from ._common import arg, input_arg, keep_whole, op_name
from .elementwise import broadcast_join
from .zeros import zero_where_removed

__all__ = ["RULES"]

RULES = Registry()


# What a reduction over removed channels that are zero does: the same over the kept ones (a sum), changes by its
# count (a mean), or changes (a max over values that may all be negative: the zeros win).
_SAME, _COUNTED, _CHANGED = "same", "counted", "changed"
_KINDS = {"sum": _SAME, "mean": _COUNTED, "amax": _CHANGED, "amin": _CHANGED}  # the ops `reduction` serves


@RULES.function(torch.mean, torch.sum, torch.amax, torch.amin)
@RULES.method("mean", "sum", "amax", "amin")
def reduction(ctx, node):
    """Reduces over the given dims: channels on other dims pass through; reduced channels are consumed (a sum of
    values zero where removed), marked inexact (a mean of them) or pinned."""
    kind = _KINDS[op_name(node)]
    return _reduce(ctx, node, arg(node, 1, "dim"), bool(arg(node, 2, "keepdim", False)), kind)


@RULES.function(torch.norm, torch.linalg.vector_norm)
@RULES.method("norm")
def norm(ctx, node):
    """``x.norm(p, dim, keepdim)``, ``vector_norm(x, ord, dim, keepdim)``: a reduction over ``dim`` (every dim when
    None). A p-norm with p > 0, the max norm and the count of non-zeros ignore zero entries."""
    p = arg(node, 1, "ord" if op_name(node) in ("vector_norm", "linalg_vector_norm") else "p", 2)
    same = p is None or p == "fro" or (isinstance(p, (int, float)) and p >= 0)
    return _reduce(ctx, node, arg(node, 2, "dim"), bool(arg(node, 3, "keepdim", False)), _SAME if same else _CHANGED)


@RULES.function(torch.var, torch.std)
@RULES.method("var", "std")
def variance(ctx, node):
    """``torch.var(x, dim, keepdim=...)`` and ``std``: a reduction over ``dim`` (timm's ``simple_norm``); over
    channels zero where removed, it changes by its count."""
    return _reduce(ctx, node, arg(node, 1, "dim"), bool(arg(node, 3, "keepdim", False)), _COUNTED)


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
    out = _reduce(ctx, node, dim, bool(arg(node, 2, "keepdim", False)), _CHANGED)
    return out if dim is None else (out, out)


def _reduce(ctx, node, dims, keepdim: bool, kind: str) -> ChannelMap:
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    ndim = len(shape)
    if dims is None or dims == [] or isinstance(dims, bool):  # torch.var(x, unbiased): every dim
        reduced = set(range(ndim))
    else:
        reduced = {int(d) % ndim for d in (dims if isinstance(dims, (tuple, list)) else [dims])}
    inside = [b for b in cmap.blocks if set(b.dims) <= reduced]
    if inside and kind != _CHANGED and zero_where_removed(ctx, x):
        for block in inside if kind == _COUNTED else ():
            ctx.mark_inexact(block.atoms, "a mean over removed channels counts them")
        cmap = ChannelMap(tuple(b for b in cmap.blocks if not set(b.dims) <= reduced))
    # Part of a multi-dim block (stacked radix x C branches summed over radix): slices across the reduced dims
    # go whole, so every kept output keeps all its terms.
    kept = keep_whole(ctx, cmap, reduced, "reduction over a channel dim")
    if keepdim:
        return kept
    return ChannelMap(tuple(Block(tuple(d - sum(r < d for r in reduced) for d in b.dims), b.atoms) for b in kept.blocks))


@RULES.function(F.normalize)
def normalize(ctx, node):
    """Divides by a norm over ``dim``: channels on that dim pass through when the removed ones are zero (the norm is
    the same without them), else they are pinned; channels elsewhere pass through."""
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    dim = int(arg(node, 2, "dim", 1)) % len(shape)
    block = cmap.block_at(dim)
    if block is not None and not zero_where_removed(ctx, x):
        ctx.pin(block.atoms, "normalised over a channel dim")
    return cmap
