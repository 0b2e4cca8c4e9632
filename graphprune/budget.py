"""Budgets and scopes: how many channels each group loses.

Two ways to decide:

- a **uniform ratio** (``shrink(model, 0.5)``): every free group loses ``round(ratio * size)``
  channels, with per-module overrides (fnmatch patterns on producer module names) and a
  maximum ratio per group;
- a **global budget** (``macs=0.5``, ``params=0.4`` or ``latency=0.5``, each a fraction of the
  dense model): channels of all groups compete. Scores are normalised by their group's mean so
  groups are comparable, and a greedy knapsack removes, step by step, the chunk of channels
  that loses the least importance per unit of cost saved, until the predicted cost meets the
  target (:mod:`graphprune.costs`, :mod:`graphprune.latency_table`). The plan is then built,
  applied and *counted* (or, for latency, *measured*); if the real figure misses the target,
  the predicted target is corrected and the plan re-solved.

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

__all__ = ["Budget", "resolve_round_to", "allowed_kept", "group_modules", "GroupScope", "scopes", "uniform_decisions", "greedy_decisions"]

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
    a global budget trades importance for savings: 0 ranks channels by importance alone (the cost
    decides only where to stop), 1 by importance lost per unit of cost saved; the default is 0 for
    MACs and parameters and 1 for latency (see :func:`greedy_decisions`).

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


def scopes(coupling: Coupling, budget: Budget, round_to: int) -> list[GroupScope]:
    """Per prunable group, the kept counts allowed by pins, ``max_ratio``, ``round_to`` and overrides."""
    out = []
    for group in coupling.groups:
        if not group.prunable:
            continue
        names = group_modules(group, coupling)
        fixed = next((r for pattern, r in dict(budget.overrides).items()
                      if any(fnmatch.fnmatchcase(n, pattern) for n in names)), None)
        max_remove = min(group.num_prunable, group.size - 1)
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


def greedy_decisions(scopes_: list[GroupScope], scores: Mapping[int, np.ndarray], order: Mapping[int, np.ndarray],
                     cost: Any, target: float, *, cost_weight: float = 0.0,
                     step_fraction: float = 1 / 64, lookahead: int = 8,
                     fit: float = 0.005) -> tuple[dict[int, int], float]:
    """Remove chunks of channels until ``cost.total(removed) <= target``; returns (removed per group id, predicted cost).

    A chunk's priority is its mean normalised importance divided by ``saving ** cost_weight``
    (its saving per channel). ``cost_weight=0`` is a pure global importance ranking: the cost
    only decides where to stop, so no group is emptied for being expensive. ``cost_weight=1``
    is the knapsack ratio (importance lost per unit saved), which chases the costliest layers;
    in between, cheap-to-keep channels are spared in proportion.

    With ``cost_weight > 0`` a group's next move is the best of its next ``lookahead`` steps, not
    just the next one: measured latency falls in steps (a width one tile past a boundary costs a
    whole tile), so a step that saves nothing may be the way to one that saves a lot.

    The move that crosses the target is chosen to land within ``fit`` (relative) below it where one does.

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
    normalised = {}
    for gid in free:
        sc = np.asarray(scores[gid], dtype=np.float64)
        mean = sc.mean()
        normalised[gid] = np.concatenate([[0.0], np.cumsum((sc / mean if mean > 0 else sc)[order[gid]])])
    neighbours: dict[int, set[int]] = {gid: set() for gid in free}
    for gid in free:
        for i in cost.terms_of_group.get(gid, ()):
            for other in free:
                if i in cost.terms_of_group.get(other, ()):
                    neighbours[gid].add(other)

    def options(gid: int) -> list[tuple[float, int, int, float]]:
        """The group's next moves, each (priority, group id, removed count to move to, cost saved)."""
        now = removed.get(gid, 0)
        ahead = [r for r in steps[gid] if r > now][: 1 if cost_weight == 0 else lookahead]
        before = cost.group_part(gid, removed) if ahead else 0.0
        out = []
        for nxt in ahead:
            n = nxt - now
            lost = (normalised[gid][nxt] - normalised[gid][now]) / n
            saved = before - cost.group_part(gid, {**removed, gid: nxt})
            if cost_weight == 0:
                priority = lost
            else:
                priority = math.inf if saved <= 0 else lost / (saved / n) ** cost_weight
            out.append((priority, gid, nxt, saved))
        return out

    current = cost.total(removed)
    moves = {gid: options(gid) for gid in free}
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
        before = cost.group_part(gid, removed)
        removed[gid] = nxt
        current += cost.group_part(gid, removed) - before
        for other in neighbours[gid] | {gid}:
            moves[other] = options(other)
    return {g: r for g, r in removed.items() if r}, current
