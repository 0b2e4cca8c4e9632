"""graphprune: structured channel pruning for PyTorch, proven equivalent.

A compiler in four stages, one subpackage each, with the ``torch.fx`` graph as its IR:

1. :mod:`graphprune.capture`: the model's graph, with shapes on every node;
2. :mod:`graphprune.coupling`: the groups of channels that must be removed together (:func:`couple`);
3. :mod:`graphprune.planning`: which channels to remove under a :class:`Budget`, as a :class:`Plan` (:func:`plan`);
4. :mod:`graphprune.rewrite`: the physically smaller model (:func:`apply`), and its proof (:func:`verify`).

:func:`shrink` runs them all. Calls are configured with records: a :class:`Budget` (what to prune to), a
:class:`Scope` (what the coupling sees) and a :class:`Hardware` (where latency is measured).
"""

import sys

from .api import apply, capture_inputs, couple, plan, shrink, shrink_submodule
from .base.errors import (BudgetWarning, GraphPruneError, InexactWarning, InputError, PlanError, RewriteError,
                          RewriteWarning, TraceError, UnsupportedOpError)
from .base.version import __version__
from .coupling import Coupling, Registry, Scope, default_registry
from .measure import Hardware, count_macs, count_params, measure_latency
from .planning import Budget, Plan, PlanBudget, importance
from .report.plots import plot_widths
from .rewrite import Verdict, mask, plans_of, verdict, verify
from .storage import load, save
from .workflows import distributed
from .workflows.distill import distill_step, distillation_loss
from .workflows.iterative import StepRecord, iterative, recalibrate_batchnorm
from .workflows.regularize import BNScaleL1, GroupLasso
from .workflows.sensitivity import sensitivity

# Public under their short names and importable by them too (from graphprune.importance import Taylor), as
# os.path is: the modules themselves live in their layers.
sys.modules[f"{__name__}.importance"] = importance
sys.modules[f"{__name__}.distributed"] = distributed

__all__ = [
    "shrink", "couple", "plan", "apply", "verify", "verdict", "Verdict", "mask", "shrink_submodule", "capture_inputs",
    "Budget", "Scope", "Hardware", "Plan", "PlanBudget", "Coupling", "Registry", "default_registry", "importance",
    "count_params", "count_macs", "measure_latency",
    "save", "load", "plans_of",
    "sensitivity", "plot_widths",
    "iterative", "StepRecord", "recalibrate_batchnorm", "GroupLasso", "BNScaleL1", "distillation_loss", "distill_step",
    "distributed",
    "GraphPruneError", "InputError", "TraceError", "UnsupportedOpError", "PlanError", "RewriteError",
    "InexactWarning", "BudgetWarning", "RewriteWarning", "__version__",
]
