"""Built-in channel rules, one module per family of ops, and the rules for one library's own helpers apart.

Each family module fills its own ``RULES`` table at import with decorators;
:func:`default_registry` merges them into a fresh :class:`~graphprune.coupling.registry.Registry`,
so that no caller ever mutates a shared table. :mod:`.torchvision` holds the rules for functions
that torchvision wraps with ``torch.fx.wrap`` (Swin's shifted windows, MViT's pooling); :mod:`.aten`
keys the ATen ops of an exported graph to the rules of their torch-level twins.
"""

from __future__ import annotations

from ..registry import Registry
from . import (aten, attention, contractions, elementwise, functional, layers, norms, rearrange, recurrent, reductions,
               repeat, shapes, torchvision)

__all__ = ["default_registry"]

FAMILIES = (layers, norms, attention, recurrent, contractions, elementwise, rearrange, reductions, shapes, repeat, functional, aten,
            torchvision)


def default_registry() -> Registry:
    """A fresh registry holding every built-in rule and resizer; extend it freely.

    >>> import torch
    >>> class Gate(torch.nn.Module):
    ...     def forward(self, x):
    ...         return x * torch.sigmoid(x)
    >>> reg = default_registry()
    >>> @reg.module(Gate)
    ... def gate(ctx, node):
    ...     return ctx.channels(node.args[0])
    >>> reg.rule_for_module(Gate()) is gate, default_registry().rule_for_module(Gate())
    (True, None)
    """
    registry = Registry()
    for family in FAMILIES:
        registry.update(family.RULES)
    return registry
