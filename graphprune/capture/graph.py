"""Reading a captured graph: nodes by name, and the shapes of its outputs.

>>> import torch
>>> gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(2, 3)))
>>> sorted(nodes_by_name(gm))
['_0', 'input_1', 'output']
"""

from __future__ import annotations

from typing import Any

import torch.fx
from torch.fx.passes.shape_prop import TensorMetadata

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
    """The propagated shape of every tensor the graph returns, in order (tensors inside a node's tuple
    output too, as a run of the model returns them)."""
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    shapes: list[list[int]] = []

    def add(meta: Any) -> None:
        if isinstance(meta, TensorMetadata):
            shapes.append(list(meta.shape))
        elif isinstance(meta, (list, tuple)):
            for m in meta:
                add(m)
        elif isinstance(meta, dict):
            for m in meta.values():
                add(m)

    torch.fx.node.map_aggregate(out.args[0], lambda n: add(n.meta.get("tensor_meta")) if isinstance(n, torch.fx.Node) else None)
    return shapes
