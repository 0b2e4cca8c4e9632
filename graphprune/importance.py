"""Importance criteria: score every channel of a coupled group.

A scorer takes a :class:`~graphprune.couple.ChannelGroup` and a mapping from
tensor names to tensors, and returns one float per channel of the group; the
lowest-scoring channels are removed first. A channel's score aggregates every
member of its group: the producers' output filters, the consumers' input
slices and the norm scales, so a channel that feeds a large weight elsewhere is
not removed just because its own filter is small.

>>> import numpy as np, torch
>>> from graphprune.couple import ChannelGroup, GroupMember, TensorUse, Role
>>> w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
>>> use = TensorUse("conv.weight", 0, np.arange(3), Role.PRODUCER, "conv")
>>> group = ChannelGroup(0, 3, np.arange(3), [GroupMember(use, np.arange(3), np.arange(3))], np.zeros(3, bool), ["conv"])
>>> l2(group, {"conv.weight": w}).tolist()
[5.0, 0.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from .couple import ChannelGroup, Role
from .errors import InputError

__all__ = ["Importance", "l1", "l2", "resolve_importance", "IMPORTANCE_NAMES"]

Importance = Callable[[ChannelGroup, Mapping[str, torch.Tensor]], np.ndarray]


def _magnitude(group: ChannelGroup, tensors: Mapping[str, torch.Tensor], p: int) -> np.ndarray:
    total = np.zeros(group.size)
    count = np.zeros(group.size)
    for member in group.members:
        if member.use.role not in Role.WEIGHTS:
            continue
        tensor = tensors[member.use.tensor].detach()
        others = [d for d in range(tensor.ndim) if d != member.use.dim]
        norms = torch.linalg.vector_norm(tensor.float(), ord=p, dim=others) if others else tensor.float().abs()
        per_position = norms.double().cpu().numpy()[member.positions] ** p
        per_channel = np.bincount(member.channels, weights=per_position, minlength=group.size)
        if p == 2:
            per_channel = np.sqrt(per_channel)
        total += per_channel
        count += np.bincount(member.channels, minlength=group.size) > 0
    return total / np.maximum(count, 1)


def l1(group: ChannelGroup, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
    """Mean over the group's weights of each channel's L1 norm."""
    return _magnitude(group, tensors, 1)


def l2(group: ChannelGroup, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
    """Mean over the group's weights of each channel's L2 norm."""
    return _magnitude(group, tensors, 2)


_BY_NAME: Mapping[str, Importance] = {"l1": l1, "l2": l2}
IMPORTANCE_NAMES = tuple(_BY_NAME)


def resolve_importance(importance: str | Importance) -> tuple[str, Importance]:
    """A scorer from its name or a callable; returns (name, scorer)."""
    if callable(importance):
        return getattr(importance, "__name__", "custom"), importance
    if isinstance(importance, str) and importance in _BY_NAME:
        return importance, _BY_NAME[importance]
    raise InputError(f"unknown importance {importance!r}", hint=f"use one of {list(IMPORTANCE_NAMES)} or a callable(group, tensors)")
