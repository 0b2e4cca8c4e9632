"""graphprune.iterative: compounded budgets, the train/evaluate protocol, early stop, MACs budgets, progress bars."""

import pytest
import torch
from torch import nn

import graphprune
from graphprune.workflows.iterative import prunable_channels

from ..helpers import fingerprint


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    )


X = torch.randn(1, 3, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_compounded_steps_reach_the_target_and_call_train_then_evaluate():
    model = _net()
    before = fingerprint(model)
    calls = []

    def train(m):
        calls.append(("train", prunable_channels(m, example_inputs=X)))

    def evaluate(m):
        calls.append(("evaluate", prunable_channels(m, example_inputs=X)))
        return 1.0

    small, history = graphprune.iterative(model, 0.875, steps=3, train=train, evaluate=evaluate,
                                          example_inputs=X, verbose=False)
    # Each step keeps half of what is left: 64 -> 32 -> 16 -> 8 channels.
    assert [r.channels for r in history] == [64, 32, 16, 8]
    assert [r.removed for r in history] == [0.0, 0.5, 0.75, 0.875]
    assert [round(r.ratio, 6) for r in history] == [0.0, 0.5, 0.5, 0.5]
    assert prunable_channels(small, example_inputs=X) == 8 and small[0].out_channels == 4
    # Round 0 evaluates the dense model; each round evaluates after pruning, trains, evaluates again.
    assert calls == [("evaluate", 64)] + [c for n in (32, 16, 8) for c in (("evaluate", n), ("train", n), ("evaluate", n))]
    assert all(r.accepted for r in history)
    assert history[-1].macs < history[0].macs and history[-1].params < history[0].params
    assert history[-1].macs == graphprune.count_macs(small, X) and history[-1].params == graphprune.count_params(small)
    assert fingerprint(model) == before  # the user's model is never modified


def test_uneven_target_lands_on_the_final_fraction():
    small, history = graphprune.iterative(_net(), 0.7, steps=4, train=lambda m: None, evaluate=lambda m: 0.0,
                                          example_inputs=X, verbose=False)
    removed = [r.removed for r in history]
    assert removed == sorted(removed)
    assert abs(history[-1].removed - 0.7) <= 1 / 32  # one channel per group of rounding, not per step
    for k, r in enumerate(history):
        assert abs(r.channels - 64 * 0.3 ** (k / 4)) <= 1.0


def test_floor_stops_and_returns_the_last_model_that_met_it():
    pruned = []

    def train(m):
        # Fine-tuning changes weights in place; the returned model must be exactly the one trained.
        with torch.no_grad():
            m[0].bias.add_(1.0)

    def evaluate(m):
        n = prunable_channels(m, example_inputs=X)
        pruned.append(m)
        return n / 64  # the metric falls with the size: 1.0, 0.5, 0.25, 0.125

    small, history = graphprune.iterative(_net(), 0.875, steps=3, train=train, evaluate=evaluate, floor=0.3,
                                          example_inputs=X, verbose=False)
    assert [(r.step, r.accepted) for r in history] == [(0, True), (1, True), (2, False)]
    assert history[2].metric == 0.25 and history[1].metric == 0.5
    assert small is pruned[-3]  # the model of round 1, after its training
    assert prunable_channels(small, example_inputs=X) == 32


def test_first_round_below_the_floor_returns_a_copy_of_the_dense_model():
    model = _net()
    small, history = graphprune.iterative(model, 0.5, steps=2, train=lambda m: None,
                                          evaluate=lambda m: float(prunable_channels(m, example_inputs=X) == 64),
                                          floor=0.5, example_inputs=X, verbose=False)
    assert [r.accepted for r in history] == [True, False]
    assert small is not model and fingerprint(small) == fingerprint(model)


def test_ignored_modules_stay_whole_in_every_round():
    model = _net()
    small, _ = graphprune.iterative(model, 0.5, steps=2, scope=graphprune.Scope(ignore=[model[4]]),
                                    train=lambda m: None, evaluate=lambda m: 1.0, example_inputs=X, verbose=False)
    assert small[3].out_channels == 32 and small[0].out_channels < 32


def test_dense_model_below_the_floor_is_refused():
    with pytest.raises(graphprune.InputError, match="below floor"):
        graphprune.iterative(_net(), 0.5, steps=2, train=lambda m: None, evaluate=lambda m: 0.1, floor=0.5,
                             example_inputs=X, verbose=False)


@pytest.mark.parametrize("budget, steps, message", [
    (lambda: 0.5, 0, "steps must be a positive integer"),
    (lambda: graphprune.Budget(), 2, "exactly one of ratio, macs, params, latency"),
    (lambda: graphprune.Budget(ratio=0.5, macs=0.5), 2, "exactly one of ratio, macs, params, latency"),
    (lambda: 1.0, 2, r"ratio must be a fraction in \[0, 1\), got 1.0"),
    (lambda: graphprune.Budget(macs=0.0), 2, r"macs must be a fraction in \(0, 1\], got 0.0"),
    (lambda: "0.5", 2, "the budget is a ratio"),
    (lambda: {"macs": 0.5}, 2, "graphprune.Budget"),
], ids=["steps", "no-target", "two-targets", "ratio-1", "macs-0", "string", "dict"])
def test_bad_budgets_are_refused(budget, steps, message):
    with pytest.raises(graphprune.InputError, match=message):
        graphprune.iterative(_net(), budget(), steps=steps, train=lambda m: None, evaluate=lambda m: 1.0,
                             example_inputs=X, verbose=False)


def test_evaluate_must_return_a_number():
    with pytest.raises(graphprune.InputError, match="must return a number"):
        graphprune.iterative(_net(), 0.5, steps=1, train=lambda m: None, evaluate=lambda m: "good",
                             example_inputs=X, verbose=False)


def test_macs_budget_compounds_to_the_requested_fraction():
    model = _net()
    dense = graphprune.count_macs(model, X)
    # The old iterative(macs=...) default: every group at one ratio, the smallest that meets each round's mark.
    small, history = graphprune.iterative(model, graphprune.Budget(macs=0.25, allocation="uniform"), steps=2,
                                          train=lambda m: None, evaluate=lambda m: 1.0, example_inputs=X, verbose=False)
    assert graphprune.count_macs(small, X) == history[-1].macs
    assert history[1].macs <= 0.5 * dense and history[1].macs > 0.4 * dense
    assert history[2].macs <= 0.25 * dense and history[2].macs > 0.2 * dense


def test_global_allocation_uses_the_planners_macs_budget():
    model = _net()
    dense = graphprune.count_macs(model, X)
    small, history = graphprune.iterative(model, graphprune.Budget(macs=0.25), steps=2, train=lambda m: None,
                                          evaluate=lambda m: 1.0, example_inputs=X, verbose=False)
    # The planner lands near the mark (its tolerance), not strictly under it; on a net this small one channel
    # of a 32-channel layer moves the MACs by ~3%.
    assert history[1].macs == pytest.approx(0.5 * dense, rel=0.05)
    assert history[2].macs == pytest.approx(0.25 * dense, rel=0.05)
    assert history[2].macs == graphprune.count_macs(small, X)
    with pytest.raises(graphprune.InputError, match="allocation"):  # a ratio is uniform already
        graphprune.iterative(model, graphprune.Budget(0.5, allocation="uniform"), steps=2, train=lambda m: None,
                             evaluate=lambda m: 1.0, example_inputs=X, verbose=False)


def test_uniform_macs_budget_is_the_smallest_ratio_that_meets_it():
    model = _net()
    dense = graphprune.count_macs(model, X)
    plan = graphprune.plan(model, graphprune.Budget(macs=0.4, allocation="uniform"), example_inputs=X)
    removed = {len(g.removed) for g in plan.groups if g.removed}
    assert len(removed) == 1  # every group at one ratio
    ratio = removed.pop() / 32

    def macs(r):
        return graphprune.count_macs(graphprune.shrink(model, r, example_inputs=X), X)

    assert macs(ratio) == graphprune.count_macs(graphprune.apply(model, plan), X) == plan.budget.measured
    assert macs(ratio) <= 0.4 * dense < macs(ratio - 1 / 32)  # one channel fewer per group is over budget
    with pytest.raises(graphprune.PlanError, match="cannot be met"):
        graphprune.plan(model, graphprune.Budget(macs=0.001, allocation="uniform"), example_inputs=X)


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys):
    run = dict(budget=0.5, steps=2, train=lambda m: None, evaluate=lambda m: 1.0, example_inputs=X)
    graphprune.iterative(_net(), verbose=True, **run)
    assert "graphprune.iterative" in capsys.readouterr().err
    graphprune.iterative(_net(), verbose=False, **run)
    graphprune.iterative(_net(), **run)  # pytest's captured stderr is not a terminal
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
