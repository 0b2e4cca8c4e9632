"""A deep copy of a module tree, faster than ``copy.deepcopy`` on plain torch.nn modules.

``copy.deepcopy`` of a model goes through ``__reduce_ex__`` for every module and every one of its
eight hook dicts: on MobileNetV2 that is 10,000 calls and a third of a whole shrink. A module whose
class keeps ``nn.Module``'s own copying is copied here field by field instead: its parameter,
buffer and submodule tables are rebuilt, immutable values are shared, empty containers are made
anew and anything else goes through ``copy.deepcopy`` with the same memo, so shared modules and
tied tensors stay shared exactly as ``deepcopy`` would keep them. A tree with any module that
copies itself its own way (``__deepcopy__``, ``__reduce_ex__``, ``__getstate__``) is handed to
``copy.deepcopy`` whole.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
>>> net.append(net[0])  # a shared module
Sequential(...)
>>> twin = clone_model(net)
>>> twin[0] is twin[2], twin[0] is net[0], torch.equal(twin[0].weight, net[0].weight)
(True, False, True)
>>> twin[0].weight.data_ptr() != net[0].weight.data_ptr()
True
"""

from __future__ import annotations

import collections
import copy
import weakref
from typing import Any

import torch
from torch import nn

__all__ = ["clone_model"]

_IMMUTABLE = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.memory_format)
_SHARED = frozenset(_IMMUTABLE)  # by exact type: one set lookup instead of nine isinstance checks
_EMPTY_ANEW = (dict, list, set, collections.OrderedDict)
_SKIP = frozenset({"_graphprune_plans"})  # provenance: the rewrite records the new model's own


_PLAIN: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()  # by class: a model has few


def _plain(cls: type) -> bool:
    """Whether modules of class ``cls`` copy themselves as ``nn.Module`` does. torch.nn's own ``__setstate__``
    overrides (``_ConvNd``, ``MultiheadAttention``) only fill in attributes that pickles of old versions lack."""
    plain = _PLAIN.get(cls)
    if plain is None:
        setstate = next(c for c in cls.__mro__ if "__setstate__" in c.__dict__)
        plain = _PLAIN[cls] = (getattr(cls, "__deepcopy__", None) is None and cls.__reduce_ex__ is object.__reduce_ex__
                               and cls.__reduce__ is object.__reduce__ and cls.__getstate__ is nn.Module.__getstate__
                               and setstate.__module__.startswith("torch.nn."))
    return plain


class _NotPlain(Exception):
    """A module of the tree copies itself its own way: the whole tree goes to ``copy.deepcopy``."""


def clone_model(model: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """A deep copy of ``model``; ``memo`` maps ``id`` of an original object to what stands for it in the copy
    (as ``copy.deepcopy``'s memo: the rewrite seeds it with the sliced tensors)."""
    memo = {} if memo is None else memo
    work = dict(memo)  # a copy abandoned half-way must leave no twins behind for deepcopy to reuse
    try:
        twin = _clone(model, work)
    except _NotPlain:
        return copy.deepcopy(model, memo)
    memo.update(work)
    return twin


def _clone(module: nn.Module, memo: dict[int, Any]) -> nn.Module:
    done = memo.get(id(module))
    if done is not None:
        return done
    if not _plain(type(module)):
        raise _NotPlain
    twin = object.__new__(type(module))
    memo[id(module)] = twin
    fields = {}
    for key, value in module.__dict__.items():
        kind = type(value)
        if kind in _SHARED:  # most of a module's fields: flags and sizes
            fields[key] = value
        elif key in _SKIP:
            continue
        elif kind in _EMPTY_ANEW and not value:  # the eight hook tables: empty, and each copy needs its own
            fields[key] = kind()
        elif key in ("_parameters", "_buffers"):
            fields[key] = {n: (None if t is None else _tensor(t, memo)) for n, t in value.items()}
        elif key == "_modules":
            fields[key] = {n: (None if m is None else _clone(m, memo)) for n, m in value.items()}
        else:
            fields[key] = _value(value, memo)
    twin.__dict__.update(fields)
    return twin


def _tensor(t: torch.Tensor, memo: dict[int, Any]) -> torch.Tensor:
    done = memo.get(id(t))
    if done is not None:
        return done
    if type(t) is torch.Tensor and t.dim() == 0 and not t.requires_grad and not vars(t):
        # A plain scalar buffer (every BatchNorm's num_batches_tracked): a clone is what deepcopy makes of it, at a
        # tenth of the cost. A scalar has no views to keep sharing its storage.
        done = memo[id(t)] = t.clone()
        return done
    return copy.deepcopy(t, memo)


def _value(value: Any, memo: dict[int, Any]) -> Any:
    if isinstance(value, _IMMUTABLE):
        return value
    if type(value) is tuple and all(isinstance(v, _IMMUTABLE) for v in value):
        return value  # a conv's kernel_size, stride...: what deepcopy returns for a tuple of immutables
    if type(value) is list and all(type(v) in _SHARED for v in value):
        # A conv's _reversed_padding_repeated_twice: deepcopy's answer (a new list of the same items, shared
        # where the original is) at a tenth of its cost.
        done = memo.get(id(value))
        if done is None:
            done = memo[id(value)] = list(value)
            memo.setdefault(id(memo), []).append(value)  # as deepcopy keeps the original alive while the memo is
        return done
    return copy.deepcopy(value, memo)
