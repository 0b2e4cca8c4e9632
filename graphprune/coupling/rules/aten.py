"""The ATen ops of a graph captured with ``torch.export``: each keyed to the rule of its torch-level twin.

An exported graph calls ATen overloads (``aten.conv2d.default``, ``aten.view.default``) where a
symbolically traced one calls modules, functions and tensor methods, and it reaches the model's
parameters through ``get_attr`` nodes, as a model written with ``F.conv2d`` over its own tensors
does. So every ATen op here is served by the rule that already handles its twin: the table below
names the twin, and the rule reads its arguments by name through the op's schema
(:func:`._common.arg`). Only the ops with no torch-level twin have rules of their own:
``aten.slice``, ``aten.select`` and ``aten.index``, which a traced graph spells as indexing (``x[:, 16:]``). ``operator.getitem`` picks the outputs of multi-output ops (``split``,
``unbind``) as in a traced graph, under its own rule.

>>> import torch
>>> RULES.function_rule(torch.ops.aten.conv2d) is RULES.function_rule(torch.ops.aten.conv1d)
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..channels import ChannelMap
from ..registry import Registry
from . import contractions, elementwise, functional, norms, rearrange, reductions, repeat, shapes
from ._common import arg, arg_path, input_arg
from .zeros import KEEPS_ZERO

__all__ = ["RULES", "TWINS"]

aten = torch.ops.aten

RULES = Registry()
_FAMILIES = Registry()
for _family in (contractions, elementwise, functional, norms, rearrange, reductions, repeat, shapes):
    _FAMILIES.update(_family.RULES)

# ATen op (a packet: every overload, or one overload) -> its torch-level twin (a function, or a method name).
TWINS: dict[object, object] = {
    # layers over the model's own tensors
    aten.conv1d: F.conv1d, aten.conv2d: F.conv2d, aten.conv3d: F.conv3d, aten.linear: F.linear,
    aten.conv_transpose1d: F.conv_transpose1d, aten.conv_transpose2d: F.conv_transpose2d,
    aten.conv_transpose3d: F.conv_transpose3d, aten.addmm: torch.addmm,
    aten.batch_norm: F.batch_norm, aten.instance_norm: F.instance_norm, aten.layer_norm: F.layer_norm,
    aten.group_norm: F.group_norm, aten.embedding: F.embedding, aten.rms_norm: F.rms_norm,
    # element-wise, one tensor
    **{getattr(aten, name): name for name in (
        "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "neg", "sqrt", "square", "clamp",
        "clamp_", "clamp_min", "clamp_max", "contiguous", "clone", "detach", "type_as", "rsqrt", "cos", "sin", "log",
        "log1p", "expm1", "erf", "reciprocal", "sign", "pow")},
    **{getattr(aten, name): fn for name, fn in (
        ("silu", F.silu), ("silu_", F.silu), ("gelu", F.gelu), ("hardtanh", F.hardtanh), ("hardtanh_", F.hardtanh),
        ("hardswish", F.hardswish), ("hardswish_", F.hardswish), ("hardsigmoid", F.hardsigmoid),
        ("hardsigmoid_", F.hardsigmoid), ("leaky_relu", F.leaky_relu), ("leaky_relu_", F.leaky_relu),
        ("elu", F.elu), ("elu_", F.elu), ("mish", F.mish), ("mish_", F.mish), ("relu6", F.relu6),
        ("softplus", F.softplus), ("dropout", F.dropout), ("dropout_", F.dropout),
        ("feature_dropout", F.dropout2d), ("feature_dropout_", F.dropout2d), ("alpha_dropout", F.alpha_dropout))},
    aten.alias: "clone", aten.lift_fresh_copy: "clone", aten.to: "to", aten._to_copy: "to",
    # element-wise, several tensors
    **{getattr(aten, name): name for name in ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum",
                                              "minimum", "addcmul", "roll", "copy_")},
    aten.rsub: "sub",  # 1 - x
    aten.where: torch.where, aten.masked_fill: "masked_fill", aten.masked_fill_: "masked_fill_",
    aten.pad: F.pad, aten.constant_pad_nd: F.pad, aten.prelu: F.prelu, aten.glu: F.glu,
    # channels to space and back, channel shuffles
    aten.pixel_shuffle: F.pixel_shuffle, aten.pixel_unshuffle: F.pixel_unshuffle, aten.im2col: F.unfold,
    aten.col2im: F.fold, aten.channel_shuffle: F.channel_shuffle, aten.native_channel_shuffle: F.channel_shuffle,
    # pooling and resampling over space
    aten.max_pool1d: F.max_pool1d, aten.max_pool2d: F.max_pool2d, aten.max_pool3d: F.max_pool3d,
    aten.avg_pool1d: F.avg_pool1d, aten.avg_pool2d: F.avg_pool2d, aten.avg_pool3d: F.avg_pool3d,
    aten.adaptive_avg_pool1d: F.adaptive_avg_pool1d, aten.adaptive_avg_pool2d: F.adaptive_avg_pool2d,
    aten.adaptive_avg_pool3d: F.adaptive_avg_pool3d,
    aten.upsample_nearest2d: F.interpolate, aten.upsample_bilinear2d: F.interpolate,
    **{getattr(aten, name): F.interpolate for name in (
        "upsample_nearest1d", "upsample_nearest3d", "upsample_linear1d", "upsample_bicubic2d", "upsample_trilinear3d",
        "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d",
        "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa")},
    # reductions
    aten.mean: "mean", aten.sum: "sum", aten.amax: "amax", aten.amin: "amin", aten.var: "var", aten.std: "std",
    aten.var_mean: torch.var_mean, aten.std_mean: torch.std_mean, aten.max: "max", aten.min: "min",
    aten.linalg_vector_norm: torch.linalg.vector_norm, aten.norm: "norm",
    # contractions and attention
    aten.matmul: "matmul", aten.bmm: "bmm", aten.einsum: torch.einsum,
    aten.scaled_dot_product_attention: F.scaled_dot_product_attention,
    aten.softmax: "softmax", aten._softmax: "softmax", aten.log_softmax: "log_softmax",
    # shapes
    aten.view: "view", aten.reshape: "reshape", aten._unsafe_view: "view", aten.reshape_as: "reshape_as",
    aten.view_as: "view_as", aten.expand_as: "expand_as", aten.expand: "expand", aten.flatten: "flatten",
    aten.unflatten: "unflatten", aten.permute: "permute", aten.transpose: "transpose", aten.unsqueeze: "unsqueeze",
    aten.squeeze: "squeeze", aten.cat: torch.cat, aten.stack: torch.stack, aten.split: "split",
    aten.split_with_sizes: "split", aten.chunk: "chunk", aten.unbind: "unbind", aten.tensor_split: "tensor_split",
    aten.repeat_interleave: "repeat_interleave", aten.repeat: "repeat", aten.tile: "tile", aten.unfold: "unfold", aten.sym_size: "size",
    aten.index_select: "index_select",
    **{getattr(aten, name): name for name in ("new_full", "new_zeros", "new_ones", "new_empty")},
}


def _twin_rule(twin: object, registry: Registry = _FAMILIES):
    return registry.method_rule(twin) if isinstance(twin, str) else registry.function_rule(twin)


for _op, _twin in TWINS.items():
    RULES.function(_op)(_twin_rule(_twin))
    try:  # the zero-where-removed facts (.zeros) follow the same twins
        KEEPS_ZERO.function(_op)(_twin_rule(_twin, KEEPS_ZERO))
    except KeyError:
        pass  # an op without a fact makes zero non-zero, which only costs pruning


@RULES.function(aten.adaptive_max_pool1d, aten.adaptive_max_pool2d, aten.adaptive_max_pool3d,
                aten.max_pool1d_with_indices, aten.max_pool2d_with_indices, aten.max_pool3d_with_indices)
def pool_with_indices(ctx, node):
    """Max pooling that also returns the argmax indices (ATen's form of ``return_indices``): both outputs are
    pooled over space, so both carry the input's channels."""
    x = input_arg(node)
    shape = ctx.shape(x)
    elementwise.check_pooled(ctx, x, len(shape) - 2)
    out = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    return (out, out)


@RULES.function(aten._assert_tensor_metadata, aten._assert_scalar, aten.sym_constrain_range_for_size,
                aten._assert_async)
def assertion(ctx, node):
    """A check the export inserted (a tensor's dtype and device, a size's range): it computes nothing."""
    return None


@RULES.function(aten.slice.Tensor)
def slice_dim(ctx, node):
    """``aten.slice(x, dim, start, end, step)``, a traced ``x[:, start:end]``: a channel dim keeps the atoms in
    range, and its bounds become counts of kept channels."""
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    dim = int(arg(node, 1, "dim", 0)) % len(shape)
    block = cmap.block_at(dim)
    item = slice(arg(node, 2, "start"), arg(node, 3, "end"), arg(node, 4, "step", 1))
    whole = item.start in (None, 0) and (item.stop is None or isinstance(item.stop, int) and item.stop >= shape[dim])
    if block is None or (whole and item.step in (None, 1)):
        return cmap
    paths = {"start": arg_path(node, 2, "start"), "stop": arg_path(node, 3, "end")}
    return cmap.without(dim).with_block(shapes.slice_block(ctx, block, shape[dim], item, paths, dim))


@RULES.function(aten.select.int)
def select(ctx, node):
    """``aten.select(x, dim, index)``, a traced ``x[:, i]``: the dim goes (see :func:`shapes.index_channels`)."""
    x = input_arg(node)
    dim = int(arg(node, 1, "dim")) % len(ctx.shape(x))
    return shapes.index_along(ctx, node, x, [slice(None)] * dim + [int(arg(node, 2, "index"))])


@RULES.function(aten.index.Tensor)
def index(ctx, node):
    """``aten.index(x, [None, idx])``, a traced ``x[:, idx]``: positions gathered by index tensors."""
    indices = node.args[1] if len(node.args) > 1 else node.kwargs["indices"]  # "indices" names `self` elsewhere
    return shapes.index_along(ctx, node, input_arg(node), [slice(None) if i is None else i for i in indices])
