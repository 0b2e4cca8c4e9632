"""Which tensors are zero on every removed channel: what makes a sum over channels exact.

The masked original that :func:`graphprune.verify` compares against zeroes every removed
channel's producing slices: filters and biases, per-channel norm parameters, parameters read
directly. A value downstream is then zero on the removed channels as long as each op on the
way keeps zero at zero: ReLU and GELU do, a reshape or a max pool does, a product with such a
value does; a sigmoid, an added constant or a LayerNorm without affine parameters does not.
Over such a value, a sum or a norm across channels gives the same over the kept channels
alone, so a reduction rule need not pin them (``x / x.pow(2).sum(1, keepdim=True).sqrt()``);
a mean changes only by its count, which the rule reports as inexact (a written-out RMSNorm).

The answer is a dataflow fact per node, worked out on demand for the ancestors of the
reduction that asks and kept for the rest of the walk. Each op that keeps zero has a small
rule in :data:`KEEPS_ZERO`, keyed as the channel rules are; an op without one gives False,
which only ever costs pruning, never exactness.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..channels import ChannelMap
from ..context import Role
from ..registry import Registry
from ._common import arg, input_arg, op_name

__all__ = ["KEEPS_ZERO", "zero_where_removed"]

KEEPS_ZERO = Registry()

Zero = Callable[[Any], bool]  # the fact for an argument: False for anything but an evaluated node


def zero_where_removed(ctx, x: Any) -> bool:
    """Whether ``x`` is zero on every removed channel it carries, in the masked original (an example:
    :mod:`.reductions`)."""
    if not isinstance(x, torch.fx.Node):
        return False
    memo = ctx.zeros
    stack = [x]
    while stack:  # post-order without recursion: a 2,000-block stream is deeper than Python's stack
        node = stack[-1]
        if node in memo:
            stack.pop()
            continue
        pending = [i for i in node.all_input_nodes if i not in memo]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        memo[node] = _evaluate(ctx, node, lambda v: isinstance(v, torch.fx.Node) and memo.get(v, False))
    return memo[x]


def _evaluate(ctx, node: torch.fx.Node, zero: Zero) -> bool:
    if not ctx.channels(node):
        return False  # nothing is removed from it, so the fact says nothing useful
    if node.op == "get_attr":
        return _read_directly(ctx, node)
    if node.op == "call_module" and _produces(ctx, node):
        return True
    # ATen ops find their torch-level twin's rule, keyed in .aten
    rule = KEEPS_ZERO.rule_for_module(ctx.module(node)) if node.op == "call_module" else KEEPS_ZERO.rule_for(node, ctx.gm)
    return bool(rule is not None and rule(ctx, node, zero))


def _read_directly(ctx, node: torch.fx.Node) -> bool:
    """A parameter (or per-channel buffer) read by ``get_attr``: zero where removed if every tracked dim of it is
    masked (verify leaves running statistics alone)."""
    owner, _, attr = node.target.rpartition(".")
    tensor = getattr(ctx.submodule(owner), attr)
    name = ctx.name_of(tensor)
    uses = [ctx.uses[(name, d)] for d in range(tensor.dim()) if (name, d) in ctx.uses]  # uses are keyed by dim
    return bool(uses) and all(use.role in Role.MASKED for use in uses)


def _produces(ctx, node: torch.fx.Node) -> bool:
    """Every channel block of ``node`` is made by a slice the mask zeroes: a layer's filters (with its bias, zeroed
    too) or an affine norm's per-channel scale (with its shift). The uses are the ones this node recorded, or, for a
    functional layer, those of the ``get_attr`` parameters it reads."""
    readers = {node.name} | {i.name for i in node.all_input_nodes if i.op == "get_attr"}
    made = [use.atoms for use in ctx.uses.values() if use.node in readers and use.role in (Role.PRODUCER, Role.NORM)]
    cmap = ctx.channels(node)
    if not isinstance(cmap, ChannelMap):
        return False  # several outputs (an LSTM's sequence and states, attention and its weights)
    return bool(cmap.blocks) and all(any(ctx.joined(block.atoms, atoms) for atoms in made) for block in cmap.blocks)


def _dims(ctx, x: Any, ndim: int) -> set[int]:
    """The channel dims of operand ``x`` placed in an ``ndim``-dim result, broadcast from the right."""
    shape = ctx.shape(x)
    cmap = ctx.channels(x)
    if shape is None or not cmap:
        return set()
    return {d + ndim - len(shape) for d in cmap.normalized(len(shape)).dims}


def _operands(node: torch.fx.Node) -> list:
    return [node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")]


# -- layers -------------------------------------------------------------------------------------------------------
@KEEPS_ZERO.function(F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
                     F.linear, torch.addmm, F.embedding, F.batch_norm, F.instance_norm, F.layer_norm, F.group_norm,
                     F.rms_norm)
def functional_layer(ctx, node, zero):
    """A layer over parameters the graph reads: zero where its filters or per-channel scales were zeroed."""
    return _produces(ctx, node)


# -- one tensor in, zero stays zero ---------------------------------------------------------------------------------
@KEEPS_ZERO.module(
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Hardswish,
    nn.Softsign, nn.Tanhshrink, nn.Identity, nn.Hardshrink, nn.Softshrink, nn.RReLU, nn.PReLU,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Flatten, nn.Unflatten,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.ReflectionPad1d, nn.ReflectionPad2d,
    nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.ZeroPad1d, nn.ZeroPad2d,
    nn.ZeroPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
)
@KEEPS_ZERO.function(
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.tanh, torch.tanh, F.hardswish, F.hardshrink, F.softshrink, F.rrelu, F.prelu, F.dropout, F.dropout1d,
    F.dropout2d, F.dropout3d, torch.abs, torch.neg, torch.sqrt, torch.square, torch.sin, torch.expm1, torch.erf,
    torch.sign, operator.neg, "torchvision.ops.stochastic_depth.stochastic_depth",
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear, F.pixel_shuffle, F.pixel_unshuffle,
    F.channel_shuffle, torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.swapaxes, torch.unsqueeze,
    torch.squeeze, torch.split, torch.chunk, torch.unbind, torch.index_select, torch.roll, operator.getitem,
    torch.ops.aten.slice, torch.ops.aten.select, torch.ops.aten.index, torch.ops.aten.t, torch.ops.aten.max_pool2d_with_indices,
)
@KEEPS_ZERO.method(
    "relu", "relu_", "tanh", "tanh_", "abs", "neg", "sqrt", "square", "sin", "expm1", "erf", "sign", "contiguous",
    "clone", "detach", "float", "half", "bfloat16", "double", "to", "type_as", "view", "reshape", "flatten",
    "unflatten", "permute", "transpose", "swapaxes", "unsqueeze", "squeeze", "split", "chunk", "unbind",
    "tensor_split", "index_select", "roll", "expand", "expand_as", "view_as", "reshape_as", "repeat", "tile",
    "repeat_interleave", "flip",
)
def keeps_zero(ctx, node, zero):
    """Maps each zero to zero (an activation with f(0) = 0, a pooling, a reshape, a gather): as its input."""
    return zero(input_arg(node))


@KEEPS_ZERO.module(nn.Hardtanh)
@KEEPS_ZERO.function(F.hardtanh, torch.clamp)
@KEEPS_ZERO.method("clamp", "clamp_", "clamp_min", "clamp_max")
def clamp(ctx, node, zero):
    """``clamp(x, lo, hi)`` keeps zero when ``lo <= 0 <= hi`` (``clamp(min=eps)`` does not)."""
    name = op_name(node)
    if node.op == "call_module":
        lo, hi = ctx.module(node).min_val, ctx.module(node).max_val
    elif name == "hardtanh":
        lo, hi = arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0)
    elif name == "clamp_min":
        lo, hi = node.args[1] if len(node.args) > 1 else node.kwargs.get("min"), None
    elif name == "clamp_max":
        lo, hi = None, node.args[1] if len(node.args) > 1 else node.kwargs.get("max")
    else:
        lo, hi = arg(node, 1, "min"), arg(node, 2, "max")
    bounds_ok = all(b is None or isinstance(b, numbers.Number) for b in (lo, hi))
    return bounds_ok and (lo is None or lo <= 0) and (hi is None or hi >= 0) and zero(input_arg(node))


@KEEPS_ZERO.function(torch.pow, operator.pow)
@KEEPS_ZERO.method("pow", "pow_")
def power(ctx, node, zero):
    """``x ** p`` with a positive number ``p``: zero stays zero."""
    exponent = node.args[1] if len(node.args) > 1 else node.kwargs.get("exponent")
    return isinstance(exponent, numbers.Number) and exponent > 0 and zero(node.args[0])


@KEEPS_ZERO.function(F.pad)
def pad(ctx, node, zero):
    """Padding adds zeros (or copies of entries already there, in the other modes)."""
    value = arg(node, 3, "value", None)
    return (arg(node, 2, "mode", "constant") != "constant" or not value) and zero(input_arg(node))


@KEEPS_ZERO.function(F.normalize)
def normalize(ctx, node, zero):
    """``x / max(||x||, eps)``: each entry scaled, so zero stays zero."""
    return zero(input_arg(node))


# -- several tensors -------------------------------------------------------------------------------------------------
@KEEPS_ZERO.function(torch.cat, torch.concat, torch.concatenate, torch.stack)
def concatenate(ctx, node, zero):
    """Every piece zero where removed."""
    tensors = input_arg(node)
    return bool(tensors) and all(zero(t) for t in tensors)


@KEEPS_ZERO.function(operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub, torch.maximum,
                     torch.minimum)
@KEEPS_ZERO.method("add", "add_", "sub", "sub_", "maximum", "minimum")
def add(ctx, node, zero):
    """A sum of values that are all zero there: every tensor operand carries the result's channel dims and is zero
    where removed, and any number added is 0 (a bias or an untracked operand would fill the removed channels)."""
    ndim = len(ctx.shape(node))
    out = _dims(ctx, node, ndim)
    for x in _operands(node):
        if isinstance(x, torch.fx.Node):
            if _dims(ctx, x, ndim) != out or not zero(x):
                return False
        elif x != 0:
            return False
    return True


@KEEPS_ZERO.function(operator.mul, operator.imul, torch.mul)
@KEEPS_ZERO.method("mul", "mul_")
def multiply(ctx, node, zero):
    """A product with a factor that carries every channel dim of the result and is zero where removed (an SE
    gate times the features, a norm's scale times the normalised stream)."""
    ndim = len(ctx.shape(node))
    out = _dims(ctx, node, ndim)
    return any(isinstance(x, torch.fx.Node) and _dims(ctx, x, ndim) >= out and zero(x) for x in _operands(node))


@KEEPS_ZERO.function(operator.truediv, operator.itruediv, torch.div)
@KEEPS_ZERO.method("div", "div_")
def divide(ctx, node, zero):
    """A numerator zero where removed, over a denominator that carries none of the result's channel dims (a norm
    reduced over them): zero divided by a number that is the same for kept and removed channels."""
    ndim = len(ctx.shape(node))
    out = _dims(ctx, node, ndim)
    numerator, denominator = _operands(node)
    return (isinstance(numerator, torch.fx.Node) and _dims(ctx, numerator, ndim) >= out and zero(numerator)
            and not (_dims(ctx, denominator, ndim) & out))
