"""Stage 3: the plan, a typed and serialisable record of what to remove, and how it is chosen.

A :class:`Plan` is everything :func:`graphprune.apply` needs to rebuild the
shrunk model from a fresh copy of the original: the kept indices of every
sliced tensor, and the graph constants to rewrite. It also lists the groups, so
a person can review what was decided and why.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .couple import ChannelGroup, Coupling
from .errors import InputError, PlanError
from .importance import Importance

__all__ = ["Member", "GroupPlan", "TensorEdit", "GraphEdit", "InputSpec", "Plan", "make_plan", "check_ratio", "model_signature", "score_group", "choose"]

FORMAT_VERSION = 1


@dataclass
class Member:
    """One tensor dim touched by a group."""

    tensor: str
    dim: int
    role: str
    node: str


@dataclass
class GroupPlan:
    """A group of coupled channels: how many there are, which are fixed, which are removed."""

    id: int
    channels: int
    sources: list[str]
    members: list[Member]
    pinned: list[int]
    removed: list[int]
    scores: list[float] | None = None
    inexact: list[str] = field(default_factory=list)  # why removing these channels is approximate

    @property
    def kept(self) -> list[int]:
        removed = set(self.removed)
        return [c for c in range(self.channels) if c not in removed]


@dataclass
class TensorEdit:
    """A parameter or buffer to slice: its original shape, and the indices kept along each pruned dim."""

    name: str
    shape: list[int]
    keep: dict[int, list[int]]
    roles: dict[int, str]
    aliases: list[str] = field(default_factory=list)


@dataclass
class GraphEdit:
    """An integer argument of an FX node (a ``view`` size) to rewrite; ``path`` indexes into args/kwargs."""

    node: str
    path: list[Any]
    old: int
    new: int


@dataclass
class InputSpec:
    """Shape and dtype of one example input, so a plan can check its rewrite without the original inputs."""

    shape: list[int]
    dtype: str


@dataclass
class Plan:
    """A reviewable, replayable pruning plan. Round-trips through JSON."""

    model: str
    ratio: float
    importance: str
    groups: list[GroupPlan]
    tensors: dict[str, TensorEdit]
    graph_edits: list[GraphEdit]
    inputs: list[InputSpec | None]
    output_shapes: list[list[int]]
    leaf_modules: list[str] = field(default_factory=list)
    model_signature: str = ""
    inexact: list[str] = field(default_factory=list)  # reasons of the groups that lose channels
    format_version: int = FORMAT_VERSION
    budget: dict[str, Any] | None = None  # how the removals were chosen (target, scope, measured result)

    @property
    def exact(self) -> bool:
        """True when the shrunk model computes exactly what the original does on the kept channels."""
        return not self.inexact

    # -- summaries ----------------------------------------------------------------
    @property
    def removed_channels(self) -> int:
        return sum(len(g.removed) for g in self.groups)

    @property
    def kept_fraction(self) -> float:
        """Fraction of the prunable channels (those of groups not wholly pinned) that the plan keeps."""
        groups = [g for g in self.groups if len(g.pinned) < g.channels]
        total = sum(g.channels for g in groups)
        return 1 - sum(len(g.removed) for g in groups) / total if total else 1.0

    def summary(self) -> str:
        """One line per group that loses channels."""
        lines = [f"{self.model}: {len(self.groups)} groups, {self.removed_channels} channels removed"]
        if self.budget:
            b = self.budget
            got = f", got {b['actual_fraction']:.3f} of dense" if "actual_fraction" in b else ""
            lines.append(f"  budget: {b['kind']} {b.get(b['kind'])}{got}{'; ' + b['note'] if 'note' in b else ''}")
        for g in self.groups:
            if g.removed:
                lines.append(f"  group {g.id}: {g.channels} -> {g.channels - len(g.removed)} ({', '.join(g.sources[:3])}{', ...' if len(g.sources) > 3 else ''})"
                             + (" [approximate]" if g.inexact else ""))
        if self.inexact:
            lines.append(f"  not exact: {'; '.join(self.inexact[:3])}{'; ...' if len(self.inexact) > 3 else ''}")
        return "\n".join(lines)

    # -- serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if not isinstance(data, dict):
            raise PlanError(f"a plan is a JSON object, not {type(data).__name__}")
        if data.get("format_version") != FORMAT_VERSION:
            raise PlanError(f"plan format {data.get('format_version')} is not supported (expected {FORMAT_VERSION})")
        try:
            return cls._from_dict(dict(data))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PlanError(f"not a valid graphprune plan: {type(exc).__name__}: {exc}",
                            hint="plans come from plan.to_json() / plan.save(path)") from exc

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> Plan:
        data["groups"] = [GroupPlan(**{**g, "members": [Member(**m) for m in g["members"]]}) for g in data["groups"]]
        data["tensors"] = {
            name: TensorEdit(**{**t, "keep": {int(k): v for k, v in t["keep"].items()}, "roles": {int(k): v for k, v in t["roles"].items()}})
            for name, t in data["tensors"].items()
        }
        data["graph_edits"] = [GraphEdit(**e) for e in data["graph_edits"]]
        data["inputs"] = [InputSpec(**i) if i is not None else None for i in data["inputs"]]
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        if not isinstance(text, (str, bytes, bytearray)):
            raise InputError(f"Plan.from_json takes the JSON text, not {type(text).__name__}",
                             hint="to read a file use Plan.load(path)")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"not a graphprune plan: invalid JSON ({exc})") from exc
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_json(Path(path).read_text())


def model_signature(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer name and shape: which architecture a plan belongs to."""
    h = hashlib.sha256()
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, tensor in sorted(named, key=lambda item: item[0]):
        h.update(f"{name}:{tuple(tensor.shape)};".encode())
    return h.hexdigest()[:16]


def check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (0 <= ratio < 1) or math.isnan(ratio):
        raise InputError(f"ratio must be a number in [0, 1), got {ratio!r}", hint="ratio is the fraction of each group's channels to remove")
    return float(ratio)


def _remove_count(group: ChannelGroup, ratio: float) -> int:
    if not group.prunable:
        return 0
    wanted = math.floor(ratio * group.size + 0.5)
    return max(0, min(wanted, group.num_prunable, group.size - 1))


def choose(group: ChannelGroup, scores: np.ndarray, count: int) -> list[int]:
    """The ``count`` least important channels the group may lose (fewer if it cannot lose that many)."""
    return sorted(int(c) for c in group.removal_order(scores)[:count])


def _input_spec(value: Any) -> InputSpec | None:
    if isinstance(value, torch.Tensor):
        return InputSpec(list(value.shape), str(value.dtype).removeprefix("torch."))
    return None


def _output_shapes(coupling: Coupling) -> list[list[int]]:
    out = next(n for n in coupling.gm.graph.nodes if n.op == "output")
    shapes: list[list[int]] = []
    torch.fx.node.map_aggregate(out.args[0], lambda n: shapes.append(list(n.meta["tensor_meta"].shape)) if isinstance(n, torch.fx.Node) and "tensor_meta" in n.meta and hasattr(n.meta["tensor_meta"], "shape") else None)
    return shapes


def make_plan(
    coupling: Coupling,
    ratio: float,
    importance: Importance,
    *,
    importance_name: str,
    model: torch.nn.Module,
    example_args: tuple[Any, ...],
    leaf_modules: tuple[str, ...] = (),
    decisions: Mapping[int, tuple[list[int], np.ndarray | None]] | None = None,
    budget: dict[str, Any] | None = None,
) -> Plan:
    """Remove ``round(ratio * size)`` of the lowest-scoring free channels of every prunable group.

    ``decisions`` (group id -> (removed channels, scores)), when given, replaces that rule: it is
    how :mod:`graphprune.budget` hands over a plan chosen under a MACs, parameter or latency budget.
    Groups that would be approximate (a LayerNorm's statistics) are kept whole by pinning them
    (``plan(..., exact_only=True)``), so every planner honours it.
    """
    ratio = check_ratio(ratio)
    ctx = coupling.ctx
    tensors = {name: ctx.tensor(name) for name, _ in ctx.uses}
    n_channels = len(coupling.channel_of_atom) and int(coupling.channel_of_atom.max()) + 1
    removed_global = np.zeros(n_channels, dtype=bool)
    groups: list[GroupPlan] = []
    inexact: list[str] = []
    for group in coupling.groups:
        scores = None
        removed: list[int] = []
        if decisions is not None:
            removed, scores = decisions.get(group.id, ([], None))
            if set(removed) & set(np.nonzero(group.pinned)[0].tolist()) or len(removed) >= group.size:
                raise PlanError(f"group {group.id}: the decision removes pinned channels or every channel")
        elif count := _remove_count(group, ratio):
            scores = score_group(importance, group, tensors)
            removed = choose(group, scores, count)
        if removed:
            removed_global[group.channel_ids[removed]] = True
            inexact.extend(r for r in group.inexact if r not in inexact)
        groups.append(
            GroupPlan(
                id=group.id,
                channels=group.size,
                sources=group.sources,
                members=[Member(m.use.tensor, m.use.dim, m.use.role, m.use.node) for m in group.members],
                pinned=np.nonzero(group.pinned)[0].tolist(),
                removed=removed,
                scores=None if scores is None else [float(s) for s in scores],
                inexact=list(group.inexact),
            )
        )

    kept_atom = ~removed_global[coupling.channel_of_atom] if n_channels else np.ones(0, dtype=bool)
    edits: dict[str, TensorEdit] = {}
    for use in ctx.uses.values():
        keep = kept_atom[use.atoms]
        if keep.all():
            continue
        if not keep.any():
            raise PlanError(f"the plan would remove every entry of {use.tensor} along dim {use.dim}",
                            node=_node_named(coupling.gm, use.node))
        tensor = tensors[use.tensor]
        edit = edits.setdefault(use.tensor, TensorEdit(use.tensor, list(tensor.shape), {}, {}, list(ctx.aliases(use.tensor))))
        edit.keep[use.dim] = np.nonzero(keep)[0].tolist()
        edit.roles[use.dim] = use.role

    graph_edits = []
    for shape_edit in ctx.shape_edits:
        new = _kept_along(kept_atom[shape_edit.block.atoms], shape_edit.axis, lambda: _node_named(coupling.gm, shape_edit.node))
        if new != shape_edit.block.atoms.shape[shape_edit.axis]:
            graph_edits.append(GraphEdit(shape_edit.node, list(shape_edit.path), shape_edit.old, new))

    return Plan(
        model=type(model).__qualname__,
        ratio=ratio,
        importance=importance_name,
        groups=groups,
        tensors=dict(sorted(edits.items())),
        graph_edits=graph_edits,
        inputs=[_input_spec(a) for a in example_args],
        output_shapes=_output_shapes(coupling),
        leaf_modules=list(leaf_modules),
        model_signature=model_signature(model),
        inexact=inexact,
        budget=budget,
    )


def _node_named(gm: torch.fx.GraphModule, name: str) -> torch.fx.Node | None:
    """The node called ``name``; only errors look it up, so a linear scan costs nothing on the way to success."""
    return next((n for n in gm.graph.nodes if n.name == name), None)


def score_group(importance: Importance, group: ChannelGroup, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
    """The scorer's scores for ``group``, checked: one finite float per channel."""
    scores = np.asarray(importance(group, tensors), dtype=np.float64)
    if scores.shape != (group.size,):
        raise PlanError(f"the importance returned {scores.shape} scores for a group of {group.size} channels")
    if not np.all(np.isfinite(scores)):
        raise PlanError(f"the importance returned non-finite scores for the group of {', '.join(group.sources[:3])}")
    return scores


def _kept_along(kept: np.ndarray, axis: int, node: Callable[[], torch.fx.Node | None] = lambda: None) -> int:
    """How many indices along ``axis`` survive; the kept set of a multi-dim block must be a grid."""
    if kept.ndim == 1:
        return int(kept.sum())
    masks = [np.any(kept, axis=tuple(a for a in range(kept.ndim) if a != k)) for k in range(kept.ndim)]
    grid = np.ones_like(kept)
    for k, mask in enumerate(masks):
        shape = [1] * kept.ndim
        shape[k] = -1
        grid = grid & mask.reshape(shape)
    if not np.array_equal(grid, kept):
        raise PlanError(
            "the kept channels of a multi-dimensional block (heads x head_dim, groups) do not form a grid",
            node=node(),
            hint="this reshape splits channels into a grid (a channel shuffle, attention heads): keep them with "
            "ignore=[the producing module]",
        )
    return int(masks[axis].sum())
