"""Rules for the helpers torchvision wraps as single graph nodes (``torch.fx.wrap``): Swin and MViT.

They key on torchvision's own functions, so they live apart from the op families.
"""

from __future__ import annotations

from ...registry import Registry
from . import mvit, swin

__all__ = ["RULES"]

RULES = Registry().update(mvit.RULES).update(swin.RULES)
