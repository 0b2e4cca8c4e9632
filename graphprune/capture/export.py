"""Capture with ``torch.export``: the models symbolic tracing turns away.

``torch.fx`` symbolic tracing runs the forward on proxies, so a branch on a shape
(``if x.shape[-1] >= 4``), a loop over a proxy (``for y in self.cv1(x).chunk(2, 1)``) or a
decorated ``forward(*args, **kwargs)`` stops it. ``torch.export`` runs the forward on fake tensors
with concrete example sizes, so such branches are resolved (and guarded), and it gives an ATen-level
graph. Non-strict by default: the forward runs as Python, as the user wrote it.

The exported program lifts parameters and buffers into inputs; :meth:`ExportedProgram.module` puts
them back as ``get_attr`` nodes named by their state-dict names, on the user's own tensors, so the
rules and the rewrite address the user's model exactly as on the FX path.

A branch on values (``if x.sum() > 0``) is still refused: a graph specialised to the branch the
example took would be wrong on the other.

>>> import torch
>>> class Branchy(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.conv = torch.nn.Conv2d(3, 4, 3)
...     def forward(self, x):
...         y = self.conv(x)
...         return torch.nn.functional.max_pool2d(y, 2) if y.shape[-1] >= 4 else y
>>> gm = trace_export(Branchy(), (torch.randn(1, 3, 8, 8),))
>>> [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
['aten.conv2d.default', 'aten.max_pool2d.default']
"""

from __future__ import annotations

import contextlib
import io
import logging
import traceback
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx
from torch import nn

from ..base.checks import check_model
from ..base.errors import TraceError
from ..base.running import attributes_kept, eval_mode
from .shapes import propagate_shapes

__all__ = ["trace_export", "export_error_reason"]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export logs its failures (the graph so far, guard diagnostics) to stderr; the error says it better."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


# torch.export's words for an output it cannot flatten (a transformers DynamicCache), and what to do about it.
OUTPUT_TYPE = "in output, which is not a known type"
UNKNOWN_OUTPUT_HINT = (
    "the model returns an object that is neither a tensor nor a container torch.export knows: return tensors, "
    "register a pytree node for its class, or switch it off with an input. A transformers causal LM returns its KV "
    "cache: pass example_inputs={'input_ids': ids, 'use_cache': False} (the shrunk model keeps use_cache in its "
    "config and generates with the cache)")


def export_error_reason(exc: BaseException) -> str:
    """What stopped ``torch.export``, in a user's words, and the user's line where it happened."""
    name = type(exc).__name__
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "GuardOnDataDependentSymNode" in name or "data-dependent" in str(exc):
        why = f"a branch on tensor values (data-dependent control flow): {first}"
    else:
        why = f"{name}: {first}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/torch/" not in f.filename and "/graphprune/" not in f.filename]
    if frames:
        f = frames[-1]
        why += f'\nsource: File "{f.filename}", line {f.lineno}, in {f.name}\n    {f.line}'
    return why


def trace_export(model: nn.Module, args: tuple[Any, ...], *, strict: bool = False) -> torch.fx.GraphModule:
    """``torch.export`` ``model`` on positional ``args`` (in eval mode: BatchNorm on its running statistics) and
    return the unlifted graph module, with shapes propagated for ``args``: ATen ops, with ``get_attr`` nodes for
    the model's own parameters and buffers. Raises :class:`TraceError` saying why the export failed.

    The export is static: the graph holds the example's sizes, and its guards reject others. The shrunk model is
    the user's own class wherever it is proven to agree with the graph, and takes any size the original takes.
    A dynamic batch was measured and dropped: it doubles the export time (resnet50 1.5 s to 3 s), full dynamic
    sizes cost tens of seconds (mobilevit_xxs 86 s against 3 s) and produce guards the example itself fails, and
    a size computed from the symbolic batch hides channel counts (``view(B * heads, ...)``) from the rewrite."""
    check_model(model)
    args = tuple(args)
    try:
        with torch.no_grad(), eval_mode(model), attributes_kept(model), _quiet():
            gm = torch.export.export(model, args, strict=strict).module()
    except Exception as exc:  # export raises many kinds: user errors, guards, unsupported Python
        hint = ("a branch on tensor values cannot be captured by either path: compute it outside the model, or "
                "shrink a capturable submodule (graphprune.shrink_submodule)")
        if OUTPUT_TYPE in str(exc):
            hint = UNKNOWN_OUTPUT_HINT
        raise TraceError(
            f"torch.export{' (strict)' if strict else ''} could not capture {type(model).__name__}: "
            f"{export_error_reason(exc)}",
            hint=hint,
        ) from exc
    _inline_disabled_autocast(gm)
    propagate_shapes(gm, args)  # inputs that do not fit are the user's InputError, naming the node
    gm.meta["graphprune.exported"] = {"strict": strict}
    return gm


def _inline_disabled_autocast(gm: torch.fx.GraphModule) -> None:
    """Put the body of every ``with torch.autocast(..., enabled=False)`` region back into the graph.

    An export keeps such a region as a ``wrap_with_autocast`` call of a nested graph (EfficientViT runs its
    attention in float32 that way), which no rule can see into. Outside autocast, as the capture runs, a
    disabled region computes exactly its body, so the body replaces the call. Enabled regions are left as they
    are, and refused by name if channels reach them.
    """
    wrap = getattr(torch.ops.higher_order, "wrap_with_autocast", None)
    for node in list(gm.graph.find_nodes(op="call_function", target=wrap)) if wrap is not None else ():
        _device, _dtype, enabled, _cache, body, *operands = node.args
        sub = getattr(gm, body.target, None) if body.op == "get_attr" else None
        if enabled or not isinstance(sub, torch.fx.GraphModule) or sub.graph.find_nodes(op="get_attr"):
            continue
        env: dict[torch.fx.Node, Any] = {}
        with gm.graph.inserting_before(node):
            for inner in sub.graph.nodes:
                if inner.op == "placeholder":
                    env[inner] = operands[len(env)]
                elif inner.op == "output":
                    result = torch.fx.node.map_arg(inner.args[0], env.__getitem__)
                else:
                    env[inner] = gm.graph.node_copy(inner, env.__getitem__)
        for user in list(node.users):  # the region's outputs, picked by getitem
            user.replace_all_uses_with(result[user.args[1]])
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        if not body.users:
            gm.graph.erase_node(body)
            delattr(gm, body.target)
    gm.recompile()
