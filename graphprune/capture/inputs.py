"""Example inputs: guessed for an image model, or given as a tensor, a tuple of args or a dict of keyword args.

Whatever the user gives is turned into one positional argument per placeholder of the captured
graph, defaults filled in, so every later stage calls the graph the same way.

>>> import torchvision
>>> default_example_inputs(torchvision.models.resnet18())[0].shape
torch.Size([1, 3, 224, 224])
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx
from torch import nn

from ..base.errors import InputError
from ..base.running import device_of, dtype_of

__all__ = ["default_example_inputs", "positional_inputs", "call_inputs"]


def default_example_inputs(model: nn.Module) -> tuple[torch.Tensor]:
    """A 1x3x224x224 image on the model's device and dtype, when the model starts with a 3-channel conv."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d, nn.Conv3d))), None)
    if isinstance(first, nn.Conv2d) and first.in_channels == 3:
        return (torch.randn(1, 3, 224, 224, device=device_of(model), dtype=dtype_of(model)),)
    raise InputError(
        f"cannot guess example inputs for {type(model).__name__}: its first layer is "
        f"{type(first).__name__ if first is not None else 'not a conv or linear'}, not a 3-channel Conv2d",
        hint="pass example_inputs=(tensor, ...) or a dict of keyword tensors that the model's forward accepts",
    )


def positional_inputs(model: nn.Module, gm: torch.fx.GraphModule, example_inputs: Any) -> tuple[Any, ...]:
    """One value per placeholder of ``gm``: from a tensor, a tuple/list of args or a dict of keyword args,
    with the forward's defaults where nothing is given (None: :func:`default_example_inputs`)."""
    if example_inputs is None:
        return default_example_inputs(model)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if isinstance(example_inputs, torch.Tensor):
        args: tuple[Any, ...] = (example_inputs,)
    elif isinstance(example_inputs, Mapping):
        names = [n.target for n in placeholders]
        unknown = set(example_inputs) - set(names)
        if unknown:
            raise InputError(
                f"example_inputs names {sorted(unknown)}, which {type(model).__name__}.forward does not take",
                hint=f"its inputs are {names}",
            )
        # Not .get(name, default): the default raises for an argument without one, even when it is given.
        return tuple(example_inputs[name] if name in example_inputs else _placeholder_default(p)
                     for name, p in zip(names, placeholders))
    elif isinstance(example_inputs, (tuple, list)):
        args = tuple(example_inputs)
    else:
        raise InputError(
            f"example_inputs must be a tensor, a tuple of args or a dict of keyword args, not {type(example_inputs).__name__}"
        )
    if len(args) > len(placeholders):
        raise InputError(f"{len(args)} example inputs given, but the model's forward takes {len(placeholders)}")
    return args + tuple(_placeholder_default(p) for p in placeholders[len(args):])


def _placeholder_default(node: torch.fx.Node) -> Any:
    if node.args:
        return node.args[0]
    raise InputError(f"no example input given for the model's argument {node.target!r}", node=node)


def call_inputs(model: nn.Module, example_inputs: Any) -> tuple[Any, ...]:
    """The example inputs as positional arguments of ``model``'s forward, for a capture that calls the model
    itself (``torch.export``): a tensor, a tuple/list, or a dict of keyword args bound to the forward's
    parameters in order (those not given keep their defaults, so a dict may skip only trailing ones)."""
    if example_inputs is None:
        return default_example_inputs(model)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    if not isinstance(example_inputs, Mapping):
        raise InputError(
            f"example_inputs must be a tensor, a tuple of args or a dict of keyword args, not {type(example_inputs).__name__}"
        )
    parameters = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in parameters]
    unknown = set(example_inputs) - set(names)
    if unknown:
        raise InputError(f"example_inputs names {sorted(unknown)}, which {type(model).__name__}.forward does not take "
                         "as positional arguments", hint=f"its positional arguments are {names}")
    last = max(names.index(k) for k in example_inputs) if example_inputs else -1
    args = []
    for p in parameters[:last + 1]:
        if p.name in example_inputs:
            args.append(example_inputs[p.name])
        elif p.default is not p.empty:
            args.append(p.default)
        else:
            raise InputError(f"no example input given for the model's argument {p.name!r}")
    return tuple(args)
