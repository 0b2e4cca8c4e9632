"""How far two models' outputs are: the measure of every proof of a rewrite.

>>> import torch
>>> relative_difference((torch.tensor([1.0, 2.0]),), (torch.tensor([1.0, 2.5]),))
0.25
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

__all__ = ["relative_difference"]


def _tensors(value: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    torch.fx.node.map_aggregate(value, lambda v: out.append(v) if isinstance(v, torch.Tensor) else None)
    return out


def relative_difference(expected: Any, actual: Any) -> float:
    """max |expected - actual| / max |expected|, over every output tensor."""
    exp, act = _tensors(expected), _tensors(actual)
    if len(exp) != len(act):
        raise ValueError(f"{len(exp)} output tensors expected, got {len(act)}")
    worst = 0.0
    for e, a in zip(exp, act):
        if e.shape != a.shape:
            return float("inf")
        e, a = e.double(), a.double()
        scale = e.abs().max().item() if e.numel() else 0.0
        diff = (e - a).abs().max().item() if e.numel() else 0.0
        worst = max(worst, diff / max(scale, 1e-12))
    return worst
