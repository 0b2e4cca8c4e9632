"""The measure step: a candidate plan's real figure, counted or timed on the model it builds.

The planner predicts costs; a :class:`Measurement` checks them. It is given to the planner as a
function of a plan, built from a ``realize`` function (plan -> shrunk model) that the caller
provides: the planner never imports the rewriter, and a test can measure plans any way it likes.

>>> import torch
>>> m = Measurement(dense=10.0, figure=lambda model: 4.0, realize=lambda plan: torch.nn.Identity())
>>> m("a plan"), m.fraction(4.0)
(4.0, 0.4)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..coupling import Coupling
from ..measure import Hardware, count_macs, count_params

__all__ = ["Measurement", "Realize", "counted_params", "counted_macs", "timed"]

Realize = Callable[[Any], nn.Module]  # a Plan -> the shrunk model it describes


@dataclass(frozen=True)
class Measurement:
    """The dense model's figure, and a plan's: ``figure(realize(plan))``."""

    dense: float
    figure: Callable[[nn.Module], float]
    realize: Realize

    def __call__(self, plan: Any) -> float:
        return self.figure(self.realize(plan))

    def fraction(self, value: float) -> float:
        return value / self.dense if self.dense else 1.0


def counted_params(coupling: Coupling, hardware: Hardware, realize: Realize) -> Measurement:
    """Parameters, counted (each shared tensor once)."""
    return Measurement(float(count_params(coupling.model)), lambda m: float(count_params(m)), realize)


def counted_macs(coupling: Coupling, hardware: Hardware, realize: Realize) -> Measurement:
    """MACs of one forward pass on the example inputs, counted by ``torch.utils.flop_counter``."""
    args = coupling.example_args
    return Measurement(float(count_macs(coupling.model, args)), lambda m: float(count_macs(m, args)), realize)


def timed(coupling: Coupling, hardware: Hardware, realize: Realize) -> Measurement:
    """Seconds per forward pass on ``hardware``, each candidate timed in pairs with the dense model.

    The dense model is prepared once (compiled or captured, however often it is timed) and its figure
    is the faster of two timings, since the latency table is scaled to it and one slow timing must not
    set it. A candidate is timed alternately with the dense model, twice: on a shared machine the load
    drifts between measurements, and a fraction of a fresh dense time is what the target is a fraction of.
    """
    args = coupling.example_args
    dense_run = hardware.runner(coupling.model, args)
    dense = min(hardware.seconds(dense_run, hardware.model_min_run_time) for _ in range(2))

    def seconds(shrunk: nn.Module) -> float:
        shrunk_run = hardware.runner(shrunk, args)
        pairs = [(hardware.seconds(dense_run, hardware.model_min_run_time),
                  hardware.seconds(shrunk_run, hardware.model_min_run_time)) for _ in range(2)]
        return dense * min(s for _, s in pairs) / min(d for d, _ in pairs)

    return Measurement(dense, seconds, realize)
