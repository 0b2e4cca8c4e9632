"""graphprune: structured channel pruning for PyTorch, proven equivalent.

Four stages, each usable on its own:

1. :func:`graphprune.trace.trace`: ``torch.fx`` tracing and shape propagation;
2. :func:`analyze`: the dependency graph of coupled channels (rules in a :class:`Registry`);
3. :func:`plan`: which channels to remove, as a serialisable :class:`Plan`;
4. :func:`apply`: the physically smaller model.

:func:`shrink` runs them all; :func:`verify` proves the result.
"""

from .api import analyze, apply, capture_inputs, plan, shrink, shrink_submodule
from .equivalence import mask, verify
from .errors import GraphPruneError, InputError, PlanError, RewriteError, TraceError, UnsupportedOpError
from .planning import Plan
from .provenance import plans_of
from .registry import Registry, default_registry
from .serialize import load, save
from .stats import count_macs, count_params, measure_latency
from .equivalence import Verdict, verdict
from .errors import BudgetWarning, InexactWarning
from .budget import Budget
from .latency_table import Hardware
from .plots import plot_widths
from .sensitivity import sensitivity
from . import importance
from .workflow import StepRecord, iterative, ratio_for_macs, recalibrate_batchnorm
from .regularize import BNScaleL1, GroupLasso
from .distill import distillation_loss, distill_step
from . import distributed

__all__ = [
    "shrink", "plan", "apply", "verify", "analyze", "mask", "shrink_submodule", "capture_inputs",
    "Plan", "Registry", "default_registry",
    "count_params", "count_macs", "measure_latency",
    "save", "load", "plans_of",
    "Budget", "Hardware", "sensitivity", "plot_widths", "importance",
    "iterative", "StepRecord", "ratio_for_macs", "recalibrate_batchnorm", "GroupLasso", "BNScaleL1", "distillation_loss", "distill_step",
    "distributed",
    "GraphPruneError", "InputError", "TraceError", "UnsupportedOpError", "PlanError", "RewriteError",
]
__all__ += ["verdict", "Verdict", "InexactWarning", "BudgetWarning"]

__version__ = "0.1.0"
