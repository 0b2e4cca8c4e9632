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

import copy
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .arguments import check_flag, check_model, check_names, check_registry
from .budget import Budget
from .couple import Coupling, couple
from .equivalence import verify
from .errors import InexactWarning, InputError
from .importance import Importance, bind_importance, resolve_importance
from .latency_table import Hardware
from .planning import Plan, make_plan
from .provenance import plans_of, record_plan
from .registry import Registry, default_registry
from .rewrite import apply_plan
from .targets import plan_with_budget
from .trace import trace

__all__ = ["analyze", "plan", "apply", "shrink", "shrink_submodule", "capture_inputs", "verify"]


def analyze(
    model: nn.Module,
    *,
    example_inputs: Any = None,
    ignore: Iterable[str | nn.Module] = (),
    rules: Registry | None = None,
    leaf_modules: Iterable[str] = (),
) -> Coupling:
    """Trace ``model`` and build its dependency graph: the coupled channel groups."""
    check_model(model)
    ignore = check_names(ignore, "ignore", modules_allowed=True)
    leaf_modules = check_names(leaf_modules, "leaf_modules")
    rules = check_registry(rules)
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
    batch_size: int | None = None,
    runtime: str = "eager",
    hardware: Hardware | None = None,
    budget: Budget | None = None,
    example_inputs: Any = None,
    importance: str | Importance = "l2",
    ignore: Iterable[str | nn.Module] = (),
    rules: Registry | None = None,
    leaf_modules: Iterable[str] = (),
    exact_only: bool = False,
) -> Plan:
    """Decide which channels to remove.

    Give one target: ``ratio`` removes ``round(ratio * size)`` of every prunable group;
    ``macs``, ``params`` or ``latency`` (fractions of the dense model) rank channels globally
    and keep the most important ones that fit (see :mod:`graphprune.budget`). ``overrides``
    ({fnmatch pattern on producer module names: ratio}), ``max_ratio`` and ``round_to`` (an
    int, or ``"auto"`` for ``device``/``dtype``) scope the decision. Latency is measured on
    ``device`` in ``dtype`` at ``batch_size`` (default: the example inputs' batch), in channels-last
    layout for fp16/bf16 on CUDA, in the ``runtime`` the model will be deployed with (``"eager"``,
    ``"compile"`` or ``"cudagraphs"``, see :mod:`graphprune.runtimes`); ``hardware`` (a
    :class:`~graphprune.latency_table.Hardware`) overrides all five and sets threads, layout, grid and cache file. A
    :class:`~graphprune.budget.Budget` may be given whole as ``budget`` instead of ``ratio`` and the
    budget keywords; it also holds the planner's ``tradeoff`` between importance and savings.

    The model's inputs and output shapes never change; every group and every layer keeps at least one channel.
    ``ignore`` lists modules (names or objects) whose tensors keep their shape.
    Channels normalised together by a LayerNorm can be removed, but not exactly (the
    statistics change): ``plan.inexact`` says why, and ``exact_only=True`` keeps such groups whole.
    """
    check_model(model)
    if budget is None:
        budget = _budget(ratio, macs, params, latency, overrides, max_ratio, round_to)
    elif not isinstance(budget, Budget):
        raise InputError(f"budget must be a graphprune.Budget, got {type(budget).__name__}")
    elif any(v is not None for v in (ratio, macs, params, latency, overrides, max_ratio, round_to)):
        raise InputError("give either budget=Budget(...) or ratio and the budget keywords, not both")
    name, scorer = resolve_importance(importance)
    coupling = analyze(model, example_inputs=example_inputs, ignore=ignore, rules=rules, leaf_modules=leaf_modules)
    if exact_only:  # approximate groups keep every channel, whichever planner decides
        for group in coupling.groups:
            if group.inexact:
                group.pinned[:] = True
    scorer = bind_importance(scorer, coupling)
    if budget.kind == "ratio" and not budget.overrides and budget.max_ratio is None and budget.round_to is None:
        result = make_plan(coupling, budget.ratio, scorer, importance_name=name, model=model,
                           example_args=coupling.example_args, leaf_modules=coupling.leaf_modules)
    else:
        hw = hardware or Hardware.deployed(device, dtype, batch_size=batch_size, runtime=runtime)
        result = plan_with_budget(model, coupling, scorer, budget, importance_name=name, hardware=hw, rules=rules)
    if result.inexact:
        warnings.warn(
            f"this plan is approximate: {len(result.inexact)} normalisation(s) run over removed channels "
            f"({result.inexact[0]}{', ...' if len(result.inexact) > 1 else ''}); see plan.inexact, "
            "or pass exact_only=True to keep those channels",
            InexactWarning, stacklevel=2,
        )
    return result


def apply(model: nn.Module, plan: Plan, *, example_inputs: Any = None, inplace: bool = False,
          rules: Registry | None = None) -> nn.Module:
    """Build the shrunk model that ``plan`` describes. The original is untouched unless ``inplace``.

    The result keeps the model's class when no graph constant had to change; otherwise it is
    a ``torch.fx.GraphModule`` with the same submodules. The result records the plans that made it
    (:func:`graphprune.provenance.plans_of`), which is how :func:`graphprune.save` finds them.
    """
    check_model(model)
    if isinstance(plan, str):
        raise InputError("apply takes a Plan, not a string", hint="load a saved plan with graphprune.Plan.from_json(text) or Plan.load(path)")
    previous = plans_of(model)
    result = apply_plan(model, plan, example_inputs=example_inputs, inplace=check_flag(inplace, "inplace"),
                        rules=check_registry(rules))
    record_plan(result, plan, previous=previous)
    return result


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
    exact_only: bool = False,
    **budget: Any,
) -> nn.Module:
    """Prune ``model`` to a target and return the smaller model: ``shrink(model, 0.5)`` removes half of
    every group's channels; ``shrink(model, macs=0.5)``, ``params=0.4`` or ``latency=0.5`` meet a
    budget. The budget keywords are :func:`plan`'s (``overrides``, ``max_ratio``, ``round_to``,
    ``device``, ``dtype``, ``batch_size``, ``runtime``, ``hardware``).

    Equivalent to ``apply(model, plan(model, ratio, ...))``; ``exact_only`` as in :func:`plan`.
    """
    check_flag(inplace, "inplace")  # before the planning work, not after it
    unknown = set(budget) - _BUDGET_KEYWORDS
    if unknown:
        raise InputError(f"shrink() got unexpected keyword arguments {sorted(unknown)}",
                         hint=f"budget keywords are {sorted(_BUDGET_KEYWORDS)}")
    the_plan = plan(model, ratio, example_inputs=example_inputs, importance=importance, ignore=ignore,
                    rules=rules, leaf_modules=leaf_modules, exact_only=exact_only, **budget)
    return apply(model, the_plan, example_inputs=example_inputs, inplace=inplace, rules=rules)


_BUDGET_KEYWORDS = frozenset({"macs", "params", "latency", "overrides", "max_ratio", "round_to", "device", "dtype", "batch_size",
                              "runtime", "hardware", "budget"})



def capture_inputs(model: nn.Module, name: str, model_inputs: Any) -> tuple[Any, ...] | dict[str, Any]:
    """The arguments submodule ``name`` receives when ``model`` runs on ``model_inputs`` (eval mode, no grad).

    The first call is captured; keyword arguments come back as a dict, positional ones as a tuple.
    """
    from .running import call_model, eval_mode

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


def shrink_submodule(
    model: nn.Module,
    name: str,
    ratio: float,
    *,
    example_inputs: Any = None,
    model_inputs: Any = None,
    inplace: bool = False,
    **options: Any,
) -> nn.Module:
    """Shrink one traceable submodule of a model that cannot be traced as a whole (a detector).

    The submodule's inputs and output shapes never change, so the parent keeps working
    around the smaller submodule. Give the submodule's own ``example_inputs``, or the
    parent's ``model_inputs``, from which the submodule's are captured with a forward
    hook. ``options`` are :func:`shrink`'s (``importance``, ``ignore``, ``rules``,
    ``leaf_modules``). Returns the model (a copy unless ``inplace``) holding the smaller submodule.

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
    if (example_inputs is None) == (model_inputs is None):
        raise InputError("give exactly one of example_inputs (the submodule's inputs) and model_inputs (the model's)")
    _get_submodule(model, name)
    if example_inputs is None:
        example_inputs = capture_inputs(model, name, model_inputs)
    target = model if inplace else copy.deepcopy(model)
    submodule = target.get_submodule(name)
    smaller = shrink(submodule, ratio, example_inputs=example_inputs, inplace=True, **options)
    if name:
        parent_name, _, attr = name.rpartition(".")
        setattr(target.get_submodule(parent_name), attr, smaller)
    else:
        target = smaller
    return target
