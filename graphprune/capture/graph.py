"""Reading a captured graph: nodes by name, and the shapes of its outputs.

>>> import torch
>>> gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(2, 3)))
>>> sorted(nodes_by_name(gm))
['_0', 'input_1', 'output']
"""

from __future__ import annotations

from typing import Any

import torch.fx

__all__ = ["nodes_by_name", "output_shapes", "tensor_shapes"]


def nodes_by_name(gm: torch.fx.GraphModule) -> dict[str, torch.fx.Node]:
    """Every node of ``gm`` under its (unique) name: one table, so looking many up stays linear."""
    return {n.name: n for n in gm.graph.nodes}


def tensor_shapes(value: Any) -> list[list[int]]:
    """The shape of every tensor in a (nested) value, in order."""
    shapes: list[list[int]] = []
    torch.fx.node.map_aggregate(value, lambda t: shapes.append(list(t.shape)) if isinstance(t, torch.Tensor) else None)
    return shapes


def output_shapes(gm: torch.fx.GraphModule) -> list[list[int]]:
    """The propagated shape of every tensor the graph returns, in order."""
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    shapes: list[list[int]] = []

    def add(n: Any) -> None:
        meta = n.meta.get("tensor_meta") if isinstance(n, torch.fx.Node) else None
        if hasattr(meta, "shape"):
            shapes.append(list(meta.shape))

    torch.fx.node.map_aggregate(out.args[0], add)
    return shapes
