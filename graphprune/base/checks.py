"""Argument checks shared by the public functions: a wrong argument fails at once, with a clear message.

Each check returns the (normalised) value or raises :class:`~graphprune.InputError`.

>>> check_names(["layer1", "fc"], "ignore")
('layer1', 'fc')
>>> check_names("fc", "ignore")
Traceback (most recent call last):
...
graphprune.InputError: ignore takes a list of names, not the string 'fc'
hint: write ignore=['fc']
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from torch import nn

from .errors import InputError

__all__ = ["check_model", "check_flag", "check_names", "check_positive", "check_fraction", "check_ratio", "check_inputs",
           "check_record"]


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


def check_positive(value: Any, name: str, *, integer: bool = False) -> Any:
    """A finite number > 0 (an int where ``integer``)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0 or (not integer and not math.isfinite(value)):
        raise InputError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return value


def check_fraction(value: Any, name: str, *, low_closed: bool = False, high_closed: bool = True,
                   hint: str | None = None) -> float:
    """A number in (0, 1] (``low_closed``: from 0; not ``high_closed``: below 1), as a float.

    >>> check_fraction(0.5, "macs"), check_fraction(0, "max_ratio", low_closed=True)
    (0.5, 0.0)
    >>> check_fraction(1.5, "macs")
    Traceback (most recent call last):
    ...
    graphprune.InputError: macs must be a fraction in (0, 1], got 1.5
    """
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    above = number and (value >= 0 if low_closed else value > 0)
    below = number and (value <= 1 if high_closed else value < 1)
    if not (above and below):
        interval = f"{'[' if low_closed else '('}0, 1{']' if high_closed else ')'}"
        raise InputError(f"{name} must be a fraction in {interval}, got {value!r}", hint=hint)
    return float(value)


def check_ratio(value: Any, name: str = "ratio") -> float:
    """The fraction of channels to remove: a number in [0, 1)."""
    return check_fraction(value, name, low_closed=True, high_closed=False,
                          hint=f"{name} is the fraction of each group's prunable channels to remove")


def check_inputs(inputs: Any, name: str = "inputs") -> Any:
    """A tensor, a tuple/list of args or a dict of keyword args, as the model's forward takes them."""
    import torch

    if isinstance(inputs, (torch.Tensor, tuple, list, dict)):
        return inputs
    raise InputError(f"{name} must be a tensor, a tuple of args or a dict of keyword args, not {type(inputs).__name__}")


def check_record(value: Any, record: type, name: str, example: str) -> Any:
    """``value`` if it is a ``record`` (one of graphprune's configuration records), a default one for None;
    otherwise InputError, with an ``example`` of how to build one."""
    if value is None:
        return record()
    if not isinstance(value, record):
        raise InputError(f"{name} must be a graphprune.{record.__name__}, not {type(value).__name__}", hint=example)
    return value
