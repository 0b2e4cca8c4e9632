"""Sensitivity analysis: prune each group on its own at each ratio, and record the user's metric.

Each trial removes the lowest-scoring channels of one group only. It is evaluated on the
*masked* model (the removed channels zeroed in a copy, :func:`graphprune.mask`), which
computes exactly what the shrunk model computes (that is what :func:`graphprune.verify`
proves) without a rewrite per trial, so a sweep over every group costs one copy per trial.

>>> import torch, graphprune
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
>>> x = torch.randn(2, 3, 8, 8)
>>> report = graphprune.sensitivity(model, lambda m: float(m(x).detach().abs().mean()), ratios=(0.5,), example_inputs=x)
>>> [(r.layers, r.ratio, r.kept) for r in report.rows]
[('0', 0.5, 4)]
>>> report.to_markdown().splitlines()[0]
'| group | layers | channels | ratio | kept | metric | change |'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..api import couple
from ..base.checks import check_fraction, check_model
from ..base.errors import InputError
from ..coupling import Scope
from ..planning import Budget, PlanBudget
from ..planning.build import build_plan
from ..planning.importance import Importance, bind_importance, resolve_importance
from ..planning.planner import score
from ..planning.scope import removal_count
from ..rewrite import mask

__all__ = ["SensitivityRow", "Sensitivity", "sensitivity"]


@dataclass(frozen=True)
class SensitivityRow:
    """One trial: ``ratio`` of one group's channels removed, and the metric measured."""

    group: int
    layers: str
    channels: int
    ratio: float
    kept: int
    metric: float


@dataclass
class Sensitivity:
    """The sweep: the dense model's metric and one row per (group, ratio)."""

    baseline: float
    rows: list[SensitivityRow]

    def to_markdown(self) -> str:
        lines = ["| group | layers | channels | ratio | kept | metric | change |", "|---:|---|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            lines.append(f"| {r.group} | {r.layers} | {r.channels} | {r.ratio:g} | {r.kept} | {r.metric:.4g} | {r.metric - self.baseline:+.4g} |")
        return "\n".join(lines)

    def plot(self, path: str | Path, *, metric_name: str = "metric", max_legend: int = 20) -> Path:
        """A PNG with one curve per group: the metric against the fraction of that group removed."""
        import matplotlib

        matplotlib.use("Agg")  # headless: no display needed, and no GUI backend state touched
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        by_group: dict[int, list[SensitivityRow]] = {}
        for r in self.rows:
            by_group.setdefault(r.group, []).append(r)
        for gid, rows in by_group.items():
            rows = sorted(rows, key=lambda r: r.ratio)
            ax.plot([0.0] + [r.ratio for r in rows], [self.baseline] + [r.metric for r in rows], marker="o",
                    label=f"{rows[0].layers[:30]} ({rows[0].channels})")
        ax.set_xlabel("fraction of the group's channels removed")
        ax.set_ylabel(metric_name)
        ax.set_title("Sensitivity of each channel group, pruned alone")
        ax.grid(alpha=0.3)
        if len(by_group) <= max_legend:
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def sensitivity(
    model: nn.Module,
    evaluate_fn: Callable[[nn.Module], float],
    ratios: Sequence[float] = (0.25, 0.5, 0.75),
    *,
    example_inputs: Any = None,
    importance: str | Importance = "l2",
    scope: Scope | None = None,
    plot: str | Path | None = None,
) -> Sensitivity:
    """Prune each prunable group alone at each ratio; ``evaluate_fn(model) -> float`` scores every trial.

    The model is never modified; ``evaluate_fn`` gets a masked copy (same class, same shapes).
    With ``plot``, also writes the PNG there.
    """
    check_model(model)
    ratios = [check_fraction(r, "ratios", high_closed=False) for r in ratios]
    if not ratios:
        raise InputError("ratios must list at least one fraction in (0, 1)")
    name, scorer = resolve_importance(importance)
    coupling = couple(model, example_inputs=example_inputs, scope=scope)
    scores, orders = score(coupling, bind_importance(scorer, coupling), Budget(ratio=max(ratios)))
    baseline = float(evaluate_fn(model))
    rows = []
    for group in coupling.groups:
        if group.id not in orders:
            continue
        for ratio in ratios:
            count = min(removal_count(ratio, group.num_prunable), len(orders[group.id]))
            if count == 0:
                continue
            record = PlanBudget(Budget(ratio=ratio), note=f"sensitivity: group {group.id} alone")
            trial = build_plan(coupling, {group.id: orders[group.id][:count]}, scores, name, record)
            metric = float(evaluate_fn(mask(model, trial)))
            rows.append(SensitivityRow(group.id, ", ".join(coupling.module_paths(group)), group.size, ratio,
                                       group.size - count, metric))
    report = Sensitivity(baseline, rows)
    if plot is not None:
        report.plot(plot)
    return report
