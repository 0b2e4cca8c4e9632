"""Rules for layers written as functions over parameters the model holds itself.

``F.conv2d(x, self.weight, self.bias)`` reaches its tensors through ``get_attr``
nodes. Every get_attr gives each dim of its tensor fresh atoms and records a
generic direct use of them (see :func:`graphprune.coupling.couple`). These rules
join those atoms with the channels they meet (the input's channels with the
weight's input dim) and, when the argument is the parameter itself, refine the
use's role: the weight's dim 0 *produces* the output channels, so the planner
may remove them. A weight computed in the graph (``self.weight * 2``) still
joins atoms but produces nothing, so its channels are kept: correct, if not
minimal.

>>> import torch, torch.nn.functional as F, graphprune
>>> class Net(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.w1 = torch.nn.Parameter(torch.randn(8, 3, 3, 3))
...         self.w2 = torch.nn.Parameter(torch.randn(4, 8))
...     def forward(self, x):
...         x = F.adaptive_avg_pool2d(F.relu(F.conv2d(x, self.w1, padding=1)), 1).flatten(1)
...         return F.linear(x, self.w2)
>>> small = graphprune.shrink(Net(), 0.5, example_inputs=torch.randn(1, 3, 8, 8))
>>> small.w1.shape, small.w2.shape
(torch.Size([4, 3, 3, 3]), torch.Size([4, 4]))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F

from ..channels import Block, ChannelMap, LayoutError
from ..context import Role
from ..registry import Registry
from ._common import arg, arg_path, conv_input, input_arg, op_name, pointwise

__all__ = ["RULES"]

RULES = Registry()


def _claim(ctx, value: Any, dim: int, atoms: np.ndarray | None, role: str) -> None:
    """Refine the use of a parameter reached through get_attr: ``dim`` of it plays ``role``. A weight computed
    from a parameter may produce its output channels too (see :meth:`RuleContext.claim_computed`)."""
    if atoms is None or not isinstance(value, torch.fx.Node):
        return
    if value.op != "get_attr":
        if role == Role.PRODUCER:
            ctx.claim_computed(atoms, role)
        return
    owner, _, attr = value.target.rpartition(".")
    ctx.use_tensor(owner, attr, dim, atoms, role)


def _meet(ctx, a: np.ndarray | None, b: np.ndarray | None, what: str) -> np.ndarray | None:
    """Two channel axes that index each other: joined if both are tracked, else the tracked one is pinned."""
    if a is not None and b is not None:
        ctx.join(a, b)
        return a
    for atoms in (a, b):
        if atoms is not None:
            ctx.pin(atoms, f"{what} meets an axis whose channels are fixed")
    return None


def _tensor_map(ctx, value: Any) -> ChannelMap:
    shape = ctx.shape(value)
    cmap = ctx.channels(value)
    if shape is None or cmap is None:
        return ChannelMap()
    return cmap.normalized(len(shape))


def _only(cmap: ChannelMap, dim: int, what: str) -> np.ndarray | None:
    extra = cmap.dims - {dim}
    if extra:
        raise LayoutError(f"{what} carries channels on dims {sorted(extra)} besides dim {dim}")
    return cmap.at(dim)


def _group_positions(ctx, atoms: np.ndarray | None, groups: int) -> np.ndarray | None:
    """Join position i of every one of ``groups`` equal groups of ``atoms``; the first group's atoms."""
    if atoms is None:
        return None
    per_group = atoms.reshape(groups, -1)
    for row in per_group[1:]:
        ctx.join(per_group[0], row)
    return per_group[0]


def _conv(ctx, node):
    """``F.conv{1,2,3}d(x, weight, bias, stride, padding, dilation, groups)``: like the module rule."""
    x, weight, bias = input_arg(node), arg(node, 1, "weight"), arg(node, 2, "bias")
    groups = arg(node, 6, "groups", 1)
    w_shape = ctx.shape(weight)
    if w_shape is None or not isinstance(groups, int):
        raise LayoutError("the weight's shape or the number of groups is not known at trace time")
    ndim = len(ctx.shape(x))
    cdim = ndim - (len(w_shape) - 2) - 1
    positionwise = pointwise(w_shape[2:], arg(node, 3, "stride", 1), arg(node, 4, "padding", 0))
    in_atoms, spatial = conv_input(ctx, _tensor_map(ctx, x), cdim, positionwise, "the convolution")
    w_map = _tensor_map(ctx, weight)
    if w_map.dims - {0, 1}:  # a kernel whose taps were joined with channels: not a plain weight
        for d in sorted(w_map.dims - {0, 1}):
            ctx.pin(w_map.block_at(d).atoms, "convolution kernel taps")
    w_out, w_in = w_map.at(0), w_map.at(1)
    b_atoms = _only(_tensor_map(ctx, bias), 0, "the convolution's bias") if bias is not None else None
    c_in = ctx.shape(x)[cdim]
    if groups == 1:
        _meet(ctx, in_atoms, w_in, "the convolution's input")
        _claim(ctx, weight, 1, w_in, Role.CONSUMER)
        out = w_out
    elif groups == c_in and w_shape[1] == 1:  # depthwise: output channel j reads input channel j // m
        mult = w_shape[0] // c_in
        if in_atoms is None:
            if w_out is not None:
                ctx.pin(w_out, "depthwise convolution of fixed channels")
            out = w_out
        else:
            out = np.repeat(in_atoms, mult)
            _meet(ctx, out, w_out, "the depthwise convolution's weight")
            # `groups` is a literal in the graph: it must follow the number of kept input channels.
            path = arg_path(node, 6, "groups")
            ctx.edit_shape(path, groups, Block((cdim,), in_atoms), 0)
    else:  # grouped, as the module rule: position i of every group is one channel, on both sides
        _meet(ctx, _group_positions(ctx, in_atoms, groups), w_in, "the convolution's input")
        _claim(ctx, weight, 1, w_in, Role.CONSUMER)
        _group_positions(ctx, w_out, groups)
        out = w_out
    _claim(ctx, weight, 0, w_out, Role.PRODUCER)
    if out is not None:
        if bias is not None:
            _meet(ctx, out, b_atoms, "the convolution's bias")
            _claim(ctx, bias, 0, b_atoms, Role.BIAS)
        return spatial.with_block(Block((cdim,), out))
    if b_atoms is not None:
        ctx.pin(b_atoms, "bias of an untracked output")
    return spatial


RULES.function(F.conv1d, F.conv2d, F.conv3d)(_conv)


@RULES.function(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
def conv_transpose(ctx, node):
    """``F.conv_transpose{1,2,3}d(x, weight, bias, stride, padding, output_padding, groups, dilation)``: the
    weight is ``in x out/groups x kernel``, so it consumes on dim 0 and produces on dim 1, in whole positions
    of every group when grouped; a depthwise one passes channels through and its ``groups`` follows them."""
    x, weight, bias = input_arg(node), arg(node, 1, "weight"), arg(node, 2, "bias")
    groups = arg(node, 6, "groups", 1)
    w_shape = ctx.shape(weight)
    if w_shape is None or not isinstance(groups, int):
        raise LayoutError("the weight's shape or the number of groups is not known at trace time")
    cdim = len(ctx.shape(x)) - (len(w_shape) - 2) - 1
    in_atoms = _only(_tensor_map(ctx, x), cdim, "the transposed convolution's input")
    w_map = _tensor_map(ctx, weight)
    for d in sorted(w_map.dims - {0, 1}):
        ctx.pin(w_map.block_at(d).atoms, "convolution kernel taps")
    w_in, w_out = w_map.at(0), w_map.at(1)
    b_atoms = _only(_tensor_map(ctx, bias), 0, "the transposed convolution's bias") if bias is not None else None
    c_in = ctx.shape(x)[cdim]
    _meet(ctx, in_atoms, w_in, "the transposed convolution's input")
    depthwise = groups > 1 and groups == c_in and in_atoms is not None
    _claim(ctx, weight, 0, w_in, Role.PRODUCER if depthwise else Role.CONSUMER)
    if depthwise:  # output j comes from input j // m
        out = np.repeat(in_atoms, w_shape[1])
        ctx.edit_shape(arg_path(node, 6, "groups"), groups, Block((cdim,), in_atoms), 0)
        w_out = None  # the per-group outputs stay: every input channel keeps its m outputs
    elif groups > 1:
        _group_positions(ctx, w_in, groups)
        out = None if w_out is None else np.tile(w_out, groups)
    else:
        out = w_out
    _claim(ctx, weight, 1, w_out, Role.PRODUCER)
    if out is None:
        if b_atoms is not None:
            ctx.pin(b_atoms, "bias of an untracked output")
        return ChannelMap()
    if bias is not None:
        _meet(ctx, out, b_atoms, "the transposed convolution's bias")
        _claim(ctx, bias, 0, b_atoms, Role.BIAS)
    return ChannelMap.single(cdim, out)


@RULES.function(F.linear)
def linear(ctx, node):
    """``F.linear(x, weight, bias)``: consumes the last dim (weight dim 1), produces weight dim 0."""
    return _dense(ctx, input_arg(node), arg(node, 1, "weight"), arg(node, 2, "bias"), out_dim=0, what="linear")


@RULES.function(torch.addmm)
def addmm(ctx, node):
    """``torch.addmm(bias, x, weight)``: a linear layer whose weight is stored transposed (GPT-2's ``Conv1D``):
    consumes x's last dim (weight dim 0), produces weight dim 1. ``beta`` and ``alpha`` only scale."""
    return _dense(ctx, arg(node, 1, "mat1"), arg(node, 2, "mat2"), input_arg(node), out_dim=1, what="addmm")


def _dense(ctx, x, weight, bias, out_dim: int, what: str) -> ChannelMap:
    """``x @ weight`` over x's last dim, plus a bias over the output features; ``out_dim`` is the weight dim that
    produces them (0 for F.linear's out x in weight, 1 for a transposed one)."""
    ndim = len(ctx.shape(x))
    last = ndim - 1
    cmap = _tensor_map(ctx, x)
    w_map = _tensor_map(ctx, weight)
    if len(ctx.shape(weight)) != 2:
        raise LayoutError(f"{what} with a weight that is not 2-D")
    w_out, w_in = w_map.at(out_dim), w_map.at(1 - out_dim)
    _meet(ctx, cmap.at(last), w_in, f"the {what} input")
    _claim(ctx, weight, 1 - out_dim, w_in, Role.CONSUMER)
    _claim(ctx, weight, out_dim, w_out, Role.PRODUCER)
    b_atoms = b_dim = None
    if bias is not None:
        b_dim = len(ctx.shape(bias)) - 1  # addmm may take a bias already broadcast to rows x features
        b_atoms = _only(_tensor_map(ctx, bias), b_dim, f"the {what} bias")
    if w_out is None:
        if b_atoms is not None:
            ctx.pin(b_atoms, "bias of an untracked output")
        return cmap.without(last)
    if bias is not None:
        _meet(ctx, w_out, b_atoms, f"the {what} bias")
        _claim(ctx, bias, b_dim, b_atoms, Role.BIAS)
    return cmap.without(last).with_block(Block((last,), w_out))


@RULES.function(F.batch_norm, F.instance_norm)
def batch_norm(ctx, node):
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)``: per-channel tensors on dim 1."""
    x = input_arg(node)
    cmap = _tensor_map(ctx, x)
    atoms = cmap.at(1)
    # Per-channel affine on dim 1; the statistics run over the other dims (all but dim 1 with batch statistics,
    # the spatial ones for an instance norm). Channels there (a weight standardised per filter over its input
    # channels, viewed as 1 x O x I*k*k) change the statistics when they go: reported, as a LayerNorm's are.
    if op_name(node) == "instance_norm":
        statistics = arg(node, 5, "use_input_stats", True)
        reduced = set(range(2, len(ctx.shape(x))))
    else:
        statistics = arg(node, 5, "training", False) or arg(node, 1, "running_mean") is None
        reduced = set(range(len(ctx.shape(x)))) - {1}
    for block in cmap.blocks:
        if 1 not in block.dims and statistics and set(block.dims) & reduced:
            ctx.mark_inexact(block.atoms, "batch statistics run over removed channels (weight standardisation)")
    # F.batch_norm and F.instance_norm take these in the same places.
    slots = ((1, "running_mean", Role.BUFFER), (2, "running_var", Role.BUFFER), (3, "weight", Role.NORM), (4, "bias", Role.BIAS))
    for index, name, role in slots:
        value = arg(node, index, name)
        if value is None:
            continue
        value_atoms = _only(_tensor_map(ctx, value), 0, f"the {name}")
        _meet(ctx, atoms, value_atoms, f"the {name}")
        _claim(ctx, value, 0, value_atoms, role)
    return cmap


@RULES.function(F.embedding)
def embedding(ctx, node):
    """``F.embedding(ids, weight)``: rows of the table picked by index (pinned: not channels); its columns
    (weight dim 1) produce the output's last dim."""
    ids, weight = input_arg(node), arg(node, 1, "weight")
    if ctx.channels(ids):
        raise LayoutError("embedding indices that carry channels")
    if arg(node, 3, "max_norm") is not None:
        raise LayoutError("F.embedding with max_norm renormalises every row over all its columns")
    w_map = _tensor_map(ctx, weight)
    rows, columns = w_map.at(0), w_map.at(1)
    if rows is not None:
        ctx.pin(rows, "embedding rows, picked by index")
    _claim(ctx, weight, 1, columns, Role.PRODUCER)
    last = len(ctx.shape(node)) - 1
    return ChannelMap() if columns is None else ChannelMap.single(last, columns)
