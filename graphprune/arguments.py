"""Argument checks shared by the public functions: a wrong argument fails at once, with a clear message.

Each check returns the (normalised) value or raises :class:`~graphprune.errors.InputError`.

>>> check_names(["layer1", "fc"], "ignore")
('layer1', 'fc')
>>> check_names("fc", "ignore")
Traceback (most recent call last):
...
graphprune.errors.InputError: ignore takes a list of names, not the string 'fc'
hint: write ignore=['fc']
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from torch import nn

from .errors import InputError

__all__ = ["check_model", "check_flag", "check_names", "check_registry", "check_positive", "check_inputs"]


def check_model(model: Any, what: str = "model") -> nn.Module:
    """``model`` must be an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module as {what}, got {type(model).__name__}")
    return model


def check_flag(value: Any, name: str) -> bool:
    """A real bool: ``inplace="no"`` would otherwise be truthy and rewrite the user's model."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, not {value!r}")
    return value


def check_names(value: Any, name: str, *, modules_allowed: bool = False) -> tuple[Any, ...]:
    """A list of module names (or module objects where allowed); a bare string is refused, not split into letters."""
    if isinstance(value, (str, nn.Module)):
        shown = repr(value) if isinstance(value, str) else type(value).__name__
        raise InputError(f"{name} takes a list of {'modules or ' if modules_allowed else ''}names, not the "
                         f"{'string' if isinstance(value, str) else 'module'} {shown}",
                         hint=f"write {name}=[{shown}]")
    if not isinstance(value, Iterable):
        raise InputError(f"{name} takes a list of names, not {type(value).__name__}")
    items = tuple(value)
    for item in items:
        if not (isinstance(item, str) or (modules_allowed and isinstance(item, nn.Module))):
            raise InputError(f"{name} takes {'module names or modules' if modules_allowed else 'module names'}, "
                             f"not {type(item).__name__}")
    return items


def check_registry(rules: Any) -> Any:
    """None (the built-in rules) or a :class:`~graphprune.registry.Registry`."""
    from .registry import Registry

    if rules is not None and not isinstance(rules, Registry):
        raise InputError(f"rules must be a graphprune.Registry, not {type(rules).__name__}",
                         hint="start from graphprune.default_registry() and add rules to it")
    return rules


def check_positive(value: Any, name: str, *, integer: bool = False) -> Any:
    """A finite number > 0 (an int where ``integer``)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0 or (not integer and not math.isfinite(value)):
        raise InputError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return value


def check_inputs(inputs: Any, name: str = "inputs") -> Any:
    """A tensor, a tuple/list of args or a dict of keyword args, as the model's forward takes them."""
    import torch

    if isinstance(inputs, (torch.Tensor, tuple, list, dict)):
        return inputs
    raise InputError(f"{name} must be a tensor, a tuple of args or a dict of keyword args, not {type(inputs).__name__}")
