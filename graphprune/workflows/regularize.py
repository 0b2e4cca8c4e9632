"""Sparsity-regularised training over coupled channels (network slimming, group lasso).

A regulariser is built from the coupled groups of :func:`graphprune.couple`:
every channel of a group owns slices of several tensors (the producing filters,
the consumers' input columns, the norm scales, the biases), and a channel can
only be removed when all of them are (nearly) zero. Two regularisers:

- :class:`GroupLasso`: the L2 norm of each channel's slices, summed over channels
  (every tensor the equivalence mask zeroes: producers, consumers, norm scales,
  biases). Whole channels shrink together, so removing them afterwards does not
  change the outputs.
- :class:`BNScaleL1`: the L1 norm of the channels' BatchNorm/LayerNorm scales,
  as in network slimming (Liu et al., 2017). The shifts are not penalised, so
  removing a channel still drops its ``beta``: fine-tune after pruning.

Use either as a loss term (``loss = task_loss + reg(model)``), or as a proximal
step after each optimizer step (``reg.attach(optimizer)``), which sets small
channels to exact zeros. ``channels=`` restricts the penalty to chosen channels;
:meth:`GroupLasso.from_plan` picks the channels a plan removes, so training
moves the model towards that plan before it is applied.

>>> import torch, graphprune
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.ReLU(), nn.Conv2d(4, 2, 1, bias=False))
>>> for conv in (net[0], net[2]):
...     _ = nn.init.ones_(conv.weight)
>>> reg = graphprune.GroupLasso(net, 0.5, example_inputs=torch.randn(1, 3, 4, 4))
>>> round(reg(net).item(), 4)  # 4 channels, each: sqrt(3 producer + 2 consumer entries of 1.0), times 0.5
4.4721
>>> reg.prox_step(lr=10.0)  # a large step: every channel's norm is below lr * strength
>>> net[0].weight.abs().sum().item()
0.0
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..api import couple
from ..base.checks import check_model
from ..base.errors import InputError, PlanError
from ..base.running import device_of
from ..coupling import Coupling, Role, Scope
from ..planning import Plan
from ..rewrite import check_plan_fits

__all__ = ["GroupLasso", "BNScaleL1"]

_EPS = 1e-20  # keeps d sqrt(x)/dx finite at x = 0 (a channel already at zero)


@dataclass
class _Slice:
    """The entries of one parameter along ``dim`` at ``positions``, owned by ``channels`` of one group."""

    name: str
    param: nn.Parameter
    dim: int
    positions: torch.Tensor
    channels: torch.Tensor
    group: int
    penalised: torch.Tensor  # bool per position: does the channel at this position carry the penalty?

    def _index(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.positions.to(self.param.device), self.channels.to(self.param.device)

    def per_position(self, fn: Any) -> torch.Tensor:
        """``fn`` of the parameter reduced over every dim but ``dim``, at ``positions``."""
        p = self.param
        others = [d for d in range(p.ndim) if d != self.dim]
        reduced = fn(p).sum(dim=others) if others else fn(p)
        return reduced[self.positions.to(p.device)]

    def scale_(self, factor_per_channel: torch.Tensor) -> None:
        """Multiply the slice of each channel by its factor; entries of other groups keep theirs."""
        positions, channels = self._index()
        factor = torch.ones(self.param.shape[self.dim], dtype=self.param.dtype, device=self.param.device)
        factor[positions] = factor_per_channel.to(self.param.dtype)[channels]
        shape = [1] * self.param.ndim
        shape[self.dim] = -1
        self.param.mul_(factor.view(shape))


class _ChannelRegularizer(ABC):
    """Shared set-up: which parameter slices belong to which selected channels."""

    roles: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, strength: float, *, channels: Mapping[int, Iterable[int]] | None = None,
                 example_inputs: Any = None, coupling: Coupling | None = None):
        check_model(model)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength >= 0:
            raise InputError(f"strength must be a non-negative number, got {strength!r}")
        self.strength = float(strength)
        coupling = coupling if coupling is not None else couple(model, example_inputs=example_inputs)
        selected = _selection(coupling, channels)
        self.group_sizes = {g.id: g.size for g in coupling.groups if g.id in selected}
        self.selected = {gid: torch.as_tensor(mask) for gid, mask in selected.items()}
        params = dict(model.named_parameters())
        self._slices: list[_Slice] = []
        for group in coupling.groups:
            if group.id not in selected:
                continue
            for member in group.members:
                param = params.get(member.use.tensor)
                if member.use.role not in self.roles or param is None:
                    continue  # buffers (running statistics) are not trained
                if param.shape[member.use.dim] != len(member.use.atoms):
                    raise InputError(f"{member.use.tensor} has {param.shape[member.use.dim]} entries along dim "
                                     f"{member.use.dim}, the coupling expects {len(member.use.atoms)}",
                                     hint="build the coupling from this model")
                # Unselected channels of the group are tracked too, so norms() reports the whole group.
                self._slices.append(_Slice(member.use.tensor, param, member.use.dim,
                                           torch.tensor(member.positions), torch.tensor(member.channels),
                                           group.id, torch.as_tensor(selected[group.id][member.channels])))
        if not any(bool(s.penalised.any()) for s in self._slices):
            raise InputError(f"{type(self).__name__} found no trainable {'/'.join(self.roles)} parameters "
                             "in the selected channels", hint="is there anything to regularise in this model?")
        self._param_ids = {id(s.param) for s in self._slices}

    @classmethod
    def from_plan(cls, model: nn.Module, plan: Plan, strength: float) -> _ChannelRegularizer:
        """Penalise exactly the channels ``plan`` removes, so training empties them before the plan is applied."""
        check_plan_fits(model, plan)
        coupling = couple(model, example_inputs=plan.example_inputs(device_of(model)),
                          scope=Scope(leaf_modules=plan.leaf_modules))
        by_id = {g.id: g for g in coupling.groups}
        for g in plan.groups:
            found = by_id.get(g.id)
            if found is None or found.size != g.channels or list(found.sources) != g.sources:
                raise PlanError(f"group {g.id} of the plan ({g.channels} channels from {g.sources[:3]}) "
                                "is not a group of this model", hint="make the plan from this model")
        return cls(model, strength, channels={g.id: g.removed for g in plan.groups if g.removed}, coupling=coupling)

    @property
    def parameters(self) -> list[nn.Parameter]:
        """The regularised parameters (each once)."""
        unique = {id(s.param): s.param for s in self._slices}
        return list(unique.values())

    def _check_model(self, model: nn.Module | None) -> None:
        if model is not None and not self._param_ids <= {id(p) for p in model.parameters()}:
            raise InputError(f"this {type(self).__name__} was built for another model",
                             hint="build it from the model you train (after shrinking, build a new one)")

    def _lr_of(self, optimizer: torch.optim.Optimizer) -> float:
        lrs = {float(g["lr"]) for g in optimizer.param_groups if any(id(p) in self._param_ids for p in g["params"])}
        if len(lrs) != 1:
            raise InputError(f"the regularised parameters are in optimizer groups with learning rates {sorted(lrs)}",
                             hint="a proximal step needs one learning rate: call prox_step(lr) yourself")
        return lrs.pop()

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Run :meth:`prox_step` with the optimizer's current learning rate after every ``optimizer.step()``.

        Returns the hook handle (``handle.remove()`` detaches it).
        """
        def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self.prox_step(self._lr_of(opt))
        self._lr_of(optimizer)  # fail now, not at the first step
        return optimizer.register_step_post_hook(hook)

    def _squares(self) -> dict[int, torch.Tensor]:
        """Per group, each channel's sum of squares over the regularised slices (differentiable)."""
        out: dict[int, torch.Tensor] = {}
        for s in self._slices:
            sq = s.per_position(torch.square)
            acc = out.get(s.group)
            if acc is None:
                acc = sq.new_zeros(self.group_sizes[s.group])
            out[s.group] = acc.index_add(0, s.channels.to(sq.device), sq)
        return out

    def norms(self) -> dict[int, torch.Tensor]:
        """Per group id with a selected channel, each channel's L2 norm over the regularised roles' slices."""
        with torch.no_grad():
            return {gid: sq.sqrt() for gid, sq in self._squares().items()}

    def __call__(self, model: nn.Module | None = None) -> torch.Tensor:
        """The penalty, to add to the training loss."""
        self._check_model(model)
        return self.strength * self._penalty()

    @abstractmethod
    def _penalty(self) -> torch.Tensor:
        """The penalty before scaling by ``strength``."""

    @abstractmethod
    def prox_step(self, lr: float) -> None:
        """The proximal operator of ``lr * penalty``: shrink the regularised entries, zeroing the small ones."""


class GroupLasso(_ChannelRegularizer):
    """Sum over the selected channels of the L2 norm of all their slices (producers, consumers, norms, biases)."""

    roles = Role.MASKED

    def _penalty(self) -> torch.Tensor:
        total = [(((sq + _EPS).sqrt() - _EPS ** 0.5) * self.selected[gid].to(sq.device)).sum()
                 for gid, sq in self._squares().items()]
        return torch.stack(total).sum()

    def prox_step(self, lr: float) -> None:
        threshold = float(lr) * self.strength
        with torch.no_grad():
            for gid, sq in self._squares().items():
                norm = sq.sqrt()
                factor = torch.clamp(1 - threshold / norm.clamp_min(1e-30), min=0.0)
                factor = torch.where(self.selected[gid].to(factor.device), factor, torch.ones_like(factor))
                for s in self._slices:
                    if s.group == gid:
                        s.scale_(factor)


class BNScaleL1(_ChannelRegularizer):
    """Network slimming: the L1 norm of the selected channels' normalisation scales."""

    roles = (Role.NORM,)

    def _penalty(self) -> torch.Tensor:
        return torch.stack([s.per_position(torch.abs)[s.penalised.to(s.param.device)].sum() for s in self._slices]).sum()

    def prox_step(self, lr: float) -> None:
        threshold = float(lr) * self.strength
        with torch.no_grad():
            for s in self._slices:
                p = s.param
                index = [slice(None)] * p.ndim
                index[s.dim] = s.positions[s.penalised].to(p.device)
                values = p[tuple(index)]
                p[tuple(index)] = values.sign() * (values.abs() - threshold).clamp_min(0)


def _selection(coupling: Coupling, channels: Mapping[int, Iterable[int]] | None) -> dict[int, np.ndarray]:
    """Per prunable group id, a boolean mask of the channels to regularise (never pinned ones)."""
    if channels is None:
        return {g.id: ~g.pinned for g in coupling.groups if g.prunable}
    by_id = {g.id: g for g in coupling.groups}
    out = {}
    for gid, chosen in channels.items():
        group = by_id.get(gid)
        if group is None or not group.prunable:
            raise InputError(f"channels names group {gid!r}, which is not a prunable group of the model",
                             hint=f"prunable groups: {[g.id for g in coupling.groups if g.prunable]}")
        idx = np.asarray(list(chosen), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= group.size):
            raise InputError(f"group {gid} has {group.size} channels, channels= asks for {idx.tolist()}")
        if group.pinned[idx].any():
            raise InputError(f"group {gid}: channels {idx[group.pinned[idx]].tolist()} are pinned and can never be removed")
        mask = np.zeros(group.size, dtype=bool)
        mask[idx] = True
        if mask.any():
            out[gid] = mask
    return out
