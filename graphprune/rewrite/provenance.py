"""Which plans made a shrunk model: the rewrite records them on the model it returns.

The plans travel with the model object itself (an instance attribute, copied by
``copy.deepcopy`` with the model), so :func:`graphprune.save` needs no global
registry and no extra argument. Shrinking a shrunk model appends to the chain:
rebuilding replays every plan in order on a fresh base model.

>>> import torch, graphprune
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
>>> small = graphprune.shrink(net, 0.5, example_inputs=torch.randn(1, 3, 8, 8))
>>> [p.budget.request.ratio for p in plans_of(small)], plans_of(net)
([0.5], [])
"""

from __future__ import annotations

from torch import nn

from ..planning import Plan

__all__ = ["plans_of", "record_plan"]

_ATTR = "_graphprune_plans"


def plans_of(model: nn.Module) -> list[Plan]:
    """The plans that turned a fresh base model into ``model``, oldest first (empty for an unpruned model)."""
    return list(model.__dict__.get(_ATTR, ()))


def record_plan(model: nn.Module, plan: Plan, *, previous: list[Plan]) -> None:
    """Mark ``model`` as the result of ``plan`` applied to a model that had the chain ``previous``."""
    # A plain tuple in __dict__: not a parameter, buffer or submodule, so state_dict, export and
    # TorchScript ignore it; deepcopy keeps it.
    model.__dict__[_ATTR] = (*previous, plan)
