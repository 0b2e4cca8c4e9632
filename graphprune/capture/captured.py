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

from .fx import trace_fx
from .inputs import positional_inputs
from .shapes import propagate_shapes

__all__ = ["Captured", "capture"]


@dataclass(frozen=True)
class Captured:
    """A captured model: its graph (``node.meta["tensor_meta"]`` on every node), the example inputs as one
    positional argument per placeholder, and the submodules kept opaque. ``model`` is the user's own, untouched."""

    model: nn.Module
    gm: torch.fx.GraphModule
    args: tuple[Any, ...]
    leaf_modules: tuple[str, ...] = ()
    method: str = "fx"


def capture(model: nn.Module, example_inputs: Any = None, *, leaf_modules: Iterable[str] = ()) -> Captured:
    """Trace ``model`` and propagate the shapes of ``example_inputs`` (default: a 224x224 image) through it.

    The nodes do not record source lines (an error finds its node's: :func:`graphprune.capture.source_lines`)."""
    leaf_modules = tuple(leaf_modules)
    gm = trace_fx(model, leaf_modules)
    args = positional_inputs(model, gm, example_inputs)
    propagate_shapes(gm, args)
    return Captured(model, gm, args, leaf_modules)
