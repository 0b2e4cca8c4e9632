"""Torch-Pruning as a baseline at equal MACs (optional: pip install "graphprune[compare]").

Torch-Pruning's MetaPruner with L2 magnitude importance prunes every layer by the same ratio, like
graphprune; the ratio is bisected until its MACs match graphprune's shrunk model, so the latency
comparison is at equal arithmetic. Never imported by graphprune itself.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import graphprune

__all__ = ["prune_to_macs"]


def _pruned(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    out_features = model(x).shape[-1]
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == out_features]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=ignored)
    pruner.step()
    return model


def prune_to_macs(model: nn.Module, x: torch.Tensor, target_macs: int, *, tolerance: float = 0.01,
                  steps: int = 12) -> tuple[nn.Module, float]:
    """A Torch-Pruning copy of ``model`` whose MACs on ``x`` are within ``tolerance`` of ``target_macs``."""
    low, high = 0.0, 0.95
    best: tuple[float, nn.Module, float] | None = None
    for _ in range(steps):
        ratio = (low + high) / 2
        pruned = _pruned(model, x, ratio)
        macs = graphprune.count_macs(pruned, x)
        error = abs(macs - target_macs) / target_macs
        if best is None or error < best[0]:
            best = (error, pruned, ratio)
        if error <= tolerance:
            break
        low, high = (ratio, high) if macs > target_macs else (low, ratio)
    assert best is not None
    if best[0] > tolerance:
        raise RuntimeError(f"Torch-Pruning came within {best[0]:.1%} of the target MACs, not {tolerance:.0%}")
    return best[1], best[2]
