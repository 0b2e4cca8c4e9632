"""The public verbs: analyze, plan, apply, shrink, verify.

>>> import torch, torchvision, graphprune
>>> model = torchvision.models.resnet18()
>>> small = graphprune.shrink(model, 0.5)
>>> small.layer1[0].conv1
Conv2d(32, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
>>> small(torch.randn(1, 3, 224, 224)).shape
torch.Size([1, 1000])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .budget import Budget

from .couple import Coupling, couple
from .equivalence import verify
from .errors import InputError
from .importance import Importance, bind_importance, resolve_importance
from .latency_table import Hardware
from .planning import Plan, make_plan
from .registry import Registry, default_registry
from .rewrite import apply_plan
from .targets import plan_with_budget
from .trace import trace

__all__ = ["analyze", "plan", "apply", "shrink", "verify"]


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return model


def analyze(
    model: nn.Module,
    *,
    example_inputs: Any = None,
    ignore: Iterable[str | nn.Module] = (),
    rules: Registry | None = None,
    leaf_modules: Iterable[str] = (),
) -> Coupling:
    """Trace ``model`` and build its dependency graph: the coupled channel groups."""
    _check_model(model)
    traced = trace(model, example_inputs, leaf_modules=leaf_modules)
    coupling = couple(traced.gm, rules or default_registry(), ignore=ignore, model=model)
    coupling.example_args, coupling.leaf_modules = traced.args, traced.leaf_modules
    return coupling


def _budget(ratio: float | None, macs: float | None, params: float | None, latency: float | None,
            overrides: Mapping[str, float] | None, max_ratio: float | None, round_to: int | str | None) -> Budget:
    return Budget(ratio=ratio, macs=macs, params=params, latency=latency, overrides=dict(overrides or {}),
                  max_ratio=max_ratio, round_to=round_to)


def plan(
    model: nn.Module,
    ratio: float | None = None,
    *,
    macs: float | None = None,
    params: float | None = None,
    latency: float | None = None,
    overrides: Mapping[str, float] | None = None,
    max_ratio: float | None = None,
    round_to: int | str | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    hardware: Hardware | None = None,
    example_inputs: Any = None,
    importance: str | Importance = "l2",
    ignore: Iterable[str | nn.Module] = (),
    rules: Registry | None = None,
    leaf_modules: Iterable[str] = (),
) -> Plan:
    """Decide which channels to remove.

    Give one target: ``ratio`` removes ``round(ratio * size)`` of every prunable group;
    ``macs``, ``params`` or ``latency`` (fractions of the dense model) rank channels globally
    and keep the most important ones that fit (see :mod:`graphprune.budget`). ``overrides``
    ({fnmatch pattern on producer module names: ratio}), ``max_ratio`` and ``round_to`` (an
    int, or ``"auto"`` for ``device``/``dtype``) scope the decision. Latency is measured on
    ``device`` in ``dtype`` (or as ``hardware`` says: threads, cache file).

    The model's inputs and output shapes never change; every group keeps at least one channel.
    ``ignore`` lists modules (names or objects) whose tensors keep their shape.
    """
    _check_model(model)
    budget = _budget(ratio, macs, params, latency, overrides, max_ratio, round_to)
    name, scorer = resolve_importance(importance)
    coupling = analyze(model, example_inputs=example_inputs, ignore=ignore, rules=rules, leaf_modules=leaf_modules)
    scorer = bind_importance(scorer, coupling)
    if budget.kind == "ratio" and not budget.overrides and budget.max_ratio is None and budget.round_to is None:  # the plain uniform ratio: today's planner, unchanged
        return make_plan(coupling, budget.ratio, scorer, importance_name=name, model=model,
                         example_args=coupling.example_args, leaf_modules=coupling.leaf_modules)
    hw = hardware or Hardware(device=str(device), dtype=str(dtype).removeprefix("torch."))
    return plan_with_budget(model, coupling, scorer, budget, importance_name=name, hardware=hw, rules=rules)


def apply(model: nn.Module, plan: Plan, *, example_inputs: Any = None, inplace: bool = False,
          rules: Registry | None = None) -> nn.Module:
    """Build the shrunk model that ``plan`` describes. The original is untouched unless ``inplace``.

    The result keeps the model's class when no graph constant had to change; otherwise it is
    a ``torch.fx.GraphModule`` with the same submodules.
    """
    _check_model(model)
    return apply_plan(model, plan, example_inputs=example_inputs, inplace=inplace, rules=rules)


def shrink(
    model: nn.Module,
    ratio: float | None = None,
    *,
    example_inputs: Any = None,
    importance: str | Importance = "l2",
    ignore: Iterable[str | nn.Module] = (),
    inplace: bool = False,
    rules: Registry | None = None,
    leaf_modules: Iterable[str] = (),
    **budget: Any,
) -> nn.Module:
    """Prune ``model`` to a target and return the smaller model: ``shrink(model, 0.5)`` removes half of
    every group's channels; ``shrink(model, macs=0.5)``, ``params=0.4`` or ``latency=0.5`` meet a
    budget. The budget keywords are :func:`plan`'s (``overrides``, ``max_ratio``, ``round_to``,
    ``device``, ``dtype``, ``hardware``).

    Equivalent to ``apply(model, plan(model, ratio, ...))``.
    """
    unknown = set(budget) - _BUDGET_KEYWORDS
    if unknown:
        raise InputError(f"shrink() got unexpected keyword arguments {sorted(unknown)}",
                         hint=f"budget keywords are {sorted(_BUDGET_KEYWORDS)}")
    the_plan = plan(model, ratio, example_inputs=example_inputs, importance=importance, ignore=ignore,
                    rules=rules, leaf_modules=leaf_modules, **budget)
    return apply(model, the_plan, example_inputs=example_inputs, inplace=inplace, rules=rules)


_BUDGET_KEYWORDS = frozenset({"macs", "params", "latency", "overrides", "max_ratio", "round_to", "device", "dtype", "hardware"})
