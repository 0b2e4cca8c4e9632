"""Predict the size and speed of a candidate plan without building it.

Every parameter a plan slices is indexed, along each of its pruned dims, by channels of
known groups. A tensor's element count is its dense count times the kept fraction of each
pruned dim; a conv's or linear's MACs likewise scale with the kept fraction of each dim of
its weight (output filters x input channels; one dim for a depthwise conv). So a cost is a
sum of *terms*, one per tensor, each a function of how many positions survive along its
pruned dims, and a group's decision changes only the terms of the tensors it indexes.

Dense MACs per layer come from ``torch.utils.flop_counter`` on the real model; everything
a term does not cover (non-prunable layers, elementwise ops) is a constant. The planner
verifies its result by counting the shrunk model, so a small modelling error only costs an
extra planning round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..coupling import Coupling
from ..measure import module_macs

__all__ = ["Term", "CostModel", "param_terms", "mac_terms"]


@dataclass
class Term:
    """A cost that depends on the kept length of some (tensor, dim) uses: ``fn({dim: kept}) -> cost``."""

    tensor: str
    dims: tuple[int, ...]
    fn: Callable[[Mapping[int, int]], float]


@dataclass
class CostModel:
    """A constant plus terms; evaluates a removal state ``removed[g]`` = channels removed from group g (in order).

    ``order[g]`` is the removal order of group g's channels; a state removes its first ``removed[g]``.
    """

    coupling: Coupling
    order: Mapping[int, np.ndarray]
    terms: list[Term]
    constant: float = 0.0
    # (tensor, dim) -> {group id: cumulative removed positions along the removal order}
    _cum: dict[tuple[str, int], dict[int, np.ndarray]] = field(default_factory=dict, init=False)
    _length: dict[tuple[str, int], int] = field(default_factory=dict, init=False)
    terms_of_group: dict[int, list[int]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for use in self.coupling.uses:
            self._length[(use.tensor, use.dim)] = int(use.atoms.shape[0])
        for g in self.coupling.groups:
            order = self.order.get(g.id)
            if order is None:
                continue
            for member in g.members:
                key = (member.use.tensor, member.use.dim)
                per_channel = np.bincount(member.channels, minlength=g.size)
                self._cum.setdefault(key, {})[g.id] = np.concatenate([[0], np.cumsum(per_channel[order])])
        for i, term in enumerate(self.terms):
            touched = {gid for d in term.dims for gid in self._cum.get((term.tensor, d), {})}
            for gid in touched:
                self.terms_of_group.setdefault(gid, []).append(i)

    def kept(self, tensor: str, dim: int, removed: Mapping[int, int]) -> int:
        key = (tensor, dim)
        return self._length[key] - int(sum(cum[removed.get(gid, 0)] for gid, cum in self._cum.get(key, {}).items()))

    def term_value(self, i: int, removed: Mapping[int, int]) -> float:
        term = self.terms[i]
        # A dim no group indexes (a stem conv's image channels) keeps its dense size: the term's default.
        return float(term.fn({d: self.kept(term.tensor, d, removed) for d in term.dims if (term.tensor, d) in self._length}))

    def total(self, removed: Mapping[int, int]) -> float:
        return self.constant + sum(self.term_value(i, removed) for i in range(len(self.terms)))

    def group_part(self, gid: int, removed: Mapping[int, int]) -> float:
        """The sum of the terms group ``gid`` touches: what a decision on it can change."""
        return sum(self.term_value(i, removed) for i in self.terms_of_group.get(gid, ()))


def _pruned_dims(coupling: Coupling) -> dict[str, list[int]]:
    dims: dict[str, list[int]] = {}
    for use in coupling.uses:
        dims.setdefault(use.tensor, []).append(use.dim)
    return dims


def param_terms(coupling: Coupling) -> tuple[list[Term], float, float]:
    """Parameter-count terms; returns (terms, constant, dense total). Exact: a sliced tensor's size is a product."""
    dims = _pruned_dims(coupling)
    gm = coupling.gm
    seen: set[int] = set()
    total = 0
    terms = []
    for name, p in gm.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    constant = float(total)
    for name, d in dims.items():
        tensor = coupling.tensors[name]
        if not isinstance(tensor, nn.Parameter):
            continue
        shape = tuple(tensor.shape)
        constant -= tensor.numel()

        def fn(kept: Mapping[int, int], shape: tuple[int, ...] = shape) -> float:
            return float(np.prod([kept.get(i, s) for i, s in enumerate(shape)]))

        terms.append(Term(name, tuple(sorted(set(d))), fn))
    return terms, constant, float(total)


def mac_terms(coupling: Coupling) -> tuple[list[Term], float, float]:
    """MAC terms, one per leaf layer whose weight is pruned: dense MACs times the kept fraction of each weight dim;
    returns (terms, constant, dense total)."""
    model = coupling.model
    per_module, total = module_macs(model, coupling.example_args)
    dims = _pruned_dims(coupling)
    children = {name for name, m in model.named_modules() if next(m.children(), None) is None}
    terms = []
    constant = float(total)
    for name in sorted(children):
        macs = per_module.get(name, 0)
        weight = f"{name}.weight" if name else "weight"
        if not macs or weight not in dims:
            continue
        shape = tuple(coupling.tensors[weight].shape)
        constant -= macs

        def fn(kept: Mapping[int, int], shape: tuple[int, ...] = shape, macs: int = macs) -> float:
            return macs * float(np.prod([kept.get(i, s) / s for i, s in enumerate(shape)]))

        terms.append(Term(weight, tuple(sorted(set(dims[weight]))), fn))
    return terms, constant, float(total)
