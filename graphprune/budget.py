"""Budgets and scopes: how many channels each group loses.

Two ways to decide:

- a **uniform ratio** (``shrink(model, 0.5)``): every free group loses ``round(ratio * size)``
  channels, with per-module overrides (fnmatch patterns on producer module names) and a
  maximum ratio per group;
- a **global budget** (``macs=0.5``, ``params=0.4`` or ``latency=0.5``, each a fraction of the
  dense model): channels of all groups compete, and a greedy removes, step by step, the chunk of
  channels that loses the least, until the predicted cost meets the target
  (:mod:`graphprune.costs`, :mod:`graphprune.latency_table`). What "loses the least" means is the
  budget's ``tradeoff``: 0 ranks channels by importance alone, divided by their group's mean
  (a global ranking); above 0 the greedy is a knapsack on a *balanced* value (see
  :func:`balanced_value`) per unit of cost saved. The plan is then built, applied and *counted*
  (or, for latency, *measured*); if the real figure misses the target, the predicted target is
  corrected and the plan re-solved.

Widths can be rounded to a multiple (``round_to``): the kept count of each group is rounded,
so every tensor the group indexes stays consistent.

>>> Budget(macs=0.5).kind
'macs'
>>> resolve_round_to("auto", "cuda", "bfloat16"), resolve_round_to("auto", "cpu", "float32") in (8, 16)
(8, True)
>>> allowed_kept(64, min_kept=8, round_to=8)
[64, 56, 48, 40, 32, 24, 16, 8]
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .couple import ChannelGroup, Coupling
from .errors import InputError

__all__ = ["Budget", "resolve_round_to", "allowed_kept", "group_modules", "GroupScope", "scopes", "uniform_decisions",
           "balanced_value", "greedy_decisions"]

_KINDS = ("macs", "params", "latency")


def _fraction(value: Any, what: str, *, closed_low: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if not ok or not ((0 <= value if closed_low else 0 < value) and value <= 1):
        raise InputError(f"{what} must be a fraction in {'[0' if closed_low else '(0'}, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Budget:
    """What to prune to. Exactly one of ``ratio`` (uniform), ``macs``, ``params``, ``latency`` (fractions of dense).

    ``overrides`` maps fnmatch patterns on producer module names to a ratio for those groups
    (first match wins; under a global budget those groups are fixed and the rest compete);
    ``max_ratio`` caps the fraction any group loses; ``round_to`` rounds every kept width to a
    multiple (an int, or ``"auto"`` for the device and dtype). ``tradeoff`` (in [0, 1]) is how far
    a global budget trades value for savings: 0 ranks channels by importance alone (the cost
    decides only where to stop), above 0 by balanced value lost per (unit of cost saved) ** tradeoff;
    the default is 0 for MACs and parameters and 1 for latency (see :func:`greedy_decisions`).

    >>> Budget(latency=0.5, tradeoff=1.0).to_dict()
    {'latency': 0.5, 'tradeoff': 1.0}
    """

    ratio: float | None = None
    macs: float | None = None
    params: float | None = None
    latency: float | None = None
    overrides: Mapping[str, float] = field(default_factory=dict)
    max_ratio: float | None = None
    round_to: int | str | None = None
    tradeoff: float | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("ratio", *_KINDS) if getattr(self, k) is not None]
        if len(given) != 1:
            raise InputError(
                f"give exactly one of ratio, macs, params, latency (got {given or 'none'})",
                hint="shrink(model, 0.5) removes half of every group; shrink(model, macs=0.5) keeps half the MACs",
            )
        if self.ratio is not None:
            from .planning import check_ratio
            check_ratio(self.ratio)
        for k in _KINDS:
            if getattr(self, k) is not None:
                _fraction(getattr(self, k), k)
        for pattern, r in dict(self.overrides).items():
            if not isinstance(pattern, str):
                raise InputError(f"overrides keys are module-name patterns, got {pattern!r}")
            _fraction(r, f"overrides[{pattern!r}]", closed_low=True)
            if r >= 1:
                raise InputError(f"overrides[{pattern!r}] = {r} would remove every channel")
        if self.max_ratio is not None:
            _fraction(self.max_ratio, "max_ratio", closed_low=True)
        if self.tradeoff is not None:
            if self.kind == "ratio":
                raise InputError("tradeoff applies to a MACs, params or latency budget, not a uniform ratio")
            _fraction(self.tradeoff, "tradeoff", closed_low=True)
        if not (self.round_to is None or self.round_to == "auto" or
                (isinstance(self.round_to, int) and not isinstance(self.round_to, bool) and self.round_to >= 1)):
            raise InputError(f"round_to must be a positive int or 'auto', got {self.round_to!r}")

    @property
    def kind(self) -> str:
        return next(k for k in ("ratio", *_KINDS) if getattr(self, k) is not None)

    @property
    def target(self) -> float:
        return float(getattr(self, self.kind))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["overrides"] = dict(self.overrides)
        return {k: v for k, v in d.items() if v not in (None, {})}


def resolve_round_to(round_to: int | str | None, device: str = "cpu", dtype: str = "float32") -> int:
    """The width multiple to use. ``"auto"``: 8 on CUDA in fp16/bf16 (tensor-core tiles; 129 channels run
    about 2x slower than 128 on an H200 in bf16), 4 on CUDA in fp32 (TF32 tiles); on CPU the SIMD width
    in floats that oneDNN blocks channels by: 16 with AVX-512, 8 otherwise."""
    if round_to is None:
        return 1
    if round_to != "auto":
        return int(round_to)
    if str(device).startswith("cuda"):
        return 8 if str(dtype).removeprefix("torch.") in ("float16", "bfloat16") else 4
    return 16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else 8


def allowed_kept(size: int, *, min_kept: int, round_to: int) -> list[int]:
    """Kept counts a group may take, largest first: its full size, then multiples of ``round_to`` >= ``min_kept``."""
    out = [size]
    k = (size - 1) // round_to * round_to
    while k >= max(min_kept, 1):
        if k < size:
            out.append(k)
        k -= round_to
    return out


def group_modules(group: ChannelGroup, coupling: Coupling) -> list[str]:
    """The module names that produce a group's channels (FX node names where no module produces them)."""
    nodes = {n.name: n for n in coupling.gm.graph.nodes}
    names = []
    for source in group.sources:
        node = nodes.get(source)
        names.append(str(node.target) if node is not None and node.op in ("call_module", "get_attr") else source)
    return names


@dataclass
class GroupScope:
    """What the budget allows for one group: its kept-count choices, and a fixed ratio if overridden."""

    group: ChannelGroup
    choices: list[int]  # allowed kept counts, largest first
    fixed_ratio: float | None


def scopes(coupling: Coupling, budget: Budget, round_to: int, orders: Mapping[int, np.ndarray]) -> list[GroupScope]:
    """Per prunable group, the kept counts allowed by pins, ``max_ratio``, ``round_to`` and overrides.
    ``orders`` holds each group's removal order (:meth:`ChannelGroup.removal_order`), which bounds how many may go."""
    out = []
    for group in coupling.groups:
        if not group.prunable:
            continue
        names = group_modules(group, coupling)
        fixed = next((r for pattern, r in dict(budget.overrides).items()
                      if any(fnmatch.fnmatchcase(n, pattern) for n in names)), None)
        max_remove = len(orders[group.id])  # never the whole group: each member keeps a channel
        if budget.max_ratio is not None:
            max_remove = min(max_remove, math.floor(budget.max_ratio * group.size + 1e-9))
        choices = allowed_kept(group.size, min_kept=group.size - max_remove, round_to=round_to)
        if len(choices) > 1:
            out.append(GroupScope(group, choices, fixed))
    return out


def _snap(choices: list[int], wanted_kept: float) -> int:
    return min(choices, key=lambda k: (abs(k - wanted_kept), -k))


def uniform_decisions(scopes_: list[GroupScope], ratio: float) -> dict[int, int]:
    """Channels removed per group id under a uniform ratio (overrides win), kept counts snapped to the choices."""
    out = {}
    for s in scopes_:
        r = ratio if s.fixed_ratio is None else s.fixed_ratio
        wanted = s.group.size - math.floor(r * s.group.size + 0.5)
        removed = s.group.size - _snap(s.choices, wanted)
        if removed:
            out[s.group.id] = removed
    return out


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

    >>> balanced_value(np.array([0.0, 1.0, 1.0]), np.array([0, 1, 2]), 1.0).round(3).tolist()
    [0.0, 0.0, 0.693, 20.723]
    """
    sc = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    total = sc.sum()
    if total <= 0:
        return np.zeros(len(order) + 1)
    kept = 1 - np.concatenate([[0.0], np.cumsum(sc[order])]) / total
    return weight * np.log(1 / np.maximum(kept, 1e-9))


def greedy_decisions(scopes_: list[GroupScope], scores: Mapping[int, np.ndarray], order: Mapping[int, np.ndarray],
                     cost: Any, target: float, *, cost_weight: float = 0.0, weights: Mapping[int, float] | None = None,
                     step_fraction: float = 1 / 64, lookahead: int = 8, fit: float = 0.005,
                     max_exchanges: int = 400, exchange_tries: int = 4) -> tuple[dict[int, int], float]:
    """Remove chunks of channels until ``cost.total(removed) <= target``; returns (removed per group id, predicted cost).

    ``cost_weight=0`` is a pure global importance ranking: a chunk's priority is its channels'
    mean importance, each group's scores divided by their mean so groups are comparable; the
    cost only decides where to stop. ``cost_weight > 0`` is a knapsack on :func:`balanced_value`
    (each group weighted by ``weights[g]``, default 1): a chunk's priority is the value it loses
    divided by ``saving ** cost_weight`` (both per channel), so 1 is the knapsack ratio, value
    lost per unit of cost saved.

    With ``cost_weight > 0`` a group's next move is the best of its next ``lookahead`` steps, not
    just the next one: measured latency falls in steps (a width one tile past a boundary costs a
    whole tile), so a step that saves nothing may be the way to one that saves a lot.

    The move that crosses the target is chosen to land within ``fit`` (relative) below it where one does.

    With ``cost_weight > 0`` the search starts from the uniform ratio that fits, not from the dense
    model, then makes up to ``max_exchanges`` exchanges: the groups that regain the most value per
    unit of cost step back (``len(groups) // 16`` of them at once, or the best ``exchange_tries``
    one at a time), the others are cut until the target is met again, and the exchange is kept if
    the value lost fell.

    Fixed (overridden) groups take their ratio first. Without rounding, a chunk is at least
    ``step_fraction`` of the group, so a large model plans in a fraction of a second.
    """
    removed: dict[int, int] = {}
    for s in scopes_:
        if s.fixed_ratio is not None:
            wanted = s.group.size - math.floor(s.fixed_ratio * s.group.size + 0.5)
            removed[s.group.id] = s.group.size - _snap(s.choices, wanted)
    free = {s.group.id: s for s in scopes_ if s.fixed_ratio is None}
    steps: dict[int, list[int]] = {}
    for gid, s in free.items():
        stride = max(1, math.ceil(s.group.size * step_fraction))
        picks = [k for i, k in enumerate(s.choices) if i == 0 or i == len(s.choices) - 1 or (s.group.size - k) % stride == 0]
        steps[gid] = [s.group.size - k for k in picks]  # removed counts, increasing
    lost_after: dict[int, np.ndarray] = {}  # value lost once the first r channels are removed, for every r
    for gid in free:
        sc = np.asarray(scores[gid], dtype=np.float64)
        if cost_weight > 0:
            lost_after[gid] = balanced_value(sc, order[gid], 1.0 if weights is None else float(weights[gid]))
        else:
            mean = sc.mean()
            lost_after[gid] = np.concatenate([[0.0], np.cumsum((sc / mean if mean > 0 else sc)[order[gid]])])
    neighbours: dict[int, set[int]] = {gid: set() for gid in free}
    for gid in free:
        for i in cost.terms_of_group.get(gid, ()):
            for other in free:
                if i in cost.terms_of_group.get(other, ()):
                    neighbours[gid].add(other)

    def options(state: dict[int, int], gid: int) -> list[tuple[float, int, int, float]]:
        """The group's next moves from ``state``, each (priority, group id, removed count to move to, cost saved)."""
        now = state.get(gid, 0)
        ahead = [r for r in steps[gid] if r > now][: 1 if cost_weight == 0 else lookahead]
        before = cost.group_part(gid, state) if ahead else 0.0
        out = []
        for nxt in ahead:
            n = nxt - now
            lost = (lost_after[gid][nxt] - lost_after[gid][now]) / n
            saved = before - cost.group_part(gid, {**state, gid: nxt})
            if cost_weight == 0:
                priority = lost
            else:
                priority = math.inf if saved <= 0 else lost / (saved / n) ** cost_weight
            out.append((priority, gid, nxt, saved))
        return out

    def descend(state: dict[int, int], frozen: frozenset[int] = frozenset(),
                moves: dict[int, list[tuple[float, int, int, float]]] | None = None) -> float:
        """Take the best moves (not of the ``frozen`` groups) until the cost meets the target; returns the cost.
        ``moves``: every group's options from ``state`` where already known (updated in place)."""
        current = cost.total(state)
        if moves is None:
            moves = {gid: options(state, gid) for gid in free if gid not in frozen}
        floor = target * (1 - fit)
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
            before = cost.group_part(gid, state)
            state[gid] = nxt
            current += cost.group_part(gid, state) - before
            for other in (neighbours[gid] | {gid}) - frozen:
                moves[other] = options(state, other)
        return current

    if cost_weight == 0:
        current = descend(removed)
        return {g: r for g, r in removed.items() if r}, current
    # The knapsack's greedy alone gets stuck: a conv's cost is a product of two groups' widths, so each cut
    # makes its neighbours' cuts save less, and the first groups cut end up far thinner than the value's
    # optimum. So: start from the uniform ratio that meets the target, then exchange channels between
    # groups (one group a step back, the others cut to meet the target again) while the value lost falls.
    removed = _uniform_start(list(free.values()), removed, cost, target)
    current = descend(removed)

    def value_lost(state: Mapping[int, int]) -> float:
        return sum(float(lost_after[gid][state.get(gid, 0)]) for gid in free)

    def step_back(state: dict[int, int], gid: int) -> tuple[float, int, int] | None:
        """The group's one step back from ``state``: (-(value regained per unit of cost added), group id, removed count)."""
        now = state.get(gid, 0)
        earlier = [r for r in steps[gid] if r < now]
        if not earlier:
            return None
        added = cost.group_part(gid, {**state, gid: earlier[-1]}) - cost.group_part(gid, state)
        regained = lost_after[gid][now] - lost_after[gid][earlier[-1]]
        return (-regained / added if added > 0 else -math.inf, gid, earlier[-1])

    lost_now = value_lost(removed)
    # Every group's options and step back from ``removed``, kept up to date as exchanges are accepted.
    moves_now = {gid: options(removed, gid) for gid in free}
    backs_now = {gid: step_back(removed, gid) for gid in free}
    batch = max(1, len(free) // 16)  # groups stepped back together: fewer exchanges on a model of many groups
    for _ in range(max_exchanges):
        back_moves = sorted(b for b in backs_now.values() if b is not None)
        tries = ([back_moves[:batch]] if batch > 1 else []) + [[m] for m in back_moves[:exchange_tries]]
        for backs in tries:
            trial = {**removed, **{gid: back for _, gid, back in backs}}
            frozen = frozenset(gid for _, gid, _ in backs)
            # Only the options of the groups sharing a term with a stepped-back group changed: reuse the others.
            touched = set().union(*(neighbours[g] for g in frozen))
            moves = {g: (options(trial, g) if g in touched else m) for g, m in moves_now.items() if g not in frozen}
            trial_cost = descend(trial, frozen, moves)
            trial_lost = value_lost(trial)
            if trial_cost <= target and trial_lost < lost_now * (1 - 1e-9):
                changed = {g for g in free if trial.get(g, 0) != removed.get(g, 0)}
                removed, current, lost_now = trial, trial_cost, trial_lost
                for g in set().union(changed, *(neighbours[c] for c in changed)):
                    moves_now[g], backs_now[g] = options(removed, g), step_back(removed, g)
                break
        else:
            break
    return {g: r for g, r in removed.items() if r}, current


def _uniform_start(free: list[GroupScope], fixed: dict[int, int], cost: Any, target: float) -> dict[int, int]:
    """The fixed groups' removals plus the smallest uniform ratio (bisected) whose plan meets ``target``."""
    def state(ratio: float) -> dict[int, int]:
        return {**fixed, **uniform_decisions(free, ratio)}

    if cost.total(state(0.0)) <= target:
        return state(0.0)
    low, high = 0.0, 1.0
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (low, mid) if cost.total(state(mid)) <= target else (mid, high)
    return state(high)
