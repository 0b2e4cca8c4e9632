"""The rule registry: how channels flow through each kind of FX node.

A *rule* describes one op: given the channel maps of its inputs it returns the
channel map of its output, and records what it couples (joins), what it must
never prune (pins) and which parameter slices it owns. Rules are keyed by
module class (``call_module``), function (``call_function``) or method name
(``call_method``). A *resizer* updates a module's attributes (``in_channels``,
``num_features``...) after its tensors were sliced.

>>> import torch
>>> reg = Registry()
>>> @reg.module(torch.nn.Softsign)
... def softsign(ctx, node):
...     return ctx.channels(node.args[0])
>>> reg.rule_for_module(torch.nn.Softsign()) is softsign
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    import torch.fx

    from .context import RuleContext

__all__ = ["Registry", "Rule", "Resizer", "qualified_name"]

Rule = Callable[["RuleContext", "torch.fx.Node"], Any]
Resizer = Callable[[nn.Module], None]


class Registry:
    """Rules keyed by module class, function and method name, plus module resizers."""

    def __init__(self) -> None:
        self._modules: dict[type, Rule] = {}
        self._functions: dict[Any, Rule] = {}
        self._methods: dict[str, Rule] = {}
        self._resizers: dict[type, Resizer] = {}

    # -- registration -------------------------------------------------------------
    def module(self, *classes: type) -> Callable[[Rule], Rule]:
        """Register a rule for ``call_module`` nodes of these classes (and subclasses that keep their forward)."""
        _check_keys(classes, lambda c: isinstance(c, type) and issubclass(c, nn.Module), "nn.Module classes")
        return self._register(self._modules, classes)

    def function(self, *functions: Any) -> Callable[[Rule], Rule]:
        """Register a rule for ``call_function`` nodes calling one of these functions, given as the function or
        as its qualified name (``"torchvision.ops.stochastic_depth.stochastic_depth"``: where it is defined).
        A name keys a library's function without importing the library, which costs a second for torchvision;
        a graph that calls it has imported it already."""
        _check_keys(functions, lambda f: callable(f) or (isinstance(f, str) and "." in f),
                    "functions (or their qualified names, module.name)")
        return self._register(self._functions, functions)

    def method(self, *names: str) -> Callable[[Rule], Rule]:
        """Register a rule for ``call_method`` nodes (``x.view(...)``) with one of these names."""
        _check_keys(names, lambda n: isinstance(n, str), "method names (strings)")
        return self._register(self._methods, names)

    def resizer(self, *classes: type) -> Callable[[Resizer], Resizer]:
        """Register how a module class refreshes its attributes after its tensors were sliced."""
        _check_keys(classes, lambda c: isinstance(c, type) and issubclass(c, nn.Module), "nn.Module classes")
        return self._register(self._resizers, classes)

    @staticmethod
    def _register(table: dict, keys: tuple) -> Callable:
        if not keys:
            raise TypeError("register at least one key")

        def decorate(fn: Callable) -> Callable:
            for key in keys:
                table[key] = fn
            return fn

        return decorate

    def update(self, other: Registry) -> Registry:
        """Add (and override with) every entry of ``other``; returns self."""
        self._modules.update(other._modules)
        self._functions.update(other._functions)
        self._methods.update(other._methods)
        self._resizers.update(other._resizers)
        return self

    def copy(self) -> Registry:
        return Registry().update(self)

    # -- lookup -------------------------------------------------------------------
    @staticmethod
    def _by_class(table: dict[type, Any], cls: type) -> Any:
        for base in cls.__mro__:
            if base in table:
                # A subclass that overrides forward computes something else: do not guess.
                if base is cls or cls.forward is base.forward:
                    return table[base]
                return None
        return None

    def rule_for_module(self, module: nn.Module) -> Rule | None:
        return self._by_class(self._modules, type(module))

    def rule_for_class(self, cls: type) -> Rule | None:
        """The rule instances of module class ``cls`` get (a registered base class's, if ``cls`` keeps its forward)."""
        return self._by_class(self._modules, cls)

    def resizer_for(self, module: nn.Module) -> Resizer | None:
        """The resizer of ``module``'s class or its nearest registered base. Unlike a rule, a base's resizer serves a
        subclass with a forward of its own (timm's weight-standardised ``StdConv2d``): ``out_channels`` means the same
        there, and the rewrite checks the resized module against the graph before returning it."""
        return next((self._resizers[base] for base in type(module).__mro__ if base in self._resizers), None)

    def rule_for(self, node: torch.fx.Node, root: nn.Module) -> Rule | None:
        if node.op == "call_module":
            return self.rule_for_module(root.get_submodule(node.target))
        if node.op == "call_function":
            try:
                rule = self._functions.get(node.target)
            except TypeError:  # unhashable target
                return None
            if rule is None and isinstance(node.target, torch._ops.OpOverload):  # an exported graph's ATen op
                rule = self._functions.get(node.target.overloadpacket)
            return rule if rule is not None else self._functions.get(qualified_name(node.target))
        if node.op == "call_method":
            return self._methods.get(node.target)
        return None

    def function_rule(self, function: Any) -> Rule:
        """The rule registered for a function (an object or its qualified name); KeyError if there is none."""
        return self._functions[function]

    def method_rule(self, name: str) -> Rule:
        """The rule registered for a tensor method; KeyError if there is none."""
        return self._methods[name]

    def entries(self) -> Iterator[tuple[str, str, Rule]]:
        """(kind, key, rule) for every rule, for the supported-ops table."""
        for cls, rule in self._modules.items():
            yield "module", f"{cls.__module__}.{cls.__qualname__}", rule
        for fn, rule in self._functions.items():
            yield "function", _function_name(fn), rule
        for name, rule in self._methods.items():
            yield "method", f"Tensor.{name}", rule


def _check_keys(keys: tuple, valid: Callable[[Any], bool], what: str) -> None:
    for key in keys:
        if not valid(key):
            raise TypeError(f"rules of this kind are keyed by {what}, not {key!r}")


def qualified_name(fn: Any) -> str | None:
    """Where a function is defined, ``module.qualname``: how :meth:`Registry.function` names it."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    return f"{module}.{name}" if module and name else None


def _function_name(fn: Any) -> str:
    # The public spelling (torch.cat, torch.nn.functional.max_pool2d) rather than where it is defined.
    import operator

    import torch
    import torch.nn.functional

    if isinstance(fn, str):
        return fn
    if isinstance(fn, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return f"torch.ops.{fn}"  # aten.conv2d.default
    name = getattr(fn, "__name__", None)
    for public in (torch, torch.nn.functional, operator):
        if name and getattr(public, name, None) is fn:
            return f"{public.__name__}.{name}"
    module = getattr(fn, "__module__", None) or "torch"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
    if module == "_operator":
        module = "operator"
    return f"{module}.{name}"
