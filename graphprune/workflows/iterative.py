"""The prune / fine-tune / evaluate loop.

:func:`iterative` shrinks a model in ``steps`` rounds towards a final budget and calls the
user's ``train(model)`` and ``evaluate(model)`` after every round. The budget is a ratio (the
fraction of the prunable channels to remove in the end) or a :class:`~graphprune.Budget` of
MACs, parameters or latency (the fraction of the dense model's to keep in the end). Each round
removes an equal *compounded* share: after round ``k`` of ``n`` the model keeps
``(1 - ratio) ** (k / n)`` of its original channels (or ``macs ** (k / n)`` of its MACs). Rounds
aim at these cumulative marks from the model as it is, so per-group rounding does not accumulate
over the rounds. The budget's other fields (allocation, rounding, overrides) apply in every round.

Early stop: with ``floor=``, a round whose metric (after ``train``) falls below the floor ends
the loop, and :func:`iterative` returns the model of the last round that met it (the dense model,
as a copy, if the first round already fails). The failing round stays in the history with
``accepted=False``, so what was tried is visible. The dense model is evaluated first (round 0)
and must meet the floor itself, otherwise the floor cannot be met and :class:`InputError` is raised.

>>> import torch, graphprune
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1))
>>> x = torch.randn(1, 3, 8, 8)
>>> small, history = graphprune.iterative(net, 0.75, steps=2, example_inputs=x,
...                                       train=lambda m: None, evaluate=lambda m: 1.0, verbose=False)
>>> [(r.step, r.channels) for r in history]
[(0, 32), (1, 16), (2, 8)]
>>> small[0]
Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1))
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..api import apply, couple, plan
from ..base.checks import check_model
from ..base.errors import InputError
from ..base.running import call_model
from ..capture.inputs import default_example_inputs
from ..coupling import Scope, as_scope
from ..measure import Hardware, as_hardware, count_macs, count_params
from ..planning import Budget, as_budget
from ..planning.importance import Importance, resolve_importance
from ..planning.scope import check_overrides

__all__ = ["StepRecord", "iterative", "prunable_channels", "recalibrate_batchnorm"]


@dataclass
class StepRecord:
    """One round of :func:`iterative`. Round 0 is the dense model, as given."""

    step: int
    ratio: float  # fraction of the previous round's prunable channels removed in this round
    removed: float  # cumulative fraction of the original prunable channels removed
    channels: int  # prunable channels left
    macs: int
    params: int
    pruned_metric: float | None  # right after pruning, before train(); None for round 0
    metric: float  # after train()
    accepted: bool  # met the floor (always True without one)
    seconds: float  # wall time of the round: plan, apply, train and both evaluations


def prunable_channels(model: nn.Module, *, example_inputs: Any = None, scope: Scope | None = None) -> int:
    """How many channels the planner may remove: the free channels of every prunable group."""
    return sum(g.num_prunable for g in couple(model, example_inputs=example_inputs, scope=scope).groups)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (inputs only), in place; returns the model.

    Pruning removes input channels of later layers, so their output statistics shift and the stored
    running mean and variance no longer match: accuracy right after pruning then mostly measures that
    mismatch. A few forward passes (no gradient step) fix it. The statistics are the exact average
    over the batches (momentum None); every module's mode and momentum are restored afterwards.

    >>> bn = nn.BatchNorm1d(2)
    >>> _ = recalibrate_batchnorm(nn.Sequential(bn), [torch.tensor([[1.0, 2.0], [3.0, 6.0]])])
    >>> bn.running_mean.tolist(), bn.training
    ([2.0, 4.0], True)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    flags = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in norms]
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for batch in batches:
            call_model(model, batch)
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
        for m, training in flags:
            m.training = training
    return model


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    return steps


def _metric(evaluate: Callable[[nn.Module], float], model: nn.Module) -> float:
    value = evaluate(model)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"evaluate(model) must return a number, got {type(value).__name__}") from None
    if math.isnan(value):
        raise InputError("evaluate(model) returned NaN")
    return value


def iterative(
    model: nn.Module,
    budget: float | Budget,
    *,
    steps: int,
    train: Callable[[nn.Module], Any],
    evaluate: Callable[[nn.Module], float],
    floor: float | None = None,
    example_inputs: Any = None,
    importance: str | Importance = "l2",
    scope: Scope | None = None,
    hardware: Hardware | None = None,
    verbose: bool | None = None,
) -> tuple[nn.Module, list[StepRecord]]:
    """Prune ``model`` in ``steps`` rounds towards ``budget``, calling ``train(model)`` then ``evaluate(model)``
    after each.

    ``budget`` is a ratio (the fraction of the prunable channels removed in the end) or a
    :class:`~graphprune.Budget`: ``Budget(macs=0.25)`` keeps a quarter of the dense MACs in the end, its
    ``allocation`` deciding how each round spreads over the groups. ``train`` fine-tunes the model it is
    given in place (its return value is ignored); ``evaluate`` returns a number where higher is better
    (negate a loss). ``floor`` stops early (see the module docstring). ``importance``, ``scope`` and
    ``hardware`` are :func:`graphprune.plan`'s. ``verbose=None`` shows a progress bar only when stderr is a
    terminal; ``False`` silences it, ``True`` forces it.

    Returns the final (or last accepted) model and one :class:`StepRecord` per round, round 0 first.
    ``model`` itself is never modified.
    """
    check_model(model)
    budget = as_budget(budget)
    _check_steps(steps)
    scope = as_scope(scope).by_name(model)  # each round works on a copy: ignored modules go by name
    inputs = example_inputs if example_inputs is not None else default_example_inputs(model)

    resolve_importance(importance)
    hardware = as_hardware(hardware)

    start = time.perf_counter()
    coupling = couple(model, example_inputs=inputs, scope=scope)
    check_overrides(coupling, budget)  # every argument checked before the user's evaluate() runs
    dense_channels = sum(g.num_prunable for g in coupling.groups)
    dense_macs = count_macs(model, inputs)
    metric = _metric(evaluate, model)
    if floor is not None and metric < floor:
        raise InputError(f"the dense model scores {metric:g}, below floor={floor:g}: no pruned model can be accepted",
                         hint="lower the floor, or evaluate a better trained model")
    history = [StepRecord(0, 0.0, 0.0, dense_channels, dense_macs, count_params(model), None, metric, True,
                          time.perf_counter() - start)]
    accepted, current = model, model
    achieved = 1.0  # under a MACs, parameter or latency budget: the fraction of the dense model's figure left
    bar = tqdm(range(1, steps + 1), desc="graphprune.iterative", unit="step",
               disable=None if verbose is None else not verbose)
    for step in bar:
        start = time.perf_counter()
        channels = prunable_channels(current, example_inputs=inputs, scope=scope)
        if budget.kind == "ratio":
            goal = dense_channels * (1 - budget.ratio) ** (step / steps)
            ratio = min(max(1 - goal / channels, 0.0), 0.99) if channels else 0.0
            this_round = dataclasses.replace(budget, ratio=ratio)
        else:
            mark = budget.target ** (step / steps)
            this_round = dataclasses.replace(budget, **{budget.kind: min(1.0, mark / achieved)})
        the_plan = plan(current, this_round, example_inputs=inputs, importance=importance, scope=scope,
                        hardware=hardware)
        if the_plan.budget.measured_fraction is not None:
            achieved *= the_plan.budget.measured_fraction
        current = apply(current, the_plan, example_inputs=inputs, scope=scope)
        pruned_metric = _metric(evaluate, current)
        train(current)
        metric = _metric(evaluate, current)
        ok = floor is None or metric >= floor
        left = prunable_channels(current, example_inputs=inputs, scope=scope)
        history.append(StepRecord(step, 1 - left / channels if channels else 0.0,
                                  1 - left / dense_channels if dense_channels else 0.0, left,
                                  count_macs(current, inputs), count_params(current), pruned_metric, metric, ok,
                                  time.perf_counter() - start))
        bar.set_postfix(metric=f"{metric:.4g}", macs=f"{history[-1].macs / dense_macs:.0%}")
        if not ok:
            break
        accepted = current
    bar.close()
    return (copy.deepcopy(model) if accepted is model else accepted), history
