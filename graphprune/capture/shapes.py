"""Shapes on every node of a captured graph, without real arithmetic and without copying the model.

Shapes are propagated by running the graph on stand-ins for its tensors, cheapest first:

1. **meta tensors** (shape, dtype and strides, no storage): each module call runs the module's own forward
   with meta stand-ins swapped in for its parameters and buffers (:func:`_standing_in`), so nothing of the
   model is copied and a large model costs about as much as a small one;
2. **fake tensors** (``FakeTensorMode``), where meta tensors cannot run a node: code that builds a CPU tensor
   and mixes it with the model's (``torch.arange(n) + x``), or a kernel with no meta implementation;
3. **a real forward pass**, through a copy of the model in eval mode, only when a node's output shape depends
   on data (an opaque leaf module with an ``if`` on values).

The user's model is never modified: its training flags are set to eval while shapes run (BatchNorm would
refuse one value per channel in train mode) and restored, and its tensors are only read. Each node gets
``node.meta["tensor_meta"]`` as ``torch.fx.passes.shape_prop.ShapeProp`` would give it.

>>> import torch
>>> gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten()))
>>> out = propagate_shapes(gm, (torch.randn(2, 3, 5, 5),))
>>> out.device, [n.meta["tensor_meta"].shape for n in gm.graph.nodes if n.op == "call_module"]
(device(type='meta'), [torch.Size([2, 8, 3, 3]), torch.Size([2, 72])])
>>> [t.shape for t in run_shapes(torch.nn.Linear(4, 2), (torch.randn(3, 4),))]
[torch.Size([3, 2])]
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata

from ..base.errors import InputError
from ..base.running import call_model, eval_mode
from .shortcuts import KnownShapes, known_call, known_module_call

__all__ = ["propagate_shapes", "run_shapes"]

# What fake tensors cannot do: an output whose shape depends on the values.
_DATA_DEPENDENT = (DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException)

Convert = Callable[[torch.Tensor], torch.Tensor]


def _on_meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


def propagate_shapes(gm: torch.fx.GraphModule, args: tuple[Any, ...]) -> Any:
    """Annotate every node of ``gm`` with ``tensor_meta`` for these positional ``args``; returns the outputs
    (stand-ins). Raises :class:`InputError` naming the node where the inputs do not fit the model."""
    try:
        with torch.no_grad(), eval_mode(gm):
            return _ShapeInterpreter(gm, _on_meta).run(*args)
    except _NodeFailure:
        pass  # meta tensors could not run a node: fake tensors can, or say why
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    try:
        try:
            with torch.no_grad(), eval_mode(gm), mode:
                return _ShapeInterpreter(gm, lambda t: mode.from_tensor(t, static_shapes=True)).run(*args)
        except _NodeFailure as failure:
            if not isinstance(failure.cause, _DATA_DEPENDENT):
                raise
        # A shape that depends on data: real values, through a copy (its forward may write to its buffers).
        with torch.no_grad():
            return _ShapeInterpreter(gm, None, source=copy.deepcopy(gm).eval()).run(*args)
    except _NodeFailure as failure:
        raise InputError(
            f"the example inputs do not fit the model: {type(failure.cause).__name__}: {failure.cause}",
            node=failure.node,
            hint="check the shapes, dtype and device of example_inputs",
        ) from failure.cause


def run_shapes(model: nn.Module, inputs: Any) -> list[torch.Tensor]:
    """The output tensors (stand-ins, in order) of ``model``'s own forward on ``inputs``, run as
    :func:`propagate_shapes` runs a graph: on meta tensors, else fake ones, else for real (no grad, eval mode).
    Raises the model's own error when none can run it."""
    def outputs(convert: Convert | None, source: nn.Module, mode: Any = contextlib.nullcontext()) -> list[torch.Tensor]:
        stand_ins = inputs if convert is None else pytree.tree_map_only(torch.Tensor, convert, inputs)
        tensors = contextlib.nullcontext() if convert is None else _standing_in(source, convert, {})
        with torch.no_grad(), eval_mode(source), tensors, mode:  # the stand-ins are made outside the mode
            result = call_model(source, stand_ins)
        return [t for t in pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]

    try:
        return outputs(_on_meta, model, KnownShapes())
    except Exception:  # noqa: BLE001 - meta tensors cannot run everything; fake tensors say why if they cannot either
        pass
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    try:
        with mode:
            return outputs(lambda t: mode.from_tensor(t, static_shapes=True), model)
    except _DATA_DEPENDENT:
        return outputs(None, copy.deepcopy(model))


@contextlib.contextmanager
def _standing_in(module: nn.Module, convert: Convert, cache: dict[int, torch.Tensor]) -> Iterator[None]:
    """Every parameter and buffer of ``module``'s tree replaced by its stand-in while the block runs, then put back.

    What ``torch.func.functional_call`` does, without its names: each module's own tables are swapped entry by
    entry, so a module reached by two paths is swapped once and a tensor tied between two modules gets one
    stand-in in both (``cache`` is by tensor), and nothing is resolved by dotted name (a third of a MobileNet's
    check was ``functional_call`` finding 300 tensors by name and back)."""
    saved: list[tuple[dict, str, torch.Tensor]] = []
    try:
        for m in module.modules():
            for table in (m._parameters, m._buffers):
                for name, t in table.items():
                    if t is not None:
                        saved.append((table, name, t))
                        table[name] = _stand_in(t, convert, cache)
        yield
    finally:
        for table, name, t in reversed(saved):
            table[name] = t


def _stand_in(t: torch.Tensor, convert: Convert, cache: dict[int, torch.Tensor]) -> torch.Tensor:
    out = cache.get(id(t))
    if out is None:
        out = cache[id(t)] = convert(t)
    return out


_FORMATS = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)


def _tensor_metadata(t: torch.Tensor) -> TensorMetadata:
    """``shape_prop``'s ``TensorMetadata`` of ``t``. For a dense meta tensor it is read here: the library's own
    asks Python for each layout (15 us a node, a tenth of a MobileNet's propagation), this asks the tensor (the
    same answers on 20,000 random shapes and layouts)."""
    if t.is_meta and t.layout == torch.strided and not t.is_quantized:
        layout = next((f for f in _FORMATS if t.is_contiguous(memory_format=f)), None)
        return TensorMetadata(t.shape, t.dtype, t.requires_grad, t.stride(), layout, False, {})
    return _extract_tensor_metadata(t)


class _NodeFailure(Exception):
    def __init__(self, node: torch.fx.Node, cause: BaseException):
        super().__init__(str(cause))
        self.node, self.cause = node, cause


class _ShapeInterpreter(torch.fx.Interpreter):
    """Runs ``gm``'s graph on stand-ins made by ``convert`` (None: on real values, fetched from ``source``) and
    annotates each node with the metadata of what it produced."""

    def __init__(self, gm: torch.fx.GraphModule, convert: Convert | None, source: nn.Module | None = None):
        super().__init__(gm)
        self.convert = convert
        self.source = source if source is not None else gm
        self.cache: dict[int, torch.Tensor] = {}

    def _abstract(self, value: Any) -> Any:
        if self.convert is None:
            return value
        return pytree.tree_map_only(torch.Tensor, lambda t: _stand_in(t, self.convert, self.cache), value)

    def run_node(self, n: torch.fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:  # noqa: BLE001 - reported with the node, or retried with other stand-ins
            raise _NodeFailure(n, exc.__cause__ or exc) from exc
        found = False

        def describe(obj: Any) -> Any:
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return _tensor_metadata(obj)
            return obj

        meta = torch.fx.node.map_aggregate(result, describe)
        if found:
            n.meta["tensor_meta"] = meta
        n.meta["type"] = type(result)
        return result

    def placeholder(self, target: Any, args: tuple, kwargs: dict) -> Any:
        return self._abstract(super().placeholder(target, args, kwargs))

    def get_attr(self, target: Any, args: tuple, kwargs: dict) -> Any:
        obj = self.source
        for part in str(target).split("."):
            obj = getattr(obj, part)
        return self._abstract(obj)

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        # The interpreter's table of the graph module's submodules: get_submodule walks the path each time.
        module = self.submodules.get(target) if self.source is self.module else None
        if module is None:
            module = self.source.get_submodule(target)
        if self.convert is None:
            return module(*args, **kwargs)
        if self.convert is _on_meta and (answer := known_module_call(module, args, kwargs)) is not None:
            return answer
        with _standing_in(module, self.convert, self.cache):
            return module(*args, **kwargs)

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if self.convert is _on_meta and (answer := known_call(target, args, kwargs)) is not None:
            return answer
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
