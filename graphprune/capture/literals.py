"""Fresh list and dict literals for every call that runs Python code, so an interpreted graph behaves like its code.

A ``GraphModule``'s generated ``forward`` builds each list literal anew on every call, so a
function wrapped with ``torch.fx.wrap`` may edit its list argument in place (torchvision's video
Swin clamps its window and shift sizes this way). ``torch.fx.Interpreter`` instead hands the
function the node's own ``immutable_list``, and ``torch.export.export`` runs a ``GraphModule``
through that interpreter (``torch/export/_trace.py``, ``_non_strict_export``), so the edit raises
``TypeError: 'immutable_list' object does not support mutation``. Routing each such literal through
a ``list(...)`` (or ``dict(...)``) node gives both ways of running the graph a fresh, mutable
container, and leaves the generated code equivalent.

>>> import torch
>>> g = torch.fx.Graph()
>>> x = g.placeholder("x")
>>> def clamp(window, size):
...     window[0] = min(window[0], size)
...     return window
>>> _ = g.output(g.call_function(clamp, ([8, 8], 4)))
>>> gm = torch.fx.GraphModule(torch.nn.Module(), g)
>>> fresh_literals(gm.graph), torch.fx.Interpreter(gm).run(torch.zeros(1))
(1, [4, 8])
>>> torch.fx.Interpreter(gm).run(torch.zeros(1))  # the graph's constant itself is untouched
[4, 8]
"""

from __future__ import annotations

import inspect
from typing import Any

import torch.fx

__all__ = ["fresh_literals"]


def _runs_python(node: torch.fx.Node) -> bool:
    # Builtins, torch ops and tensor methods never edit a Python list they are given; Python
    # functions and module forwards may.
    if node.op == "call_module":
        return True
    return node.op == "call_function" and (inspect.isfunction(node.target) or inspect.ismethod(node.target))


def fresh_literals(graph: torch.fx.Graph) -> int:
    """Give each Python-level call in ``graph`` fresh copies of its list and dict literals; return how many."""
    inserted = 0

    def fresh(value: Any) -> Any:
        nonlocal inserted
        if isinstance(value, list):
            inserted += 1
            return graph.call_function(list, ([fresh(v) for v in value],))
        if isinstance(value, dict):
            inserted += 1
            return graph.call_function(dict, ({k: fresh(v) for k, v in value.items()},))
        if type(value) is tuple:  # a tuple is immutable, but may hold lists
            return tuple(fresh(v) for v in value)
        return value

    for node in list(graph.nodes):  # a snapshot: the list/dict nodes added here are builtins, never revisited
        if not _runs_python(node):
            continue
        with graph.inserting_before(node):
            node.args = fresh(node.args)
            node.kwargs = {key: fresh(value) for key, value in node.kwargs.items()}
    return inserted
