"""Rules for multi-head attention: ``nn.MultiheadAttention`` and torchvision's Swin window attention.

Policy: **attention is pruned in whole heads.** Each head's channels are joined
into one prunable channel, so every remaining head keeps its width; the
softmax scale ``head_dim ** -0.5`` therefore stays what it was, and removing a
head is exact for the attention itself (a head whose q, k and v are zero
contributes nothing through the output projection).

In these layers the attention's inner width is *tied to the width of the
residual stream* it reads: ``nn.MultiheadAttention`` has a single ``embed_dim``,
and Swin computes ``head_dim = C // num_heads`` from its input. Its i-th inner
channel is therefore paired with the i-th channel of the stream (same atoms):
removing head h removes the stream's channels ``h*head_dim .. (h+1)*head_dim-1``
too. The stream runs through LayerNorms, so such a plan is approximate and says
so (``plan.inexact``); ``exact_only=True`` keeps the heads and the stream and
prunes the MLP hidden widths only.

Relative position bias tables are indexed by heads and are sliced with them;
their position dims are pinned (they are not channels).
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import numpy as np
import torch.fx
from torch import nn
from torchvision.models import swin_transformer as swin2d
from torchvision.models.video import swin_transformer as swin3d

from ..channels import Block, ChannelMap, LayoutError
from ..couple import Role
from ..registry import Registry
from ._common import arg, join_rows, join_tensor_arg

__all__ = ["RULES"]

RULES = Registry()


def _last_dim_atoms(ctx, x: Any, what: str) -> tuple[int, np.ndarray | None]:
    """The channel atoms of the last dim of ``x``; channels on any other dim are refused."""
    ndim = len(ctx.shape(x))
    cmap = (ctx.channels(x) or ChannelMap()).normalized(ndim)
    if cmap.dims - {ndim - 1}:
        raise LayoutError(f"{what} input carries channels on dims {sorted(cmap.dims - {ndim - 1})}, not only its feature dim")
    return ndim - 1, cmap.at(ndim - 1)


@RULES.module(nn.MultiheadAttention)
def multihead_attention(ctx, node):
    """``nn.MultiheadAttention`` (packed q/k/v weights): whole heads, each paired with a slice of the embedding.

    Query, key and value are read through the same ``in_proj_weight`` columns, so their
    channels are joined. Attention weights (``need_weights=True``) averaged over heads would
    change with the head count, so when anything reads them they pin the layer.
    """
    m = ctx.module(node)
    if not m._qkv_same_embed_dim:
        raise LayoutError("nn.MultiheadAttention with kdim/vdim other than embed_dim (separate q/k/v weights)")
    inputs = [arg(node, i, name) for i, name in enumerate(("query", "key", "value"))]
    found = [_last_dim_atoms(ctx, t, "MultiheadAttention") for t in inputs]
    last = found[0][0]
    atoms = [a for _, a in found]
    meta = node.meta.get("tensor_meta")
    weights_meta = meta[1] if isinstance(meta, (tuple, list)) else None
    outputs = [None, None if weights_meta is None else ChannelMap()]
    if any(a is None for a in atoms) or (weights_meta is not None and _weights_used(node)):
        for a in atoms:
            if a is not None:
                ctx.pin(a, "MultiheadAttention whose width cannot change (an input without channels, or returned attention weights)")
        outputs[0] = ChannelMap()
        return tuple(outputs)
    embed = atoms[0]
    for other in atoms[1:]:
        ctx.join(embed, other)
    join_rows(ctx, embed, m.num_heads)
    qkv = np.concatenate([embed, embed, embed])
    ctx.use_tensor(node.target, "in_proj_weight", 0, qkv, Role.PRODUCER)
    ctx.use_tensor(node.target, "in_proj_weight", 1, embed, Role.CONSUMER)
    ctx.use_tensor(node.target, "in_proj_bias", 0, qkv, Role.BIAS)
    ctx.use_tensor(node.target, "bias_k", 2, embed, Role.BIAS)
    ctx.use_tensor(node.target, "bias_v", 2, embed, Role.BIAS)
    out = f"{node.target}.out_proj"
    ctx.use_tensor(out, "weight", 0, embed, Role.PRODUCER)
    ctx.use_tensor(out, "weight", 1, embed, Role.CONSUMER)
    ctx.use_tensor(out, "bias", 0, embed, Role.BIAS)
    outputs[0] = ChannelMap.single(last, embed)
    return tuple(outputs)


def _weights_used(node: torch.fx.Node) -> bool:
    """Whether anything reads the attention weights (output 1), rather than only the attention output."""
    for user in node.users:
        if user.op != "call_function" or user.target is not operator.getitem or user.args[1] not in (0, 1):
            return True  # the tuple itself escapes
        if user.args[1] == 1 and user.users:
            return True
    return False


@RULES.resizer(nn.MultiheadAttention)
def resize_multihead_attention(m: nn.MultiheadAttention) -> None:
    head_dim = m.embed_dim // m.num_heads
    m.embed_dim = m.kdim = m.vdim = m.in_proj_weight.shape[1]
    m.num_heads = m.embed_dim // head_dim
    m.head_dim = head_dim


def _bind(node: torch.fx.Node, fn) -> tuple[dict[str, Any], dict[str, tuple]]:
    """A wrapped function's arguments by parameter name, and where each sits in the node (for shape edits)."""
    names = list(inspect.signature(fn).parameters)
    values = dict(zip(names, node.args))
    paths = {name: (i,) for i, name in enumerate(names[:len(node.args)])}
    for key, value in node.kwargs.items():
        values[key] = value
        paths[key] = (key,)
    return values, paths


def _window_attention(ctx, node, fn, heads_dim: int):
    """Swin's window attention: q/k/v and the output projection as graph tensors; whole heads go."""
    a, paths = _bind(node, fn)
    last, embed = _last_dim_atoms(ctx, a["input"], fn.__name__)
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


@RULES.function(swin2d.shifted_window_attention)
def shifted_window_attention(ctx, node):
    """torchvision Swin (v1 and v2) window attention over ``[B, H, W, C]``: whole heads, tied to C."""
    return _window_attention(ctx, node, swin2d.shifted_window_attention, heads_dim=1)


@RULES.function(swin3d.shifted_window_attention_3d)
def shifted_window_attention_3d(ctx, node):
    """torchvision video Swin window attention over ``[B, T, H, W, C]``: whole heads, tied to C."""
    return _window_attention(ctx, node, swin3d.shifted_window_attention_3d, heads_dim=1)


@RULES.function(swin2d._get_relative_position_bias, swin3d._get_relative_position_bias)
def relative_position_bias(ctx, node):
    """Gathers a ``[positions, heads]`` table into a ``[1, heads, N, N]`` bias: heads pass, positions are pinned."""
    table = node.args[0]
    cmap = (ctx.channels(table) or ChannelMap()).normalized(2)
    positions = cmap.at(0)
    if positions is not None:
        ctx.pin(positions, "relative position table rows, gathered by an index")
    heads = cmap.at(1)
    return ChannelMap() if heads is None else ChannelMap.single(1, heads)


@RULES.function(swin2d._patch_merging_pad)
def patch_merging_pad(ctx, node):
    """Swin patch merging: the four 2x2 neighbours are concatenated on the last dim (4 copies of C)."""
    last, atoms = _last_dim_atoms(ctx, node.args[0], "patch merging")
    return ChannelMap() if atoms is None else ChannelMap.single(last, np.tile(atoms, 4))
