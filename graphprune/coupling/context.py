"""What a rule may read and record while stage 2 walks the graph: the working state of one coupling.

A rule reads the channel maps of its inputs (``ctx.channels``), their shapes and its module,
and records:

- *joins*: atoms that must be pruned together (the two sides of a residual add);
- *pins*: atoms that must never be pruned (model outputs, channel-mixing ops);
- *tensor uses*: which dim of which parameter or buffer is indexed by which atoms, in which :class:`Role`;
- *shape edits*: an integer constant in the graph (a ``view`` size) that counts channels;
- *inexact marks*: atoms whose removal changes what the kept channels compute (a LayerNorm's statistics).

The context lives only while :func:`graphprune.coupling.couple` runs; its results are frozen
into the :class:`~graphprune.coupling.Coupling`.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn

from ..base.errors import UnsupportedOpError
from ..base.running import tensors_of
from .channels import Block, ChannelMap, LayoutError

__all__ = ["META_KEY", "Role", "TensorUse", "ShapeEdit", "RuleContext", "concat_atoms"]

META_KEY = "graphprune"


class Role:
    """What a tensor slice is to its channel; it decides how scorers and masks treat it."""

    PRODUCER = "producer"  # an output filter or feature: weight rows that create the channel
    CONSUMER = "consumer"  # an input slice: weight columns that read the channel
    NORM = "norm"  # a per-channel scale (BatchNorm weight)
    BIAS = "bias"  # a per-channel shift (conv/linear/norm bias)
    BUFFER = "buffer"  # per-channel state (running statistics)
    DIRECT = "direct"  # a parameter used directly in the graph (get_attr)

    WEIGHTS = (PRODUCER, CONSUMER, NORM)
    MASKED = (PRODUCER, CONSUMER, NORM, BIAS, DIRECT)


@dataclass(frozen=True, eq=False)
class TensorUse:
    """One dim of one parameter or buffer, indexed by atoms."""

    tensor: str
    dim: int
    atoms: np.ndarray
    role: str
    node: str


def concat_atoms(uses: Sequence[TensorUse]) -> tuple[np.ndarray, np.ndarray]:
    """The uses' atoms end to end, and the bounds of each use's run in it (``len(uses) + 1`` offsets): what a
    pass over every use needs to be a few numpy calls instead of several per use.

    >>> atoms, bounds = concat_atoms([TensorUse("a", 0, np.arange(2), Role.BIAS, "n"),
    ...                               TensorUse("b", 0, np.arange(5, 8), Role.BIAS, "n")])
    >>> atoms.tolist(), bounds.tolist()
    ([0, 1, 5, 6, 7], [0, 2, 5])
    """
    bounds = np.zeros(len(uses) + 1, dtype=np.int64)
    np.cumsum([len(use.atoms) for use in uses], out=bounds[1:])
    atoms = np.concatenate([use.atoms for use in uses]) if uses else np.zeros(0, dtype=np.int64)
    return atoms, bounds


@dataclass(frozen=True, eq=False)
class ShapeEdit:
    """An integer constant in the graph (a ``view`` size) that counts kept channels along ``axis`` of ``block``."""

    node: str
    path: tuple[Any, ...]
    old: int
    block: Block
    axis: int


@dataclass
class _Space:
    start: int
    size: int
    node: str


class _TensorIndex:
    """Canonical names of parameters and buffers, so tied tensors are sliced once."""

    def __init__(self, modules: list[tuple[str, nn.Module]]):
        self.name_of: dict[int, str] = {}
        self.aliases: dict[str, list[str]] = defaultdict(list)
        self.tensors: dict[str, torch.Tensor] = {}
        for name, tensor in tensors_of(modules).items():
            canonical = self.name_of.setdefault(id(tensor), name)
            self.aliases[canonical].append(name)
            self.tensors.setdefault(canonical, tensor)


class RuleContext:
    """What a rule may read and record. One context serves a whole walk over the graph."""

    def __init__(self, gm: torch.fx.GraphModule, ignored: Sequence[str]):
        self.gm = gm
        self.node: torch.fx.Node | None = None
        self._ignored = tuple(ignored)
        modules = list(gm.named_modules(remove_duplicate=False))
        self._index = _TensorIndex(modules)
        self._modules = dict(modules)
        self.spaces: list[_Space] = []
        self.n_atoms = 0
        self.joins: list[tuple[np.ndarray, np.ndarray]] = []
        self._partners: dict[int, list[np.ndarray]] = defaultdict(list)  # first atom -> arrays joined to it
        self.pins: list[tuple[np.ndarray, str]] = []
        self.uses: dict[tuple[str, int], TensorUse] = {}
        self._by_first_atom: dict[int, list[tuple[str, int]]] = defaultdict(list)
        self.shape_edits: list[ShapeEdit] = []
        self.inexact: list[tuple[np.ndarray, str]] = []
        self.zeros: dict[torch.fx.Node, bool] = {}  # which values are zero where channels go (rules/zeros.py)

    # -- reading ------------------------------------------------------------------
    def channels(self, arg: Any) -> ChannelMap | None:
        """The channel map of an argument: None for non-tensors and constants."""
        if isinstance(arg, torch.fx.Node):
            return arg.meta.get(META_KEY)
        return None

    def shape(self, arg: Any) -> torch.Size | None:
        """The propagated shape of a tensor-valued node (None if it is not a single tensor)."""
        if isinstance(arg, torch.fx.Node):
            meta = arg.meta.get("tensor_meta")
            return getattr(meta, "shape", None)
        if isinstance(arg, torch.Tensor):
            return arg.shape
        return None

    def module(self, node: torch.fx.Node | None = None) -> nn.Module:
        node = node or self.node
        return self.submodule(node.target)

    def submodule(self, path: str) -> nn.Module:
        """``gm.get_submodule(path)``, from a table made once: a graph asks for its modules thousands of times, and
        each ``get_submodule`` walks the path through ``__getattr__``."""
        module = self._modules.get(path)
        return module if module is not None else self.gm.get_submodule(path)  # raises for a path that is not one

    # -- recording ----------------------------------------------------------------
    def new_channels(self, size: int) -> np.ndarray:
        """Allocate ``size`` fresh atoms produced by the current node."""
        start = self.n_atoms
        self.spaces.append(_Space(start, size, self.node.name))
        self.n_atoms += size
        return np.arange(start, start + size, dtype=np.int64)

    def join(self, a: np.ndarray, b: np.ndarray) -> None:
        """Require two equally shaped atom arrays to be pruned index by index together."""
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise LayoutError(f"cannot couple channel arrays of shapes {a.shape} and {b.shape}")
        self.joins.append((a.ravel(), b.ravel()))
        if a.size:
            self._partners[int(a.ravel()[0])].append(b.ravel())
            self._partners[int(b.ravel()[0])].append(a.ravel())

    def joined(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether ``a`` and ``b`` are the same atoms, or were joined index by index by one :meth:`join` (as a
        functional norm joins its weight to its input's channels). Chains of joins are resolved only when the
        walk ends (:func:`~graphprune.coupling.groups.form_groups`), so a False here may still be joined."""
        a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
        if a.shape != b.shape:
            return False
        if np.array_equal(a, b):
            return True
        return bool(a.size) and any(np.array_equal(p, b) for p in self._partners.get(int(a[0]), ()))

    def pin(self, atoms: np.ndarray, reason: str) -> None:
        """Never prune these atoms (an interface, or an op whose result depends on every channel)."""
        atoms = np.asarray(atoms).ravel()
        if atoms.size:
            self.pins.append((atoms, f"{reason} at {self.node.name if self.node else '?'}"))

    def mark_inexact(self, atoms: np.ndarray, reason: str) -> None:
        """Removing any of these atoms changes what the kept channels compute (a norm's statistics).

        Such channels may still be pruned, but the plan says so: its groups carry ``reason``
        and :func:`graphprune.verdict` reports "not exact" instead of a round-off figure.
        """
        atoms = np.asarray(atoms).ravel()
        if atoms.size:
            self.inexact.append((atoms, f"{reason} at {self.node.name if self.node else '?'}"))

    def use_tensor(self, owner: str, attr: str, dim: int, atoms: np.ndarray | None, role: str) -> None:
        """Record that ``owner.attr`` (a parameter or buffer) is indexed by ``atoms`` along ``dim``."""
        if atoms is None:
            return
        tensor = getattr(self.submodule(owner), attr, None)
        if tensor is None:
            return
        name = self._index.name_of.get(id(tensor))
        if name is None:
            raise UnsupportedOpError(
                f"{owner}.{attr} is not a registered parameter or buffer", node=self.node,
                hint="register it with register_parameter/register_buffer so it can be sliced",
            )
        atoms = np.asarray(atoms, dtype=np.int64)
        if atoms.shape != (tensor.shape[dim],):
            raise LayoutError(f"{name} has {tensor.shape[dim]} entries along dim {dim}, the rule gave {atoms.shape}")
        if self._ignored and any(self._is_ignored(alias) for alias in self._index.aliases[name]):
            self.pin(atoms, f"{name} belongs to an ignored module")
        key = (name, dim)
        if key in self.uses:  # shared weights: a second call must index the same channels
            existing = self.uses[key]
            if not np.array_equal(existing.atoms, atoms):
                self.join(existing.atoms, atoms)
            if existing.role == Role.DIRECT and role != Role.DIRECT:
                # A get_attr records a generic direct use; the op that consumes the tensor
                # (F.conv2d, F.linear...) knows what it is to the channel, e.g. a producer.
                self.uses[key] = dataclasses.replace(existing, role=role)
        else:
            self.uses[key] = TensorUse(name, dim, atoms, role, self.node.name)
            if atoms.size:
                self._by_first_atom[int(atoms[0])].append(key)

    def claim_computed(self, atoms: np.ndarray, role: str) -> None:
        """A weight computed in the graph from a parameter (timm's weight-standardised convs): its ``atoms`` are
        those a ``get_attr`` gave one dim of the parameter, and they reached here only through ops whose rules
        keep each index on its own (an op that mixes them pins them), so that dim plays ``role`` too."""
        atoms = np.asarray(atoms)
        for key in self._by_first_atom.get(int(atoms[0]), ()) if atoms.size else ():
            use = self.uses[key]
            if use.role == Role.DIRECT and np.array_equal(use.atoms, atoms):
                self.uses[key] = dataclasses.replace(use, role=role)

    def edit_shape(self, path: tuple[Any, ...], old: int, block: Block, axis: int) -> None:
        """Record that an integer argument of the current node counts channels of ``block`` along ``axis``."""
        self.shape_edits.append(ShapeEdit(self.node.name, path, old, block, axis))

    def module_ignored(self, name: str) -> bool:
        """Whether the submodule ``name`` is, or is inside, a module the user asked to ignore."""
        return any(prefix == "" or name == prefix or name.startswith(prefix + ".") for prefix in self._ignored)

    def _is_ignored(self, tensor_name: str) -> bool:
        return any(prefix == "" or tensor_name.startswith(prefix + ".") for prefix in self._ignored)

    def name_of(self, tensor: torch.Tensor) -> str | None:
        """The canonical name of a parameter or buffer of the graph module (tied tensors have one)."""
        return self._index.name_of.get(id(tensor))

    def tensor(self, name: str) -> torch.Tensor:
        return self._index.tensors[name]

    def aliases(self, name: str) -> list[str]:
        return self._index.aliases[name]
