"""Proof of a rewrite: the shrunk model computes what the original does on the kept channels.

:func:`mask` zeroes, in a copy of the original, every slice that touches a
removed channel: the producing filters and biases, the per-channel norm
parameters, and the consumers' input slices. Zeroing the consumers too matters
for activations with f(0) != 0 (sigmoid, hardsigmoid): a channel whose producer
is zeroed would still feed f(0) into the next layer, which the shrunk model
(rightly) no longer does. The masked model is then the original network
restricted to the kept channels, and :func:`verify` measures how far the
shrunk model is from it.

That proof holds only for exact rewrites. Removing channels that a LayerNorm
normalises over changes its statistics, so such a plan is approximate
(``plan.inexact`` says where); :func:`verdict` reports "not exact: ..." with the
measured difference rather than presenting it as round-off.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..base.checks import check_inputs, check_model
from ..base.errors import InputError
from ..base.running import call_model, device_of, eval_mode, named_tensors
from ..coupling import Role
from ..planning import Plan
from .apply import check_plan_fits
from .difference import relative_difference

__all__ = ["mask", "verify", "verdict", "Verdict"]


def mask(model: nn.Module, plan: Plan) -> nn.Module:
    """A copy of ``model`` with every removed channel zeroed (same shapes, same class)."""
    check_plan_fits(model, plan)
    masked = copy.deepcopy(model)
    named = named_tensors(masked)
    with torch.no_grad():
        for edit in plan.tensors.values():
            tensor = named[edit.name]
            for dim, keep in edit.keep.items():
                if edit.roles[dim] not in Role.MASKED:
                    continue
                removed = torch.ones(tensor.shape[dim], dtype=torch.bool, device=tensor.device)
                removed[torch.as_tensor(keep, device=tensor.device)] = False
                index = [slice(None)] * tensor.ndim
                index[dim] = removed
                tensor[tuple(index)] = 0
    return masked


def verify(model: nn.Module, plan: Plan, shrunk: nn.Module, inputs: Any = None) -> float:
    """Maximum relative output difference between the masked original and the shrunk model (eval mode).

    ``inputs`` defaults to random tensors of the plan's example-input shapes.
    """
    check_model(model)
    check_model(shrunk, "shrunk")
    check_plan_fits(model, plan)
    if inputs is not None:
        check_inputs(inputs)
    else:
        inputs = plan.example_inputs(device_of(model), random=True)
    if inputs is None:
        raise InputError("verify needs inputs: the plan does not record every model input",
                         hint="pass inputs=(tensor, ...) or a dict of keyword tensors")
    masked = mask(model, plan)
    with torch.no_grad(), eval_mode(masked, shrunk):
        return relative_difference(call_model(masked, inputs), call_model(shrunk, inputs))


@dataclass(frozen=True)
class Verdict:
    """Whether a rewrite is exact by construction, and the measured difference.

    >>> str(Verdict(True, 3e-8, ()))
    'exact (max relative difference 3.0e-08)'
    >>> str(Verdict(False, 0.12, ("LayerNorm normalises over removed channels at ln",)))
    'not exact: LayerNorm normalises over removed channels at ln (max relative difference 1.2e-01)'
    """

    exact: bool
    difference: float
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        measured = f"max relative difference {self.difference:.1e}"
        if self.exact:
            return f"exact ({measured})"
        shown = "; ".join(self.reasons[:3]) + ("; ..." if len(self.reasons) > 3 else "")
        return f"not exact: {shown} ({measured})"


def verdict(model: nn.Module, plan: Plan, shrunk: nn.Module, inputs: Any = None) -> Verdict:
    """:func:`verify`, labelled: exact plans report their round-off, approximate ones say why they differ."""
    return Verdict(plan.exact, verify(model, plan, shrunk, inputs), tuple(plan.inexact))
