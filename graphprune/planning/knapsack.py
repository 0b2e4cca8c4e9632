"""The solve step: which channels of which groups go, so that a predicted cost meets a target.

:class:`Knapsack` removes chunks of each group's removal order (least important channels
first) until ``cost.total(removed) <= target``. What "loses the least" means is its ``tradeoff``:

- ``0`` is a global importance ranking: a chunk's priority is its channels' mean importance, each
  group's scores divided by their mean so groups are comparable; the cost decides only where to stop.
- Above 0 it is a knapsack on :func:`balanced_value` (each group weighted by its dense MACs,
  :func:`group_weights`): a chunk's priority is the value it loses per (unit of cost saved) **
  ``tradeoff``, so 1 is the knapsack ratio. A conv's cost is a product of two groups' widths, so a
  plain greedy over-cuts whichever groups it touches first; the solver instead starts from the
  uniform ratio that fits (:meth:`Knapsack.uniform`) and exchanges channels between groups (some
  step back, the others are cut to fit again) while the value lost falls.

>>> balanced_value(np.array([0.0, 1.0, 1.0]), np.array([0, 1, 2]), 1.0).round(3).tolist()
[0.0, 0.0, 0.693, 20.723]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .costs import CostModel
from .scope import GroupScope, uniform_removals

__all__ = ["Knapsack", "balanced_value", "group_weights"]

Move = tuple[float, int, int, float]  # (priority, group id, removed count to move to, cost saved)


def balanced_value(scores: np.ndarray, order: np.ndarray, weight: float) -> np.ndarray:
    """A group's value lost once its first ``r`` channels in ``order`` are removed, for every ``r``:
    ``weight * -log(share of the group's importance still kept)``.

    The knapsack's value. Three properties make it the right one, where a sum of importances is not:

    - it is balanced: the loss grows without bound as a group empties, so no group is cut to a
      sliver because its channels are expensive (a linear sum has corner optima: with flat scores
      it empties the costliest layers first and keeps the rest whole);
    - with ``weight`` a group's dense MACs and flat scores, maximising it under a MACs budget is
      uniform pruning (every group keeps the same fraction); under a latency budget a group keeps a
      fraction proportional to its MACs per second, so it departs from uniform exactly where
      latency is not proportional to MACs;
    - channels of zero importance cost nothing, whatever their group.
    """
    sc = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    total = sc.sum()
    if total <= 0:
        return np.zeros(len(order) + 1)
    kept = 1 - np.concatenate([[0.0], np.cumsum(sc[order])]) / total
    return weight * np.log(1 / np.maximum(kept, 1e-9))


def group_weights(macs: CostModel, group_ids: Sequence[int]) -> dict[int, float]:
    """Each group's weight in the balanced knapsack: the dense MACs (``macs``, a MACs cost model) of the layers
    its channels index. A group that indexes no MACs (norm or embedding channels only) weighs as much as the
    lightest one that does."""
    weights = {gid: macs.group_part(gid, {}) for gid in group_ids}
    lightest = min((w for w in weights.values() if w > 0), default=1.0)
    return {gid: w if w > 0 else lightest for gid, w in weights.items()}


@dataclass
class Knapsack:
    """Removals per group that meet a predicted cost; :meth:`solve` is the step, the rest its parts.

    ``scopes`` are the groups that may lose channels (overridden ones at their fixed ratio), ``scores`` and
    ``orders`` each group's importance and removal order, ``cost`` the predicted cost of a state (channels
    removed per group id, in order). ``tradeoff`` and ``weights`` as in the module docstring.

    With ``tradeoff > 0`` a group's next move is the best of its next ``lookahead`` steps, not just the next
    one: measured latency falls in steps (a width one tile past a boundary costs a whole tile), so a step
    that saves nothing may be the way to one that saves a lot. The move that crosses the target lands within
    ``fit`` (relative) below it where one does. Up to ``max_exchanges`` exchanges follow the uniform start:
    the groups that regain the most value per unit of cost step back (``len(groups) // 16`` of them at once,
    or the best ``exchange_tries`` one at a time), the others are cut until the target is met again, and the
    exchange is kept if the value lost fell. Without rounding, a chunk is at least ``step_fraction`` of its
    group, so a large model plans in a fraction of a second.
    """

    scopes: Sequence[GroupScope]
    scores: Mapping[int, np.ndarray]
    orders: Mapping[int, np.ndarray]
    cost: CostModel
    tradeoff: float = 0.0
    weights: Mapping[int, float] | None = None
    step_fraction: float = 1 / 64
    lookahead: int = 8
    fit: float = 0.005
    max_exchanges: int = 400
    exchange_tries: int = 4
    fixed: dict[int, int] = field(init=False)  # the overridden groups' removals
    free: dict[int, GroupScope] = field(init=False)
    steps: dict[int, list[int]] = field(init=False)  # removed counts a free group may move to, increasing
    lost_after: dict[int, np.ndarray] = field(init=False)  # value lost once the first r channels go, every r
    neighbours: dict[int, set[int]] = field(init=False)  # free groups sharing a cost term

    def __post_init__(self) -> None:
        self.fixed = {s.group.id: s.removed_at(s.fixed_ratio) for s in self.scopes if s.fixed_ratio is not None}
        self.free = {s.group.id: s for s in self.scopes if s.fixed_ratio is None}
        self.steps = {}
        for gid, s in self.free.items():
            stride = max(1, math.ceil(s.group.size * self.step_fraction))
            picks = [k for i, k in enumerate(s.choices)
                     if i == 0 or i == len(s.choices) - 1 or (s.group.size - k) % stride == 0]
            self.steps[gid] = [s.group.size - k for k in picks]
        self.lost_after = {}
        for gid in self.free:
            sc = np.asarray(self.scores[gid], dtype=np.float64)
            if self.tradeoff > 0:
                weight = 1.0 if self.weights is None else float(self.weights[gid])
                self.lost_after[gid] = balanced_value(sc, self.orders[gid], weight)
            else:
                mean = sc.mean()
                self.lost_after[gid] = np.concatenate([[0.0], np.cumsum((sc / mean if mean > 0 else sc)[self.orders[gid]])])
        terms = {gid: set(self.cost.terms_of_group.get(gid, ())) for gid in self.free}
        self.neighbours = {gid: {other for other in self.free if terms[gid] & terms[other]} | {gid} for gid in self.free}

    # -- the step -------------------------------------------------------------------
    def solve(self, target: float) -> tuple[dict[int, int], float]:
        """Channels removed per group id (only groups that lose some) and the predicted cost of that state."""
        if self.tradeoff == 0:
            state = dict(self.fixed)
            current = self.descend(state, target)
        else:
            state = self.uniform(target)
            current = self.descend(state, target)
            state, current = self.exchange(state, current, target)
        return {g: r for g, r in state.items() if r}, current

    def uniform(self, target: float) -> dict[int, int]:
        """The fixed groups' removals plus the smallest uniform ratio (bisected) whose predicted cost meets
        ``target`` (the largest ratio if none does)."""
        free = list(self.free.values())

        def state(ratio: float) -> dict[int, int]:
            return {**self.fixed, **uniform_removals(free, ratio)}

        if self.cost.total(state(0.0)) <= target:
            return state(0.0)
        low, high = 0.0, 1.0
        for _ in range(30):
            mid = (low + high) / 2
            low, high = (low, mid) if self.cost.total(state(mid)) <= target else (mid, high)
        return state(high)

    # -- its parts ------------------------------------------------------------------
    def options(self, state: Mapping[int, int], gid: int) -> list[Move]:
        """The group's next moves from ``state``: the next step (``tradeoff`` 0) or the next ``lookahead``."""
        now = state.get(gid, 0)
        ahead = [r for r in self.steps[gid] if r > now][: 1 if self.tradeoff == 0 else self.lookahead]
        before = self.cost.group_part(gid, state) if ahead else 0.0
        out = []
        for nxt in ahead:
            n = nxt - now
            lost = (self.lost_after[gid][nxt] - self.lost_after[gid][now]) / n
            saved = before - self.cost.group_part(gid, {**state, gid: nxt})
            if self.tradeoff == 0:
                priority = lost
            else:
                priority = math.inf if saved <= 0 else lost / (saved / n) ** self.tradeoff
            out.append((priority, gid, nxt, saved))
        return out

    def descend(self, state: dict[int, int], target: float, frozen: frozenset[int] = frozenset(),
                moves: dict[int, list[Move]] | None = None) -> float:
        """Take the best moves (not of the ``frozen`` groups) in place until the cost meets ``target``; returns
        the cost. ``moves``: every group's options from ``state`` where already known (updated in place)."""
        current = self.cost.total(state)
        if moves is None:
            moves = {gid: self.options(state, gid) for gid in self.free if gid not in frozen}
        floor = target * (1 - self.fit)
        while current > target:
            move = min((min(m) for m in moves.values() if m), default=None)
            if move is None:
                break
            # The last move may be a coarse one (a conv channel can be 2% of a small model, a lookahead move
            # several steps): when the best move would land below the target by more than ``fit``, take the
            # best of all moves that land within it, or failing that the one that lands nearest the target.
            if current - move[3] < floor:
                every = sorted(m for ms in moves.values() for m in ms)
                move = next((m for m in every if floor <= current - m[3] <= target),
                            max(every, key=lambda m: (min(current - m[3], target), -m[0])))
            _, gid, nxt, _ = move
            before = self.cost.group_part(gid, state)
            state[gid] = nxt
            current += self.cost.group_part(gid, state) - before
            for other in self.neighbours[gid] - frozen:
                moves[other] = self.options(state, other)
        return current

    def step_back(self, state: Mapping[int, int], gid: int) -> tuple[float, int, int] | None:
        """The group's one step back from ``state``: (-(value regained per unit of cost added), group id,
        removed count), or None if it loses nothing."""
        now = state.get(gid, 0)
        earlier = [r for r in self.steps[gid] if r < now]
        if not earlier:
            return None
        added = self.cost.group_part(gid, {**state, gid: earlier[-1]}) - self.cost.group_part(gid, state)
        regained = self.lost_after[gid][now] - self.lost_after[gid][earlier[-1]]
        return (-regained / added if added > 0 else -math.inf, gid, earlier[-1])

    def value_lost(self, state: Mapping[int, int]) -> float:
        return sum(float(self.lost_after[gid][state.get(gid, 0)]) for gid in self.free)

    def exchange(self, state: dict[int, int], current: float, target: float) -> tuple[dict[int, int], float]:
        """Exchanges from ``state`` (which meets ``target`` at ``current``) while the value lost falls."""
        lost_now = self.value_lost(state)
        # Every group's options and step back from ``state``, kept up to date as exchanges are accepted.
        moves_now = {gid: self.options(state, gid) for gid in self.free}
        backs_now = {gid: self.step_back(state, gid) for gid in self.free}
        batch = max(1, len(self.free) // 16)  # groups stepped back together: fewer exchanges on a model of many groups
        for _ in range(self.max_exchanges):
            back_moves = sorted(b for b in backs_now.values() if b is not None)
            tries = ([back_moves[:batch]] if batch > 1 else []) + [[m] for m in back_moves[:self.exchange_tries]]
            for backs in tries:
                trial = {**state, **{gid: back for _, gid, back in backs}}
                frozen = frozenset(gid for _, gid, _ in backs)
                # Only the options of the groups sharing a term with a stepped-back group changed: reuse the others.
                touched = set().union(*(self.neighbours[g] for g in frozen))
                moves = {g: (self.options(trial, g) if g in touched else m) for g, m in moves_now.items() if g not in frozen}
                trial_cost = self.descend(trial, target, frozen, moves)
                trial_lost = self.value_lost(trial)
                if trial_cost <= target and trial_lost < lost_now * (1 - 1e-9):
                    changed = {g for g in self.free if trial.get(g, 0) != state.get(g, 0)}
                    state, current, lost_now = trial, trial_cost, trial_lost
                    for g in set().union(changed, *(self.neighbours[c] for c in changed)):
                        moves_now[g], backs_now[g] = self.options(state, g), self.step_back(state, g)
                    break
            else:
                break
        return state, current
