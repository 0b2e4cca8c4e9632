"""What to prune to: the :class:`Budget` record, the one way to say it.

Exactly one target:

- ``ratio``: every prunable group loses that fraction of its channels (``shrink(model, 0.5)`` is
  ``Budget(ratio=0.5)``);
- ``macs``, ``params`` or ``latency``: a fraction of the dense model's MACs, parameters or
  measured latency to keep. Channels of all groups compete (``allocation="global"``), or every
  group loses the same fraction, the smallest that meets the target (``allocation="uniform"``).

and the scope of the decision: ``overrides`` (a ratio for the groups of some modules),
``max_ratio`` (no group loses more), ``round_to`` (kept widths a multiple of N, or ``"auto"`` for
the :class:`~graphprune.Hardware`), ``tradeoff`` (how a global budget weighs importance against
savings) and ``exact_only`` (groups whose removal would be approximate keep every channel).

>>> Budget(macs=0.5).kind, Budget(0.3).target
('macs', 0.3)
>>> Budget(latency=0.5, tradeoff=1.0).to_dict()
{'latency': 0.5, 'tradeoff': 1.0}
>>> Budget(macs=0.5, ratio=0.5)
Traceback (most recent call last):
...
graphprune.InputError: give exactly one of ratio, macs, params, latency (got ['ratio', 'macs'])
hint: Budget(0.5) removes half of every group's channels; Budget(macs=0.5) keeps half the MACs
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..base.checks import check_flag, check_fraction, check_ratio
from ..base.errors import InputError
from ..base.frozen import FrozenDict
from ..measure import Hardware

__all__ = ["Budget", "KINDS", "ALLOCATIONS", "as_budget", "resolve_round_to"]

KINDS = ("ratio", "macs", "params", "latency")
ALLOCATIONS = ("global", "uniform")


@dataclass(frozen=True)
class Budget:
    """What to prune to. Give exactly one of ``ratio`` (the fraction of every group's channels to remove, in
    [0, 1)), ``macs``, ``params`` or ``latency`` (the fraction of the dense model's to keep, in (0, 1]).

    - ``overrides``: fnmatch patterns on module paths (``"layer4.*"``, or ``"layer4"`` for everything in it)
      mapped to the ratio for the groups those modules produce; the first match wins, and under a global
      budget those groups are fixed while the rest compete. A pattern that matches no producing module is
      an error, not silently ignored.
    - ``max_ratio``: the largest fraction any group loses.
    - ``round_to``: every kept width a multiple of N, or ``"auto"``: the multiple the hardware's device and
      dtype run fastest at (see :func:`resolve_round_to`). A latency budget rounds by default.
    - ``tradeoff`` (in [0, 1], global budgets): 0 ranks channels by importance alone and the cost decides only
      where to stop (the default for MACs and parameters); above 0 a knapsack removes what loses the least
      balanced value per (unit of cost saved) ** tradeoff (1 is the default for latency).
    - ``allocation`` (budgets other than a ratio): ``"global"`` lets groups compete; ``"uniform"`` gives every
      group the same ratio, the smallest whose model meets the target (at most the target, counted).
    - ``exact_only``: groups whose removal changes what the kept channels compute (a LayerNorm's statistics)
      keep every channel, so the plan is exact.
    """

    ratio: float | None = None
    macs: float | None = None
    params: float | None = None
    latency: float | None = None
    overrides: Mapping[str, float] = field(default_factory=dict)
    max_ratio: float | None = None
    round_to: int | str | None = None
    tradeoff: float | None = None
    allocation: str = "global"
    exact_only: bool = False

    def __post_init__(self) -> None:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise InputError(
                f"give exactly one of ratio, macs, params, latency (got {given or 'none'})",
                hint="Budget(0.5) removes half of every group's channels; Budget(macs=0.5) keeps half the MACs",
            )
        if self.ratio is not None:
            object.__setattr__(self, "ratio", check_ratio(self.ratio))
        for kind in KINDS[1:]:
            if getattr(self, kind) is not None:
                object.__setattr__(self, kind, check_fraction(getattr(self, kind), kind,
                                                              hint=f"{kind} is the fraction of the dense model's to keep"))
        if not isinstance(self.overrides, Mapping):
            raise InputError(f"overrides maps module-path patterns to ratios, not {type(self.overrides).__name__}")
        for pattern, r in self.overrides.items():
            if not isinstance(pattern, str):
                raise InputError(f"overrides keys are module-path patterns, got {pattern!r}")
            check_ratio(r, f"overrides[{pattern!r}]")
        object.__setattr__(self, "overrides", FrozenDict(self.overrides))
        if self.max_ratio is not None:
            object.__setattr__(self, "max_ratio", check_fraction(self.max_ratio, "max_ratio", low_closed=True))
        if self.tradeoff is not None:
            if self.kind == "ratio":
                raise InputError("tradeoff applies to a MACs, params or latency budget, not a uniform ratio")
            object.__setattr__(self, "tradeoff", check_fraction(self.tradeoff, "tradeoff", low_closed=True))
        if not (self.round_to is None or self.round_to == "auto" or
                (isinstance(self.round_to, int) and not isinstance(self.round_to, bool) and self.round_to >= 1)):
            raise InputError(f"round_to must be a positive int or 'auto', got {self.round_to!r}")
        if self.allocation not in ALLOCATIONS:
            raise InputError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if self.allocation != "global" and self.kind == "ratio":
            raise InputError("allocation applies to a MACs, params or latency budget; a ratio is uniform already")
        check_flag(self.exact_only, "exact_only")

    @property
    def kind(self) -> str:
        """Which target this is: ``"ratio"``, ``"macs"``, ``"params"`` or ``"latency"``."""
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def target(self) -> float:
        return float(getattr(self, self.kind))

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from their defaults, JSON-ready."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if value != default:
                out[f.name] = dict(value) if f.name == "overrides" else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Budget:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def as_budget(budget: Any) -> Budget:
    """A :class:`Budget` from a budget or a plain number (a uniform ratio)."""
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        return Budget(ratio=budget)
    raise InputError(f"the budget is a ratio (a number in [0, 1)) or a graphprune.Budget, not {budget!r}",
                     hint="shrink(model, 0.5), or shrink(model, graphprune.Budget(macs=0.5))")


def resolve_round_to(round_to: int | str | None, hardware: Hardware) -> int:
    """The width multiple to use. ``"auto"``: 8 on CUDA in fp16/bf16 (tensor-core tiles; 129 channels run
    about 2x slower than 128 on an H200 in bf16), 4 on CUDA in fp32 (TF32 tiles); on CPU the SIMD width
    in floats that oneDNN blocks channels by: 16 with AVX-512, 8 otherwise.

    >>> resolve_round_to("auto", Hardware("cuda", "bfloat16")), resolve_round_to(None, Hardware())
    (8, 1)
    """
    if round_to is None:
        return 1
    if round_to != "auto":
        return int(round_to)
    if hardware.is_cuda:
        return 8 if hardware.dtype in ("float16", "bfloat16") else 4
    return 16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else 8
