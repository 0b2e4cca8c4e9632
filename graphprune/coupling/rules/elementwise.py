"""Rules for element-wise ops, pooling and dropout: channels pass through or are joined.

Only ops listed here are element-wise to graphprune; an op missing from the lists
is refused, never assumed element-wise.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..channels import Block, ChannelMap, LayoutError
from ..registry import Registry
from ._common import arg, input_arg, join_along, join_tensor_arg, keep_whole, pass_through, project
from .shapes import DerivedSize, SizeOf, keep_count

__all__ = ["RULES", "broadcast_join"]

RULES = Registry()

_UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Identity, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.RReLU,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
_UNARY_FUNCTIONS = (
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu,
    F.silu, F.mish, F.sigmoid, torch.sigmoid, F.tanh, torch.tanh, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.softplus, F.logsigmoid, F.hardshrink, F.softshrink, F.threshold, F.rrelu, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, torch.exp, torch.abs, torch.neg, torch.sqrt, torch.square, torch.clamp, torch.rsqrt, torch.cos,
    torch.sin, torch.log, torch.log1p, torch.expm1, torch.erf, torch.reciprocal, torch.sign, operator.neg,
    # Zeroes whole samples (rows) or the whole batch at random in training; the identity in eval.
    "torchvision.ops.stochastic_depth.stochastic_depth",
)
_UNARY_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "neg", "sqrt", "square", "rsqrt", "cos",
    "sin", "log", "log1p", "expm1", "erf", "reciprocal", "sign",
    "clamp", "clamp_", "clamp_min", "clamp_max", "contiguous", "clone", "detach", "float", "half",
    "bfloat16", "double", "to", "type_as",
)


@RULES.module(*_UNARY_MODULES)
@RULES.function(*_UNARY_FUNCTIONS)
@RULES.method(*_UNARY_METHODS)
def unary(ctx, node):
    """Acts on each element on its own: channels pass through."""
    return pass_through(ctx, node)


def check_pooled(ctx, x, spatial: int) -> None:
    """Pooling mixes the last ``spatial`` dims of ``x``: none of them may carry channels."""
    shape = ctx.shape(x)
    cmap = ctx.channels(x)
    if cmap is not None and shape is not None:
        pooled = set(range(len(shape) - spatial, len(shape)))
        if pooled & cmap.normalized(len(shape)).dims:
            raise LayoutError(f"pooling over the last {spatial} dims would mix channels")


def _pooling(spatial: int):
    def rule(ctx, node):
        check_pooled(ctx, input_arg(node), spatial)
        return pass_through(ctx, node)

    rule.__doc__ = f"Pools over the last {spatial} dims; channels elsewhere pass through."
    rule.__name__ = f"pool{spatial}d"
    return rule


for _spatial, _modules, _functions in (
    (1, (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d),
     (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d)),
    (2, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d),
     (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d)),
    (3, (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d, nn.LPPool3d),
     (F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d)),
):
    _rule = _pooling(_spatial)
    RULES.module(*_modules)(_rule)
    RULES.function(*_functions)(_rule)


@RULES.module(nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
@RULES.function(F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear)
def interpolate(ctx, node):
    """Resamples the spatial dims (all but the first two): channels on the batch or channel dim pass through.

    Resampling mixes neighbouring entries, so channels on a resampled dim (a learned position table interpolated to
    the input's grid) stay whole.
    """
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    return keep_whole(ctx, cmap, range(2, len(shape)), "resampled by an interpolation")


_PAD_MODULES = (
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
)


@RULES.module(*_PAD_MODULES)
@RULES.function(F.pad)
def pad(ctx, node):
    """Pads (or crops) trailing dims, each channel on its own: channels on dims it leaves the same size pass through.

    What the padding puts around a removed channel never reaches a kept one: the consumers' slices for it go too.
    Padding a channel dim itself (EfficientViT pads each head's values with a column of ones) adds entries the
    pruned tensor gets too, by the same literal amounts: on a dim of its own they are new channels that are kept
    (pinned); on one axis of a multi-dim block every row along it becomes one channel, padded as a whole. Any mode
    but a constant reads neighbouring entries, so the channels there are kept as well; a crop keeps them whole.
    """
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    if node.op == "call_module":
        module = ctx.module(node)
        amounts, mode = module.padding, "constant" if isinstance(module, _CONSTANT_PADS) else "other"
        amounts = amounts if isinstance(amounts, (tuple, list)) else [amounts] * (2 * (len(shape) - 2))
    else:
        amounts, mode = arg(node, 1, "pad"), arg(node, 2, "mode", "constant")
    amounts = list(amounts)
    widths = {len(shape) - 1 - k: (amounts[2 * k], amounts[2 * k + 1]) for k in range(len(amounts) // 2)}
    blocks = []
    for block in cmap.blocks:
        for d in [d for d in block.dims if widths.get(d, (0, 0)) != (0, 0)]:
            width = _fixed_widths(ctx, widths[d], ctx.shape(node)[d] - shape[d], d)
            block = _pad_block(ctx, block, d, width, mode in ("constant", None))
        blocks.append(block)
    return ChannelMap(tuple(blocks))


def _fixed_widths(ctx, width: tuple, grown: int, dim: int) -> tuple[int, int]:
    """A channel dim's padding before and after it, as ints. An amount computed at run time (``W - 1``) keeps its
    value, which the shapes give: the sizes it is computed from are spatial, or channel counts that are then kept."""
    for w in width:
        keep_count(ctx, w, "a padding computed from a channel count")
    before, after = width
    if not isinstance(before, int) and not isinstance(after, int):
        raise LayoutError(f"padding channel dim {dim} by amounts computed at run time on both sides")
    before = grown - after if not isinstance(before, int) else before
    after = grown - before if not isinstance(after, int) else after
    return before, after


_CONSTANT_PADS = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)


def _pad_block(ctx, block: Block, dim: int, width: tuple, constant: bool) -> Block:
    before, after = width
    axis = block.dims.index(dim)
    size = block.atoms.shape[axis]
    if len(block.dims) > 1:
        join_along(ctx, block.atoms, axis)
        kept = np.take(block.atoms, np.arange(max(0, -before), size - max(0, -after)), axis=axis)
        grown = np.pad(kept, [(0, 0) if a != axis else (max(0, before), max(0, after)) for a in range(kept.ndim)], mode="edge")
        return Block(block.dims, grown)
    if min(before, after) < 0 or not constant:
        ctx.pin(block.atoms, "a channel dim cropped, or padded from its neighbours")
    kept = block.atoms[max(0, -before):size - max(0, -after)]
    grow = max(0, before) + max(0, after)
    new = ctx.new_channels(grow) if grow else np.empty(0, dtype=np.int64)
    ctx.pin(new, "entries a padding adds to a channel dim")
    return Block(block.dims, np.concatenate([new[:max(0, before)], kept, new[max(0, before):]]))


def broadcast_join(ctx, node, operands) -> ChannelMap | None:
    """Element-wise ops over broadcast operands: tracked dims that meet are joined index by index.

    A tracked dim that meets an untracked dim of the same size (another input, a
    constant) is pinned, since the other side cannot shrink with it. Meeting a
    size-1 dim is broadcasting (``x * scale[:, :, None, None]``) and couples nothing else.
    """
    out_shape = ctx.shape(node)
    if out_shape is None:
        return None
    nd = len(out_shape)
    placed = []  # (padded shape, blocks in output dims)
    for a in operands:
        shape = ctx.shape(a)
        if shape is None:
            continue  # a Python scalar
        cmap = (ctx.channels(a) or ChannelMap()).normalized(len(shape))
        offset = nd - len(shape)
        padded = (1,) * offset + tuple(shape)
        blocks = [Block(tuple(d + offset for d in b.dims), b.atoms) for b in cmap.blocks]
        placed.append((padded, blocks))
    all_keys = [frozenset(b.dims) for _, blocks in placed for b in blocks]
    result: dict[frozenset, Block] = {}
    for padded, blocks in placed:
        for block in blocks:
            key = frozenset(block.dims)
            overlapping = [k for k in result if k & key and k != key]
            if overlapping:
                small, big = _nested(block, [result[k] for k in overlapping], all_keys)
                if small is None:
                    raise LayoutError("element-wise op over operands with differently shaped channel blocks")
                # A block over more dims meets one over fewer that the other operands leave alone otherwise
                # (SKNet and ResNeSt: attention logits viewed as radix x C scale stacked branches that carry C):
                # the larger is removed in whole slices across its extra dims, each slice joined to a channel.
                result.pop(frozenset(big.dims), None)
                block, key = project(ctx, big, small.dims), frozenset(small.dims)
                result.setdefault(key, small)
            if key in result:
                other = result[key]
                atoms = np.transpose(block.atoms, [block.dims.index(d) for d in other.dims])
                if atoms.shape == other.atoms.shape:
                    ctx.join(other.atoms, atoms)
                elif len(key) > 1 and _broadcasts(atoms.shape, other.atoms.shape):
                    # heads x 1 against heads x head_dim (EfficientViT divides by its padded column): each head's
                    # one entry meets all of the other's, so the head goes whole.
                    shape = np.broadcast_shapes(atoms.shape, other.atoms.shape)
                    ctx.join(np.broadcast_to(other.atoms, shape), np.broadcast_to(atoms, shape))
                    if shape != other.atoms.shape:
                        result[key] = Block(other.dims, np.ascontiguousarray(np.broadcast_to(other.atoms, shape)))
                else:
                    ctx.pin(atoms, "broadcast of a single channel")
                    ctx.pin(other.atoms, "broadcast of a single channel")
                continue
            result[key] = block
    fixed: set[frozenset] = set()
    for padded, blocks in placed:
        tracked = {d for b in blocks for d in b.dims}
        for key, block in list(result.items()):
            meets = {d for d in block.dims if d not in tracked and padded[d] == out_shape[d] and out_shape[d] > 1}
            if not meets or key in fixed:
                continue
            if meets < set(block.dims):
                # heads x head_dim times a rotary table over head_dim: that axis stays whole, whole heads go.
                result[key] = project(ctx, block, set(block.dims) - meets)
            else:
                ctx.pin(block.atoms, "element-wise op with an operand whose channels are fixed")
                fixed.add(key)
    # Pinned channels never go, so the output need not carry them: later ops see a plain dim
    # (a positional embedding's token dim added to the tokens is not a channel dim downstream).
    return ChannelMap(tuple(block for key, block in result.items() if key not in fixed))


def _broadcasts(a: tuple, b: tuple) -> bool:
    """Whether two atom grids of equal rank broadcast against each other (each axis equal or 1 on one side)."""
    return len(a) == len(b) and all(x == y or 1 in (x, y) for x, y in zip(a, b))


def _nested(block: Block, others: list[Block], all_keys: list[frozenset]) -> tuple[Block | None, Block | None]:
    """(smaller, larger) when ``block`` and the one block it overlaps are nested and the larger one's extra dims
    are tracked by no other operand; (None, None) otherwise."""
    if len(others) != 1:
        return None, None
    (other,) = others
    mine, theirs = frozenset(block.dims), frozenset(other.dims)
    if not (mine < theirs or theirs < mine):
        return None, None
    small, big = (block, other) if mine < theirs else (other, block)
    extra = frozenset(big.dims) - frozenset(small.dims)
    if any(k & extra and k != frozenset(big.dims) for k in all_keys):
        return None, None
    return small, big


@RULES.function(
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, operator.floordiv, operator.mod, torch.add, torch.sub, torch.mul, torch.div,
    torch.maximum, torch.minimum,
)
@RULES.method("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum", "copy_")
def binary(ctx, node):
    """Element-wise arithmetic: every operand's channels are joined (a residual add, an SE multiply; ``copy_``
    writes one tensor's channels into another's, position by position). On sizes (``D // heads``) the result is
    a :class:`~.shapes.DerivedSize`, which the view it feeds checks."""
    operands = [node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")]
    if ctx.shape(node) is None:  # arithmetic on ints: a size computed from channel counts stays one
        markers = [ctx.channels(v) for v in operands if isinstance(v, torch.fx.Node)]
        counted = [m.atoms for m in markers if isinstance(m, (SizeOf, DerivedSize))]
        return DerivedSize(np.concatenate(counted)) if counted else None
    return broadcast_join(ctx, node, operands)


@RULES.function(torch.where)
@RULES.method("where", "masked_fill", "masked_fill_")
def select_where(ctx, node):
    """``torch.where(cond, a, b)`` and ``x.masked_fill(mask, value)``: each element comes from one operand at the
    same position, so the tensors' channels are joined as in an add (T5's masked position bias); a condition
    without channels over a channel dim keeps those channels."""
    # Every operand is positional in these calls (torch.where(cond, a, b), aten.where.ScalarOther(cond, a, -inf),
    # x.where(cond, y), x.masked_fill(mask, v)); the Python scalars among them carry nothing.
    operands = [*node.args, *node.kwargs.values()]
    return broadcast_join(ctx, node, [v for v in operands if isinstance(v, torch.fx.Node)])


@RULES.function(torch.pow, operator.pow)
@RULES.method("pow", "pow_")
def power(ctx, node):
    """``x ** p``: element-wise; a number exponent acts on each element, a tensor one is joined like any operand."""
    exponent = node.args[1] if len(node.args) > 1 else node.kwargs.get("exponent")
    if isinstance(exponent, torch.fx.Node):
        return broadcast_join(ctx, node, [node.args[0], exponent])
    return pass_through(ctx, node)


@RULES.function(torch.addcmul)
@RULES.method("addcmul")
def addcmul(ctx, node):
    """``input + value * tensor1 * tensor2``, element-wise over broadcast operands: their channels are joined."""
    operands = [input_arg(node), arg(node, 1, "tensor1"), arg(node, 2, "tensor2")]
    return broadcast_join(ctx, node, operands)


@RULES.function(torch.roll)
@RULES.method("roll")
def roll(ctx, node):
    """Shifts elements cyclically along ``dims`` (Swin's shifted windows): channels on other dims pass through.

    Rolling a dim that carries channels would move channels to other indices, and with no ``dims`` the
    tensor is rolled flattened; both are refused.
    """
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = ctx.channels(x)
    dims = arg(node, 2, "dims")
    if cmap and shape is not None:
        if dims is None:
            raise LayoutError("torch.roll without dims rolls the flattened tensor, moving channels")
        rolled = {int(d) % len(shape) for d in (dims if isinstance(dims, (tuple, list)) else [dims])}
        if rolled & set(cmap.normalized(len(shape)).dims):
            raise LayoutError("torch.roll along a dim that carries channels moves them to other indices")
    return pass_through(ctx, node)


@RULES.module(nn.GLU)
@RULES.function(F.glu)
def glu(ctx, node):
    """``a * sigmoid(b)`` of the two halves of ``dim``: channel i of each half is one channel (joined), so
    halves stay equal; a removed channel is zero in ``a``, hence in the output."""
    x = input_arg(node)
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    dim = (ctx.module(node).dim if node.op == "call_module" else arg(node, 1, "dim", -1)) % len(shape)
    block = cmap.block_at(dim)
    if block is None:
        return cmap
    if len(block.dims) != 1:
        raise LayoutError(f"GLU over dim {dim}, which is part of a {len(block.dims)}-D channel block")
    first, second = np.split(block.atoms, 2)
    ctx.join(first, second)
    return cmap.without(dim).with_block(Block((dim,), first))


@RULES.function(F.prelu)
def functional_prelu(ctx, node):
    """``F.prelu(x, weight)``: one slope per channel of dim 1 (or one in all); zero stays zero."""
    x, weight = input_arg(node), arg(node, 1, "weight")
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    if ctx.shape(weight) is None or ctx.shape(weight).numel() == 1:
        return cmap
    cdim = 1 if len(shape) >= 2 else 0
    if cmap.dims - {cdim}:
        raise LayoutError(f"prelu input carries channels on dims {sorted(cmap.dims - {cdim})} besides dim {cdim}")
    atoms = cmap.at(cdim)
    if atoms is not None:
        join_tensor_arg(ctx, weight, 0, atoms, "prelu")
    return cmap
