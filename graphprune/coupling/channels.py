"""How a tensor's dimensions map to prunable channels.

Every prunable channel in the model is an *atom*: an integer id allocated when a
layer produces it (a conv's output filter, a linear's output feature). A tensor
carries a :class:`ChannelMap`: for each of its *tracked* dimensions, which atom
sits at each index. Untracked dimensions (batch, spatial, the model's own
inputs) are never pruned.

Most tensors have one tracked dimension holding a 1-D array of atoms. Reshapes
can produce richer layouts, so a map is a set of :class:`Block` s: a block spans
one or more dimensions and holds an n-D array of atoms. ``flatten`` of an
``N×C×H×W`` tensor holds each channel's atom H×W times in a row; a view that
splits 512 features into 8 heads of 64 holds an 8×64 block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Block", "ChannelMap", "LayoutError", "reshape_channels", "reshape_groups"]


class LayoutError(Exception):
    """A channel layout that an operation cannot map (turned into UnsupportedOpError by the caller)."""


@dataclass(frozen=True)
class Block:
    """Atoms over one or more tensor dims; ``atoms.shape[i]`` is the size of ``dims[i]``."""

    dims: tuple[int, ...]
    atoms: np.ndarray

    def __post_init__(self):
        if self.atoms.ndim != len(self.dims):
            raise ValueError(f"block over dims {self.dims} needs a {len(self.dims)}-D atom array")


@dataclass(frozen=True)
class ChannelMap:
    """The tracked dimensions of one tensor. An empty map means nothing in the tensor can be pruned."""

    blocks: tuple[Block, ...] = ()

    @staticmethod
    def single(dim: int, atoms: np.ndarray) -> ChannelMap:
        return ChannelMap((Block((dim,), np.asarray(atoms, dtype=np.int64)),))

    def __bool__(self) -> bool:
        return bool(self.blocks)

    @property
    def dims(self) -> frozenset[int]:
        return frozenset(d for b in self.blocks for d in b.dims)

    def block_at(self, dim: int) -> Block | None:
        for b in self.blocks:
            if dim in b.dims:
                return b
        return None

    def at(self, dim: int) -> np.ndarray | None:
        """The 1-D atoms of ``dim``, None if it is untracked; LayoutError if ``dim`` shares a block."""
        b = self.block_at(dim)
        if b is None:
            return None
        if len(b.dims) != 1:
            raise LayoutError(f"dim {dim} is part of a {len(b.dims)}-D channel block over dims {b.dims}")
        return b.atoms

    def without(self, dim: int) -> ChannelMap:
        return ChannelMap(tuple(b for b in self.blocks if dim not in b.dims))

    def with_block(self, block: Block) -> ChannelMap:
        if set(block.dims) & self.dims:
            raise ValueError("overlapping channel blocks")
        return ChannelMap(self.blocks + (block,))

    def normalized(self, ndim: int) -> ChannelMap:
        return ChannelMap(tuple(Block(tuple(d % ndim for d in b.dims), b.atoms) for b in self.blocks))

    def remap(self, old_to_new: Sequence[int]) -> ChannelMap:
        """Move dims: ``old_to_new[d]`` is where input dim d lands (for permute and transpose)."""
        return ChannelMap(tuple(Block(tuple(old_to_new[d] for d in b.dims), b.atoms) for b in self.blocks))

    def all_atoms(self) -> np.ndarray:
        if not self.blocks:
            return np.empty(0, dtype=np.int64)
        return np.concatenate([b.atoms.ravel() for b in self.blocks])


def reshape_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of input dims with runs of output dims of equal product (a view's structure).

    >>> reshape_groups((1, 4, 8, 6), (4, 8, 2, 3))
    [([0, 1], [0]), ([2], [1]), ([3], [2, 3])]
    """
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        gi, gj, pi, pj = [i], [j], a[i], b[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                if i >= len(a):
                    raise LayoutError(f"cannot view {tuple(a)} as {tuple(b)}")
                gi.append(i)
                pi *= a[i]
                i += 1
            else:
                if j >= len(b):
                    raise LayoutError(f"cannot view {tuple(a)} as {tuple(b)}")
                gj.append(j)
                pj *= b[j]
                j += 1
        groups.append((gi, gj))
    # What is left can only be dims of size 1; they join the last group.
    rest_a, rest_b = list(range(i, len(a))), list(range(j, len(b)))
    if rest_a or rest_b:
        if not groups:
            groups.append(([], []))
        groups[-1][0].extend(rest_a)
        groups[-1][1].extend(rest_b)
    return groups


def _field(block: Block, in_dims: list[int], in_shape: Sequence[int]) -> np.ndarray:
    """Broadcast a block's atoms over the full extent of ``in_dims`` (in dim order)."""
    order = sorted(range(len(block.dims)), key=lambda k: block.dims[k])
    atoms = np.transpose(block.atoms, order)
    sorted_dims = [block.dims[k] for k in order]
    expanded_shape = [in_shape[d] if d in sorted_dims else 1 for d in in_dims]
    return np.broadcast_to(atoms.reshape(expanded_shape), [in_shape[d] for d in in_dims])


def reshape_channels(
    cmap: ChannelMap, in_shape: Sequence[int], out_shape: Sequence[int]
) -> tuple[ChannelMap, list[int], np.ndarray]:
    """Map a channel layout through a view/reshape/flatten (C order).

    Returns the output map, the output dims whose size depends on which channels
    are kept, and the atoms that must be pinned because the reshape folds them into
    untracked dims (a single channel viewed away).

    >>> import numpy as np
    >>> out, changed, _ = reshape_channels(ChannelMap.single(1, np.arange(2)), (1, 2, 3), (1, 6))
    >>> out.at(1).tolist(), changed
    ([0, 0, 0, 1, 1, 1], [1])
    """
    in_shape, out_shape = list(in_shape), list(out_shape)
    cmap = cmap.normalized(len(in_shape))
    blocks: list[Block] = []
    changed: list[int] = []
    pinned: list[np.ndarray] = []
    for in_dims, out_dims in reshape_groups(in_shape, out_shape):
        inside = [b for b in cmap.blocks if set(b.dims) & set(in_dims)]
        if len(inside) > 1:  # a block of one channel (a 1-channel conv's output) cannot shrink: pin it, merge the rest
            single = [b for b in inside if b.atoms.size == 1]
            pinned.extend(b.atoms.ravel() for b in single)
            inside = [b for b in inside if b.atoms.size != 1] or single[:0]
        if not inside:
            continue
        if len(inside) > 1:
            # Independent blocks merged into one dim (a weight's input, kh and kw dims viewed as one for weight
            # standardisation): an entry would belong to one channel of each. The largest block stays; the
            # others are kept whole, as untracked dims are, so the merged dim is that block's channels repeated.
            keep = max(inside, key=lambda b: b.atoms.size)
            pinned.extend(b.atoms.ravel() for b in inside if b is not keep)
            inside = [keep]
        block = inside[0]
        if not set(block.dims) <= set(in_dims):
            raise LayoutError(f"a reshape splits the channel block over dims {block.dims}")
        field = _field(block, in_dims, in_shape).reshape([out_shape[d] for d in out_dims])
        # Keep only the output dims along which the atoms vary; the others are plain repeats.
        varying = []
        for axis in range(field.ndim):
            first = np.take(field, [0], axis=axis)
            if not np.array_equal(field, np.broadcast_to(first, field.shape)):
                varying.append(axis)
        index = tuple(slice(None) if a in varying else 0 for a in range(field.ndim))
        atoms = np.ascontiguousarray(field[index])
        dims = tuple(out_dims[a] for a in varying)
        if dims:
            blocks.append(Block(dims, atoms))
            changed.extend(dims)
        else:
            pinned.append(block.atoms.ravel())
    pinned_atoms = np.concatenate(pinned) if pinned else np.empty(0, dtype=np.int64)
    return ChannelMap(tuple(blocks)), sorted(changed), pinned_atoms
