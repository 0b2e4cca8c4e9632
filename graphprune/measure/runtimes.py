"""How a model runs when it is timed: eagerly, compiled by ``torch.compile``, or replayed from a CUDA graph.

Latency depends on the runtime as much as on the widths. In eager mode on CUDA every op pays a
kernel launch from the host, so a small model is bound by host time and pruning it saves little;
replaying a CUDA graph removes that cost, and ``torch.compile`` (inductor) fuses the element-wise
ops between convs. A latency budget is therefore measured in the runtime the model will be
deployed with, and :func:`runner` is the one place that builds each of them, for
:mod:`graphprune.measure.bench` and for the planner's :class:`~graphprune.Hardware` alike.

>>> import torch
>>> forward = runner(torch.nn.Linear(4, 2).eval(), (torch.ones(3, 4),), "eager")
>>> with torch.inference_mode():
...     tuple(forward().shape)
(3, 2)
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from ..base.errors import InputError
from ..base.running import call_model

__all__ = ["RUNTIMES", "check_runtime", "runner"]

RUNTIMES = ("eager", "compile", "cudagraphs")


def check_runtime(runtime: str, device: str) -> str:
    """``runtime``, if it is one of :data:`RUNTIMES` and can run on ``device``; else :class:`InputError`."""
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if runtime == "cudagraphs" and not str(device).startswith("cuda"):
        raise InputError(f"CUDA graphs need a CUDA device, not {device!r}", hint="use runtime='eager' or 'compile'")
    return runtime


def runner(model: nn.Module, inputs: Any, runtime: str, *, calls: int = 1) -> Callable[[], object]:
    """A zero-argument callable running ``model`` on ``inputs`` (a tensor, a tuple of args or a dict of keyword
    args) ``calls`` times in ``runtime``, warmed up (and compiled or captured).

    ``model`` and ``inputs`` must already be on their device, in their dtype and layout; under
    ``"compile"`` the model's ``forward`` is rebound (it should be a copy the caller owns). Call
    it under ``torch.inference_mode()``, as the warm-up was: a timer enters the mode once around
    its loop, rather than paying for it in every call it measures. Several ``calls`` in one CUDA
    graph time a small layer's kernels back to back, as they run inside a whole graph, rather
    than behind one replay's launch each.
    """
    if runtime == "cudagraphs":
        return _graph_replay(model, inputs, calls)
    if runtime == "compile":
        model = torch.compile(_with_own_forward(model), backend="inductor")

    def forward() -> object:
        for _ in range(calls - 1):
            call_model(model, inputs)
        return call_model(model, inputs)

    with torch.inference_mode():
        forward()  # warm-up: kernel selection, allocator (and compilation)
    return forward


def _with_own_forward(model: nn.Module) -> nn.Module:
    """``model`` with ``forward`` bound to a private copy of its class's code.

    Dynamo keeps compiled graphs on the code object of ``forward`` and, past
    ``recompile_limit`` (8) differently shaped entries, silently runs it eagerly. A latency plan
    times a dozen widths of one class, and a shrunk model usually keeps its class, so each
    would be timed uncompiled from the ninth on, and every entry would also stay on the user's
    own class. A copy of the code per model keeps both apart.
    """
    forward = type(model).forward
    code = getattr(forward, "__code__", None)
    if code is None:  # not a plain function (a C or wrapped callable): compiled as it is
        return model
    own = types.FunctionType(code.replace(), forward.__globals__, forward.__name__, forward.__defaults__,
                             forward.__closure__)
    own.__kwdefaults__ = forward.__kwdefaults__
    model.forward = types.MethodType(own, model)
    return model


def _graph_replay(model: nn.Module, inputs: Any, calls: int) -> Callable[[], object]:
    static = pytree.tree_map_only(torch.Tensor, torch.Tensor.clone, inputs)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as capture requires
            call_model(model, static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        for _ in range(calls):
            call_model(model, static)

    # The graph replays raw addresses: the model's weights and the static inputs must outlive it, or the
    # allocator hands their memory to the next model and replay reads freed memory.
    def replay(graph: torch.cuda.CUDAGraph = graph, keep: tuple[object, ...] = (model, static)) -> None:
        graph.replay()

    return replay
