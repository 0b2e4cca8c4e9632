"""What the coupling sees: modules kept whole, modules kept opaque, and the rules that map channels.

>>> import torch
>>> Scope(ignore=["fc"]).ignore
('fc',)
>>> Scope(ignore="fc")
Traceback (most recent call last):
...
graphprune.InputError: ignore takes a list of modules or names, not the string 'fc'
hint: write ignore=['fc']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..base.checks import check_flag, check_names, check_record
from ..capture.captured import CAPTURES
from ..base.errors import InputError
from .registry import Registry
from .rules import default_registry

__all__ = ["Scope", "as_scope"]


@dataclass(frozen=True)
class Scope:
    """Which part of the model the planner may change, and how channels are mapped through it.

    - ``ignore``: modules (names or the module objects) whose tensors keep their shape; channels they
      read are kept too.
    - ``leaf_modules``: submodules traced as one opaque call instead of being traced into (code that
      ``torch.fx`` cannot trace); name them in ``ignore`` as well, since no rule can see inside them.
    - ``rules``: a :class:`~graphprune.coupling.Registry` with custom rules (default: the built-in ones,
      :func:`graphprune.default_registry`).
    - ``capture``: how the graph is captured: ``"fx"`` (``torch.fx`` symbolic tracing), ``"export"``
      (``torch.export``, non-strict unless ``strict``) or ``"auto"``, the default: symbolic tracing, and
      ``torch.export`` when tracing fails (a branch on a shape, a forward taking ``*args``).
    """

    ignore: tuple[str | nn.Module, ...] = ()
    leaf_modules: tuple[str, ...] = ()
    rules: Registry | None = None
    capture: str = "auto"
    strict: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignore", check_names(self.ignore, "ignore", modules_allowed=True))
        object.__setattr__(self, "leaf_modules", check_names(self.leaf_modules, "leaf_modules"))
        if self.rules is not None and not isinstance(self.rules, Registry):
            raise InputError(f"rules must be a graphprune.Registry, not {type(self.rules).__name__}",
                             hint="start from graphprune.default_registry() and add rules to it")
        if self.capture not in CAPTURES:
            raise InputError(f"capture must be one of {', '.join(CAPTURES)}, not {self.capture!r}")
        check_flag(self.strict, "strict")
        if self.strict and self.capture == "fx":
            raise InputError("strict applies to torch.export, not to symbolic tracing (capture='fx')")
        if self.capture == "export" and self.leaf_modules:
            raise InputError("leaf_modules apply to symbolic tracing, not to torch.export",
                             hint="use capture='fx' with leaf_modules, or capture='export' without them")

    @property
    def registry(self) -> Registry:
        """The rules to use: the scope's own, or a fresh built-in registry."""
        return self.rules if self.rules is not None else default_registry()

    def ignored_names(self, model: nn.Module) -> tuple[str, ...]:
        """``ignore`` as qualified submodule names of ``model``; InputError for anything that is not one."""
        if not self.ignore:
            return ()
        by_id = {id(m): name for name, m in model.named_modules()}
        names = set(by_id.values())
        out = []
        for item in self.ignore:
            if isinstance(item, nn.Module):
                if id(item) not in by_id:
                    raise InputError(f"ignore lists a {type(item).__name__} that is not a submodule of the model")
                out.append(by_id[id(item)])
            elif item not in names:
                close = sorted(n for n in names if item in n)[:5]
                raise InputError(
                    f"ignore names {item!r}, which is not a submodule of the model",
                    hint=f"did you mean one of {close}?" if close else "see model.named_modules() for valid names",
                )
            else:
                out.append(item)
        return tuple(out)

    def by_name(self, model: nn.Module) -> Scope:
        """This scope with every ignored module named: it then applies to copies of ``model`` too."""
        return Scope(self.ignored_names(model), self.leaf_modules, self.rules, self.capture, self.strict)


def as_scope(scope: Any) -> Scope:
    """``scope``, or the default scope for None; InputError for anything else."""
    return check_record(scope, Scope, "scope", "graphprune.Scope(ignore=[...], leaf_modules=[...], rules=registry)")

