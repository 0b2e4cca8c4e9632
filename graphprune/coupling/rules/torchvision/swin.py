"""Rules for torchvision's Swin Transformers (v1, v2 and video), whose window attention is one wrapped function.

torchvision wraps ``shifted_window_attention`` (and its 3-D twin) with ``torch.fx.wrap``, so each
is one graph node taking the q/k/v and output projections as tensors. Attention is pruned in
whole heads, as everywhere (:mod:`..attention`). Swin computes ``head_dim = C // num_heads`` from
its input, so its i-th inner channel is paired with the i-th channel of the residual stream: a
removed head removes ``head_dim`` stream channels too, and the stream's LayerNorms make such a
plan approximate. Relative position bias tables are indexed by heads and are sliced with them;
their position dims are pinned (they are not channels).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch.fx

from ...channels import Block, ChannelMap, LayoutError
from ...registry import Registry
from .._common import join_rows, join_tensor_arg, last_dim_atoms

__all__ = ["RULES"]

RULES = Registry()
# Keyed by name, so that importing graphprune does not import torchvision (a second, for its ops).
_SWIN2D, _SWIN3D = "torchvision.models.swin_transformer", "torchvision.models.video.swin_transformer"


def _bind(node: torch.fx.Node, fn) -> tuple[dict[str, Any], dict[str, tuple]]:
    """A wrapped function's arguments by parameter name, and where each sits in the node (for shape edits)."""
    names = list(inspect.signature(fn).parameters)
    values = dict(zip(names, node.args))
    paths = {name: (i,) for i, name in enumerate(names[:len(node.args)])}
    for key, value in node.kwargs.items():
        values[key] = value
        paths[key] = (key,)
    return values, paths


def _window_attention(ctx, node, heads_dim: int):
    """Swin's window attention: q/k/v and the output projection as graph tensors; whole heads go."""
    fn = node.target
    a, paths = _bind(node, fn)
    last, embed = last_dim_atoms(ctx, a["input"], fn.__name__)
    if embed is None:
        return ChannelMap()
    num_heads = a["num_heads"]
    if not isinstance(num_heads, int):
        raise LayoutError("window attention with a head count computed at run time")
    heads = join_rows(ctx, embed, num_heads)
    qkv = np.concatenate([embed, embed, embed])
    join_tensor_arg(ctx, a["qkv_weight"], 0, qkv, fn.__name__)
    join_tensor_arg(ctx, a["qkv_weight"], 1, embed, fn.__name__)
    join_tensor_arg(ctx, a.get("qkv_bias"), 0, qkv, fn.__name__)
    join_tensor_arg(ctx, a["proj_weight"], 0, embed, fn.__name__)
    join_tensor_arg(ctx, a["proj_weight"], 1, embed, fn.__name__)
    join_tensor_arg(ctx, a.get("proj_bias"), 0, embed, fn.__name__)
    join_tensor_arg(ctx, a["relative_position_bias"], heads_dim, heads[:, 0], "relative position bias")
    join_tensor_arg(ctx, a.get("logit_scale"), 0, heads[:, 0], "logit scale")
    # The block's dims are not tensor dims: axis 0 of the (heads, head_dim) grid counts the heads kept.
    ctx.edit_shape(paths["num_heads"], num_heads, Block((0, 1), heads), 0)
    return ChannelMap.single(last, embed)


@RULES.function(f"{_SWIN2D}.shifted_window_attention")
def shifted_window_attention(ctx, node):
    """torchvision Swin (v1 and v2) window attention over ``[B, H, W, C]``: whole heads, tied to C."""
    return _window_attention(ctx, node, heads_dim=1)


@RULES.function(f"{_SWIN3D}.shifted_window_attention_3d")
def shifted_window_attention_3d(ctx, node):
    """torchvision video Swin window attention over ``[B, T, H, W, C]``: whole heads, tied to C."""
    return _window_attention(ctx, node, heads_dim=1)


@RULES.function(f"{_SWIN2D}._get_relative_position_bias", f"{_SWIN3D}._get_relative_position_bias")
def relative_position_bias(ctx, node):
    """Gathers a ``[positions, heads]`` table into a ``[1, heads, N, N]`` bias: heads pass, positions are pinned."""
    table = node.args[0]
    cmap = (ctx.channels(table) or ChannelMap()).normalized(2)
    positions = cmap.at(0)
    if positions is not None:
        ctx.pin(positions, "relative position table rows, gathered by an index")
    heads = cmap.at(1)
    return ChannelMap() if heads is None else ChannelMap.single(1, heads)


@RULES.function(f"{_SWIN2D}._patch_merging_pad")
def patch_merging_pad(ctx, node):
    """Swin patch merging: the four 2x2 neighbours are concatenated on the last dim (4 copies of C)."""
    last, atoms = last_dim_atoms(ctx, node.args[0], "patch merging")
    return ChannelMap() if atoms is None else ChannelMap.single(last, np.tile(atoms, 4))
