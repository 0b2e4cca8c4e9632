"""The public verbs: couple, plan, apply, shrink, and shrinking one submodule of a larger model.

Each verb takes the model, what it needs, and records for the rest: a :class:`~graphprune.Budget`
(or a plain ratio), a :class:`~graphprune.Scope` and a :class:`~graphprune.Hardware`. The verbs
compose: :func:`plan` takes the :class:`~graphprune.Coupling` that :func:`couple` returns, and
:func:`apply` the :class:`~graphprune.Plan` that :func:`plan` returns.

>>> import torch, torchvision, graphprune
>>> model = torchvision.models.resnet18()
>>> small = graphprune.shrink(model, 0.5)
>>> small.layer1[0].conv1
Conv2d(32, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
>>> small(torch.randn(1, 3, 224, 224)).shape
torch.Size([1, 1000])
>>> coupling = graphprune.couple(model, example_inputs=torch.randn(1, 3, 64, 64))
>>> plan = graphprune.plan(coupling, graphprune.Budget(macs=0.5))
>>> round(plan.budget.measured_fraction, 2)
0.5
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from typing import Any

import torch
from torch import nn

from .base.checks import check_flag, check_model
from .base.collector import collector_paused
from .base.errors import InexactWarning, InputError, TraceError
from .base.running import call_model, eval_mode
from .capture import capture, source_lines
from .coupling import Coupling, Scope, as_scope
from .coupling import couple as couple_captured
from .measure import Hardware, as_hardware
from .planning import Budget, Plan, as_budget, measurement_for, plan_coupling
from .planning.importance import Importance
from .rewrite import apply_plan

__all__ = ["couple", "plan", "apply", "shrink", "shrink_submodule", "capture_inputs"]


@collector_paused()
def couple(model: nn.Module, *, example_inputs: Any = None, scope: Scope | None = None) -> Coupling:
    """Capture ``model`` on ``example_inputs`` (default: a 224x224 image) and build its dependency graph: the
    groups of channels that must be removed together. The result is read-only and carries the model, the
    inputs and the scope, so :func:`plan` can take it instead of the model."""
    check_model(model)
    scope = as_scope(scope)
    with source_lines():
        captured = capture(model, example_inputs, leaf_modules=scope.leaf_modules, method=scope.capture,
                           strict=scope.strict)
        return couple_captured(captured, scope)


def plan(model: nn.Module | Coupling, budget: float | Budget, *, example_inputs: Any = None,
         importance: str | Importance = "l2", scope: Scope | None = None, hardware: Hardware | None = None) -> Plan:
    """Decide which channels to remove to meet ``budget``: a ratio (``0.5`` removes half of every group's
    channels) or a :class:`~graphprune.Budget` (``Budget(macs=0.5)``, ``Budget(latency=0.5)``...).

    ``model`` is the model, or the :class:`~graphprune.Coupling` of one (then give no ``example_inputs`` or
    ``scope``: it has them). ``importance`` scores channels (``"l2"``, ``"l1"``, ``"bn_scale"``, ``"fpgm"``,
    ``"random"``, a :mod:`graphprune.importance` criterion or a callable). ``hardware`` is where a latency
    budget is measured and what ``round_to="auto"`` rounds for (default: the CPU, float32, one thread).

    The model's inputs and output shapes never change; every group and every layer keeps at least one channel.
    Channels normalised together by a LayerNorm can be removed, but not exactly (the statistics change): the
    plan says so (``plan.inexact``) with an :class:`~graphprune.InexactWarning`, and ``Budget(exact_only=True)``
    keeps such groups whole.
    """
    if isinstance(model, Coupling):
        if example_inputs is not None or scope is not None:
            raise InputError("a Coupling carries its example inputs and scope: give them to couple(), not plan()")
        coupling = model
    else:
        coupling = couple(model, example_inputs=example_inputs, scope=scope)
    budget, hardware = as_budget(budget), as_hardware(hardware)
    measure = measurement_for(coupling, budget, hardware,
                              collector_paused()(lambda candidate: apply_plan(coupling.model, candidate,
                                                                              scope=coupling.scope)))
    with source_lines(), _paused_unless_measured(budget):
        result = plan_coupling(coupling, budget, importance, hardware=hardware, measure=measure)
    if result.inexact:
        warnings.warn(
            f"this plan is approximate: {len(result.inexact)} normalisation(s) run over removed channels "
            f"({result.inexact[0]}{', ...' if len(result.inexact) > 1 else ''}); see plan.inexact, "
            "or use Budget(..., exact_only=True) to keep those channels",
            InexactWarning, stacklevel=2,
        )
    return result


@collector_paused()
def apply(model: nn.Module, plan: Plan, *, example_inputs: Any = None, scope: Scope | None = None,
          inplace: bool = False) -> nn.Module:
    """Build the shrunk model that ``plan`` describes. The original is untouched unless ``inplace``.

    The result keeps the model's class when no graph constant had to change; otherwise it is a
    ``torch.fx.GraphModule`` with the same submodules. ``scope.rules`` supplies resizers of custom
    modules. The result records the plans that made it (:func:`graphprune.plans_of`), which is how
    :func:`graphprune.save` finds them.
    """
    with source_lines():
        return apply_plan(model, plan, example_inputs=example_inputs, scope=scope, inplace=inplace)


def shrink(model: nn.Module, budget: float | Budget, *, example_inputs: Any = None, importance: str | Importance = "l2",
           scope: Scope | None = None, hardware: Hardware | None = None, inplace: bool = False) -> nn.Module:
    """Prune ``model`` to ``budget`` and return the smaller model: ``shrink(model, 0.5)`` removes half of every
    group's channels; ``shrink(model, Budget(macs=0.5))`` keeps half the MACs. ``apply(model, plan(model, ...))``
    in one step; the original is untouched unless ``inplace``."""
    check_flag(inplace, "inplace")  # before the planning work, not after it
    with _paused_unless_measured(budget):
        coupling = couple(model, example_inputs=example_inputs, scope=scope)
        the_plan = plan(coupling, budget, importance=importance, hardware=hardware)
        # Traced once: the rewrite edits a copy of the graph the plan was made on.
        with source_lines(), collector_paused():
            try:
                return apply_plan(model, the_plan, example_inputs=coupling.example_args, scope=scope,
                                  inplace=inplace, captured=coupling.gm)
            except TraceError:  # the traced graph was not the model: under "auto", export it instead
                scope = as_scope(scope)
                if scope.capture != "auto" or the_plan.capture != "fx" or scope.leaf_modules:
                    raise
    return shrink(model, budget, example_inputs=example_inputs, importance=importance,
                  scope=dataclasses.replace(scope, capture="export"), hardware=hardware, inplace=inplace)


def _paused_unless_measured(budget: float | Budget) -> contextlib.AbstractContextManager[None]:
    """The collector paused for the whole of a ratio's planning; a measured budget realises (and times) one
    candidate after another, so only each candidate's rewrite pauses it."""
    return collector_paused() if as_budget(budget).kind == "ratio" else contextlib.nullcontext()


def capture_inputs(model: nn.Module, name: str, model_inputs: Any) -> tuple[Any, ...] | dict[str, Any]:
    """The arguments submodule ``name`` receives when ``model`` runs on ``model_inputs`` (eval mode, no grad).

    The first call is captured; keyword arguments come back as a dict, positional ones as a tuple.
    """
    check_model(model)
    submodule = _get_submodule(model, name)
    seen: list[Any] = []

    def hook(_module, args, kwargs):
        if not seen:
            seen.append(dict(kwargs) if kwargs and not args else tuple(args))

    handle = submodule.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad(), eval_mode(model):
            call_model(model, model_inputs)
    finally:
        handle.remove()
    if not seen:
        raise InputError(f"{type(model).__name__} never called {name!r} on these inputs")
    return seen[0]


def _get_submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise InputError(f"{type(model).__name__} has no submodule {name!r}") from exc


def shrink_submodule(model: nn.Module, name: str, budget: float | Budget, *, example_inputs: Any = None,
                     model_inputs: Any = None, importance: str | Importance = "l2", scope: Scope | None = None,
                     hardware: Hardware | None = None, inplace: bool = False) -> nn.Module:
    """Shrink one traceable submodule of a model that cannot be traced as a whole (a detector).

    The submodule's inputs and output shapes never change, so the parent keeps working around the smaller
    submodule. Give the submodule's own ``example_inputs``, or the parent's ``model_inputs``, from which the
    submodule's are captured with a forward hook. ``budget``, ``importance``, ``scope`` (with names relative to
    the submodule) and ``hardware`` are :func:`shrink`'s. Returns the model (a copy unless ``inplace``) holding
    the smaller submodule.

    >>> import torch, torchvision, graphprune
    >>> det = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
    ...     weights=None, weights_backbone=None, min_size=64, max_size=64).eval()
    >>> images = [torch.rand(3, 64, 64)]
    >>> small = graphprune.shrink_submodule(det, "backbone", 0.5, model_inputs=(images,))
    >>> graphprune.count_params(small.backbone) < graphprune.count_params(det.backbone) / 2
    True
    >>> sorted(small(images)[0])
    ['boxes', 'labels', 'scores']
    """
    check_model(model)
    check_flag(inplace, "inplace")
    if (example_inputs is None) == (model_inputs is None):
        raise InputError("give exactly one of example_inputs (the submodule's inputs) and model_inputs (the model's)")
    _get_submodule(model, name)
    if example_inputs is None:
        example_inputs = capture_inputs(model, name, model_inputs)
    scope = as_scope(scope).by_name(model.get_submodule(name))  # names, so the scope fits the copy too
    target = model if inplace else copy.deepcopy(model)
    smaller = shrink(target.get_submodule(name), budget, example_inputs=example_inputs, importance=importance,
                     scope=scope, hardware=hardware, inplace=True)
    if name:
        parent_name, _, attr = name.rpartition(".")
        setattr(target.get_submodule(parent_name), attr, smaller)
    else:
        target = smaller
    return target
