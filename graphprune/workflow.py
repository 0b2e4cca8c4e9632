"""The prune / fine-tune / evaluate loop, and a MACs budget search.

:func:`iterative` shrinks a model in ``steps`` rounds towards a final budget and
calls the user's ``train(model)`` and ``evaluate(model)`` after every round. The
budget is either ``target``, the fraction of the prunable channels to remove in
the end, or ``macs``, the fraction of the dense MACs to keep. Each round removes
an equal *compounded* share: after round ``k`` of ``n`` the model keeps
``(1 - target) ** (k / n)`` of its original channels (or ``macs ** (k / n)`` of its
MACs). Rounds aim at these cumulative marks from the model as it is, so per-group
rounding does not accumulate over the rounds.

Early stop: with ``floor=``, a round whose metric (after ``train``) falls below
the floor ends the loop, and :func:`iterative` returns the model of the last
round that met it (the dense model, as a copy, if the first round already fails).
The failing round stays in the history with ``accepted=False``, so what was
tried is visible. The dense model is evaluated first (round 0) and must meet the
floor itself, otherwise the floor cannot be met and :class:`InputError` is raised.

>>> import torch, graphprune
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1))
>>> x = torch.randn(1, 3, 8, 8)
>>> small, history = graphprune.iterative(net, steps=2, target=0.75, example_inputs=x,
...                                       train=lambda m: None, evaluate=lambda m: 1.0, verbose=False)
>>> [(r.step, r.channels) for r in history]
[(0, 32), (1, 16), (2, 8)]
>>> small[0]
Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1))
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .api import analyze, apply, plan
from .running import call_model
from .errors import InputError
from .importance import Importance, bind_importance, resolve_importance
from .planning import make_plan
from .registry import Registry
from .stats import count_macs, count_params
from .trace import default_example_inputs

__all__ = ["StepRecord", "iterative", "ratio_for_macs", "prunable_channels", "recalibrate_batchnorm"]


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


def prunable_channels(model: nn.Module, *, example_inputs: Any = None, ignore: Iterable[Any] = (),
                      rules: Registry | None = None, leaf_modules: Iterable[str] = ()) -> int:
    """How many channels the planner may remove: the free channels of every prunable group."""
    coupling = analyze(model, example_inputs=example_inputs, ignore=ignore, rules=rules, leaf_modules=leaf_modules)
    return sum(g.num_prunable for g in coupling.groups)


def ratio_for_macs(model: nn.Module, macs: float, *, example_inputs: Any = None, importance: str | Importance = "l2",
                   ignore: Iterable[Any] = (), rules: Registry | None = None, leaf_modules: Iterable[str] = (),
                   iterations: int = 10) -> float:
    """The smallest ratio at which ``shrink(model, ratio)`` keeps at most ``macs`` of the model's MACs.

    Bisection over the ratio (MACs do not grow as the ratio grows), each probe a real plan, apply and
    :func:`~graphprune.count_macs`. Raises :class:`InputError` if even the largest ratio leaves more.
    """
    if isinstance(macs, bool) or not isinstance(macs, (int, float)) or not 0 < macs <= 1:
        raise InputError(f"macs must be a fraction in (0, 1], got {macs!r}", hint="macs is the fraction of the MACs to keep")
    inputs = example_inputs if example_inputs is not None else default_example_inputs(model)
    dense = count_macs(model, inputs)
    goal = macs * dense
    # One trace for every probe: the coupling does not depend on the ratio.
    coupling = analyze(model, example_inputs=inputs, ignore=ignore, rules=rules, leaf_modules=leaf_modules)
    name, scorer = resolve_importance(importance)
    scorer = bind_importance(scorer, coupling)  # data-driven criteria (Taylor) run their calibration once

    def macs_at(ratio: float) -> int:
        probe = make_plan(coupling, ratio, scorer, importance_name=name, model=model,
                          example_args=coupling.example_args, leaf_modules=coupling.leaf_modules)
        return count_macs(apply(model, probe, example_inputs=inputs, rules=rules), inputs)

    if dense <= goal:
        return 0.0
    low, high = 0.0, 0.99
    if macs_at(high) > goal:
        raise InputError(
            f"no ratio keeps {macs:.1%} of the MACs: at ratio {high} the model still has "
            f"{macs_at(high) / dense:.1%} (the unprunable layers cost more)",
            hint="ask for a larger macs fraction",
        )
    for _ in range(iterations):
        mid = (low + high) / 2
        low, high = (low, mid) if macs_at(mid) <= goal else (mid, high)
    return high


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


def _check_budget(steps: Any, target: Any, macs: Any) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if (target is None) == (macs is None):
        raise InputError("give exactly one budget: target= (fraction of channels to remove) or macs= (fraction of MACs to keep)")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target < 1):
        raise InputError(f"target must be a fraction in [0, 1), got {target!r}", hint="target is the fraction of channels to remove")
    if macs is not None and (isinstance(macs, bool) or not isinstance(macs, (int, float)) or not 0 < macs <= 1):
        raise InputError(f"macs must be a fraction in (0, 1], got {macs!r}", hint="macs is the fraction of the MACs to keep")


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
    *,
    steps: int,
    train: Callable[[nn.Module], Any],
    evaluate: Callable[[nn.Module], float],
    target: float | None = None,
    macs: float | None = None,
    floor: float | None = None,
    example_inputs: Any = None,
    allocation: str = "uniform",
    importance: str | Importance = "l2",
    ignore: Iterable[Any] = (),
    rules: Registry | None = None,
    leaf_modules: Iterable[str] = (),
    verbose: bool | None = None,
) -> tuple[nn.Module, list[StepRecord]]:
    """Prune ``model`` in ``steps`` rounds, calling ``train(model)`` then ``evaluate(model)`` after each.

    ``train`` fine-tunes the model it is given in place (its return value is ignored); ``evaluate``
    returns a number where higher is better (negate a loss). The budget is ``target`` (fraction of the
    prunable channels removed in the end) or ``macs`` (fraction of the dense MACs kept in the end).
    ``floor`` stops early (see the module docstring). ``verbose=None`` shows a progress bar only when
    stderr is a terminal; ``False`` silences it, ``True`` forces it.

    ``allocation`` decides how a ``macs`` step spreads over the groups: ``"uniform"`` removes the same
    fraction of every group (the smallest that meets the step's MACs mark, :func:`ratio_for_macs`);
    ``"global"`` lets the groups compete (``graphprune.plan(model, macs=...)``, see :mod:`graphprune.budget`),
    and lands near each mark within the planner's tolerance rather than strictly under it.

    Returns the final (or last accepted) model and one :class:`StepRecord` per round, round 0 first.
    ``model`` itself is never modified.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    _check_budget(steps, target, macs)
    if allocation not in ("uniform", "global") or (allocation == "global" and macs is None):
        raise InputError(f"allocation must be 'uniform', or 'global' with a macs= budget; got {allocation!r}")
    # Each round works on a copy, so ignored modules are tracked by name, not by object.
    name_of = {id(m): name for name, m in model.named_modules()}
    ignore = tuple(name_of.get(id(i), i) if isinstance(i, nn.Module) else i for i in ignore)
    leaf_modules = tuple(leaf_modules)
    inputs = example_inputs if example_inputs is not None else default_example_inputs(model)
    structure = dict(ignore=ignore, rules=rules, leaf_modules=leaf_modules)

    start = time.perf_counter()
    dense_channels = prunable_channels(model, example_inputs=inputs, **structure)
    dense_macs = count_macs(model, inputs)
    metric = _metric(evaluate, model)
    if floor is not None and metric < floor:
        raise InputError(f"the dense model scores {metric:g}, below floor={floor:g}: no pruned model can be accepted",
                         hint="lower the floor, or evaluate a better trained model")
    history = [StepRecord(0, 0.0, 0.0, dense_channels, dense_macs, count_params(model), None, metric, True,
                          time.perf_counter() - start)]
    accepted, current = model, model
    bar = tqdm(range(1, steps + 1), desc="graphprune.iterative", unit="step",
               disable=None if verbose is None else not verbose)
    for step in bar:
        start = time.perf_counter()
        channels = prunable_channels(current, example_inputs=inputs, **structure)
        if target is not None:
            goal = dense_channels * (1 - target) ** (step / steps)
            the_plan = plan(current, min(max(1 - goal / channels, 0.0), 0.99) if channels else 0.0,
                            example_inputs=inputs, importance=importance, **structure)
        else:
            fraction = min(1.0, macs ** (step / steps) * dense_macs / count_macs(current, inputs))
            if allocation == "global":
                the_plan = plan(current, macs=fraction, example_inputs=inputs, importance=importance, **structure)
            else:
                ratio = ratio_for_macs(current, fraction, example_inputs=inputs, importance=importance, **structure)
                the_plan = plan(current, ratio, example_inputs=inputs, importance=importance, **structure)
        current = apply(current, the_plan, example_inputs=inputs, rules=rules)
        pruned_metric = _metric(evaluate, current)
        train(current)
        metric = _metric(evaluate, current)
        ok = floor is None or metric >= floor
        left = prunable_channels(current, example_inputs=inputs, **structure)
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
