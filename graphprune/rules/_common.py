"""Helpers shared by the rule families."""

from __future__ import annotations

from typing import Any

import torch.fx

from ..channels import ChannelMap, LayoutError

__all__ = ["input_arg", "arg", "pass_through", "join_rows", "join_tensor_arg"]


def arg(node: torch.fx.Node, index: int, name: str, default: Any = None) -> Any:
    """A call argument by position or keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def input_arg(node: torch.fx.Node) -> Any:
    """The tensor an op acts on: a module's first input, a function's ``input``, a method's ``self``."""
    return arg(node, 0, "input")


def pass_through(ctx, node, x: Any = None) -> ChannelMap | None:
    """Channels flow unchanged from ``x`` to the output: same dims, same sizes where tracked."""
    x = input_arg(node) if x is None else x
    cmap = ctx.channels(x)
    in_shape, out_shape = ctx.shape(x), ctx.shape(node)
    if cmap is None or in_shape is None:
        return None if out_shape is None else ChannelMap()
    cmap = cmap.normalized(len(in_shape))
    if out_shape is None or len(out_shape) != len(in_shape):
        if cmap:
            raise LayoutError(f"the op turns a {len(in_shape)}-D tensor into {out_shape}, so channels cannot pass through")
        return None if out_shape is None else ChannelMap()
    for d in cmap.dims:
        if out_shape[d] != in_shape[d]:
            raise LayoutError(f"the op changes the size of channel dim {d} from {in_shape[d]} to {out_shape[d]}")
    return cmap


def join_rows(ctx, atoms, rows: int):
    """Reshape ``atoms`` into ``rows`` equal rows and join each row into one channel; returns the (rows, width) grid.

    Removing whole rows keeps every remaining row at its width: whole GroupNorm groups,
    whole attention heads.
    """
    grid = atoms.reshape(rows, -1)
    for j in range(1, grid.shape[1]):
        ctx.join(grid[:, 0], grid[:, j])
    return grid


def join_tensor_arg(ctx, value: Any, dim: int, atoms, what: str) -> None:
    """A weight or bias passed as a graph value (a get_attr): its ``dim`` follows ``atoms``, or they are pinned."""
    if value is None:
        return
    cmap = ctx.channels(value)
    theirs = cmap.at(dim) if cmap else None
    if theirs is None:
        ctx.pin(atoms, f"{what} whose parameter cannot shrink")
    else:
        ctx.join(theirs, atoms)
