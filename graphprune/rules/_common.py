"""Helpers shared by the rule families."""

from __future__ import annotations

from typing import Any

import torch.fx

from ..channels import ChannelMap, LayoutError

__all__ = ["input_arg", "arg", "pass_through"]


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
