"""Stage 4's verb: apply a plan, emitting a physically smaller model.

Precondition: the plan fits the model (every tensor exists with the recorded shape). Transform:
slice parameters and buffers, resize their modules, rewrite graph constants. Postcondition:
``graph.lint()``, shape propagation over the rewritten model, and the model's output shapes
unchanged. The result records the plans that made it (:mod:`.provenance`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.fx
from torch import nn

from ..base.checks import check_flag, check_model
from ..base.errors import InputError, PlanError, RewriteError, RewriteWarning, TraceError
from ..base.running import device_of, named_tensors
from ..capture.export import trace_export
from ..capture.fx import trace_fx
from ..capture.graph import nodes_by_name
from ..capture.literals import fresh_literals
from ..capture.shapes import run_shapes
from ..coupling import Registry, Scope, as_scope
from ..planning import GraphEdit, Plan, TensorEdit, model_signature
from .clone import clone_model
from .config import has_config, refit_config
from .exported import choose_result, exported_graph_module
from .provenance import plans_of, record_plan

__all__ = ["apply_plan", "check_plan_fits"]


def check_plan_fits(model: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
    """Raise PlanError unless every tensor the plan slices exists in ``model`` with the planned shape."""
    check_model(model)
    if isinstance(plan, str):
        raise InputError("a Plan is needed, not a string",
                         hint="load a saved plan with graphprune.Plan.from_json(text) or Plan.load(path)")
    if not isinstance(plan, Plan):
        raise InputError(f"expected a graphprune Plan, got {type(plan).__name__}")
    named = named_tensors(model)
    if plan.model_signature and model_signature(named) != plan.model_signature:
        raise PlanError(
            f"this plan was made for a {plan.model} with other parameters than this {type(model).__qualname__}",
            hint="a plan applies to a fresh copy of the model it was made from (same architecture, not yet shrunk)",
        )
    for edit in plan.tensors.values():
        tensor = named.get(edit.name)
        if tensor is None:
            raise PlanError(f"the plan slices {edit.name!r}, which {type(model).__name__} does not have",
                            hint=f"this plan was made for a {plan.model}")
        if list(tensor.shape) != edit.shape:
            raise PlanError(f"the plan expects {edit.name} of shape {edit.shape}, the model has {list(tensor.shape)}",
                            hint=f"this plan was made for a different {plan.model} (or the model was already shrunk)")
    return named


_CHUNK = 1 << 22  # entries gathered at a time along the first sliced dim: bounds the transient memory


class _Indices(dict):
    """Kept indices as tensors, made once per list: a group's filters, bias, norm and next layer's inputs all keep
    the same channels, and turning a list of ints into a tensor costs more than the gather."""

    def __call__(self, keep: list[int], device: torch.device) -> torch.Tensor:
        key = (tuple(keep), device)
        index = self.get(key)
        if index is None:
            index = self[key] = torch.as_tensor(keep, dtype=torch.long, device=device)
        return index


def _sliced(tensor: torch.Tensor, edit: TensorEdit, indices: _Indices | None = None) -> torch.Tensor:
    """A new tensor of the kept entries (nothing is shared with the original).

    A small tensor is gathered dim by dim. In a large one, selecting one dim after another would hold an
    intermediate (half a classifier's weight for vgg16_bn, 196 MiB); the first sliced dim is gathered a chunk at a
    time instead, straight into the result.
    """
    t = tensor.detach()
    indices = _Indices() if indices is None else indices
    index = {d: indices(keep, t.device) for d, keep in sorted(edit.keep.items())}
    if not index:
        return _as_like(tensor, t.clone())
    if t.numel() <= _CHUNK:
        out = t
        for d, i in index.items():
            out = out.index_select(d, i)  # a copy, never a view
        return _as_like(tensor, out)
    first, *rest = index
    shape = list(t.shape)
    for d, i in index.items():
        shape[d] = len(i)
    out = torch.empty(shape, dtype=t.dtype, device=t.device)
    row = max(1, t.numel() // max(t.shape[first], 1))
    step = max(1, _CHUNK // row)
    for start in range(0, len(index[first]), step):
        part = t.index_select(first, index[first][start:start + step])
        for d in rest:
            part = part.index_select(d, index[d])
        out.narrow(first, start, part.shape[first]).copy_(part)
    return _as_like(tensor, out)


def _as_like(tensor: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(out, requires_grad=tensor.requires_grad)
    return out


def _set_tensor(root: nn.Module, qualname: str, value: torch.Tensor) -> None:
    owner_name, _, attr = qualname.rpartition(".")
    owner = root.get_submodule(owner_name)
    if attr in owner._parameters:
        owner._parameters[attr] = value
    elif attr in owner._buffers:
        owner._buffers[attr] = value
    else:
        raise PlanError(f"{qualname} is neither a parameter nor a buffer")


def _resize_modules(root: nn.Module, plan: Plan, registry: Registry) -> None:
    """Refresh the size attributes of every module whose tensors were sliced, then of the modules around them
    that have a resizer registered (a block whose ``self.c`` sizes a ``split``), innermost first."""
    owners = {alias.rpartition(".")[0] for edit in plan.tensors.values() for alias in edit.aliases or [edit.name]}
    modules = dict(root.named_modules(remove_duplicate=False))  # get_submodule walks each path anew
    for name in sorted(owners):
        module = modules[name]
        resizer = registry.resizer_for(module)
        if resizer is None:
            if type(module) is nn.Module or type(module).__module__ == "torch.fx.graph_module":
                continue  # plain containers and graph modules hold get_attr tensors and have no size attributes
            if not type(module).__module__.startswith("torch.nn"):
                continue  # a user module whose tensors are used through the graph; it is traced, not a leaf
            raise RewriteError(
                f"no resizer for {type(module).__qualname__} at {name!r}: its tensors were sliced but its size attributes cannot be updated",
                hint="register one with registry.resizer(YourClass)",
            )
        resizer(module)
    around = {".".join(o.split(".")[:i]) for o in owners for i in range(len(o.split(".")) - 1, -1, -1)} - owners
    for name in sorted(around, key=lambda n: (-n.count("."), n) if n else (1, "")):
        module = modules[name]
        resizer = registry.resizer_for(module)
        if resizer is not None:
            resizer(module)


def _get_path(container: Any, path: list[Any]) -> Any:
    for key in path:
        container = getattr(container, key) if isinstance(container, slice) else container[key]
    return container


def _apply_graph_edit(nodes: dict[str, torch.fx.Node], edit: GraphEdit) -> None:
    node = nodes.get(edit.node)
    if node is None:
        raise PlanError(f"the plan rewrites node {edit.node!r}, which the traced model does not have")
    head, *rest = edit.path
    top = node.kwargs if isinstance(head, str) else node.args
    if _get_path(top, [head, *rest]) != edit.old:
        raise PlanError(f"node {edit.node!r} argument {edit.path} is not {edit.old}: the plan was made for another model", node=node)

    def replaced(value: Any, keys: list[Any]) -> Any:
        if not keys:
            return edit.new
        if isinstance(value, slice):  # a slice bound (x[:, a:b]): path ends in "start" or "stop"
            bounds = {"start": value.start, "stop": value.stop, "step": value.step, keys[0]: edit.new}
            return slice(bounds["start"], bounds["stop"], bounds["step"])
        items = list(value) if not isinstance(value, dict) else dict(value)
        items[keys[0]] = replaced(value[keys[0]], keys[1:])
        return type(value)(items) if not isinstance(value, dict) else items

    if isinstance(head, str):
        node.kwargs = {**node.kwargs, head: replaced(node.kwargs[head], rest)}
    else:
        node.args = replaced(node.args, [head, *rest])


def apply_plan(model: nn.Module, plan: Plan, *, example_inputs: Any = None, scope: Scope | None = None,
               inplace: bool = False, captured: torch.fx.GraphModule | None = None) -> nn.Module:
    """Return the shrunk model described by ``plan`` (a copy, unless ``inplace``), checked and carrying its plans.

    ``scope.rules`` supplies the resizers of custom modules; ``example_inputs`` (default: inputs of the
    plan's recorded shapes) are what the postcondition runs. ``captured`` is the graph module the plan was made
    on, when the caller has it: the rewrite then edits a copy of its graph instead of capturing the model again.
    A plan made on an exported graph returns the user's class when it computes what the rewritten graph does,
    else that graph (:mod:`.exported`).
    """
    named = check_plan_fits(model, plan)
    check_flag(inplace, "inplace")
    scope = as_scope(scope)
    scope.ignored_names(model)  # a name that is not a submodule is a mistake here too, not silently ignored
    registry = scope.registry
    previous = plans_of(model)
    inputs = example_inputs if example_inputs is not None else plan.example_inputs(device_of(model))
    if inputs is None:
        raise InputError("the plan does not record every example input (one is neither a tensor nor a constant), "
                         "so the rewrite cannot be checked", hint="pass example_inputs= as when the plan was made")
    own_forward = plan.capture == "fx" and not plan.graph_edits  # the result runs the user's Python
    if inplace and own_forward:  # a graph that is not the model must be found before the model changes
        _check_outputs(model, plan, inputs, diverged=True)
    indices = _Indices()
    new_tensors = {edit.name: _sliced(named[edit.name], edit, indices) for edit in plan.tensors.values()}
    if inplace:
        target = model
        for edit in plan.tensors.values():
            for alias in edit.aliases or [edit.name]:
                _set_tensor(target, alias, new_tensors[edit.name])
    else:
        # Seeding the copy's memo with the sliced tensors skips copying the full-size originals.
        memo = {id(named[name]): tensor for name, tensor in new_tensors.items()}
        target = clone_model(model, memo)
    # The graph is the plan's own, traced before any module is resized: a forward that reads a size attribute
    # (split(y, (self.a.out_channels, ...))) records the dense value, which is what the plan's edit rewrites.
    exported = plan.capture.startswith("export")
    gm = None
    if exported:  # the dense model's own export: the plan's node names are its nodes'
        source = captured if captured is not None else trace_export(
            model, _as_args(inputs), strict=plan.capture == "export-strict")
        gm = exported_graph_module(target, source)
    elif plan.graph_edits:
        gm = _graph_module(target, captured.graph) if captured is not None else trace_fx(target, plan.leaf_modules)
    _resize_modules(target, plan, registry)
    if gm is not None:
        nodes = nodes_by_name(gm)
        for edit in plan.graph_edits:
            _apply_graph_edit(nodes, edit)
        fresh_literals(gm.graph)  # torch.export interprets a GraphModule: calls must not get the graph's own lists
        gm.graph.lint()
        gm.recompile()
    if exported:
        result: nn.Module = choose_result(target, gm, plan, inputs, source)
    else:
        result = gm if gm is not None else target
    _check_outputs(result, plan, inputs, diverged=own_forward)
    if result is target and has_config(target):
        why = refit_config(model, target, inputs)
        if why is not None:
            warnings.warn(
                f"{type(target).__name__}.config cannot describe the shrunk widths, so save_pretrained / "
                f"from_pretrained would rebuild other ones: {why}. Save it with graphprune.save(model, path, "
                "base='package.module:factory'), which replays the plan on the unpruned model, or plan the same "
                "count for every layer (a ratio budget, or Budget(..., allocation='uniform')).",
                RewriteWarning, stacklevel=3)
    record_plan(result, plan, previous=previous)
    return result


def _as_args(inputs: Any) -> tuple[Any, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _graph_module(root: nn.Module, graph: torch.fx.Graph) -> torch.fx.GraphModule:
    """A graph module over ``root``'s submodules running a copy of ``graph`` (same node names, no analyses)."""
    copied = torch.fx.Graph()
    remap: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in graph.nodes:
        remap[node] = copied.node_copy(node, lambda n: remap[n])
        remap[node].meta = {k: v for k, v in node.meta.items() if k == "stack_trace"}
    return torch.fx.GraphModule(root, copied, type(root).__name__)


def _check_outputs(result: nn.Module, plan: Plan, example_inputs: Any, *, diverged: bool) -> None:
    """Postcondition: the model's own forward runs (on shape-only stand-ins) and returns the planned output shapes.

    ``diverged``: ``result`` runs the user's own forward, so other shapes mean the traced graph was not the
    model (symbolic tracing took another path than Python does), a :class:`TraceError`, not a rewrite bug.
    """
    try:
        shapes = [list(t.shape) for t in run_shapes(result, example_inputs)]
    except Exception as exc:  # noqa: BLE001 - whatever the forward raised, the rewrite broke it
        raise RewriteError(f"the rewritten model does not run: {type(exc).__name__}: {exc}",
                           hint="this is a graphprune bug; please report it with the model") from exc
    if shapes == plan.output_shapes:
        return
    if diverged:
        raise TraceError(
            f"{type(result).__name__}'s own forward returns outputs of shapes {shapes}, but its symbolically traced "
            f"graph returned {plan.output_shapes}: torch.fx followed another path than Python does (an isinstance, "
            "type or attribute test of a traced value, which tracing cannot see), so the graph is not the model",
            hint="capture it with torch.export: Scope(capture='export'); shrink does so by itself under capture='auto'")
    raise RewriteError(f"the rewritten model's outputs have shapes {shapes}, expected {plan.output_shapes}",
                       hint="this is a graphprune bug; please report it with the model")
