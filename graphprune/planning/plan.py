"""Stage 3's result: the plan, a typed, versioned and serialisable record of what to remove and why.

A :class:`Plan` is everything :func:`graphprune.apply` needs to rebuild the shrunk model from
a fresh copy of the original: the kept indices of every sliced tensor, and the graph constants
to rewrite. It also lists the groups and records how the removals were chosen
(:class:`PlanBudget`), so a person can review what was decided and why, and replay it.

>>> import torch, graphprune
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
>>> plan = graphprune.plan(net, 0.5, example_inputs=torch.randn(1, 3, 8, 8))
>>> again = Plan.from_json(plan.to_json())
>>> again == plan, again.budget.request.to_dict(), again.tensors["0.weight"].keep[0] == plan.groups[0].kept
(True, {'ratio': 0.5}, True)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from ..base.errors import InputError, PlanError
from ..base.running import named_tensors
from .budget import Budget

__all__ = ["Member", "GroupPlan", "TensorEdit", "GraphEdit", "InputSpec", "PlanBudget", "Plan", "model_signature",
           "FORMAT_VERSION"]

FORMAT_VERSION = 2  # 2: plan.budget is a PlanBudget record, the ratio lives in it; format 1 is still read


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
    """One example input, so that a plan can check its rewrite without the original inputs: a tensor's shape
    and dtype, or a JSON constant (``value``) the model was called with."""

    shape: list[int] | None = None
    dtype: str | None = None
    value: Any = None

    @classmethod
    def of(cls, value: Any) -> InputSpec | None:
        """The spec of an example input; None when it is neither a tensor nor a JSON constant (a list of tensors)."""
        if isinstance(value, torch.Tensor):
            return cls(list(value.shape), str(value.dtype).removeprefix("torch."))
        if value is None or isinstance(value, (bool, int, float, str)):
            return cls(value=value)
        return None

    def build(self, device: torch.device | str = "cpu", *, random: bool = False) -> Any:
        """An input of this spec: zeros (or standard normal values) of the shape and dtype, or the constant."""
        if self.shape is None:
            return self.value
        dtype = getattr(torch, self.dtype)
        if random and dtype.is_floating_point:
            return torch.randn(self.shape, dtype=dtype, device=device)
        return torch.zeros(self.shape, dtype=dtype, device=device)


@dataclass
class PlanBudget:
    """How a plan's removals were chosen: the :class:`~graphprune.Budget` asked for and what was achieved.

    ``round_to`` is the width multiple used (``"auto"`` resolved). Budgets other than a ratio also record
    the ``dense`` figure (MACs, parameters or seconds), the ``goal`` (the target as such a figure), the
    ``predicted`` and ``measured`` figures of the chosen plan and how many ``rounds`` it took. A latency
    plan's ``measured`` is a fresh timing, not the one it was ``chosen_on`` (which noise biases low), and
    it records how it was measured: the ``hardware`` key, the ``runtime``, the host's ``allocator`` and
    how many layer timings were new (``table_measurements``). ``note`` says what else happened (a
    fallback to the dense model).
    """

    request: Budget
    round_to: int = 1
    dense: float | None = None
    goal: float | None = None
    predicted: float | None = None
    measured: float | None = None
    rounds: int = 0
    chosen_on: float | None = None
    hardware: str | None = None
    runtime: str | None = None
    allocator: str | None = None
    table_measurements: int | None = None
    note: str | None = None

    @property
    def kind(self) -> str:
        return self.request.kind

    @property
    def measured_fraction(self) -> float | None:
        """The measured figure as a fraction of the dense model's, where both were measured."""
        return self.measured / self.dense if self.measured is not None and self.dense else None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        out["request"] = self.request.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanBudget:
        """Read a record written by :meth:`to_dict`, or a format-1 plan's flat ``budget`` dict."""
        if "request" in data:
            return cls(**{**data, "request": Budget.from_dict(data["request"])})
        # Format 1: the Budget's fields, the kind, and the outcome under older names, in one dict.
        return cls(request=Budget.from_dict(data), round_to=data.get("round_to_resolved", 1), dense=data.get("dense"),
                   goal=data.get("requested"), predicted=data.get("predicted"), measured=data.get("actual"),
                   rounds=data.get("rounds", 0), chosen_on=data.get("chosen_on"), hardware=data.get("hardware"),
                   runtime=data.get("runtime"), allocator=data.get("allocator"),
                   table_measurements=data.get("table_measurements"), note=data.get("note"))

    def describe(self) -> str:
        """One line: the budget, and the figure achieved where one was measured."""
        request = self.request
        text = f"budget: {request.kind} {request.target:g}"
        if request.allocation != "global":
            text += f" ({request.allocation})"
        if self.measured_fraction is not None:
            text += f"; predicted {self.predicted / self.dense:.3f}, measured {self.measured_fraction:.3f} of dense"
            if request.kind == "latency":
                text += f" ({self.dense * 1e3:.3f} -> {self.measured * 1e3:.3f} ms)"
        return text + (f"; {self.note}" if self.note else "")


@dataclass
class Plan:
    """A reviewable, replayable pruning plan. Round-trips through JSON (:meth:`to_json`, :meth:`from_json`)."""

    model: str
    importance: str
    groups: list[GroupPlan]
    tensors: dict[str, TensorEdit]
    graph_edits: list[GraphEdit]
    inputs: list[InputSpec | None]
    output_shapes: list[list[int]]
    budget: PlanBudget
    leaf_modules: list[str] = field(default_factory=list)
    capture: str = "fx"  # how the graph was captured: "fx", "export" or "export-strict"; a replay uses the same
    model_signature: str = ""
    inexact: list[str] = field(default_factory=list)  # reasons of the groups that lose channels
    format_version: int = FORMAT_VERSION

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
        """A header, the budget, then one line per group that loses channels."""
        pruned = [g for g in self.groups if g.removed]
        lines = [f"{self.model}: {len(self.groups)} groups, {len(pruned)} of them pruned, "
                 f"{self.removed_channels} channels removed", f"  {self.budget.describe()}"]
        for g in pruned:
            sources = ", ".join(g.sources[:3]) + (", ..." if len(g.sources) > 3 else "")
            lines.append(f"  group {g.id}: {g.channels} -> {g.channels - len(g.removed)} ({sources})"
                         + (" [approximate]" if g.inexact else ""))
        if self.inexact:
            lines.append(f"  not exact: {'; '.join(self.inexact[:3])}{'; ...' if len(self.inexact) > 3 else ''}")
        return "\n".join(lines)

    def example_inputs(self, device: torch.device | str = "cpu", *, random: bool = False) -> tuple[Any, ...] | None:
        """Inputs of the recorded specs (zeros, or random values), or None if one of them was not recorded."""
        if any(spec is None for spec in self.inputs):
            return None
        return tuple(spec.build(device, random=random) for spec in self.inputs)

    # -- serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, budget=None))  # the budget record writes itself: its Budget is not a plain dataclass tree
        out["budget"] = self.budget.to_dict()
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if not isinstance(data, dict):
            raise PlanError(f"a plan is a JSON object, not {type(data).__name__}")
        if data.get("format_version") not in (1, FORMAT_VERSION):
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
            name: TensorEdit(**{**t, "keep": {int(k): v for k, v in t["keep"].items()},
                                "roles": {int(k): v for k, v in t["roles"].items()}})
            for name, t in data["tensors"].items()
        }
        data["graph_edits"] = [GraphEdit(**e) for e in data["graph_edits"]]
        data["inputs"] = [InputSpec(**i) if i is not None else None for i in data["inputs"]]
        ratio = data.pop("ratio", None)  # format 1 kept a uniform ratio here, and no budget for it
        budget = data.get("budget") or {"ratio": ratio}
        data["budget"] = PlanBudget.from_dict(budget)
        data["format_version"] = FORMAT_VERSION
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


def model_signature(model: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """A hash of every parameter and buffer name and shape: which architecture a plan belongs to. ``model`` may
    be the table of them (:func:`~graphprune.base.running.named_tensors`) when the caller has it."""
    named = named_tensors(model) if isinstance(model, torch.nn.Module) else model
    text = "".join(f"{name}:{tuple(named[name].shape)};" for name in sorted(named))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
