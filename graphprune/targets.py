"""Plan under a :class:`~graphprune.budget.Budget`: solve, build, check against the real figure, correct.

The uniform ratio is decided in one pass. A MACs, parameter or latency budget is solved by
the greedy knapsack of :mod:`graphprune.budget` against a predicted cost, then the plan is
applied and the shrunk model counted (MACs, parameters) or timed (latency). If the real
figure misses the target by more than the tolerance, the predicted target is scaled by
the miss and the plan solved again (a few rounds at most). Under a latency budget a plan that
meets the target is timed again before the rounds stop (the timing it met it on is biased low),
and a plan that measures slower than the dense model is never returned: the dense plan is, with
a warning and a note in ``plan.budget``. Measuring the table and the rounds shows progress bars
on a terminal.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from .budget import Budget, GroupScope, greedy_decisions, resolve_round_to, scopes, uniform_decisions
from .costs import CostModel, Term, mac_terms, param_terms
from .couple import Coupling
from .errors import BudgetWarning, PlanError
from .importance import Importance
from .latency_table import Hardware, LatencyTable, LayerLatency, host_allocator, layer_specs
from .planning import Plan, make_plan, score_group
from .rewrite import apply_plan
from .stats import count_macs, count_params

__all__ = ["plan_with_budget", "group_weights", "latency_terms", "TOLERANCE", "DEFAULT_TRADEOFF"]

TOLERANCE = {"macs": 0.01, "params": 0.01, "latency": 0.05}
# Default tradeoffs. MACs and parameters: a global importance ranking (the most accurate plan that fits).
# Latency: the balanced knapsack ratio (value lost per second saved), which departs from uniform pruning
# where latency is not proportional to MACs. A global importance ranking ignores where the time goes:
# on an H200 (bf16, batch 128) it emptied resnet50 to 1% of its MACs to reach half its latency.
DEFAULT_TRADEOFF = {"macs": 0.0, "params": 0.0, "latency": 1.0}
_ROUNDS = 4
_LATENCY_ROUNDS = 6  # each round times the model: a poor prediction (per-call overhead, shared machines) needs more


def _choose(tried: list[tuple[Plan, float, float]], wanted: float, tolerance: float,
            bound: bool) -> tuple[Plan, float, float]:
    """The plan to return: of those measured within tolerance of the target, the least pruned.
    Otherwise, if the target is a ``bound`` (latency: a plan faster than asked meets it), the least
    pruned of those under it, else the fastest; if not a bound, the nearest."""
    within = [t for t in tried if abs(t[2] / wanted - 1) <= tolerance]
    if within:
        return max(within, key=lambda t: t[2])
    if not bound:
        return min(tried, key=lambda t: abs(t[2] / wanted - 1))
    under = [t for t in tried if t[2] <= wanted]
    return max(under, key=lambda t: t[2]) if under else min(tried, key=lambda t: t[2])


def _decisions(scopes_: list[GroupScope], removed: dict[int, int], order: dict[int, np.ndarray],
               scores: dict[int, np.ndarray]) -> dict[int, tuple[list[int], np.ndarray]]:
    by_id = {s.group.id for s in scopes_}
    return {gid: (sorted(int(c) for c in order[gid][:n]), scores[gid]) for gid, n in removed.items() if gid in by_id and n}


def group_weights(macs: CostModel, group_ids: list[int]) -> dict[int, float]:
    """Each group's weight in the balanced knapsack: the dense MACs (``macs``, a MACs cost model) of the layers
    its channels index. A group that indexes no MACs (norm or embedding channels only) weighs as much as the
    lightest one that does."""
    weights = {gid: macs.group_part(gid, {}) for gid in group_ids}
    lightest = min((w for w in weights.values() if w > 0), default=1.0)
    return {gid: w if w > 0 else lightest for gid, w in weights.items()}


def latency_terms(coupling: Coupling, hardware: Hardware, round_to: int, table: LatencyTable,
                  dense_seconds: float) -> tuple[list[Term], float]:
    """One term per prunable conv/linear: its measured latency at the kept widths, scaled so the dense
    layers sum to the measured dense model (the rest of the model, norms and activations, is assumed
    to shrink with the layers it sits between). Returns (terms, constant 0)."""
    weights = {use.tensor for use in coupling.uses}
    specs = layer_specs(coupling.gm, weights)
    surfaces = [(spec, LayerLatency.measure(spec, table, round_to))
                for spec in tqdm(specs, desc="latency table", unit="layer", disable=None, leave=False)]  # None: shown on a terminal only
    table.save()
    dense_layers = sum(s(spec.in_channels, spec.out_channels) for spec, s in surfaces)
    scale = dense_seconds / dense_layers if dense_layers > 0 else 1.0
    terms = []
    for spec, surface in surfaces:
        def fn(kept: dict[int, int], surface: LayerLatency = surface, spec: Any = spec) -> float:
            cout = kept.get(0, spec.out_channels)
            return scale * (surface(cout, cout) if spec.depthwise else surface(kept.get(1, spec.in_channels), cout))

        terms.append(Term(spec.weight, (0,) if spec.depthwise else (0, 1), fn))
    return terms, 0.0


def plan_with_budget(
    model: nn.Module,
    coupling: Coupling,
    scorer: Importance,
    budget: Budget,
    *,
    importance_name: str,
    hardware: Hardware | None = None,
    rules: Any = None,
) -> Plan:
    """The plan that meets ``budget``; ``plan.budget`` records the target, the scope and the result."""
    hw = hardware or Hardware()
    # Off-grid widths can run slower than wider aligned ones, so a latency budget rounds by default.
    round_to = resolve_round_to("auto" if budget.kind == "latency" and budget.round_to is None else budget.round_to,
                                hw.device, hw.dtype)
    tensors = {use.tensor: coupling.ctx.tensor(use.tensor) for use in coupling.uses}
    scores = {g.id: score_group(scorer, g, tensors) for g in coupling.groups if g.prunable}
    order = {g.id: g.removal_order(scores[g.id]) for g in coupling.groups if g.prunable}
    scopes_ = scopes(coupling, budget, round_to, order)
    record: dict[str, Any] = {**budget.to_dict(), "kind": budget.kind, "round_to_resolved": round_to}
    build: Callable[[dict[int, tuple[list[int], np.ndarray]], dict[str, Any]], Plan] = lambda decisions, rec: make_plan(
        coupling, budget.ratio or 0.0, scorer, importance_name=importance_name, model=model,
        example_args=coupling.example_args, leaf_modules=coupling.leaf_modules, decisions=decisions, budget=rec)

    if budget.kind == "ratio":
        removed = uniform_decisions(scopes_, budget.ratio)
        return build(_decisions(scopes_, removed, order, scores), record)

    args = coupling.example_args
    if budget.kind == "params":
        terms, constant, dense = param_terms(coupling)

        def real(shrunk: nn.Module) -> float:
            return float(count_params(shrunk))
    elif budget.kind == "macs":
        terms, constant, dense = mac_terms(coupling, model, args)

        def real(shrunk: nn.Module) -> float:
            return float(count_macs(shrunk, args))
    else:
        table = LatencyTable(hw)
        dense_run = hw.runner(model, args)  # compiled or captured once, however often it is timed
        # The table is scaled to this figure, so one slow timing must not set it: the faster of two.
        dense = min(hw.seconds(dense_run, hw.model_min_run_time) for _ in range(2))
        terms, constant = latency_terms(coupling, hw, round_to, table, dense)
        record.update(table_measurements=table.measured, hardware=hw.key_prefix(), runtime=hw.runtime,
                      allocator=host_allocator())

        def real(shrunk: nn.Module) -> float:
            # Timed in pairs with the dense model, alternating: on a shared machine the load drifts between
            # measurements, and a fraction of a fresh dense time is what the target is a fraction of.
            shrunk_run = hw.runner(shrunk, args)
            pairs = [(hw.seconds(dense_run, hw.model_min_run_time), hw.seconds(shrunk_run, hw.model_min_run_time))
                     for _ in range(2)]
            return dense * min(s for _, s in pairs) / min(d for d, _ in pairs)

    cost = CostModel(coupling, order, terms, constant)
    tradeoff = DEFAULT_TRADEOFF[budget.kind] if budget.tradeoff is None else budget.tradeoff
    weights = None
    if tradeoff > 0:  # a MACs budget's cost model already counts MACs
        macs = cost if budget.kind == "macs" else CostModel(coupling, order, *mac_terms(coupling, model, args)[:2])
        weights = group_weights(macs, list(order))
    wanted = budget.target * dense
    tolerance = TOLERANCE[budget.kind]
    predicted_target = wanted
    # Predicted targets known to give a plan too slow (above) or faster than needed (below): a bracket,
    # bisected once both sides are known, so a poor prediction converges instead of oscillating.
    too_slow, too_fast = math.inf, 0.0
    tried: list[tuple[Plan, float, float]] = []  # (plan, predicted, measured)
    chosen_on: dict[int, float] = {}  # a latency plan's first timing, where a second one was made
    rounds = _ROUNDS if budget.kind != "latency" else _LATENCY_ROUNDS
    # Counting is instant; timing (and compiling) each candidate is what a user waits for.
    bar = tqdm(total=rounds, desc=f"{budget.kind} rounds", disable=True if budget.kind != "latency" else None, leave=False)
    for round_ in range(rounds):
        removed, predicted = greedy_decisions(scopes_, scores, order, cost, predicted_target, cost_weight=tradeoff,
                                              weights=weights)
        # Counts are predicted exactly enough to refuse an impossible MACs or parameter budget up front;
        # a latency prediction is not, so the smallest plan is measured instead.
        if predicted > predicted_target * (1 + 1e-9) and round_ == 0 and budget.kind != "latency":
            raise PlanError(
                f"the {budget.kind} budget {budget.target:g} cannot be met: the smallest plan allowed by the scope "
                f"is predicted at {predicted / dense:.3f} of dense",
                hint="raise max_ratio, relax overrides or ignore fewer modules",
            )
        plan = build(_decisions(scopes_, removed, order, scores), {})
        shrunk = apply_plan(model, plan, rules=rules)
        actual = real(shrunk)
        if budget.kind == "latency" and abs(actual / wanted - 1) <= tolerance:
            # A timing that meets the target is the one that stops the rounds, so on a noisy machine it is biased
            # low (the winner's curse). The plan stops them only if a fresh timing agrees; if not, the fresh one
            # is the plan's measurement and the next round corrects from it.
            chosen_on[id(plan)] = actual
            actual = real(shrunk)
        tried.append((plan, predicted, actual))
        bar.update()
        bar.set_postfix_str(f"measured {actual / dense:.3f} of dense, target {budget.target:g}")
        if abs(actual / wanted - 1) <= tolerance:
            break
        if budget.kind == "latency" and predicted > predicted_target * (1 + 1e-9) and actual > wanted:
            break  # the smallest plan the scope allows, and still too slow: more rounds cannot help
        if actual > wanted:
            too_slow = min(too_slow, predicted_target)
        else:
            too_fast = max(too_fast, predicted_target)
        if too_fast > 0 and too_slow < math.inf:
            predicted_target = math.sqrt(too_fast * too_slow)
        else:  # damped: one noisy measurement must not send the next round to a degenerate plan
            predicted_target *= min(1.33, max(0.75, wanted / actual))
    bar.close()
    plan, predicted, actual = _choose(tried, wanted, tolerance, bound=budget.kind == "latency")
    if budget.kind == "latency":
        # A plan chosen on its only timing was chosen for it: the figure reported and checked is a fresh one.
        if id(plan) in chosen_on:
            record["chosen_on"] = chosen_on[id(plan)]
        else:
            record["chosen_on"] = actual
            actual = real(apply_plan(model, plan, rules=rules))
    record.update({"dense": dense, "requested": wanted, "predicted": predicted, "actual": actual,
                   "actual_fraction": actual / dense, "rounds": round_ + 1})
    if budget.kind == "latency" and actual >= dense:
        warnings.warn(f"the latency-budget plan measured {actual * 1e3:.3f} ms, not faster than the dense "
                      f"{dense * 1e3:.3f} ms: returning the dense plan", BudgetWarning, stacklevel=3)
        record["note"] = "fell back to the dense model: no pruned plan measured faster"
        plan = build({}, {})
        record["actual"], record["actual_fraction"] = dense, 1.0
    elif budget.kind == "latency" and actual > wanted * (1 + 2 * tolerance):
        raise PlanError(
            f"the latency budget {budget.target:g} cannot be met on {hw.device} ({hw.dtype}, batch "
            f"{hw.batch_size or 'as given'}, {hw.runtime}): the fastest of {len(tried)} plans measured {actual / dense:.3f} of the "
            f"dense {dense * 1e3:.3f} ms, keeping {plan.kept_fraction:.1%} of the prunable channels",
            hint="per-call overhead bounds how fast a small model runs: ask for a larger batch_size, plan for the "
                 "runtime it will be deployed with (runtime='cudagraphs' on CUDA, or 'compile'), or give a higher target",
        )
    elif abs(actual / wanted - 1) > tolerance:
        warnings.warn(f"the {budget.kind} budget {budget.target:g}: the nearest plan measured {actual / dense:.3f} of "
                      f"dense, not within {tolerance:.0%} of the target after {len(tried)} rounds (see plan.budget)",
                      BudgetWarning, stacklevel=3)
    plan.budget = record
    return plan
