"""Build a model from a short text spec, as the CLI and saved manifests name base models.

A spec is ``torchvision:NAME`` (any ``torchvision.models`` builder, random weights) or
``package.module:factory`` (a callable returning an ``nn.Module``; dotted attributes allowed).
Only installed code is imported; nothing is ever executed from a saved model directory.

>>> build_model("torchvision:resnet18", num_classes=10).fc
Linear(in_features=512, out_features=10, bias=True)
>>> build_model("torch.nn:Conv2d", in_channels=3, out_channels=8, kernel_size=3)
Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from ..base.checks import check_model
from ..base.errors import InputError

__all__ = ["build_model", "is_spec"]

_HINT = "use torchvision:NAME (e.g. torchvision:resnet50) or package.module:factory"


def is_spec(text: str) -> bool:
    """Whether ``text`` looks like a ``module:attribute`` spec."""
    module, sep, attr = text.partition(":")
    return bool(sep and module and attr) and "/" not in module and "\\" not in module


def build_model(spec: str, **kwargs: Any) -> nn.Module:
    """Instantiate the model that ``spec`` names, with keyword arguments for its factory."""
    if not isinstance(spec, str) or not is_spec(spec):
        raise InputError(f"not a model spec: {spec!r}", hint=_HINT)
    module_name, _, attr = spec.partition(":")
    if module_name == "torchvision":
        import torchvision

        if attr not in torchvision.models.list_models():
            raise InputError(f"torchvision has no model {attr!r}",
                             hint="torchvision.models.list_models() lists them, e.g. resnet50, vgg16_bn, mobilenet_v2")
        model = torchvision.models.get_model(attr, **kwargs)
    else:
        try:
            factory: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise InputError(f"cannot import {module_name!r} for model spec {spec!r}: {exc}", hint=_HINT) from exc
        for part in attr.split("."):
            if not hasattr(factory, part):
                raise InputError(f"{module_name} has no attribute {attr!r}", hint=_HINT)
            factory = getattr(factory, part)
        if not callable(factory):
            raise InputError(f"{spec} is not callable", hint=_HINT)
        model = factory(**kwargs)
    return check_model(model, f"what {spec} returns")
