"""Rules for layers that own per-channel parameters: convolutions (plain and transposed), linear and bilinear
layers, per-channel norms, PReLU, embedding tables."""

from __future__ import annotations

import numpy as np
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..channels import Block, ChannelMap, LayoutError
from ..context import Role
from ..registry import Registry
from ._common import arg, conv_input, input_arg, pointwise

__all__ = ["RULES"]

RULES = Registry()


def _only_dim(cmap: ChannelMap, dim: int, what: str) -> np.ndarray | None:
    extra = cmap.dims - {dim}
    if extra:
        raise LayoutError(f"{what} input carries channels on dims {sorted(extra)} besides its channel dim {dim}")
    return cmap.at(dim)


@RULES.module(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv(ctx, node):
    """Consumes the input channels (weight dim 1) and produces new ones (weight dim 0).

    A depthwise conv (groups == in_channels) maps channel c to outputs c*k..c*k+k-1, so
    it passes its input's channels through. A grouped conv keeps every group equally
    wide: position i of each group is one channel (its copies in every group are
    joined), so pruning removes the same positions from every group, and the weight,
    which holds one in_channels/groups slice shared by all groups, is sliced uniformly.
    """
    m = ctx.module(node)
    x = input_arg(node)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(ctx.shape(x)))
    cdim = len(ctx.shape(x)) - len(m.kernel_size) - 1  # 1, or 0 for an unbatched input
    # Channels folded into the batch dim (MViT pools each head as a sample) pass through: the
    # conv treats samples alone and shares its weight between them.
    samples = ChannelMap(tuple(b for b in cmap.blocks if max(b.dims) < cdim))
    at_or_after = ChannelMap(tuple(b for b in cmap.blocks if max(b.dims) >= cdim))
    in_atoms, spatial = conv_input(ctx, at_or_after, cdim, pointwise(m.kernel_size, m.stride, m.padding), type(m).__name__)
    samples = ChannelMap(samples.blocks + spatial.blocks)
    if m.groups == m.in_channels and m.groups > 1:
        if in_atoms is None:
            return samples
        out = np.repeat(in_atoms, m.out_channels // m.in_channels)
    else:
        if in_atoms is not None:
            per_group = in_atoms.reshape(m.groups, -1)
            for row in per_group[1:]:
                ctx.join(per_group[0], row)
            in_atoms = per_group[0]
        ctx.use_tensor(node.target, "weight", 1, in_atoms, Role.CONSUMER)
        out = np.tile(ctx.new_channels(m.out_channels // m.groups), m.groups)
    ctx.use_tensor(node.target, "weight", 0, out, Role.PRODUCER)
    ctx.use_tensor(node.target, "bias", 0, out, Role.BIAS)
    return samples.with_block(Block((cdim,), out))


@RULES.resizer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def resize_conv(m: nn.Module) -> None:
    depthwise = m.groups == m.in_channels and m.groups > 1
    multiplier = m.out_channels // m.in_channels if depthwise else 1
    m.out_channels = m.weight.shape[0]
    if depthwise:
        m.in_channels = m.groups = m.out_channels // multiplier
    else:
        m.in_channels = m.weight.shape[1] * m.groups


@RULES.module(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_transpose(ctx, node):
    """Consumes the input channels (weight dim 0) and produces new ones (weight dim 1, per group).

    The weight is ``in_channels x out_channels/groups x kernel``. A grouped transposed conv keeps its groups
    equally wide on both sides: position i of every group is one channel, input and output alike. A
    depthwise one (groups == in_channels) maps input channel c to outputs c*m..c*m+m-1, passing channels
    through. ``output_padding`` and ``dilation`` act on space only.
    """
    m = ctx.module(node)
    x = input_arg(node)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(ctx.shape(x)))
    cdim = len(ctx.shape(x)) - len(m.kernel_size) - 1
    in_atoms = _only_dim(cmap, cdim, type(m).__name__)
    if m.groups == m.in_channels and m.groups > 1:
        if in_atoms is None:
            return ChannelMap()
        ctx.use_tensor(node.target, "weight", 0, in_atoms, Role.PRODUCER)
        out = np.repeat(in_atoms, m.out_channels // m.in_channels)
    else:
        if in_atoms is not None and m.groups > 1:
            per_group = in_atoms.reshape(m.groups, -1)
            for row in per_group[1:]:
                ctx.join(per_group[0], row)
        ctx.use_tensor(node.target, "weight", 0, in_atoms, Role.CONSUMER)
        per_group_out = ctx.new_channels(m.out_channels // m.groups)
        ctx.use_tensor(node.target, "weight", 1, per_group_out, Role.PRODUCER)
        out = np.tile(per_group_out, m.groups)
    ctx.use_tensor(node.target, "bias", 0, out, Role.BIAS)
    return ChannelMap.single(cdim, out)


@RULES.resizer(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def resize_conv_transpose(m: nn.Module) -> None:
    if m.groups == m.in_channels and m.groups > 1:
        m.groups = m.weight.shape[0]
    m.in_channels = m.weight.shape[0]
    m.out_channels = m.weight.shape[1] * m.groups


@RULES.module(nn.Linear)
def linear(ctx, node):
    """Consumes the last dim (weight dim 1) and produces new features there (weight dim 0)."""
    m = ctx.module(node)
    x = input_arg(node)
    last = len(ctx.shape(x)) - 1
    cmap = (ctx.channels(x) or ChannelMap()).normalized(last + 1)
    ctx.use_tensor(node.target, "weight", 1, cmap.at(last), Role.CONSUMER)
    out = ctx.new_channels(m.out_features)
    ctx.use_tensor(node.target, "weight", 0, out, Role.PRODUCER)
    ctx.use_tensor(node.target, "bias", 0, out, Role.BIAS)
    return cmap.without(last).with_block(Block((last,), out))


@RULES.resizer(nn.Linear)
def resize_linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


@RULES.module(_BatchNorm, nn.SyncBatchNorm, _InstanceNorm)
def per_channel_norm(ctx, node):
    """Normalises each channel (dim 1) on its own: passes channels through and slices its tensors."""
    x = input_arg(node)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(ctx.shape(x)))
    atoms = _only_dim(cmap, 1, type(ctx.module(node)).__name__)
    ctx.use_tensor(node.target, "weight", 0, atoms, Role.NORM)
    ctx.use_tensor(node.target, "bias", 0, atoms, Role.BIAS)
    ctx.use_tensor(node.target, "running_mean", 0, atoms, Role.BUFFER)
    ctx.use_tensor(node.target, "running_var", 0, atoms, Role.BUFFER)
    return cmap


@RULES.resizer(_BatchNorm, nn.SyncBatchNorm, _InstanceNorm)
def resize_per_channel_norm(m: nn.Module) -> None:
    tensor = m.weight if m.weight is not None else m.running_mean
    m.num_features = tensor.shape[0]


@RULES.module(nn.Embedding)
def embedding(ctx, node):
    """Looks rows of a table up by index: the table's columns (weight dim 1) produce the output's last dim.

    The indices carry no channels; the rows are picked by value, so they are not channels either. A table
    with ``max_norm`` renormalises each row over all its columns in place, so it is refused.
    """
    m = ctx.module(node)
    if m.max_norm is not None:
        raise LayoutError("nn.Embedding with max_norm renormalises every row over all its columns")
    if ctx.channels(input_arg(node)):
        raise LayoutError("embedding indices that carry channels")
    out = ctx.new_channels(m.embedding_dim)
    ctx.use_tensor(node.target, "weight", 1, out, Role.PRODUCER)
    return ChannelMap.single(len(ctx.shape(node)) - 1, out)


@RULES.resizer(nn.Embedding)
def resize_embedding(m: nn.Embedding) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


@RULES.module(nn.EmbeddingBag)
def embedding_bag(ctx, node):
    """Sums, averages or takes the max of looked-up rows, column by column: the table's columns (weight dim 1)
    produce the output's last dim, as for ``nn.Embedding``. ``max_norm`` renormalises rows over all their
    columns, so it is refused."""
    m = ctx.module(node)
    if m.max_norm is not None:
        raise LayoutError("nn.EmbeddingBag with max_norm renormalises every row over all its columns")
    if any(ctx.channels(a) for a in node.args[:2]):
        raise LayoutError("embedding indices or offsets that carry channels")
    weights = arg(node, 2, "per_sample_weights")
    if ctx.channels(weights):
        raise LayoutError("per-sample weights that carry channels")
    out = ctx.new_channels(m.embedding_dim)
    ctx.use_tensor(node.target, "weight", 1, out, Role.PRODUCER)
    return ChannelMap.single(len(ctx.shape(node)) - 1, out)


@RULES.resizer(nn.EmbeddingBag)
def resize_embedding_bag(m: nn.EmbeddingBag) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


@RULES.module(nn.PReLU)
def prelu(ctx, node):
    """One slope per channel (dim 1, or dim 0 of an unbatched input), or one for all: channels pass through.
    PReLU keeps zero at zero, so a removed channel's slope does not matter to the masked original."""
    m = ctx.module(node)
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    if m.num_parameters == 1:
        return cmap
    cdim = 1 if len(shape) >= 2 else 0
    atoms = _only_dim(cmap, cdim, "PReLU")
    if atoms is None:
        return cmap
    ctx.use_tensor(node.target, "weight", 0, atoms, Role.NORM)
    return cmap


@RULES.resizer(nn.PReLU)
def resize_prelu(m: nn.PReLU) -> None:
    m.num_parameters = m.weight.numel()


@RULES.module(nn.Bilinear)
def bilinear(ctx, node):
    """``y = x1 W x2 + b``: consumes both inputs' last dims (weight dims 1 and 2) and produces new features
    (weight dim 0)."""
    m = ctx.module(node)
    x1, x2 = arg(node, 0, "input1"), arg(node, 1, "input2")
    maps = []
    for x in (x1, x2):
        last = len(ctx.shape(x)) - 1
        cmap = (ctx.channels(x) or ChannelMap()).normalized(last + 1)
        maps.append(_only_dim(cmap, last, "Bilinear"))
    ctx.use_tensor(node.target, "weight", 1, maps[0], Role.CONSUMER)
    ctx.use_tensor(node.target, "weight", 2, maps[1], Role.CONSUMER)
    out = ctx.new_channels(m.out_features)
    ctx.use_tensor(node.target, "weight", 0, out, Role.PRODUCER)
    ctx.use_tensor(node.target, "bias", 0, out, Role.BIAS)
    return ChannelMap.single(len(ctx.shape(node)) - 1, out)


@RULES.resizer(nn.Bilinear)
def resize_bilinear(m: nn.Bilinear) -> None:
    m.out_features, m.in1_features, m.in2_features = m.weight.shape
