"""Rules for norms that mix channels: LayerNorm and GroupNorm (modules and functions).

Unlike BatchNorm, these compute statistics *across* channels, so removing a
channel changes what the others compute. Two policies, chosen per norm:

- **LayerNorm**: the normalised channels may be pruned (a ViT's embedding width,
  a ConvNeXt stage's width), but the mean and variance then run over fewer
  values, so the rewrite is approximate. The rule marks those channels inexact:
  the plan lists why (``plan.inexact``) and ``Budget(exact_only=True)`` keeps them.
- **GroupNorm**: whole norm groups are pruned. Each norm group becomes one
  prunable channel (its members are joined), so every remaining group keeps
  its width and its statistics, and the rewrite stays exact. ``GroupNorm(1, C)``
  therefore keeps all its channels.

A norm *module* without affine parameters has no tensor whose shape the rewriter
could follow, so its channels are pinned (kept); the functional forms carry their
sizes as graph constants, which are rewritten.
"""

from __future__ import annotations

import torch.fx
import torch.nn.functional as F
from torch import nn

from ..channels import Block, ChannelMap, LayoutError
from ..context import Role
from ..registry import Registry
from ._common import arg, arg_path, input_arg, join_rows, join_tensor_arg, keep_whole, op_name

__all__ = ["RULES"]

RULES = Registry()

_LAYER_NORM_REASON = "LayerNorm normalises over removed channels"


def _normalised_dims(ndim: int, count: int) -> range:
    return range(ndim - count, ndim)


def _per_head(ctx, cmap: ChannelMap, dims: range, tensors: list) -> ChannelMap:
    """A norm over one axis of a multi-dim block (a q/k norm over each head's head_dim, with one weight for every
    head): that axis stays whole, so each head keeps its statistics and whole heads go, exactly; the weight and
    bias, shared by the heads, keep all their entries."""
    shared = [b for b in cmap.blocks if len(b.dims) > 1 and set(b.dims) & set(dims) and not set(b.dims) <= set(dims)]
    if not shared:
        return cmap
    for value in tensors:
        held = ctx.channels(value) if isinstance(value, torch.fx.Node) else None
        if held:
            ctx.pin(held.all_atoms(), "a norm's parameters shared by every head")
    kept = keep_whole(ctx, ChannelMap(tuple(shared)), dims, "normalised within each head")
    return ChannelMap(tuple(b for b in cmap.blocks if b not in shared) + kept.blocks)


@RULES.module(nn.LayerNorm, nn.RMSNorm)
def layer_norm(ctx, node):
    """Normalises the last ``len(normalized_shape)`` dims; their channels slice weight and bias, approximately."""
    m = ctx.module(node)
    x = input_arg(node)
    ndim = len(ctx.shape(x))
    cmap = (ctx.channels(x) or ChannelMap()).normalized(ndim)
    # Its weight and bias are the module's own: left out of every group, they keep all their entries.
    cmap = _per_head(ctx, cmap, _normalised_dims(ndim, len(m.normalized_shape)), [])
    affine = m.weight is not None or getattr(m, "bias", None) is not None  # RMSNorm has a weight only
    for j, d in enumerate(_normalised_dims(ndim, len(m.normalized_shape))):
        atoms = cmap.at(d)
        if atoms is None:
            continue
        if not affine:
            ctx.pin(atoms, f"{type(m).__name__} without affine parameters")
            continue
        ctx.use_tensor(node.target, "weight", j, atoms, Role.NORM)
        ctx.use_tensor(node.target, "bias", j, atoms, Role.BIAS)
        ctx.mark_inexact(atoms, f"{type(m).__name__} normalises over removed channels")
    return cmap


@RULES.resizer(nn.LayerNorm, nn.RMSNorm)
def resize_layer_norm(m: nn.LayerNorm) -> None:
    tensor = m.weight if m.weight is not None else m.bias
    m.normalized_shape = tuple(tensor.shape)


@RULES.function(F.layer_norm, F.rms_norm)
def functional_layer_norm(ctx, node):
    """``F.layer_norm(x, normalized_shape, weight, bias)`` or ``F.rms_norm(x, normalized_shape, weight)``: like
    the module; the shape constant is rewritten.

    This is what torchvision's ``LayerNorm2d`` (ConvNeXt) calls between two permutes.
    """
    x = input_arg(node)
    ndim = len(ctx.shape(x))
    cmap = (ctx.channels(x) or ChannelMap()).normalized(ndim)
    shape_arg = arg(node, 1, "normalized_shape")
    path = arg_path(node, 1, "normalized_shape")
    if isinstance(shape_arg, int):
        sizes = [shape_arg]
    elif isinstance(shape_arg, (tuple, list)):
        sizes = list(shape_arg)
    else:
        raise LayoutError("layer_norm's normalized_shape is computed at run time, so its rank is unknown")
    rms = op_name(node) == "rms_norm"  # whose fourth argument is eps, not a bias
    weight, bias = arg(node, 2, "weight"), None if rms else arg(node, 3, "bias")
    cmap = _per_head(ctx, cmap, _normalised_dims(ndim, len(sizes)), [weight, bias])
    for j, d in enumerate(_normalised_dims(ndim, len(sizes))):
        atoms = cmap.at(d)
        if atoms is None:
            continue
        join_tensor_arg(ctx, weight, j, atoms, "layer_norm")
        join_tensor_arg(ctx, bias, j, atoms, "layer_norm")
        size = sizes[j]
        if isinstance(size, int):  # a Node size is read from the tensor at run time and needs no edit
            ctx.edit_shape(path if isinstance(shape_arg, int) else path + (j,), size, cmap.block_at(d), 0)
        ctx.mark_inexact(atoms, "RMSNorm normalises over removed channels" if rms else _LAYER_NORM_REASON)
    return cmap


@RULES.module(nn.GroupNorm)
def group_norm(ctx, node):
    """Normalises groups of channels (dim 1): whole groups are pruned, so the rewrite stays exact."""
    m = ctx.module(node)
    x = input_arg(node)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(ctx.shape(x)))
    atoms = cmap.at(1)
    if atoms is None:
        return cmap
    if not m.affine:
        ctx.pin(atoms, "GroupNorm without affine parameters")
        return cmap
    join_rows(ctx, atoms, m.num_groups)
    ctx.use_tensor(node.target, "weight", 0, atoms, Role.NORM)
    ctx.use_tensor(node.target, "bias", 0, atoms, Role.BIAS)
    return cmap


@RULES.resizer(nn.GroupNorm)
def resize_group_norm(m: nn.GroupNorm) -> None:
    width = m.num_channels // m.num_groups
    m.num_channels = m.weight.shape[0]
    m.num_groups = m.num_channels // width


@RULES.function(F.group_norm)
def functional_group_norm(ctx, node):
    """``F.group_norm(x, num_groups, weight, bias)``: whole groups are pruned and ``num_groups`` is rewritten."""
    x = input_arg(node)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(ctx.shape(x)))
    atoms = cmap.at(1)
    if atoms is None:
        return cmap
    num_groups = arg(node, 1, "num_groups")
    rms = op_name(node) == "rms_norm"  # whose fourth argument is eps, not a bias
    weight, bias = arg(node, 2, "weight"), None if rms else arg(node, 3, "bias")
    if not isinstance(num_groups, int):
        ctx.pin(atoms, "group_norm with a group count computed at run time")
        return cmap
    grid = join_rows(ctx, atoms, num_groups)
    join_tensor_arg(ctx, weight, 0, atoms, "group_norm")
    join_tensor_arg(ctx, bias, 0, atoms, "group_norm")
    # The block's dims are not tensor dims here: axis 0 of the grid counts the groups that survive.
    path = arg_path(node, 1, "num_groups")
    ctx.edit_shape(path, num_groups, Block((0, 1), grid), 0)
    return cmap


@RULES.module(nn.LocalResponseNorm, nn.CrossMapLRN2d)
@RULES.function(F.local_response_norm)
def local_response_norm(ctx, node):
    """Divides each channel by the energy of its neighbours across channels: removing one would shift every
    window around it, so the channels are pinned (kept), and pass through."""
    x = input_arg(node)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(ctx.shape(x)))
    atoms = cmap.at(1)
    if atoms is not None:
        ctx.pin(atoms, "LocalResponseNorm normalises each channel over its neighbours")
    if cmap.dims - {1}:
        raise LayoutError(f"LocalResponseNorm input carries channels on dims {sorted(cmap.dims - {1})} besides dim 1")
    return cmap
