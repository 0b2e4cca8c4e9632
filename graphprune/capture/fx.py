"""Symbolic tracing with ``torch.fx``: the graph of the model's forward, with the user's source lines.

Leaf modules are the torch.nn layers (whose rules apply to one ``call_module`` node), the
user's subclasses of them that keep their forward, and any submodule named in ``leaf_modules``
(an opaque part whose channels are then kept).
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterable, Iterator

import torch
import torch.fx
from torch import nn

from ..base.checks import check_model
from ..base.errors import GraphPruneError, InputError, TraceError
from ..base.running import attributes_kept

__all__ = ["trace_fx", "add_source_lines", "source_lines"]


class _Tracer(torch.fx.Tracer):
    def __init__(self, leaf_modules: Iterable[str], stack_traces: bool):
        super().__init__()
        self.record_stack_traces = stack_traces
        self._extra_leaves = frozenset(leaf_modules)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self._extra_leaves or super().is_leaf_module(m, qualname) or _inherits_torch_forward(m)


_CONTAINERS = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)

try:  # writes the graph's Python code only when something runs it or reads it: a third of a MobileNet's trace
    from torch.fx._lazy_graph_module import _LazyGraphModule as _LAZY
except ImportError:  # pragma: no cover - a torch without it
    _LAZY = torch.fx.GraphModule


def _inherits_torch_forward(m: nn.Module) -> bool:
    """A user subclass of a torch.nn layer that keeps its forward (torchvision's ``Conv3DSimple``).

    It computes exactly what its torch.nn base does, so it stays one module call, where the
    layer's rules apply, instead of being traced into ``F.conv3d`` on bare parameters.
    """
    owner = next(base for base in type(m).__mro__ if "forward" in vars(base))
    return owner.__module__.startswith("torch.nn.modules") and owner not in _CONTAINERS


def _user_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if "/torch/" not in f.filename and "/graphprune/" not in f.filename]
    frame = (user or frames)[-1] if frames else None
    if frame is None:
        return ""
    return f'\nsource: File "{frame.filename}", line {frame.lineno}, in {frame.name}\n    {frame.line}'


TRY_EXPORT = "capture it with torch.export instead (Scope(capture='export'), or the default capture='auto'); or "


def trace_fx(model: nn.Module, leaf_modules: Iterable[str] = (), *, stack_traces: bool = False) -> torch.fx.GraphModule:
    """Symbolically trace ``model``; raises :class:`TraceError` naming the submodule and source line that failed.

    Without ``stack_traces`` the nodes do not record the user's source lines, which halves the time of a
    trace; :func:`add_source_lines` finds a node's line when an error needs it. The graph module records
    what it traced (``gm.meta["graphprune.traced"]``) for that.

    >>> import torchvision
    >>> gm = trace_fx(torchvision.models.resnet18())
    >>> [n.target for n in gm.graph.find_nodes(op="call_module")][-1]
    'fc'
    """
    check_model(model)
    leaf_modules = tuple(leaf_modules)
    names = dict(model.named_modules()) if leaf_modules else {}
    missing = [name for name in leaf_modules if name not in names]
    if missing:
        raise InputError(f"leaf_modules names {missing}, which are not submodules of {type(model).__name__}")
    tracer = _Tracer(leaf_modules, stack_traces)
    try:
        with attributes_kept(model):  # tracing stores tensor constants on the model: the graph module takes them
            graph = tracer.trace(model)
            gm = _LAZY(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # FX raises TraceError, TypeError, NotImplementedError...
        # FX pushes each submodule it enters and does not pop on failure: the last one is the culprit.
        inside = [qualname for qualname, _ in tracer.module_stack.values() if qualname]
        if inside:
            where = repr(inside[-1])
            hint = (f"make the submodule that cannot be traced an opaque leaf whose channels are kept "
                    f"(Scope(leaf_modules=[{where}], ignore=[{where}])), or shrink a traceable submodule instead "
                    f"(graphprune.shrink_submodule)")
        else:  # the model's own forward: no submodule can be made a leaf to get around it
            hint = (f"{type(model).__name__}.forward itself cannot be traced: shrink a traceable submodule instead "
                    f"(graphprune.shrink_submodule(model, 'backbone', ...)), or make the untraceable code a "
                    f"submodule and name it in Scope(leaf_modules=[...], ignore=[...])")
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}{_user_frame(exc)}",
            hint=TRY_EXPORT + hint,
        ) from exc
    gm.meta[_TRACED] = (model, leaf_modules)
    gm.training = model.training  # a new module trains; this one runs the model's submodules in their own modes
    return gm


_TRACED = "graphprune.traced"


def add_source_lines(node: torch.fx.Node) -> bool:
    """Give ``node`` the user's source line by tracing its model again with stack traces; True if it has one.

    Errors are rare and traces without stack traces twice as fast, so the line is looked up only when an
    error names the node.
    """
    if node.stack_trace:
        return True
    owner = node.graph.owning_module
    traced = getattr(owner, "meta", {}).get(_TRACED) if owner is not None else None
    if traced is None:
        return False
    again = trace_fx(*traced, stack_traces=True)
    lines = {n.name: n.stack_trace for n in again.graph.nodes}
    for n in node.graph.nodes:
        if n.stack_trace is None and lines.get(n.name):
            n.stack_trace = lines[n.name]
    return bool(node.stack_trace)


@contextlib.contextmanager
def source_lines() -> Iterator[None]:
    """Errors raised inside that name an FX node name the user's source line too (see :func:`add_source_lines`)."""
    try:
        yield
    except GraphPruneError as exc:
        if exc.node is not None and not exc.node.stack_trace and add_source_lines(exc.node):
            exc.refresh()
        raise
