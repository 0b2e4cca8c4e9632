"""Shapes on every node of a captured graph, without real arithmetic.

Shapes are propagated with :class:`torch.fx.passes.shape_prop.ShapeProp` under a
``FakeTensorMode``: no real arithmetic runs, the user's model is never touched (BatchNorm
running statistics in train mode stay as they are), and a large model costs milliseconds
rather than a real forward pass. Only when a node's shape depends on data (an opaque leaf
module that branches on values) does it fall back to a real forward pass, through a copy in
eval mode. Each node gets ``node.meta["tensor_meta"]``.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import torch
import torch.fx
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.fx.passes.shape_prop import ShapeProp

from ..base.errors import InputError

__all__ = ["propagate_shapes"]


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
