"""Stage 3, planning: which channels to remove under a :class:`Budget`, as a serialisable :class:`Plan`.

:func:`plan_coupling` runs the stage's named steps (score, scope, cost, solve, build, measure,
correct; see :mod:`.planner`), with per-kind policy in one table (:mod:`.policy`). The measure step
is passed in (:class:`Measurement`), so this stage never imports the rewriter. Imports
:mod:`graphprune.base`, :mod:`graphprune.capture`, :mod:`graphprune.coupling` and
:mod:`graphprune.measure`.
"""

from . import importance
from .budget import Budget, as_budget, resolve_round_to
from .measurement import Measurement
from .plan import GraphEdit, GroupPlan, InputSpec, Member, Plan, PlanBudget, TensorEdit, model_signature
from .planner import measurement_for, plan_coupling

__all__ = ["Budget", "as_budget", "resolve_round_to", "Plan", "PlanBudget", "GroupPlan", "Member", "TensorEdit",
           "GraphEdit", "InputSpec", "model_signature", "Measurement", "plan_coupling", "measurement_for", "importance"]
