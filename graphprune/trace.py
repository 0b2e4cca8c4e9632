"""Stage 1: trace a model with ``torch.fx`` and propagate shapes.

Shapes are propagated with :class:`torch.fx.passes.shape_prop.ShapeProp` under a
``FakeTensorMode``: no real arithmetic runs, the user's model is never touched
(BatchNorm running statistics in train mode stay as they are), and a large model
costs milliseconds rather than a real forward pass. Only when a node's shape
depends on data (an opaque leaf module that branches on values) does it fall back
to a real forward pass, through a copy in eval mode.
"""

from __future__ import annotations

import contextlib
import copy
import io
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.fx.passes.shape_prop import ShapeProp

from .errors import InputError, TraceError

__all__ = ["Traced", "trace", "default_example_inputs", "normalize_inputs", "propagate_shapes"]


@dataclass
class Traced:
    """A traced model: the FX graph module, and the example inputs as positional args."""

    gm: torch.fx.GraphModule
    args: tuple[Any, ...]
    leaf_modules: tuple[str, ...]


class _Tracer(torch.fx.Tracer):
    def __init__(self, leaf_modules: Iterable[str]):
        super().__init__()
        self.record_stack_traces = True
        self._extra_leaves = frozenset(leaf_modules)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self._extra_leaves or super().is_leaf_module(m, qualname) or _inherits_torch_forward(m)


_CONTAINERS = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _inherits_torch_forward(m: nn.Module) -> bool:
    """A user subclass of a torch.nn layer that keeps its forward (torchvision's ``Conv3DSimple``).

    It computes exactly what its torch.nn base does, so it stays one module call, where the
    layer's rules apply, instead of being traced into ``F.conv3d`` on bare parameters.
    """
    owner = next(base for base in type(m).__mro__ if "forward" in vars(base))
    return owner.__module__.startswith("torch.nn.modules") and owner not in _CONTAINERS


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def default_example_inputs(model: nn.Module) -> tuple[torch.Tensor]:
    """A 1x3x224x224 image on the model's device and dtype, when the model starts with a 3-channel conv.

    >>> import torchvision
    >>> default_example_inputs(torchvision.models.resnet18())[0].shape
    torch.Size([1, 3, 224, 224])
    """
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d, nn.Conv3d))), None)
    if isinstance(first, nn.Conv2d) and first.in_channels == 3:
        device, dtype = _model_device_dtype(model)
        return (torch.randn(1, 3, 224, 224, device=device, dtype=dtype),)
    raise InputError(
        f"cannot guess example inputs for {type(model).__name__}: its first layer is "
        f"{type(first).__name__ if first is not None else 'not a conv or linear'}, not a 3-channel Conv2d",
        hint="pass example_inputs=(tensor, ...) or a dict of keyword tensors that the model's forward accepts",
    )


def normalize_inputs(model: nn.Module, gm: torch.fx.GraphModule, example_inputs: Any) -> tuple[Any, ...]:
    """Turn a tensor, a tuple/list of args, or a dict of keyword args into positional placeholder args."""
    if example_inputs is None:
        return default_example_inputs(model)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if isinstance(example_inputs, torch.Tensor):
        args: tuple[Any, ...] = (example_inputs,)
    elif isinstance(example_inputs, Mapping):
        names = [n.target for n in placeholders]
        unknown = set(example_inputs) - set(names)
        if unknown:
            raise InputError(
                f"example_inputs names {sorted(unknown)}, which {type(model).__name__}.forward does not take",
                hint=f"its inputs are {names}",
            )
        # Not .get(name, default): the default raises for an argument without one, even when it is given.
        args = tuple(example_inputs[name] if name in example_inputs else _placeholder_default(p)
                     for name, p in zip(names, placeholders))
        return args
    elif isinstance(example_inputs, (tuple, list)):
        args = tuple(example_inputs)
    else:
        raise InputError(
            f"example_inputs must be a tensor, a tuple of args or a dict of keyword args, not {type(example_inputs).__name__}"
        )
    if len(args) > len(placeholders):
        raise InputError(f"{len(args)} example inputs given, but the model's forward takes {len(placeholders)}")
    args = args + tuple(_placeholder_default(p) for p in placeholders[len(args):])
    return args


def _placeholder_default(node: torch.fx.Node) -> Any:
    if node.args:
        return node.args[0]
    raise InputError(f"no example input given for the model's argument {node.target!r}", node=node)


def _user_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if "/torch/" not in f.filename and "/graphprune/" not in f.filename]
    frame = (user or frames)[-1] if frames else None
    if frame is None:
        return ""
    return f'\nsource: File "{frame.filename}", line {frame.lineno}, in {frame.name}\n    {frame.line}'


def trace(model: nn.Module, example_inputs: Any = None, *, leaf_modules: Iterable[str] = (), propagate: bool = True) -> Traced:
    """Symbolically trace ``model`` and, unless ``propagate`` is False, annotate every node with ``tensor_meta``.

    >>> import torchvision
    >>> t = trace(torchvision.models.resnet18())
    >>> t.gm.graph.find_nodes(op="call_module", target="fc")[0].meta["tensor_meta"].shape
    torch.Size([1, 1000])
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    leaf_modules = tuple(leaf_modules)
    names = dict(model.named_modules())
    missing = [name for name in leaf_modules if name not in names]
    if missing:
        raise InputError(f"leaf_modules names {missing}, which are not submodules of {type(model).__name__}")
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # FX raises TraceError, TypeError, NotImplementedError...
        # FX pushes each submodule it enters and does not pop on failure: the last one is the culprit.
        inside = [qualname for qualname, _ in tracer.module_stack.values() if qualname]
        where = repr(inside[-1]) if inside else "'name'"
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}{_user_frame(exc)}",
            hint=f"data-dependent control flow cannot be traced: make the offending submodule an opaque leaf "
            f"whose channels are kept (leaf_modules=[{where}], ignore=[{where}]), or shrink a traceable submodule instead",
        ) from exc
    gm = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    if not propagate:
        return Traced(gm, (), leaf_modules)
    args = normalize_inputs(model, gm, example_inputs)
    propagate_shapes(gm, args)
    return Traced(gm, args, leaf_modules)


def propagate_shapes(gm: torch.fx.GraphModule, args: tuple[Any, ...]) -> Any:
    """Run ShapeProp with fake tensors; returns the (fake) outputs. Raises InputError naming the failing node."""
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    prop = _QuietShapeProp(gm, fake_mode)
    # Shapes do not depend on the mode, but train-mode checks (BatchNorm on one value per channel) and
    # dropout would; the fake copy is ours to change.
    prop.fake_module.eval()
    try:
        # ShapeProp prints the traceback of a failing node itself; we raise a better error instead.
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                return prop.propagate(*args)
            except _NodeFailure as failure:
                if not isinstance(failure.cause, _FAKE_LIMITS):
                    raise
            # A node whose output shape depends on data (an opaque leaf module with an `if` on values):
            # fake tensors cannot run it, so propagate real ones, through a copy in eval mode.
            real = _QuietShapeProp(gm)
            real.fake_module = copy.deepcopy(gm).eval()  # ShapeProp runs this one, annotates gm's nodes
            with torch.no_grad():
                return real.propagate(*args)
    except _NodeFailure as failure:
        raise InputError(
            f"the example inputs do not fit the model: {type(failure.cause).__name__}: {failure.cause}",
            node=failure.node,
            hint="check the shapes, dtype and device of example_inputs",
        ) from failure.cause


_FAKE_LIMITS = (DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException)


class _NodeFailure(Exception):
    def __init__(self, node: torch.fx.Node, cause: BaseException):
        super().__init__(str(cause))
        self.node, self.cause = node, cause


class _QuietShapeProp(ShapeProp):
    def run_node(self, n: torch.fx.Node) -> Any:
        try:
            return super().run_node(n)
        except Exception as exc:
            raise _NodeFailure(n, exc.__cause__ or exc) from exc

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        # Generated code passes fresh list literals; the interpreter passes the node's immutable lists,
        # which a wrapped function that edits its argument in place (video Swin's window sizes) cannot take.
        return super().call_function(target, _mutable(args), _mutable(kwargs))


def _mutable(value: Any) -> Any:
    if isinstance(value, torch.fx.immutable_collections.immutable_list):
        return [_mutable(v) for v in value]
    if isinstance(value, torch.fx.immutable_collections.immutable_dict):
        return {k: _mutable(v) for k, v in value.items()}
    if type(value) is tuple:
        return tuple(_mutable(v) for v in value)
    return value
