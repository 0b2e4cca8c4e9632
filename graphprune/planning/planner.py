"""Stage 3 as a list of named steps: score, scope, cost, solve, build, measure and correct.

1. **score**: every prunable group's channels, by the importance criterion, and their removal order;
2. **scope**: the kept counts each group may take (:mod:`.scope`);
3. **cost**: a model of the budget's cost from the kept widths (:mod:`.costs`, :mod:`.latency`);
4. **solve**: the removals that meet a predicted target (:mod:`.knapsack`);
5. **build**: the :class:`~graphprune.planning.plan.Plan` (:mod:`.build`);
6. **measure**: its real figure, counted or timed on the model it builds (:mod:`.measurement`);
7. **correct**: if it missed, scale the predicted target by the miss (bracketed, bisected once both sides
   are known, so a poor prediction converges instead of oscillating) and solve again.

Steps 4 to 7 repeat for the budget's rounds (:mod:`.policy`); the plan returned is the least pruned
of those measured within tolerance of the target. A uniform ratio stops after step 5.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..base.errors import BudgetWarning, InputError, PlanError
from ..coupling import Coupling
from ..measure import Hardware, host_allocator
from .budget import Budget, as_budget, resolve_round_to
from .build import build_plan
from .costs import CostModel, mac_terms
from .importance import Importance, bind_importance, resolve_importance
from .knapsack import Knapsack, group_weights
from .measurement import Measurement
from .plan import Plan, PlanBudget
from .policy import POLICIES, Policy
from .scope import group_scopes, removal_count, uniform_removals

__all__ = ["plan_coupling", "measurement_for", "score", "Trial", "Bracket", "within", "choose", "Rounds"]


def plan_coupling(coupling: Coupling, budget: float | Budget, importance: str | Importance = "l2", *,
                  hardware: Hardware | None = None, measure: Measurement | None = None) -> Plan:
    """The plan that meets ``budget`` on ``coupling``. ``hardware`` sets ``round_to="auto"`` and how latency is
    timed; ``measure`` is the measure step (:func:`graphprune.planning.measurement_for` builds the usual one),
    needed by every budget but a ratio."""
    budget = as_budget(budget)
    hardware = hardware or Hardware()
    policy = POLICIES[budget.kind]
    name, scorer = resolve_importance(importance)
    scores, orders = score(coupling, bind_importance(scorer, coupling), budget)                    # 1. score
    round_to = resolve_round_to(policy.round_to if budget.round_to is None else budget.round_to, hardware)
    scopes = group_scopes(coupling, budget, round_to, orders)                                        # 2. scope
    record = PlanBudget(request=budget, round_to=round_to)

    def build(removed: Mapping[int, int], record: PlanBudget) -> Plan:                              # 5. build
        return build_plan(coupling, {gid: orders[gid][:n] for gid, n in removed.items()}, scores, name, record)

    if policy.predict is None:
        return build(uniform_removals(scopes, budget.ratio), record)
    if measure is None:
        raise InputError(f"a {budget.kind} budget needs a measurement of the plans it tries",
                         hint="graphprune.plan builds it; call plan_coupling(..., measure=measurement_for(...))")
    prediction = policy.predict(coupling, hardware, round_to, measure.dense)                         # 3. cost
    cost = CostModel(coupling, orders, prediction.terms, prediction.constant)
    tradeoff = policy.tradeoff if budget.tradeoff is None else budget.tradeoff
    weights = None
    if tradeoff > 0:  # a MACs budget's cost model already counts MACs
        macs = cost if budget.kind == "macs" else CostModel(coupling, orders, *mac_terms(coupling)[:2])
        weights = group_weights(macs, list(orders))
    knapsack = Knapsack(scopes, scores, orders, cost, tradeoff, weights)
    if policy.timed:
        record = dataclasses.replace(record, hardware=hardware.key_prefix(), runtime=hardware.runtime,
                                     allocator=host_allocator(), table_measurements=prediction.table_measurements)
    rounds = Rounds(policy, budget, knapsack, lambda removed: build(removed, record), measure, hardware)
    trials = rounds.run()                                                                            # 4-7
    return rounds.finish(trials, record, lambda rec: build({}, rec))


def measurement_for(coupling: Coupling, budget: float | Budget, hardware: Hardware | None,
                    realize: Callable[[Plan], object]) -> Measurement | None:
    """The measure step a budget's policy uses (None for a ratio): counting or timing ``realize(plan)``."""
    build = POLICIES[as_budget(budget).kind].measurement
    return None if build is None else build(coupling, hardware or Hardware(), realize)


def score(coupling: Coupling, scorer: Importance, budget: Budget) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Step 1: each prunable group's scores (one finite float per channel, checked) and removal order. Under a
    ratio, only the groups the largest ratio asked for can lose a channel are scored."""
    largest = max([budget.ratio or 0.0, *budget.overrides.values()]) if budget.kind == "ratio" else 1.0
    scores, orders = {}, {}
    for group in coupling.groups:
        if not group.prunable or removal_count(largest, group.num_prunable) == 0:
            continue
        values = np.asarray(scorer(group, coupling.tensors), dtype=np.float64)
        if values.shape != (group.size,):
            raise PlanError(f"the importance returned {values.shape} scores for a group of {group.size} channels")
        if not np.all(np.isfinite(values)):
            raise PlanError(f"the importance returned non-finite scores for the group of {', '.join(group.sources[:3])}")
        scores[group.id], orders[group.id] = values, group.removal_order(values)
    return scores, orders


@dataclass(frozen=True)
class Trial:
    """One round's plan: its predicted and measured figure, and the first timing where a fresh one replaced it."""

    plan: Plan
    predicted: float
    measured: float
    chosen_on: float | None = None


@dataclass
class Bracket:
    """Step 7: predicted targets known to give a plan over the goal (``over``) or under it (``under``)."""

    over: float = math.inf
    under: float = 0.0

    def correct(self, target: float, measured: float, goal: float) -> float:
        """The next predicted target, after ``target`` gave a plan measured at ``measured``."""
        if measured > goal:
            self.over = min(self.over, target)
        else:
            self.under = max(self.under, target)
        if self.under > 0 and self.over < math.inf:
            return math.sqrt(self.under * self.over)
        return target * min(1.33, max(0.75, goal / measured))  # damped: one noisy figure must not send it far


def within(measured: float, goal: float, tolerance: float, strict: bool = False) -> bool:
    """Whether a measured figure meets the goal: within ``tolerance`` of it, or, if ``strict``, at most the goal
    and within ``tolerance`` below it."""
    if strict:
        return goal * (1 - tolerance) <= measured <= goal
    return abs(measured / goal - 1) <= tolerance


def choose(trials: list[Trial], goal: float, tolerance: float, bound: bool, *, strict: bool = False) -> Trial:
    """The trial to return: of those :func:`within` tolerance of the goal, the least pruned. Otherwise, if the goal
    is a ``bound`` (a plan under it meets it), the least pruned of those under it, else the smallest; if not a
    bound, the nearest."""
    met = [t for t in trials if within(t.measured, goal, tolerance, strict)]
    if met:
        return max(met, key=lambda t: t.measured)
    if not bound:
        return min(trials, key=lambda t: abs(t.measured / goal - 1))
    under = [t for t in trials if t.measured <= goal]
    return max(under, key=lambda t: t.measured) if under else min(trials, key=lambda t: t.measured)


@dataclass
class Rounds:
    """Steps 4 to 7, repeated: solve for a predicted target, build, measure, correct."""

    policy: Policy
    budget: Budget
    knapsack: Knapsack
    build: Callable[[Mapping[int, int]], Plan]
    measure: Measurement
    hardware: Hardware = dataclasses.field(default_factory=Hardware)

    @property
    def goal(self) -> float:
        return self.budget.target * self.measure.dense

    @property
    def uniform(self) -> bool:
        """Every group at one ratio: the smallest whose model meets the goal, so the goal is a strict bound."""
        return self.budget.allocation == "uniform"

    def meets(self, measured: float) -> bool:
        return within(measured, self.goal, self.policy.tolerance, strict=self.uniform)

    def solve(self, target: float) -> tuple[dict[int, int], float]:                               # 4. solve
        if self.uniform:
            removed = self.knapsack.uniform(target)
            return removed, self.knapsack.cost.total(removed)
        return self.knapsack.solve(target)

    def run(self) -> list[Trial]:
        kind, goal = self.budget.kind, self.goal
        target, bracket, trials = goal, Bracket(), []
        # Counting is instant; timing (and compiling) each candidate is what a user waits for.
        bar = tqdm(total=self.policy.rounds, desc=f"{kind} rounds", disable=None if self.policy.timed else True,
                   leave=False)
        for round_ in range(self.policy.rounds):
            removed, predicted = self.solve(target)
            unreachable = predicted > target * (1 + 1e-9)
            # Counts are predicted exactly enough to refuse an impossible budget up front; a timing is not,
            # so the smallest plan is measured instead.
            if unreachable and round_ == 0 and not self.policy.timed:
                raise PlanError(
                    f"the {kind} budget {self.budget.target:g} cannot be met: the smallest plan allowed by the scope "
                    f"is predicted at {self.measure.fraction(predicted):.3f} of dense",
                    hint="raise max_ratio, relax overrides or ignore fewer modules",
                )
            plan = self.build(removed)
            trial = Trial(plan, predicted, self.measure(plan))                                        # 6. measure
            if self.policy.timed and self.meets(trial.measured):
                # A timing that meets the target is the one that stops the rounds, so on a noisy machine it is
                # biased low (the winner's curse). The plan stops them only if a fresh timing agrees; if not,
                # the fresh one is the plan's measurement and the next round corrects from it.
                trial = Trial(plan, predicted, self.measure(plan), chosen_on=trial.measured)
            trials.append(trial)
            bar.update()
            bar.set_postfix_str(f"measured {self.measure.fraction(trial.measured):.3f} of dense, "
                                f"target {self.budget.target:g}")
            if self.meets(trial.measured):
                break
            if self.policy.timed and unreachable and trial.measured > goal:
                break  # the smallest plan the scope allows, and still too slow: more rounds cannot help
            target = bracket.correct(target, trial.measured, goal)                                   # 7. correct
        bar.close()
        return trials

    def finish(self, trials: list[Trial], record: PlanBudget, dense_plan: Callable[[PlanBudget], Plan]) -> Plan:
        """The chosen plan with its record; under a timed budget, re-timed, never slower than dense, refused if far off."""
        policy, kind, goal = self.policy, self.budget.kind, self.goal
        chosen = choose(trials, goal, policy.tolerance, bound=policy.timed or self.uniform, strict=self.uniform)
        if policy.timed and chosen.chosen_on is None:
            # Chosen on its only timing, so chosen for it: the figure reported and checked is a fresh one.
            chosen = Trial(chosen.plan, chosen.predicted, self.measure(chosen.plan), chosen_on=chosen.measured)
        dense = self.measure.dense
        record = dataclasses.replace(record, dense=dense, goal=goal, predicted=chosen.predicted,
                                     measured=chosen.measured, rounds=len(trials), chosen_on=chosen.chosen_on)
        fraction = self.measure.fraction(chosen.measured)
        if policy.timed and chosen.measured >= dense:
            warnings.warn(f"the latency-budget plan measured {chosen.measured * 1e3:.3f} ms, not faster than the dense "
                          f"{dense * 1e3:.3f} ms: returning the dense plan", BudgetWarning, stacklevel=4)
            return dense_plan(dataclasses.replace(record, measured=dense,
                                                  note="fell back to the dense model: no pruned plan measured faster"))
        if policy.timed and chosen.measured > goal * (1 + 2 * policy.tolerance):
            raise PlanError(
                f"the latency budget {self.budget.target:g} cannot be met on {self.hardware.label()}: the fastest "
                f"of {len(trials)} plans measured {fraction:.3f} of the dense {dense * 1e3:.3f} ms, keeping "
                f"{chosen.plan.kept_fraction:.1%} of the prunable channels",
                hint="per-call overhead bounds how fast a small model runs: ask for a larger batch_size, plan for the "
                     "runtime it will be deployed with (runtime='cudagraphs' on CUDA, or 'compile'), or give a higher target",
            )
        # A uniform ratio moves in coarse steps: at most the goal is its contract, however far below it lands.
        if not self.meets(chosen.measured) and not (self.uniform and chosen.measured <= goal):
            warnings.warn(f"the {kind} budget {self.budget.target:g}: the nearest plan measured {fraction:.3f} of dense, "
                          f"not within {policy.tolerance:.0%} of the target after {len(trials)} rounds (see plan.budget)",
                          BudgetWarning, stacklevel=4)
        chosen.plan.budget = record
        return chosen.plan
