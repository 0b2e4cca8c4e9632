"""Known shapes: calls whose result's shape is known, answered on meta tensors without running them.

Shape propagation (:mod:`.shapes`) runs a graph on meta tensors. Most ops have C++ meta kernels,
but some common ones are Python decompositions: a BatchNorm costs 1.5 ms on meta tensors, and a
MobileNet's worth of them was most of its propagation. Their answer is known (a tensor like the
input; for convolutions and linear layers, a formula) once a cheap check says the call would succeed:
the parameters match the input's channels and dtype. Anything else runs as usual.

>>> x = torch.empty(2, 8, 4, 4, device="meta")
>>> known_module_call(nn.BatchNorm2d(8), (x,), {}).shape, known_module_call(nn.BatchNorm2d(6), (x,), {})
(torch.Size([2, 8, 4, 4]), None)
>>> known_call(F.relu, (x,), {"inplace": True}) is x
True
>>> known_module_call(nn.Conv2d(8, 4, 3, stride=2, padding=1), (x,), {}).shape
torch.Size([2, 4, 2, 2])
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["KnownShapes", "known_call", "known_module_call"]


def _parameters(f: Callable[..., Any]) -> list[str]:
    try:
        return list(inspect.signature(f).parameters)
    except (TypeError, ValueError):  # a builtin without a signature
        return []


def _like_input_if(check: Callable[..., bool] | None = None) -> Callable[..., bool]:
    return check or (lambda x, *args, **kwargs: True)


def _batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, *args, **kwargs) -> bool:
    return x.dim() >= 2 and all(t is None or (t.shape == (x.shape[1],) and (t.dtype == x.dtype or t is running_mean
                                                                           or t is running_var))
                                for t in (running_mean, running_var, weight, bias))


def _layer_norm(x, normalized_shape, weight=None, bias=None, *args, **kwargs) -> bool:
    shape = tuple(normalized_shape)
    return tuple(x.shape[x.dim() - len(shape):]) == shape and all(
        t is None or (tuple(t.shape) == shape and t.dtype == x.dtype) for t in (weight, bias))


def _group_norm(x, num_groups, weight=None, bias=None, *args, **kwargs) -> bool:
    return x.dim() >= 2 and x.shape[1] % num_groups == 0 and all(
        t is None or (t.shape == (x.shape[1],) and t.dtype == x.dtype) for t in (weight, bias))


# Functions whose result is shaped like their first argument (same dtype and layout), when the check holds.
# Their meta kernels are Python decompositions (a BatchNorm costs 1.5 ms on meta tensors, a whole MobileNet's
# worth is most of its propagation), and the answer is known.
_LIKE_INPUT: dict[Callable[..., Any], Callable[..., bool]] = {
    F.batch_norm: _batch_norm, F.layer_norm: _layer_norm, F.group_norm: _group_norm,
    **{f: _like_input_if() for f in (
        F.relu, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.mish, F.leaky_relu, F.elu,
        F.selu, F.celu, F.softplus, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
        torch.relu, torch.sigmoid, torch.tanh, torch.Tensor.relu, torch.Tensor.sigmoid, torch.Tensor.tanh)},
}
_INPLACE_AT = {f: _parameters(f).index("inplace") for f in _LIKE_INPUT if "inplace" in _parameters(f)}


def _pair(v: Any) -> tuple[int, int] | None:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return tuple(v)
    return None  # "same", "valid", or anything else: the kernel decides


def _conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> tuple[int, ...] | None:
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    if s is None or p is None or d is None or not isinstance(groups, int) or x.dim() != 4 or weight.dim() != 4:
        return None
    if x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups or weight.dtype != x.dtype:
        return None
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != x.dtype):
        return None
    out = [(size + 2 * p[i] - d[i] * (weight.shape[2 + i] - 1) - 1) // s[i] + 1 for i, size in enumerate(x.shape[2:])]
    return None if min(out) < 1 else (x.shape[0], weight.shape[0], *out)


def _linear(x, weight, bias=None) -> tuple[int, ...] | None:
    if x.dim() < 1 or weight.dim() != 2 or x.shape[-1] != weight.shape[1] or weight.dtype != x.dtype:
        return None
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != x.dtype):
        return None
    return (*x.shape[:-1], weight.shape[0])


def _broadcast(x, other, *args, **kwargs) -> tuple[int, ...] | None:
    """``x + other`` and its kin over a floating ``x`` (an integer one divides into floats): ``other`` a contiguous
    meta tensor of x's dtype, or a number. On meta tensors these run through Python type promotion (0.7 ms an add)."""
    if args or kwargs.keys() - {"alpha"} or not x.dtype.is_floating_point:
        return None
    if isinstance(other, torch.Tensor):
        if other.dtype != x.dtype or not other.is_meta or not other.is_contiguous():
            return None
        try:
            return tuple(torch.broadcast_shapes(x.shape, other.shape))
        except RuntimeError:
            return None  # the op raises its own error
    if type(other) in (int, float):
        return tuple(x.shape)
    return None


def _adaptive_pool(n: int) -> Callable[..., tuple[int, ...] | None]:
    """``F.adaptive_avg_pool{n}d(x, output_size)``: the last ``n`` dims become ``output_size`` (None keeps one). On
    meta tensors the kernel is Python (0.8 ms: a mean when the output is 1)."""

    def shape(x, output_size, *args, **kwargs) -> tuple[int, ...] | None:
        size = (output_size,) * n if isinstance(output_size, int) else tuple(output_size)
        if args or kwargs or x.dim() not in (n + 1, n + 2) or len(size) != n or min(x.shape, default=1) < 1:
            return None
        if not all(s is None or (type(s) is int and s > 0) for s in size):
            return None
        return (*x.shape[:-n], *(x.shape[x.dim() - n + i] if s is None else s for i, s in enumerate(size)))

    return shape


_ADAPTIVE = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3}
_BINARY = (operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
           torch.Tensor.add, torch.Tensor.sub, torch.Tensor.mul, torch.Tensor.__add__, torch.Tensor.__radd__,
           torch.Tensor.__sub__, torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.__truediv__)
# Functions whose result's shape follows from their arguments' by a formula (a contiguous input gives a
# contiguous result): the meta kernel of a convolution is Python too.
_SHAPED: dict[Callable[..., Any], Callable[..., tuple[int, ...] | None]] = {
    F.conv2d: _conv2d, F.linear: _linear, **{f: _broadcast for f in _BINARY},
    **{f: _adaptive_pool(n) for f, n in _ADAPTIVE.items()}}


class KnownShapes(TorchFunctionMode):
    """Answers :data:`_LIKE_INPUT` and :data:`_SHAPED` calls on meta tensors without running them; the rest runs."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        answer = known_call(func, args, kwargs or {})
        return answer if answer is not None else func(*args, **(kwargs or {}))


def known_call(func: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The result of ``func(*args, **kwargs)`` on a meta tensor when :data:`_LIKE_INPUT` knows it, else None."""
    try:
        check, shaped = _LIKE_INPUT.get(func), _SHAPED.get(func)
    except TypeError:  # an unhashable target
        return None
    if (check is None and shaped is None) or not args or not isinstance(args[0], torch.Tensor) or not args[0].is_meta:
        return None
    if shaped is not None:
        x = args[0]
        try:
            shape = shaped(*args, **kwargs) if x.is_contiguous() else None
        except TypeError:
            return None
        return None if shape is None else torch.empty(shape, dtype=x.dtype, device="meta")
    try:
        if not check(*args, **kwargs):
            return None
    except TypeError:  # an unexpected signature: let the function itself judge
        return None
    at = _INPLACE_AT.get(func)
    inplace = kwargs.get("inplace", args[at] if at is not None and len(args) > at else False)
    if inplace:
        return args[0]
    x = args[0]  # empty_like on meta runs Python (0.2 ms); a contiguous result needs only the shape
    return torch.empty(x.shape, dtype=x.dtype, device="meta") if x.is_contiguous() else torch.empty_like(x)


def known_module_call(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """:func:`known_call` for a torch.nn layer called on one tensor, through the function its forward calls."""
    as_function = _MODULES.get(type(module))
    if as_function is None or len(args) != 1 or kwargs:
        return None
    call = as_function(module)
    if call is None:
        return None
    func, extra, options = call
    return known_call(func, (args[0], *extra), options)



def _activation(func: Callable[..., Any]) -> Callable[[nn.Module], tuple[Any, tuple, dict]]:
    return lambda m: (func, (), {"inplace": m.inplace} if hasattr(m, "inplace") else {})


def _conv_module(m: nn.Conv2d) -> tuple[Any, tuple, dict] | None:
    if m.padding_mode != "zeros":
        return None  # its forward pads first
    return F.conv2d, (m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups), {}


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# A torch.nn layer as the function its forward calls on its one input (in eval mode): (function, args, kwargs).
_MODULES: dict[type, Callable[[nn.Module], tuple[Any, tuple, dict]]] = {
    **{cls: (lambda m: (F.batch_norm, (m.running_mean, m.running_var, m.weight, m.bias), {})) for cls in _NORMS},
    nn.Conv2d: _conv_module, nn.Linear: lambda m: (F.linear, (m.weight, m.bias), {}),
    nn.LayerNorm: lambda m: (F.layer_norm, (m.normalized_shape, m.weight, m.bias), {}),
    nn.GroupNorm: lambda m: (F.group_norm, (m.num_groups, m.weight, m.bias), {}),
    nn.ReLU: _activation(F.relu), nn.ReLU6: _activation(F.relu6), nn.Hardtanh: _activation(F.hardtanh),
    nn.Hardswish: _activation(F.hardswish), nn.Hardsigmoid: _activation(F.hardsigmoid), nn.SiLU: _activation(F.silu),
    nn.Mish: _activation(F.mish), nn.LeakyReLU: _activation(F.leaky_relu), nn.ELU: _activation(F.elu),
    nn.SELU: _activation(F.selu), nn.CELU: _activation(F.celu), nn.GELU: _activation(F.gelu),
    nn.Sigmoid: _activation(torch.sigmoid), nn.Tanh: _activation(torch.tanh), nn.Softplus: _activation(F.softplus),
    nn.Dropout: _activation(F.dropout), nn.Dropout1d: _activation(F.dropout1d), nn.Dropout2d: _activation(F.dropout2d),
    nn.Dropout3d: _activation(F.dropout3d), nn.AlphaDropout: _activation(F.alpha_dropout),
    **{cls: (lambda m, f=f: (f, (m.output_size,), {})) for cls, f in (
        (nn.AdaptiveAvgPool1d, F.adaptive_avg_pool1d), (nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d),
        (nn.AdaptiveAvgPool3d, F.adaptive_avg_pool3d))},
}
