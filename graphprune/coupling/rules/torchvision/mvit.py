"""Rules for the helpers torchvision's MViT wraps as single graph nodes (``torch.fx.wrap``).

MViT pools q, k and v by folding heads into the batch (``[B * heads, head_dim, T, H, W]``)
and running one depthwise ``Conv3d`` and one ``LayerNorm(head_dim)`` shared by every head.
Attention is pruned in whole heads (see :mod:`..attention`): the view that
folds the heads keeps each head's head_dim row whole, the shared conv and norm then keep
their width, and removing a head is exact. Its inner width is not tied to the residual
stream (the output projection produces the stream), so ``exact_only`` plans prune heads too.

- ``_unsqueeze`` / ``_squeeze`` add or remove a size-1 dim, depending on the input's rank;
- ``_add_shortcut`` adds the pooled query to the attention output (MViTv2's residual pooling);
- ``_add_rel_pos`` adds relative position terms: q's head_dim is contracted with three tables
  ``[positions, head_dim]`` shared by every head. Their rows are gathered by distance (pinned);
  their head_dim follows q's only where q's head_dim is its own channel (a single head),
  and is kept where heads go whole.
"""

from __future__ import annotations

import numpy as np

from ...channels import ChannelMap, LayoutError
from ...registry import Registry
from .._common import arg, fix_untracked_dims, input_arg, project

__all__ = ["RULES"]

RULES = Registry()
_MVIT = "torchvision.models.video.mvit"  # keyed by name: no torchvision import


def _literal(node, index: int, name: str) -> int:
    value = arg(node, index, name)
    if not isinstance(value, int):
        raise LayoutError(f"{name} is computed at run time")
    return value


@RULES.function(f"{_MVIT}._unsqueeze")
def unsqueeze_to(ctx, node):
    """``_unsqueeze(x, target_dim, expand_dim) -> (x, x.dim())``: inserts ``expand_dim`` when x has one dim too few."""
    x = input_arg(node)
    ndim = len(ctx.shape(x))
    cmap = (ctx.channels(x) or ChannelMap()).normalized(ndim)
    target, expand = _literal(node, 1, "target_dim"), _literal(node, 2, "expand_dim")
    if ndim == target - 1:
        at = expand % (ndim + 1)
        cmap = cmap.remap([d if d < at else d + 1 for d in range(ndim)])
    return [cmap, None]


@RULES.function(f"{_MVIT}._squeeze")
def squeeze_from(ctx, node):
    """``_squeeze(x, target_dim, expand_dim, tensor_dim)``: undoes ``_unsqueeze``; the ranks say whether it did."""
    x = input_arg(node)
    in_shape, out_shape = ctx.shape(x), ctx.shape(node)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(in_shape))
    if len(out_shape) == len(in_shape):
        return cmap
    gone = _literal(node, 2, "expand_dim") % len(in_shape)
    if len(out_shape) != len(in_shape) - 1 or in_shape[gone] != 1:
        raise LayoutError(f"_squeeze turns {tuple(in_shape)} into {tuple(out_shape)}")
    if cmap.block_at(gone) is not None:
        raise LayoutError("a size-1 dim squeezed away carries channels")
    return cmap.remap([d if d < gone else d - 1 for d in range(len(in_shape))])


def _heads_and_width(cmap: ChannelMap, what: str):
    """The blocks of a ``[B, heads, tokens, head_dim]`` tensor; channels on batch or tokens are refused."""
    if cmap.dims - {1, 3}:
        raise LayoutError(f"{what} carries channels on dims {sorted(cmap.dims - {1, 3})}, not only heads and head_dim")
    return cmap


@RULES.function(f"{_MVIT}._add_shortcut")
def add_shortcut(ctx, node):
    """``x += q`` over ``[B, heads, tokens, head_dim]`` (all tokens or all but the class token): joins heads and head_dim.

    The attention output and the pooled q may carry heads x head_dim blocks or heads alone; a
    head_dim that one side no longer tracks keeps each head whole on the other.
    """
    x, shortcut = input_arg(node), arg(node, 1, "shortcut")
    shapes = [ctx.shape(x), ctx.shape(shortcut)]
    maps = [_heads_and_width((ctx.channels(t) or ChannelMap()).normalized(4), name) for t, name in ((x, "x"), (shortcut, "the shortcut"))]
    maps = fix_untracked_dims(ctx, maps, shapes)
    kept = []
    for k, cmap in enumerate(maps):
        other = maps[1 - k]
        for block in cmap.blocks:
            partner = next((b for b in other.blocks if set(b.dims) & set(block.dims)), None)
            if partner is None:
                ctx.pin(block.atoms, "added to a shortcut whose matching dims are fixed")
            elif partner.dims != block.dims:
                raise LayoutError("the attention output and the shortcut carry differently shaped channel blocks")
            elif k == 0:
                ctx.join(block.atoms, partner.atoms)
                kept.append(block)
    return ChannelMap(tuple(kept))


@RULES.function(f"{_MVIT}._add_rel_pos")
def add_rel_pos(ctx, node):
    """``attn + f(q, tables)`` per head: q's heads meet attn's; q's head_dim is contracted with the tables' dim 1."""
    attn, q = input_arg(node), arg(node, 1, "q")
    tables = [arg(node, 4 + i, name) for i, name in enumerate(("rel_pos_h", "rel_pos_w", "rel_pos_t"))]
    attn_map = (ctx.channels(attn) or ChannelMap()).normalized(4)
    if attn_map.dims - {1}:
        raise LayoutError(f"attention logits carry channels on dims {sorted(attn_map.dims - {1})}, not only heads")
    q_map = _heads_and_width((ctx.channels(q) or ChannelMap()).normalized(4), "q")
    heads = width = None
    for block in q_map.blocks:
        if 1 in block.dims:
            heads = project(ctx, block, [1]).atoms  # the tables are shared by every head: heads go whole
        else:
            width = block.atoms
    attn_heads = attn_map.at(1)
    if heads is not None and attn_heads is not None:
        ctx.join(heads, attn_heads)
    else:
        for atoms in (heads, attn_heads):
            if atoms is not None:
                ctx.pin(atoms, "relative position terms over heads that one side does not track")
    for table in tables:
        table_map = (ctx.channels(table) or ChannelMap()).normalized(2)
        rows, table_width = table_map.block_at(0), table_map.at(1)
        if rows is not None:
            ctx.pin(rows.atoms, "relative position table rows, gathered by distance")
        if width is not None and table_width is not None and width.shape == table_width.shape:
            ctx.join(width, table_width)
        else:
            for atoms in (width, table_width):
                if atoms is not None:
                    ctx.pin(np.asarray(atoms), "head_dim of a relative position table shared by whole heads")
    return attn_map
