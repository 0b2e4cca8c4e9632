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

from collections.abc import Iterable
from typing import Any

from torch import nn

from .couple import Coupling, couple
from .equivalence import verify
from .errors import InputError
from .importance import Importance, resolve_importance
from .planning import Plan, check_ratio, make_plan
from .provenance import plans_of, record_plan
from .registry import Registry, default_registry
from .rewrite import apply_plan
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


def plan(
    model: nn.Module,
    ratio: float,
    *,
    example_inputs: Any = None,
    importance: str | Importance = "l2",
    ignore: Iterable[str | nn.Module] = (),
    rules: Registry | None = None,
    leaf_modules: Iterable[str] = (),
) -> Plan:
    """Decide which channels to remove: ``round(ratio * size)`` of every prunable group.

    The model's inputs and output shapes never change; every group keeps at least one channel.
    ``ignore`` lists modules (names or objects) whose tensors keep their shape.
    """
    _check_model(model)
    ratio = check_ratio(ratio)
    name, scorer = resolve_importance(importance)
    coupling = analyze(model, example_inputs=example_inputs, ignore=ignore, rules=rules, leaf_modules=leaf_modules)
    return make_plan(
        coupling, ratio, scorer,
        importance_name=name,
        model=model,
        example_args=coupling.example_args,
        leaf_modules=coupling.leaf_modules,
    )


def apply(model: nn.Module, plan: Plan, *, example_inputs: Any = None, inplace: bool = False,
          rules: Registry | None = None) -> nn.Module:
    """Build the shrunk model that ``plan`` describes. The original is untouched unless ``inplace``.

    The result keeps the model's class when no graph constant had to change; otherwise it is
    a ``torch.fx.GraphModule`` with the same submodules. The result records the plans that made it
    (:func:`graphprune.provenance.plans_of`), which is how :func:`graphprune.save` finds them.
    """
    _check_model(model)
    previous = plans_of(model)
    result = apply_plan(model, plan, example_inputs=example_inputs, inplace=inplace, rules=rules)
    record_plan(result, plan, previous=previous)
    return result


def shrink(
    model: nn.Module,
    ratio: float,
    *,
    example_inputs: Any = None,
    importance: str | Importance = "l2",
    ignore: Iterable[str | nn.Module] = (),
    inplace: bool = False,
    rules: Registry | None = None,
    leaf_modules: Iterable[str] = (),
) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable group and return the smaller model.

    Equivalent to ``apply(model, plan(model, ratio, ...))``.
    """
    the_plan = plan(model, ratio, example_inputs=example_inputs, importance=importance, ignore=ignore,
                    rules=rules, leaf_modules=leaf_modules)
    return apply(model, the_plan, example_inputs=example_inputs, inplace=inplace, rules=rules)

