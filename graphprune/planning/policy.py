"""How each kind of budget is planned: one :class:`Policy` record per kind, in one table.

The planner's steps are the same for every kind; what differs is here. A uniform ratio is
decided in one pass, with no cost model and nothing to measure. A MACs or parameter budget is
predicted exactly enough to refuse an impossible target up front, then counted. A latency
budget is predicted from a table of layer timings and checked by timing whole models, which is
noisy: a plan that meets the target is timed again before the rounds stop, a plan slower than
the dense model is never returned, and a target missed by more than twice the tolerance is
refused.

>>> POLICIES["latency"].tolerance, POLICIES["macs"].tradeoff, POLICIES["ratio"].rounds
(0.05, 0.0, 0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..coupling import Coupling
from ..measure import Hardware
from ..measure.latency_table import LatencyTable
from .costs import Term, mac_terms, param_terms
from .latency import latency_terms
from .measurement import Measurement, Realize, counted_macs, counted_params, timed

__all__ = ["Prediction", "Policy", "POLICIES"]


@dataclass(frozen=True)
class Prediction:
    """The cost step's result: terms (a cost per tensor, from its kept widths) plus a constant, and how many
    layer timings the latency table had to make."""

    terms: list[Term]
    constant: float = 0.0
    table_measurements: int | None = None


def _params(coupling: Coupling, hardware: Hardware, round_to: int, dense: float) -> Prediction:
    terms, constant, _ = param_terms(coupling)
    return Prediction(terms, constant)


def _macs(coupling: Coupling, hardware: Hardware, round_to: int, dense: float) -> Prediction:
    terms, constant, _ = mac_terms(coupling)
    return Prediction(terms, constant)


def _latency(coupling: Coupling, hardware: Hardware, round_to: int, dense: float) -> Prediction:
    table = LatencyTable(hardware)
    return Prediction(latency_terms(coupling, table, round_to, dense), 0.0, table.measured)


@dataclass(frozen=True)
class Policy:
    """How one kind of budget is planned.

    ``predict`` builds the cost step's :class:`Prediction` (None: a uniform ratio, decided without one);
    ``measurement`` how a plan's real figure is obtained. ``tolerance`` is how near the target a measured
    plan must land; ``tradeoff`` the default of :attr:`graphprune.Budget.tradeoff`; ``rounds`` how many
    solve-build-measure-correct rounds may run; ``round_to`` the default width multiple. ``timed`` marks a
    figure measured by timing, which is noisy and predicted only roughly (see the module docstring).
    """

    kind: str
    predict: Callable[[Coupling, Hardware, int, float], Prediction] | None = None
    measurement: Callable[[Coupling, Hardware, Realize], Measurement] | None = None
    tolerance: float = 0.0
    tradeoff: float = 0.0
    rounds: int = 0
    round_to: int | str | None = None
    timed: bool = False


POLICIES: dict[str, Policy] = {
    "ratio": Policy("ratio"),
    "macs": Policy("macs", _macs, counted_macs, tolerance=0.01, rounds=4),
    "params": Policy("params", _params, counted_params, tolerance=0.01, rounds=4),
    # A global importance ranking ignores where the time goes: on an H200 (bf16, batch 128) it emptied resnet50
    # to 1% of its MACs to reach half its latency. The balanced knapsack departs from uniform pruning only where
    # latency is not proportional to MACs; off-grid widths can run slower than wider aligned ones, so it rounds.
    # Each round times the model, and a poor prediction (per-call overhead, shared machines) needs more of them.
    "latency": Policy("latency", _latency, timed, tolerance=0.05, tradeoff=1.0, rounds=6, round_to="auto", timed=True),
}
