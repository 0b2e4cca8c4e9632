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
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["call_model", "eval_mode", "attributes_kept", "device_of", "dtype_of"]


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


_TABLES = ("_parameters", "_buffers", "_modules")


@contextlib.contextmanager
def attributes_kept(model: nn.Module) -> Iterator[None]:
    """Run the user's forward on stand-ins (proxies, fake tensors) without letting it keep them: a forward that
    caches a computed value on its module (``self.anchors = ...``, ultralytics' Detect head; an entry in a cache
    dict, timm's ``attention_bias_cache``) would otherwise leave a fake tensor in the user's model. Every
    submodule's attributes are put back as they were, and a dict, list or set it holds gets its entries back."""
    saved = [(m, {k: dict(v) if k in _TABLES else v for k, v in vars(m).items()}) for m in model.modules()]
    contents = [(v, copy.copy(v)) for _, attributes in saved for k, v in attributes.items()
                if k not in _TABLES and type(v) in (dict, list, set)]
    try:
        yield
    finally:
        for m, attributes in saved:
            vars(m).clear()
            vars(m).update(attributes)
        for container, entries in contents:
            container.clear()
            if isinstance(container, list):
                container.extend(entries)
            else:
                container.update(entries)


def device_of(model: nn.Module) -> torch.device:
    """Where the model's first parameter (else buffer) lives; the CPU for a model without tensors."""
    return next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))


def dtype_of(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter, else PyTorch's default dtype."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
