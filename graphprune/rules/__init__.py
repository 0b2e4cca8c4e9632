"""Built-in channel rules, one module per family of ops.

Each family module fills its own ``RULES`` table at import with decorators;
:func:`builtin_rules` merges them into a fresh :class:`~graphprune.registry.Registry`
so that no caller ever mutates a shared table.
"""

from __future__ import annotations

from ..registry import Registry
from . import attention, contractions, elementwise, functional, layers, mvit, norms, reductions, repeat, shapes

__all__ = ["builtin_rules"]


def builtin_rules() -> Registry:
    registry = Registry()
    for family in (layers, norms, attention, contractions, elementwise, reductions, shapes, repeat, functional, mvit):
        registry.update(family.RULES)
    return registry
