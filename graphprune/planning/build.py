"""The build step: a :class:`~graphprune.planning.plan.Plan` from the channels each group loses.

Precondition: no group loses a pinned channel or all of its channels. Transform: the kept indices
of every tensor slice the removed channels touch, and the new value of every graph constant that
counts them. Postcondition: every tensor keeps an entry along each pruned dim, and the kept
channels of a multi-dimensional block (heads x head_dim) form a grid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch.fx

from ..base.errors import PlanError
from ..capture.graph import nodes_by_name, output_shapes
from ..coupling import Coupling
from .plan import GraphEdit, GroupPlan, InputSpec, Member, Plan, PlanBudget, TensorEdit, model_signature

__all__ = ["build_plan"]


def build_plan(coupling: Coupling, removed: Mapping[int, list[int]], scores: Mapping[int, np.ndarray],
               importance: str, budget: PlanBudget) -> Plan:
    """The plan that removes ``removed[g]`` (channel indices) from each group ``g``; ``scores`` are recorded for
    the groups that lose channels."""
    removed_global = np.zeros(coupling.n_channels, dtype=bool)
    groups: list[GroupPlan] = []
    inexact: list[str] = []
    for group in coupling.groups:
        gone = np.sort(np.asarray(removed.get(group.id, ()), dtype=np.int64)).tolist()
        if len(gone) >= group.size or group.pinned[gone].any():
            raise PlanError(f"group {group.id}: the decision removes pinned channels or every channel")
        if gone:
            removed_global[group.channel_ids[gone]] = True
            inexact.extend(r for r in group.inexact if r not in inexact)
        group_scores = scores.get(group.id) if gone else None
        groups.append(GroupPlan(
            id=group.id, channels=group.size, sources=list(group.sources),
            members=[Member(m.use.tensor, m.use.dim, m.use.role, m.use.node) for m in group.members],
            pinned=np.nonzero(group.pinned)[0].tolist(), removed=gone,
            scores=None if group_scores is None else np.asarray(group_scores, dtype=np.float64).tolist(),
            inexact=list(group.inexact),
        ))

    nodes = _lazy_nodes(coupling)
    kept_atom = ~removed_global[coupling.channel_of_atom] if coupling.n_channels else np.ones(0, dtype=bool)
    edits: dict[str, TensorEdit] = {}
    atoms, bounds = coupling.use_atoms
    keep_all = kept_atom[atoms]
    kept_before = np.zeros(len(keep_all) + 1, dtype=np.int64)
    np.cumsum(keep_all, out=kept_before[1:])
    kept_count = kept_before[bounds[1:]] - kept_before[bounds[:-1]]
    kept_lists: dict[bytes, list[int]] = {}  # a layer's weight, bias, norm and the next layer's inputs keep alike
    for i in np.nonzero(kept_count < np.diff(bounds))[0].tolist():  # the uses that lose an entry
        use = coupling.uses[i]
        keep = keep_all[bounds[i]:bounds[i + 1]]
        if not kept_count[i]:
            raise PlanError(f"the plan would remove every entry of {use.tensor} along dim {use.dim}",
                            node=nodes().get(use.node))
        tensor = coupling.tensors[use.tensor]
        edit = edits.setdefault(use.tensor, TensorEdit(use.tensor, list(tensor.shape), {}, {},
                                                       list(coupling.aliases[use.tensor])))
        key = keep.tobytes()
        kept = kept_lists.get(key)
        if kept is None:
            kept = kept_lists[key] = np.nonzero(keep)[0].tolist()
        edit.keep[use.dim] = list(kept)  # each edit its own list: editing one must not edit another
        edit.roles[use.dim] = use.role

    graph_edits = []
    for shape_edit in coupling.shape_edits:
        new = _kept_along(kept_atom[shape_edit.block.atoms], shape_edit.axis, lambda: nodes().get(shape_edit.node))
        if new != shape_edit.block.atoms.shape[shape_edit.axis]:
            graph_edits.append(GraphEdit(shape_edit.node, list(shape_edit.path), shape_edit.old, new))

    return Plan(
        model=type(coupling.model).__qualname__,
        importance=importance,
        groups=groups,
        tensors=dict(sorted(edits.items())),
        graph_edits=graph_edits,
        inputs=[InputSpec.of(a) for a in coupling.example_args],
        output_shapes=output_shapes(coupling.gm),
        budget=budget,
        leaf_modules=list(coupling.leaf_modules),
        capture=coupling.captured.method,
        model_signature=model_signature(coupling.model),
        inexact=inexact,
    )


def _lazy_nodes(coupling: Coupling) -> Callable[[], dict[str, torch.fx.Node]]:
    """The graph's nodes by name, looked up only when an error names one: success never pays for the table."""
    table: dict[str, torch.fx.Node] = {}

    def nodes() -> dict[str, torch.fx.Node]:
        if not table:
            table.update(nodes_by_name(coupling.gm))
        return table

    return nodes


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
            "Scope(ignore=[the producing module])",
        )
    return int(masks[axis].sum())
