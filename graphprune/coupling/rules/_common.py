"""Helpers shared by the rule families."""

from __future__ import annotations

from typing import Any

import torch.fx

import numpy as np

from ..channels import Block, ChannelMap, LayoutError

__all__ = ["input_arg", "arg", "arg_path", "op_name", "pass_through", "join_rows", "join_tensor_arg", "project", "project_axes", "keep_whole", "fix_untracked",
           "fix_untracked_dims", "last_dim_atoms", "join_along", "conv_input", "pointwise"]


# One argument under the names the torch function, the tensor method and the ATen schema give it.
_ALIASES = (("input", "self", "indices"), ("shape", "size"), ("split_size_or_sections", "split_size", "split_sizes"))
_SAME_NAMES = {name: group for group in _ALIASES for name in group}


def op_name(node: torch.fx.Node) -> str:
    """What a node calls, by name: a method's name, a function's, an ATen op's without its namespace and
    overload (``aten.split_with_sizes.default`` is ``"split_with_sizes"``)."""
    if node.op == "call_method":
        return str(node.target)
    schema = getattr(node.target, "_schema", None)
    if schema is not None:
        return schema.name.rpartition("::")[2]
    return getattr(node.target, "__name__", str(node.target))


def _position(node: torch.fx.Node, index: int, name: str) -> int | None:
    """Where argument ``name`` sits positionally. The rules give it as in the torch-level function (``F.conv2d``,
    ``x.view``); an exported graph calls ATen overloads, whose schema says where each argument is."""
    schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
    if schema is None:
        return index
    names = [a.name for a in schema.arguments]
    return next((names.index(n) for n in _SAME_NAMES.get(name, (name,)) if n in names), None)


def arg(node: torch.fx.Node, index: int, name: str, default: Any = None) -> Any:
    """A call argument by position or keyword (``index`` and ``name`` as the torch-level call takes it)."""
    position = _position(node, index, name)
    if position is not None and len(node.args) > position:
        return node.args[position]
    return next((node.kwargs[n] for n in _SAME_NAMES.get(name, (name,)) if n in node.kwargs), default)


def arg_path(node: torch.fx.Node, index: int, name: str) -> tuple[Any, ...]:
    """Where :func:`arg` found the argument, as a path into the node's args or kwargs (for a shape edit)."""
    position = _position(node, index, name)
    if position is not None and len(node.args) > position:
        return (position,)
    return (next((n for n in _SAME_NAMES.get(name, (name,)) if n in node.kwargs), name),)


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


def project_axes(ctx, labels: tuple, atoms: np.ndarray, keep) -> tuple[tuple, np.ndarray]:
    """Join ``atoms`` along every axis whose label is outside ``keep`` and drop those axes.

    Labels name the axes (tensor dims, or einsum letters). Each slice along the kept axes
    becomes one channel, removed whole; the dropped axes then never shrink.
    """
    kept_axes = [i for i, label in enumerate(labels) if label in keep]
    dropped = [i for i in range(len(labels)) if i not in kept_axes]
    if not dropped:
        return tuple(labels), atoms
    moved = np.moveaxis(atoms, dropped, list(range(len(kept_axes), len(labels))))
    flat = moved.reshape(moved.shape[:len(kept_axes)] + (-1,))
    for j in range(1, flat.shape[-1]):
        ctx.join(flat[..., 0], flat[..., j])
    return tuple(labels[i] for i in kept_axes), np.ascontiguousarray(flat[..., 0])


def project(ctx, block: Block, keep) -> Block | None:
    """:func:`project_axes` for a block: its dims outside ``keep`` are joined and dropped; None if no dim is kept."""
    keep = set(keep)
    if not any(d in keep for d in block.dims):
        return None
    dims, atoms = project_axes(ctx, block.dims, block.atoms, keep)
    return block if dims == block.dims else Block(dims, atoms)


def keep_whole(ctx, cmap: ChannelMap, dims, reason: str) -> ChannelMap:
    """``cmap`` with ``dims`` kept at full size: an op that mixes or moves the entries along them (a reduction,
    an interpolation, a gather by an index table) sees what it saw before pruning. A block inside ``dims`` is
    pinned; a block that also spans other dims loses whole slices across ``dims`` instead (:func:`project`).
    The blocks left keep their dims."""
    dims = set(dims)
    blocks = []
    for block in cmap.blocks:
        if set(block.dims) <= dims:
            ctx.pin(block.atoms, reason)
        elif set(block.dims) & dims:
            blocks.append(project(ctx, block, set(block.dims) - dims))
        else:
            blocks.append(block)
    return ChannelMap(tuple(blocks))


def fix_untracked(ctx, blocks: list[tuple[int, tuple, np.ndarray]],
                  untracked: list[dict[Any, int]]) -> list[tuple[int, tuple, np.ndarray]]:
    """Operands that meet label by label (tensor dims, or einsum letters): a label one operand leaves
    untracked cannot shrink in the others.

    ``blocks`` are (operand, labels, atoms); ``untracked[k]`` maps the labels operand ``k`` leaves
    untracked to their sizes. A multi-label block is joined along such a label (its rows go whole,
    :func:`project_axes`) rather than kept entirely; a block with no other label is returned
    unchanged, for the caller to pin. A projected label becomes untracked in its own operand too
    (``untracked`` is updated), so this repeats until no block changes. Returns the new blocks.
    """
    blocks = list(blocks)
    changed = True
    while changed:
        changed = False
        for index, (k, labels, atoms) in enumerate(blocks):
            fixed = {
                label for i, label in enumerate(labels)
                if atoms.shape[i] > 1 and any(o != k and sizes.get(label) == atoms.shape[i] for o, sizes in enumerate(untracked))
            }
            if not fixed or fixed == set(labels):
                continue
            kept, projected = project_axes(ctx, labels, atoms, set(labels) - fixed)
            for label in fixed:
                untracked[k][label] = atoms.shape[labels.index(label)]
            blocks[index] = (k, kept, projected)
            changed = True
    return blocks


def fix_untracked_dims(ctx, maps: list[ChannelMap], shapes, skip: frozenset[int] = frozenset()) -> list[ChannelMap]:
    """:func:`fix_untracked` for operands of equal rank that meet dim by dim; dims in ``skip`` (a
    concatenated dim) do not meet."""
    blocks = [(k, block.dims, block.atoms) for k, cmap in enumerate(maps) for block in cmap.blocks]
    untracked = [{d: shape[d] for d in range(len(shape)) if d not in skip and cmap.block_at(d) is None}
                 for cmap, shape in zip(maps, shapes)]
    fixed = fix_untracked(ctx, blocks, untracked)
    if all(new[1] == old[1] for new, old in zip(fixed, blocks)):
        return list(maps)
    return [ChannelMap(tuple(Block(dims, atoms) for o, dims, atoms in fixed if o == k)) for k in range(len(maps))]


def last_dim_atoms(ctx, x: Any, what: str) -> tuple[int, np.ndarray | None]:
    """The channel atoms of the last dim of ``x``; channels on any other dim are refused."""
    ndim = len(ctx.shape(x))
    cmap = (ctx.channels(x) or ChannelMap()).normalized(ndim)
    if cmap.dims - {ndim - 1}:
        raise LayoutError(f"{what} input carries channels on dims {sorted(cmap.dims - {ndim - 1})}, not only its feature dim")
    return ndim - 1, cmap.at(ndim - 1)


def join_along(ctx, atoms: np.ndarray, axis: int) -> None:
    """Join every row of ``atoms`` along ``axis`` into one channel: that axis then never shrinks, and only whole
    rows (the heads of a ``heads x head_dim`` block) can go."""
    rows = np.moveaxis(atoms, axis, -1).reshape(-1, atoms.shape[axis])
    for j in range(1, rows.shape[1]):
        ctx.join(rows[:, 0], rows[:, j])


def pointwise(kernel, stride, padding) -> bool:
    """Whether a convolution treats every position on its own: 1x1 kernel, stride 1, no padding."""
    def ones(v):
        return all(int(x) == 1 for x in (v if isinstance(v, (tuple, list)) else [v]))
    no_pad = padding in ("valid", "same") or all(int(p) == 0 for p in (padding if isinstance(padding, (tuple, list)) else [padding]))
    return ones(kernel) and ones(stride) and no_pad


def conv_input(ctx, cmap: ChannelMap, cdim: int, positionwise: bool, what: str) -> tuple[np.ndarray | None, ChannelMap]:
    """A convolution's input channels (its channel dim's atoms) and the blocks on its spatial dims that pass
    through. A pointwise conv treats every position alone, so channels there pass (YOLO's DFL runs a 1x1 conv
    over a ``bins x sides`` view); any other kernel mixes positions, so their channels are pinned (ECA's conv
    over the channel axis). A block over the channel dim and another dim is refused."""
    passing = []
    for block in cmap.blocks:
        if block.dims == (cdim,):
            continue
        if cdim in block.dims:
            raise LayoutError(f"{what} input's channel dim is part of a channel block over dims {block.dims}")
        if positionwise:
            passing.append(block)
        else:
            ctx.pin(block.atoms, f"{what} mixes the positions of a dim that carries channels")
    return cmap.at(cdim), ChannelMap(tuple(passing))
