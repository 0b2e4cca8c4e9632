"""Running a model on example inputs: shared by verification, statistics, scoring and training helpers.

>>> import torch
>>> lin = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()).train()
>>> with eval_mode(lin):
...     call_model(lin, (torch.ones(1, 2),)).shape, lin.training
(torch.Size([1, 2]), False)
>>> lin.training
True
>>> device_of(lin), dtype_of(lin)
(device(type='cpu'), torch.float32)
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["call_model", "eval_mode", "attributes_kept", "device_of", "dtype_of", "named_tensors", "tensors_of"]


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` on one tensor, a tuple/list of positional args, or a dict of keyword args."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Evaluate in eval mode, then restore each submodule's own training flag."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    if not any(training for _, training in flags):  # already in eval mode: nothing to set or restore
        yield
        return
    try:
        for module in modules:
            try:
                module.eval()
            except NotImplementedError:  # an exported program's module: captured in eval mode already
                for m in module.modules():
                    m.training = False
        yield
    finally:
        for m, training in flags:
            m.training = training


_CONTAINERS = (dict, list, set)  # by exact type: a module's tables are plain dicts, its hook tables OrderedDicts


@contextlib.contextmanager
def attributes_kept(model: nn.Module) -> Iterator[None]:
    """Run the user's forward on stand-ins (proxies, fake tensors) without letting it keep them: a forward that
    caches a computed value on its module (``self.anchors = ...``, ultralytics' Detect head; an entry in a cache
    dict, timm's ``attention_bias_cache``) would otherwise leave a fake tensor in the user's model. Every
    submodule's attributes are put back as they were, and a dict, list or set it holds (its parameter, buffer and
    submodule tables among them) gets its entries back.

    >>> net = nn.Sequential(nn.Linear(1, 1))
    >>> with attributes_kept(net):
    ...     net.cache = {}
    ...     net[0].bias = None
    ...     net.append(nn.ReLU())
    Sequential(...)
    >>> hasattr(net, "cache"), net[0].bias is not None, len(net)
    (False, True, 1)
    """
    # Shallow copies in C: this runs around every trace, over every submodule of the model.
    snapshots = [(vars(m), vars(m).copy()) for m in model.modules()]
    contents = [(v, v.copy()) for _, attributes in snapshots for v in attributes.values() if type(v) in _CONTAINERS]
    try:
        yield
    finally:
        for attributes, saved in snapshots:
            attributes.clear()
            attributes.update(saved)
        for container, entries in contents:
            if type(container) is list:
                container[:] = entries
            else:
                container.clear()
                container.update(entries)


def device_of(model: nn.Module) -> torch.device:
    """Where the model's first parameter (else buffer) lives; the CPU for a model without tensors."""
    return next((t.device for t in itertools.chain(model.parameters(), model.buffers())), torch.device("cpu"))


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter, then every buffer, under each of its names (a tied tensor under every path to it), as
    ``named_parameters`` and ``named_buffers`` with ``remove_duplicate=False`` list them, in one walk of the tree.

    >>> net = nn.Sequential(nn.BatchNorm1d(2))
    >>> net.append(net[0])
    Sequential(...)
    >>> list(named_tensors(net))[:3], len(named_tensors(net))
    (['0.weight', '0.bias', '1.weight'], 10)
    """
    return tensors_of(list(model.named_modules(remove_duplicate=False)))


def tensors_of(modules: list[tuple[str, nn.Module]]) -> dict[str, torch.Tensor]:
    """:func:`named_tensors` of a tree whose ``named_modules(remove_duplicate=False)`` the caller has walked."""
    named: dict[str, torch.Tensor] = {}
    for table in ("_parameters", "_buffers"):
        for prefix, module in modules:
            for name, tensor in vars(module)[table].items():
                if tensor is not None:
                    named[f"{prefix}.{name}" if prefix else name] = tensor
    return named


def dtype_of(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter, else PyTorch's default dtype."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
