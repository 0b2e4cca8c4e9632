"""What a plan made on an exported graph gives back: the user's own class when it is proven equivalent, else the
rewritten exported graph.

Slicing the user's tensors and resizing their modules gives a copy of the user's class at the new widths. Its
forward is the user's Python, which may fix a width where the graph only saw a number (``split(y, (64, 64), 1)``,
an ``int`` attribute that no resizer updates), so it is run against the rewritten exported graph, whose
constants the plan edited: if they agree, the class is returned. If not, the ``int`` attributes that held the
rewritten widths are given their new values and the class is tried again; if it still disagrees, the graph is
returned, with a :class:`~graphprune.RewriteWarning` that names the lines whose widths the graph rewrote.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import torch
import torch.fx
from torch import nn

from ..base.errors import RewriteWarning
from ..base.running import call_model, eval_mode
from ..planning import Plan
from .difference import relative_difference

__all__ = ["exported_graph_module", "choose_result", "width_attributes"]

AGREE = 1e-5  # float32 round-off between two evaluations of one function in a different order
MAX_CHOICES = 16  # ways to set ambiguous width attributes, each checked by running the model


def exported_graph_module(root: nn.Module, exported: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A graph module running a copy of ``exported``'s graph over ``root``'s tensors (the rewrite's sliced ones),
    with the exported module's own helpers (its guards) and its input/output structure."""
    graph = torch.fx.Graph()
    remap: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in exported.graph.nodes:
        remap[node] = graph.node_copy(node, lambda n: remap[n])
        remap[node].meta = {k: v for k, v in node.meta.items() if k == "stack_trace"}
    graph._codegen = exported.graph._codegen  # the pytree in/out structure: the same call signature
    owners: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op in ("get_attr", "call_module"):
            source = root if node.op == "get_attr" else exported
            try:
                owners[node.target] = _attribute(source, node.target)
            except AttributeError:
                owners[node.target] = _attribute(exported, node.target)  # a constant the export lifted
    gm = torch.fx.GraphModule(owners, graph, type(root).__name__)
    for spec in ("_in_spec", "_out_spec"):
        if hasattr(exported, spec):
            setattr(gm, spec, getattr(exported, spec))
    gm.graph.lint()
    gm.recompile()
    return gm


def _attribute(module: nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def choose_result(candidate: nn.Module, graph: torch.fx.GraphModule, plan: Plan, inputs: Any,
                  source: torch.fx.GraphModule | None = None) -> nn.Module:
    """``candidate`` (the user's class, resized) if its forward computes what ``graph`` does on random inputs of
    the plan's shapes, else ``graph``, with a warning saying why and where a width is fixed in Python.

    When they disagree, the ``int`` attributes that held a rewritten width (``self.c`` in ``split((self.c,
    self.c), 1)``, found on the modules the dense ``source`` graph's edited nodes ran in) are set to the new
    widths, and the class is tried again, once per way of setting them (:func:`width_attributes`).
    """
    sample = plan.example_inputs(next((t.device for t in candidate.parameters()), "cpu"), random=True) or inputs
    why = _disagreement(candidate, graph, sample)
    if why is None:
        return candidate
    for updates in width_attributes(candidate, source, plan) if source is not None else []:
        old = {(path, attr): getattr(candidate.get_submodule(path), attr) for path, attr in updates}
        for (path, attr), value in updates.items():
            setattr(candidate.get_submodule(path), attr, value)
        if _disagreement(candidate, graph, sample) is None:
            return candidate
        for (path, attr), value in old.items():
            setattr(candidate.get_submodule(path), attr, value)
    lines = sorted({_user_line(n) for n in graph.graph.nodes
                    if n.name in {e.node for e in plan.graph_edits} and _user_line(n)})
    where = (" The rewritten graph changed widths written in " + "; ".join(lines[:3])
             + ("; ..." if len(lines) > 3 else "") + ".") if lines else ""
    warnings.warn(
        f"returning the rewritten exported graph (a torch.fx.GraphModule), not {type(candidate).__name__}: {why}."
        f"{where} The graph takes inputs of the example's shapes only. Compute those widths from tensor shapes, or "
        "register a resizer for the module that holds them (graphprune.default_registry().resizer(YourModule)), "
        "to get your class back.",
        RewriteWarning, stacklevel=4)
    return graph


def _disagreement(candidate: nn.Module, graph: torch.fx.GraphModule, sample: Any) -> str | None:
    """Why ``candidate``'s forward does not compute what ``graph`` does on ``sample``; None if it does."""
    try:
        with torch.no_grad(), eval_mode(candidate):
            mine = call_model(candidate, sample)
        with torch.no_grad():
            theirs = call_model(graph, sample)
        difference = relative_difference(theirs, mine)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's forward at the new widths decides it
        return f"its forward fails at the new widths ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if difference > AGREE:
        return f"its forward computes something else at the new widths (max relative difference {difference:.1e})"
    return None


def width_attributes(root: nn.Module, source: torch.fx.GraphModule, plan: Plan) -> list[dict[tuple[str, str], int]]:
    """Ways to set the ``int`` attributes that held widths the plan rewrote: ``(module path, attribute) -> new
    value`` dicts, likeliest first.

    An edited node of the dense exported ``source`` ran in the forward of the innermost module of its
    ``nn_module_stack``; an ``int`` attribute of that module equal to the edit's old value may have held that
    width. Modules further out are not searched: their ints (a head's class count) are other numbers that happen
    to match. An attribute two edits would give different values is left alone. Where one attribute matches, it
    is set in every choice; where several do (GPT-2's attention holds ``embed_dim`` and ``split_size``, both 32;
    its ``Conv1D`` output projection ``nf`` and ``nx``), the choices set one of them, the same one in every module
    of a class (layers repeat), or all of them. The caller keeps the first choice that its check accepts.
    """
    nodes = {n.name: n for n in source.graph.nodes}
    found: dict[tuple[str, tuple[str, ...]], set[int]] = {}
    for edit in plan.graph_edits:
        node = nodes.get(edit.node)
        stack = node.meta.get("nn_module_stack") if node is not None else None
        if not stack:
            continue
        path = list(stack.values())[-1][0]
        try:
            module = root.get_submodule(path)
        except AttributeError:
            continue
        names = tuple(a for a, v in vars(module).items() if type(v) is int and v == edit.old and not a.startswith("_"))
        if names:
            found.setdefault((path, names), set()).add(edit.new)
    found = {key: values for key, values in found.items() if len(values) == 1}
    sure = {(path, names[0]): next(iter(v)) for (path, names), v in found.items() if len(names) == 1}
    options: dict[tuple[type, tuple[str, ...]], list[tuple[str, ...]]] = {}
    for path, names in (key for key in found if len(key[1]) > 1):
        options[(type(root.get_submodule(path)), names)] = [(name,) for name in names] + [names]
    choices = []
    for picks in itertools.islice(itertools.product(*options.values()), MAX_CHOICES):
        chosen = dict(zip(options, picks))
        choice = dict(sure)
        for (path, names), values in found.items():
            if len(names) > 1:
                for name in chosen[(type(root.get_submodule(path)), names)]:
                    choice[(path, name)] = next(iter(values))
        choices.append(choice)
    return [c for c in choices if c]


def _user_line(node: torch.fx.Node) -> str | None:
    """The innermost frame of the user's code in ``node``'s stack trace, with its line of source."""
    trace = node.meta.get("stack_trace")
    if not trace:
        return None
    lines = [line.strip() for line in trace.strip().splitlines()]
    frames = [(line, lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("File ") else "")
              for i, line in enumerate(lines) if line.startswith("File ")]
    user = [f for f in frames if "/torch/" not in f[0]] or frames
    if not user:
        return None
    frame, code = user[-1]
    return f"{frame}: {code}" if code else frame
