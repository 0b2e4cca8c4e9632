"""Rules for multi-head attention: ``nn.MultiheadAttention`` (torchvision's Swin is in :mod:`.torchvision.swin`).

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
so (``plan.inexact``); ``Budget(exact_only=True)`` keeps the heads and the stream and
prunes the MLP hidden widths only.

"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch.fx
from torch import nn

from ..channels import Block, ChannelMap
from ..context import Role
from ..registry import Registry
from ._common import arg, join_rows, last_dim_atoms

__all__ = ["RULES"]

RULES = Registry()


@RULES.module(nn.MultiheadAttention)
def multihead_attention(ctx, node):
    """``nn.MultiheadAttention``: whole heads, each paired with a slice of the embedding (packed q/k/v, or kdim/vdim).

    Query, key and value are read through the same ``in_proj_weight`` columns, so their
    channels are joined. Attention weights (``need_weights=True``) averaged over heads would
    change with the head count, so when anything reads them they pin the layer.
    """
    m = ctx.module(node)
    inputs = [arg(node, i, name) for i, name in enumerate(("query", "key", "value"))]
    found = [last_dim_atoms(ctx, t, "MultiheadAttention") for t in inputs]
    last = found[0][0]
    atoms = [a for _, a in found]
    meta = node.meta.get("tensor_meta")
    weights_meta = meta[1] if isinstance(meta, (tuple, list)) else None
    outputs = [None, None if weights_meta is None else ChannelMap()]
    # Packed q/k/v read one set of columns, so all three must be tracked; with kdim/vdim only the query must.
    needed = atoms if m._qkv_same_embed_dim else atoms[:1]
    if any(a is None for a in needed) or (weights_meta is not None and _weights_used(node)):
        for a in atoms:
            if a is not None:
                ctx.pin(a, "MultiheadAttention whose width cannot change (an input without channels, or returned attention weights)")
        outputs[0] = ChannelMap()
        return tuple(outputs)
    embed = atoms[0]
    join_rows(ctx, embed, m.num_heads)
    qkv = np.concatenate([embed, embed, embed])
    if m._qkv_same_embed_dim:
        for other in atoms[1:]:
            ctx.join(embed, other)
        ctx.use_tensor(node.target, "in_proj_weight", 0, qkv, Role.PRODUCER)
        ctx.use_tensor(node.target, "in_proj_weight", 1, embed, Role.CONSUMER)
    else:  # kdim/vdim: the key's and value's widths are channels of their own streams, read by their columns
        for weight, columns in zip(("q_proj_weight", "k_proj_weight", "v_proj_weight"), atoms):
            ctx.use_tensor(node.target, weight, 0, embed, Role.PRODUCER)
            ctx.use_tensor(node.target, weight, 1, columns, Role.CONSUMER)
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
    if m._qkv_same_embed_dim:
        m.embed_dim = m.kdim = m.vdim = m.in_proj_weight.shape[1]
    else:
        m.embed_dim = m.q_proj_weight.shape[0]
        m.kdim, m.vdim = m.k_proj_weight.shape[1], m.v_proj_weight.shape[1]
    m.num_heads = m.embed_dim // head_dim
    m.head_dim = head_dim
