"""Stage 2, coupling: the dependency graph of channels that must be removed together.

:func:`couple` walks a :class:`~graphprune.capture.Captured` graph in order and asks each node's
rule (:mod:`.rules`, looked up in a :class:`Registry`) how channels flow through it. The result is a
read-only :class:`Coupling`: groups of channels, the tensor slices each one indexes, and the graph
constants that count them. A :class:`Scope` says what the coupling sees. Imports only
:mod:`graphprune.base` and :mod:`graphprune.capture`.
"""

from .channels import Block, ChannelMap, LayoutError
from .context import META_KEY, Role, RuleContext, ShapeEdit, TensorUse
from .coupling import Coupling, couple
from .groups import ChannelGroup, GroupMember
from .registry import Registry
from .rules import default_registry
from .scope import Scope, as_scope

__all__ = ["Coupling", "couple", "ChannelGroup", "GroupMember", "Role", "TensorUse", "ShapeEdit", "RuleContext",
           "META_KEY", "Registry", "default_registry", "Scope", "as_scope", "Block", "ChannelMap", "LayoutError"]
