"""Stage 1's result: the model's graph with shapes on every node, and the example inputs it was captured with.

>>> import torch, torchvision
>>> c = capture(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
>>> c.gm.graph.find_nodes(op="call_module", target="fc")[0].meta["tensor_meta"].shape
torch.Size([1, 1000])
>>> c.method, c.args[0].shape
('fx', torch.Size([1, 3, 64, 64]))
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch.fx
from torch import nn

from ..base.errors import InputError, TraceError
from .export import UNKNOWN_OUTPUT_HINT, trace_export
from .fx import TRY_EXPORT, trace_fx
from .inputs import call_inputs, positional_inputs
from .shapes import propagate_shapes

__all__ = ["Captured", "capture", "CAPTURES"]


CAPTURES = ("auto", "fx", "export")


@dataclass(frozen=True)
class Captured:
    """A captured model: its graph (``node.meta["tensor_meta"]`` on every node), the example inputs as the
    graph's positional arguments, and the submodules kept opaque. ``model`` is the user's own, untouched.
    ``method`` says how it was captured: ``"fx"`` (symbolic tracing), ``"export"`` or ``"export-strict"``."""

    model: nn.Module
    gm: torch.fx.GraphModule
    args: tuple[Any, ...]
    leaf_modules: tuple[str, ...] = ()
    method: str = "fx"


def capture(model: nn.Module, example_inputs: Any = None, *, leaf_modules: Iterable[str] = (), method: str = "auto",
            strict: bool = False) -> Captured:
    """Capture ``model`` and propagate the shapes of ``example_inputs`` (default: a 224x224 image) through it.

    ``method``: ``"fx"`` traces symbolically; ``"export"`` uses ``torch.export`` (``strict`` for its strict
    mode); ``"auto"`` traces, and exports when tracing fails. A model neither can capture gets one error that
    says why each failed. The nodes do not record source lines (an error finds its node's:
    :func:`graphprune.capture.source_lines`).
    """
    leaf_modules = tuple(leaf_modules)
    if method not in CAPTURES:
        raise InputError(f"capture must be one of {', '.join(CAPTURES)}, not {method!r}")
    if method == "export" and leaf_modules:
        raise InputError("leaf_modules apply to symbolic tracing, not to torch.export",
                         hint="use capture='fx' with leaf_modules, or capture='export' without them")
    if method in ("auto", "fx"):
        try:
            gm = trace_fx(model, leaf_modules)
        except TraceError as fx_error:
            if method == "fx" or leaf_modules:
                raise
            try:
                return _exported(model, example_inputs, strict)
            except TraceError as export_error:
                raise TraceError(
                    f"neither capture could take {type(model).__name__}.\n"
                    f"torch.fx: {fx_error.message}\n{export_error.message}",
                    # The fx hint names the submodule to keep opaque, unless the export only failed on an output.
                    hint=export_error.hint if export_error.hint == UNKNOWN_OUTPUT_HINT
                    else fx_error.hint.removeprefix(TRY_EXPORT)) from export_error
        args = positional_inputs(model, gm, example_inputs)
        propagate_shapes(gm, args)
        return Captured(model, gm, args, leaf_modules)
    return _exported(model, example_inputs, strict)


def _exported(model: nn.Module, example_inputs: Any, strict: bool) -> Captured:
    args = call_inputs(model, example_inputs)
    gm = trace_export(model, args, strict=strict)  # shapes propagated: it checks its guards on them
    return Captured(model, gm, args, (), "export-strict" if strict else "export")
