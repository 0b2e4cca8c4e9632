"""The scope step: how many channels each group may lose, before any group competes for them.

A group's choices are its kept counts: its full size, then every multiple of ``round_to`` down to
the fewest it may keep. That floor comes from its pinned channels, from the channel every tensor
slice keeps (:meth:`~graphprune.coupling.ChannelGroup.removal_order`) and from ``max_ratio``.
A ratio (and ``max_ratio``) is a fraction of a group's *prunable* channels: in a group of 20 whose
10 channels an output pins, 0.5 removes 5, not 10 of the 10 that may go.
Groups whose removal would be approximate are out of scope under ``exact_only``; groups of
modules that ``overrides`` names get a fixed ratio.

>>> allowed_kept(64, min_kept=8, round_to=8)
[64, 56, 48, 40, 32, 24, 16, 8]
>>> removal_count(0.5, 9), removal_count(0.25, 10)
(5, 3)
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..base.errors import InputError
from ..coupling import ChannelGroup, Coupling
from .budget import Budget

__all__ = ["GroupScope", "group_scopes", "check_overrides", "allowed_kept", "removal_count", "uniform_removals", "matches"]


def removal_count(ratio: float, size: int) -> int:
    """``ratio`` of ``size`` channels, rounded half up: the one rounding every uniform decision uses."""
    return math.floor(ratio * size + 0.5)


def allowed_kept(size: int, *, min_kept: int, round_to: int) -> list[int]:
    """Kept counts a group may take, largest first: its full size, then multiples of ``round_to`` >= ``min_kept``."""
    return [size, *range((size - 1) // round_to * round_to, max(min_kept, 1) - 1, -round_to)]


def matches(pattern: str, path: str) -> bool:
    """Whether an fnmatch ``pattern`` names the module at ``path`` or one of the modules it sits in
    (``"layer4"`` and ``"layer4.*"`` both match ``layer4.0.conv1``)."""
    parts = path.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(len(parts), 0, -1))


@dataclass(frozen=True)
class GroupScope:
    """What the budget allows for one group: its kept-count choices, largest first, and a fixed ratio if
    ``overrides`` names it."""

    group: ChannelGroup
    choices: tuple[int, ...]
    fixed_ratio: float | None

    def snap(self, wanted_kept: float) -> int:
        """The allowed kept count nearest ``wanted_kept`` (the larger on a tie)."""
        choices = self.choices  # largest first; a group of 1,280 at round_to=1 has 1,280 of them
        lo, hi = 0, len(choices)
        while lo < hi:  # the first choice <= wanted_kept
            mid = (lo + hi) // 2
            if choices[mid] > wanted_kept:
                lo = mid + 1
            else:
                hi = mid
        near = choices[max(lo - 1, 0):lo + 1]
        return min(near, key=lambda k: (abs(k - wanted_kept), -k))

    def removed_at(self, ratio: float) -> int:
        """Channels removed at ``ratio`` of the group (half up), snapped to the allowed counts."""
        return self.group.size - self.snap(self.group.size - removal_count(ratio, self.group.num_prunable))


def group_scopes(coupling: Coupling, budget: Budget, round_to: int, orders: Mapping[int, np.ndarray]) -> list[GroupScope]:
    """Per group that may lose a channel, the kept counts allowed by pins, ``max_ratio``, ``round_to``,
    ``exact_only`` and ``overrides``. ``orders`` holds each prunable group's removal order, which bounds how
    many may go. Raises :class:`InputError` for an override pattern that names no module producing channels."""
    check_overrides(coupling, budget)
    out = []
    for group in coupling.groups:
        paths = coupling.module_paths(group)
        fixed = next((r for pattern, r in budget.overrides.items() if any(matches(pattern, p) for p in paths)), None)
        if group.id not in orders or (budget.exact_only and group.inexact):
            continue
        max_remove = len(orders[group.id])  # never the whole group: each member keeps a channel
        if budget.max_ratio is not None:
            max_remove = min(max_remove, math.floor(budget.max_ratio * group.num_prunable + 1e-9))
        choices = allowed_kept(group.size, min_kept=group.size - max_remove, round_to=round_to)
        if len(choices) > 1:
            out.append(GroupScope(group, tuple(choices), fixed))
    return out


def check_overrides(coupling: Coupling, budget: Budget) -> None:
    """Raise :class:`InputError` for an override pattern that names no module producing channels: a typo would
    otherwise prune what the user meant to keep."""
    producers = sorted({p for g in coupling.groups for p in coupling.module_paths(g)})
    unmatched = sorted(pattern for pattern in budget.overrides if not any(matches(pattern, p) for p in producers))
    if unmatched:
        shown = ", ".join(producers[:6]) + (", ..." if len(producers) > 6 else "")
        raise InputError(f"overrides pattern(s) {unmatched} match no module that produces channels",
                         hint=f"patterns match module paths such as {shown} (graphprune inspect lists them)")


def uniform_removals(scopes: list[GroupScope], ratio: float) -> dict[int, int]:
    """Channels removed per group id under a uniform ratio (overrides win), kept counts snapped to the choices."""
    out = {}
    for s in scopes:
        removed = s.removed_at(ratio if s.fixed_ratio is None else s.fixed_ratio)
        if removed:
            out[s.group.id] = removed
    return out
