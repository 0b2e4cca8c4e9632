"""Hypothesis strategies that generate small, traceable, random DAG networks.

A network is described by a :class:`NetSpec`: a list of :class:`Step` s, each an op
applied to earlier values (so the network is a DAG: branches, residual adds,
concatenations, splits). :meth:`NetSpec.build` turns it into an ``nn.Module``
whose forward interprets the steps; control flow depends only on the spec, so
``torch.fx`` traces it into a plain graph. Nested steps become nested submodules
running their own spec. The spec's ``repr`` is what hypothesis prints for a
failing example, so every field is a plain value.

Ops on feature maps (N x C x H x W): convolutions (plain, grouped, depthwise,
strided, dilated, with or without bias), BatchNorm with non-trivial statistics,
activations as modules, functions and methods (including sigmoid and
hardsigmoid, whose f(0) != 0), max/avg pooling, global pooling, residual add,
element-wise multiply, concatenation, chunk/split, a squeeze-and-excitation
block (a broadcast multiply), and flatten. Ops on feature vectors (N x F):
Linear, activations, add. Convolutions and Linear layers also come as F.conv2d / F.linear over
parameters the network holds itself.

Some networks are only for ``torch.export``: a branch on a shape (pool only when the map is wide enough), a
list of chunks (``list(x.chunk(n, 1))``, YOLO's C2f), and a top-level ``forward(*args, **kwargs)`` that
iterates its arguments. Symbolic tracing refuses them, so they exercise the automatic export path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from .helpers import spread_batchnorm

__all__ = ["Step", "NetSpec", "FuzzNet", "net_specs", "ratios"]

Shape = tuple[int, ...]  # a value's shape without the batch dim: (C, H, W) or (F,)

ACTIVATIONS = ("relu", "sigmoid", "hardsigmoid", "tanh", "silu", "gelu", "leaky_relu", "hardswish", "relu6")
_ACT_MODULES = {
    "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid, "tanh": nn.Tanh, "silu": nn.SiLU,
    "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU, "hardswish": nn.Hardswish, "relu6": nn.ReLU6,
}
_ACT_FUNCTIONS = {
    "relu": F.relu, "sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid, "tanh": torch.tanh, "silu": F.silu,
    "gelu": F.gelu, "leaky_relu": F.leaky_relu, "hardswish": F.hardswish, "relu6": F.relu6,
}
_ACT_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}


@dataclass(frozen=True)
class Step:
    """One op: ``op`` applied to the values at ``inputs``; ``params`` are its settings."""

    op: str
    inputs: tuple[int, ...]
    params: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str) -> Any:
        return dict(self.params)[key]


@dataclass(frozen=True)
class NetSpec:
    """A network: input shape, steps, which values it returns, and the seed of its weights."""

    in_shape: Shape
    steps: tuple[Step, ...]
    outputs: tuple[int, ...]
    seed: int = 0
    train: bool = False
    batch: int = 2
    star: bool = False  # forward(*args, **kwargs): only torch.export captures it

    def build(self) -> nn.Module:
        """The model, with weights and BatchNorm statistics drawn from ``seed`` (global RNG untouched)."""
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            model = (StarFuzzNet if self.star else FuzzNet)(self.steps, self.outputs)
            _randomize_norms(model)
        return model.train(self.train)

    def example_input(self, batch: int | None = None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + 1)
        return torch.randn((batch or self.batch, *self.in_shape), generator=gen)


def _randomize_norms(model: nn.Module) -> None:
    spread_batchnorm(model)

class SqueezeExcite(nn.Module):
    """x * gate(fc2(relu(fc1(mean(x))))): the gate is broadcast over H and W."""

    def __init__(self, channels: int, hidden: int, gate: str):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = gate

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.fc2(torch.relu(self.fc1(s)))
        return x * _ACT_FUNCTIONS[self.gate](s)


class FuzzNet(nn.Module):
    """Interprets a list of steps; nested steps are FuzzNets of their own (submodules)."""

    def __init__(self, steps: tuple[Step, ...], outputs: tuple[int, ...]):
        super().__init__()
        self.steps = steps
        self.outputs = outputs
        for i, step in enumerate(steps):
            module = _make_module(step)
            if module is not None:
                self.add_module(f"s{i}", module)
            if step.op in ("scale", "shift"):
                self.register_parameter(f"p{i}", nn.Parameter(torch.rand(step.get("c"), 1, 1) + 0.5))
            if step.op == "fconv":  # a conv written as F.conv2d over the model's own tensors
                cin, cout, k, groups = (step.get(key) for key in ("cin", "cout", "k", "groups"))
                self.register_parameter(f"p{i}", nn.Parameter(torch.randn(cout, cin // groups, k, k) * 0.3))
                if step.get("bias"):
                    self.register_parameter(f"b{i}", nn.Parameter(torch.randn(cout) * 0.1))
            if step.op == "flinear":
                self.register_parameter(f"p{i}", nn.Parameter(torch.randn(step.get("fout"), step.get("fin")) * 0.3))

    def forward(self, x):
        values = [x]
        for i, step in enumerate(self.steps):
            values.extend(_run(self, i, step, [values[j] for j in step.inputs]))
        if len(self.outputs) == 1:
            return values[self.outputs[0]]
        return tuple(values[j] for j in self.outputs)


class StarFuzzNet(FuzzNet):
    """A FuzzNet whose forward takes ``*args, **kwargs`` and iterates them, as decorated forwards do."""

    def forward(self, *args, **kwargs):
        inputs = [a for a in args]  # iterating the arguments: a proxy cannot be iterated
        return super().forward(*inputs, **kwargs)


def _make_module(step: Step) -> nn.Module | None:
    op = step.op
    if op == "conv":
        return nn.Conv2d(step.get("cin"), step.get("cout"), step.get("k"), stride=step.get("stride"),
                         padding=step.get("padding"), dilation=step.get("dilation"), groups=step.get("groups"),
                         bias=step.get("bias"))
    if op == "bn":
        return nn.BatchNorm2d(step.get("c"))
    if op == "act" and step.get("form") == "module":
        return _ACT_MODULES[step.get("kind")]()
    if op == "pool" and step.get("form") == "module":
        return nn.MaxPool2d(2) if step.get("kind") == "max" else nn.AvgPool2d(3, stride=1, padding=1)
    if op == "linear":
        return nn.Linear(step.get("fin"), step.get("fout"), bias=step.get("bias"))
    if op == "se":
        return SqueezeExcite(step.get("c"), step.get("hidden"), step.get("gate"))
    if op == "flatten" and step.get("form") == "module":
        return nn.Flatten()
    if op == "block":
        return FuzzNet(step.get("steps"), (step.get("out"),))
    if op == "linear_last":
        return nn.Linear(step.get("fin"), step.get("fout"))
    return None


def _run(net: FuzzNet, i: int, step: Step, xs: list) -> list:
    """The values a step adds (control flow on the spec only, so that FX traces a plain graph)."""
    op = step.op
    module = getattr(net, f"s{i}", None)
    if module is not None:
        return [module(*xs)]
    x = xs[0]
    if op == "act":
        if step.get("form") == "function":
            return [_ACT_FUNCTIONS[step.get("kind")](x)]
        return [getattr(x, _ACT_METHODS[step.get("kind")])()]
    if op == "pool":
        if step.get("kind") == "max":
            return [F.max_pool2d(x, 2)]
        return [F.avg_pool2d(x, 3, stride=1, padding=1)]
    if op == "gap":
        return [F.adaptive_avg_pool2d(x, 1)]
    if op == "flatten":
        form = step.get("form")
        if form == "function":
            return [torch.flatten(x, 1)]
        if form == "method":
            return [x.flatten(1)]
        if form == "view_literal":  # the old VGG style: a literal size that must be rewritten
            return [x.view(x.size(0), step.get("features"))]
        return [x.reshape(x.size(0), -1)]
    if op == "shuffle":  # ShuffleNet's channel shuffle, with literal sizes
        g, (c, h, w) = step.get("groups"), step.get("shape")
        y = x.view(x.size(0), g, c // g, h, w).transpose(1, 2).contiguous()
        return [y.view(x.size(0), c, h, w)]
    if op == "transpose":
        return [x.transpose(2, 3).contiguous()]
    if op == "scale":  # a per-channel parameter used directly (layer scale)
        return [x * getattr(net, f"p{i}")]
    if op == "shift":
        return [x + getattr(net, f"p{i}")]
    if op == "reduce":
        return [getattr(x, step.get("kind"))(step.get("dim"), keepdim=True)]
    if op == "fconv":
        return [F.conv2d(x, getattr(net, f"p{i}"), getattr(net, f"b{i}", None), step.get("stride"),
                         step.get("padding"), step.get("dilation"), step.get("groups"))]
    if op == "flinear":
        return [F.linear(x, getattr(net, f"p{i}"))]
    if op == "add":
        form = step.get("form")
        if form == "operator":
            return [x + xs[1]]
        if form == "function":
            return [torch.add(x, xs[1])]
        return [x.add(xs[1])]
    if op == "mul":
        return [x * xs[1]]
    if op == "cat":
        return [torch.cat(xs, 1)]
    if op == "shape_branch":  # pool only when the map is wide enough: fixed once the input size is
        return [F.max_pool2d(x, 2) if x.shape[-1] >= step.get("min_width") else x]
    if op == "chunk_list":
        pieces = list(x.chunk(step.get("n"), 1))
        return pieces[: len(step.get("sizes"))]
    if op == "chunk":
        pieces = torch.chunk(x, step.get("n"), 1) if step.get("form") == "chunk" else torch.split(x, step.get("sizes"), 1)
        return [pieces[j] for j in range(len(step.get("sizes")))]
    raise ValueError(f"unknown step {op}")


# -- strategies ---------------------------------------------------------------------------------------

def _conv_out(h: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1


@st.composite
def _conv(draw, c: int, h: int, w: int) -> tuple[tuple, Shape]:
    variant = draw(st.sampled_from(["plain", "plain", "grouped", "depthwise", "strided", "dilated"]))
    k, stride, dilation, groups = draw(st.sampled_from([1, 3])), 1, 1, 1
    cout = draw(st.integers(1, 8))
    if variant == "grouped":
        divisors = [g for g in range(2, c) if c % g == 0]
        if divisors:
            groups = draw(st.sampled_from(divisors))
            cout = groups * draw(st.integers(1, 3))
    elif variant == "depthwise":
        groups, k = c, 3
        cout = c * draw(st.integers(1, 2))
    elif variant == "strided" and min(h, w) >= 2:
        stride = 2
    elif variant == "dilated" and min(h, w) >= 5:
        k, dilation = 3, 2
    padding = dilation * (k - 1) // 2
    params = (("cin", c), ("cout", cout), ("k", k), ("stride", stride), ("padding", padding),
              ("dilation", dilation), ("groups", groups), ("bias", draw(st.booleans())))
    return params, (cout, _conv_out(h, k, stride, padding, dilation), _conv_out(w, k, stride, padding, dilation))


def _same_shape(shapes: list[Shape], i: int) -> list[int]:
    return [j for j, s in enumerate(shapes) if s == shapes[i] and j != i]


_MAP_OPS = ("conv",) * 4 + ("fconv",) + ("bn", "act", "act", "pool", "add", "add", "mul", "cat", "chunk", "se", "gap", "flatten",
                            "flatten", "shuffle", "transpose", "linear_last", "scale", "shift", "reduce",
                            "shape_branch", "chunk_list")


@st.composite
def _map_step(draw, shapes: list[Shape], i: int, depth: int) -> tuple[Step, list[Shape]] | None:
    """A step whose first input is the feature map at ``i``."""
    c, h, w = shapes[i]
    op = draw(st.sampled_from(_MAP_OPS + (("block", "block") if depth < 2 else ())))
    if op in ("conv", "fconv"):
        params, out = draw(_conv(c, h, w))
        return Step(op, (i,), params), [out]
    if op == "bn":
        return Step("bn", (i,), (("c", c),)), [shapes[i]]
    if op == "act":
        kind = draw(st.sampled_from(ACTIVATIONS))
        forms = ["module", "function"] + (["method"] if kind in _ACT_METHODS else [])
        return Step("act", (i,), (("kind", kind), ("form", draw(st.sampled_from(forms))))), [shapes[i]]
    if op == "pool":
        kind = draw(st.sampled_from(["max", "avg"]))
        if kind == "max" and min(h, w) < 2:
            return None
        form = draw(st.sampled_from(["module", "function"]))
        out = (c, h // 2, w // 2) if kind == "max" else shapes[i]
        return Step("pool", (i,), (("kind", kind), ("form", form))), [out]
    if op in ("add", "mul"):
        partners = _same_shape(shapes, i)
        if not partners:
            return None
        j = draw(st.sampled_from(partners))
        params = (("form", draw(st.sampled_from(["operator", "function", "method"]))),) if op == "add" else ()
        return Step(op, (i, j), params), [shapes[i]]
    if op == "cat":
        partners = [j for j, s in enumerate(shapes) if len(s) == 3 and s[1:] == shapes[i][1:]]
        inputs = (i, *draw(st.lists(st.sampled_from(partners), min_size=1, max_size=2)))
        return Step("cat", inputs, ()), [(sum(shapes[j][0] for j in inputs), h, w)]
    if op == "shape_branch":
        min_width = draw(st.integers(2, 9))
        out = (c, h // 2, w // 2) if w >= min_width and min(h, w) >= 2 else shapes[i]
        return Step("shape_branch", (i,), (("min_width", min_width if min(h, w) >= 2 else 10**6),)), [out]
    if op == "chunk_list":
        if c < 2:
            return None
        n = draw(st.integers(2, min(3, c)))
        size = -(-c // n)
        sizes = tuple(min(size, c - s) for s in range(0, c, size))
        return Step("chunk_list", (i,), (("n", n), ("sizes", sizes))), [(size, h, w) for size in sizes]
    if op == "chunk":
        if c < 2:
            return None
        if draw(st.booleans()):
            n = draw(st.integers(2, min(3, c)))
            size = -(-c // n)
            sizes = tuple(min(size, c - s) for s in range(0, c, size))
            params = (("form", "chunk"), ("n", n), ("sizes", sizes))
        else:
            first = draw(st.integers(1, c - 1))
            sizes = (first, c - first)
            params = (("form", "split"), ("n", 2), ("sizes", sizes))
        return Step("chunk", (i,), params), [(size, h, w) for size in sizes]
    if op == "se":
        params = (("c", c), ("hidden", draw(st.integers(1, 4))), ("gate", draw(st.sampled_from(["sigmoid", "hardsigmoid"]))))
        return Step("se", (i,), params), [shapes[i]]
    if op == "gap":
        return Step("gap", (i,), ()), [(c, 1, 1)]
    if op == "flatten":
        form = draw(st.sampled_from(["module", "function", "method", "view_literal", "reshape_infer"]))
        return Step("flatten", (i,), (("form", form), ("features", c * h * w))), [(c * h * w,)]
    if op == "shuffle":
        groups = [g for g in (2, 3) if c % g == 0 and g < c]
        if not groups:
            return None
        return Step("shuffle", (i,), (("groups", draw(st.sampled_from(groups))), ("shape", shapes[i]))), [shapes[i]]
    if op == "transpose":
        return Step("transpose", (i,), ()), [(c, w, h)]
    if op == "linear_last":  # a Linear over the width: channels stay on dim 1, new features on dim 3
        fout = draw(st.integers(1, 6))
        return Step("linear_last", (i,), (("fin", w), ("fout", fout))), [(c, h, fout)]
    if op in ("scale", "shift"):
        return Step(op, (i,), (("c", c),)), [shapes[i]]
    if op == "reduce":  # over channels: consumed (a sum), inexact (a mean) or pinned (a max); over space: passed on
        dim = draw(st.sampled_from([1, (2, 3)]))
        kind = draw(st.sampled_from(["mean", "sum", "amax"]))
        out = (1, h, w) if dim == 1 else (c, 1, 1)
        return Step("reduce", (i,), (("dim", dim), ("kind", kind))), [out]
    # A nested submodule with its own steps; its last value is its output.
    steps, sub_shapes = draw(_body(shapes[i], depth + 1, max_steps=4, maps_only=True))
    return Step("block", (i,), (("steps", steps), ("out", len(sub_shapes) - 1))), [sub_shapes[-1]]


@st.composite
def _vec_step(draw, shapes: list[Shape], i: int) -> tuple[Step, list[Shape]] | None:
    """A step whose first input is the feature vector at ``i``."""
    (f,) = shapes[i]
    op = draw(st.sampled_from(["linear", "linear", "flinear", "act", "add"]))
    if op == "flinear":
        fout = draw(st.integers(1, 8))
        return Step("flinear", (i,), (("fin", f), ("fout", fout))), [(fout,)]
    if op == "linear":
        fout = draw(st.integers(1, 8))
        return Step("linear", (i,), (("fin", f), ("fout", fout), ("bias", draw(st.booleans())))), [(fout,)]
    if op == "act":
        kind = draw(st.sampled_from(ACTIVATIONS))
        return Step("act", (i,), (("kind", kind), ("form", draw(st.sampled_from(["module", "function"]))))), [shapes[i]]
    partners = _same_shape(shapes, i)
    if not partners:
        return None
    return Step("add", (i, draw(st.sampled_from(partners))), (("form", "operator"),)), [shapes[i]]


@st.composite
def _body(draw, in_shape: Shape, depth: int, max_steps: int, maps_only: bool = False) -> tuple[tuple[Step, ...], list[Shape]]:
    shapes: list[Shape] = [in_shape]
    steps: list[Step] = []
    # At least a few steps: hypothesis starts from small draws, and one-op networks test little.
    target = draw(st.integers(min(3, max_steps), max_steps))
    attempts = 0
    while len(steps) < target and attempts < 4 * max_steps:
        attempts += 1
        # Mostly extend the newest value, sometimes branch from an older one.
        i = len(shapes) - 1 if draw(st.integers(0, 2)) else draw(st.integers(0, len(shapes) - 1))
        made = draw(_map_step(shapes, i, depth)) if len(shapes[i]) == 3 else draw(_vec_step(shapes, i))
        if made is None:
            continue
        step, outs = made
        if maps_only and any(len(s) != 3 for s in outs):
            continue
        steps.append(step)
        shapes.extend(outs)
        if step.op in ("conv", "fconv") and draw(st.booleans()):
            # The common conv-BN(-activation) pattern, so that norms sit on prunable channels often.
            steps.append(Step("bn", (len(shapes) - 1,), (("c", outs[0][0]),)))
            shapes.append(outs[0])
            if draw(st.booleans()):
                kind = draw(st.sampled_from(ACTIVATIONS))
                steps.append(Step("act", (len(shapes) - 1,), (("kind", kind), ("form", "module"))))
                shapes.append(outs[0])
    if maps_only and len(shapes) == 1:  # a block must compute something: a 1x1 conv
        steps.append(Step("conv", (0,), (("cin", in_shape[0]), ("cout", in_shape[0]), ("k", 1), ("stride", 1),
                                         ("padding", 0), ("dilation", 1), ("groups", 1), ("bias", True))))
        shapes.append(in_shape)
    return tuple(steps), shapes


@st.composite
def net_specs(draw, max_steps: int = 10) -> NetSpec:
    """A random network over a 2 x C x 8 x 8 input (C in 1..4), with one or two outputs."""
    in_shape = (draw(st.integers(1, 4)), 8, 8)
    steps, shapes = draw(_body(in_shape, 0, max_steps))
    last = len(shapes) - 1
    outputs = (last,)
    if last > 1 and draw(st.integers(0, 3)) == 0:
        outputs = (draw(st.integers(1, last - 1)), last)
    return NetSpec(in_shape, steps, outputs, seed=draw(st.integers(0, 2**16)), train=draw(st.booleans()),
                   star=draw(st.integers(0, 9)) == 0)


def ratios() -> st.SearchStrategy[float]:
    """A pruning ratio in [0, 0.95], with 0 and the usual ratios drawn often."""
    return st.one_of(st.just(0.0), st.sampled_from([0.25, 0.5, 0.75, 0.9]), st.floats(0.0, 0.95))
