"""Rules for tensor contractions and softmax: ``matmul``/``@``/``bmm``, ``einsum``, ``scaled_dot_product_attention``.

Every operand dim gets a *letter* (einsum's notation; matmul's batch, row, inner and
column dims are lettered the same way). Channels on a letter shared by two operands
are joined: q and k across their contracted head dim, the heads of q, k and v
across the batch-like heads dim. A letter that does not reach the output is summed
over; a channel block that spans it *and* a kept letter (a ``heads x head_dim``
block contracted over head_dim) is collapsed: its atoms along the summed letter
are joined, so each head is removed whole. That keeps every head at one width,
which the views around attention need, and keeps the softmax scale meaningful.

A tracked letter that meets an untracked dim of the same size in another operand
cannot shrink alone, so it is pinned.
"""

from __future__ import annotations

import operator
from itertools import combinations
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..channels import Block, ChannelMap, LayoutError
from ..registry import Registry
from ._common import arg, fix_untracked, input_arg, pass_through, project, project_axes

__all__ = ["RULES", "contract"]

RULES = Registry()


def contract(ctx, operands: list[tuple[Any, list[str]]], out_letters: list[str]) -> ChannelMap:
    """Channels through a contraction; ``operands`` pairs each FX argument with one letter per dim."""
    blocks: list[tuple[int, tuple[str, ...], np.ndarray]] = []
    untracked: list[dict[str, int]] = []  # per operand: letter -> size of its untracked dims
    for k, (x, letters) in enumerate(operands):
        shape = ctx.shape(x)
        cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
        if len(set(letters)) != len(letters) and cmap:
            raise LayoutError("a contraction that repeats a letter within one operand (a diagonal) over channels")
        for b in cmap.blocks:
            blocks.append((k, tuple(letters[d] for d in b.dims), b.atoms))
        untracked.append({letters[d]: shape[d] for d in range(len(shape)) if d not in cmap.dims})
    # MViT's unpooled q (heads x head_dim) meets a pooled k whose head_dim no longer shrinks.
    blocks = fix_untracked(ctx, blocks, untracked)

    # Blocks of different operands that share letters index the same positions: join them there.
    for (ka, la, aa), (kb, lb, ab) in combinations(blocks, 2):
        shared = set(la) & set(lb)
        if ka == kb or not shared:
            continue
        pa_letters, pa = project_axes(ctx, la, aa, shared)
        pb_letters, pb = project_axes(ctx, lb, ab, shared)
        pb = np.transpose(pb, [pb_letters.index(letter) for letter in pa_letters])
        if pa.shape == pb.shape:
            ctx.join(pa, pb)
        else:  # one side broadcasts a single channel
            ctx.pin(aa, "contraction with a broadcast operand")
            ctx.pin(ab, "contraction with a broadcast operand")
    # A channel letter that meets a plain dim of the same size cannot shrink on one side only.
    for k, letters, atoms in blocks:
        for other, sizes in enumerate(untracked):
            if other != k and any(sizes.get(letter, 1) > 1 and sizes[letter] == atoms.shape[i] for i, letter in enumerate(letters)):
                ctx.pin(atoms, "contraction with an operand whose matching dim has no channels")

    # Output blocks that share letters (k's heads x head_dim and v's heads x head_dim in kᵀv, both on the heads
    # letter) become one block over all their letters: each entry must be one channel, so the blocks' atoms are
    # joined wherever they meet, which leaves each head one channel, removed whole.
    merged: list[tuple[tuple[str, ...], np.ndarray]] = []
    for _, letters, atoms in blocks:
        out, projected = project_axes(ctx, letters, atoms, set(out_letters))
        if not out:
            continue  # fully summed over: joined with its partner above, nothing flows on
        meeting = [entry for entry in merged if set(entry[0]) & set(out)]
        merged = [entry for entry in merged if not set(entry[0]) & set(out)]
        merged.append(_merge(ctx, meeting + [(out, projected)], out_letters))
    return ChannelMap(tuple(Block(tuple(out_letters.index(letter) for letter in out), atoms) for out, atoms in merged))


def _merge(ctx, entries: list[tuple[tuple[str, ...], np.ndarray]], out_letters: list[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """One block over the union of the entries' letters, every entry's atoms joined with it where they meet."""
    if len(entries) == 1:
        return entries[0]
    letters = tuple(letter for letter in out_letters if any(letter in out for out, _ in entries))
    sizes = {letter: atoms.shape[out.index(letter)] for out, atoms in entries for letter in out}
    fields = []
    for out, atoms in entries:
        ordered = np.transpose(atoms, [out.index(letter) for letter in letters if letter in out])
        shape = [sizes[letter] if letter in out else 1 for letter in letters]
        fields.append(np.broadcast_to(ordered.reshape(shape), [sizes[letter] for letter in letters]))
    for field in fields[1:]:
        ctx.join(fields[0], field)
    return letters, np.ascontiguousarray(fields[0])


def _matmul_letters(ndim_a: int, ndim_b: int) -> tuple[list[str], list[str], list[str]]:
    batch = max(ndim_a, ndim_b) - 2
    names = [f"batch{i}" for i in range(max(batch, 0))]
    a = ["k"] if ndim_a == 1 else names[batch - (ndim_a - 2):] + ["m", "k"]
    b = ["k"] if ndim_b == 1 else names[batch - (ndim_b - 2):] + ["k", "n"]
    out = names[:] if batch > 0 else []
    out += [] if ndim_a == 1 else ["m"]
    out += [] if ndim_b == 1 else ["n"]
    return a, b, out


@RULES.function(torch.matmul, operator.matmul, torch.bmm)
@RULES.method("matmul", "bmm")
def matmul(ctx, node):
    """``a @ b``: a's last dim meets b's second-to-last; the batch dims broadcast."""
    a, b = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other", node.kwargs.get("mat2"))
    la, lb, out = _matmul_letters(len(ctx.shape(a)), len(ctx.shape(b)))
    return contract(ctx, [(a, la), (b, lb)], out)


def _einsum_letters(equation: str, count: int) -> tuple[list[list[str]], list[str]]:
    equation = equation.replace(" ", "")
    if "." in equation:
        raise LayoutError("einsum with an ellipsis over channels")
    inputs, _, output = equation.partition("->")
    terms = inputs.split(",")
    if len(terms) != count:
        raise LayoutError(f"einsum equation names {len(terms)} operands, the call passes {count}")
    if "->" not in equation:
        letters = "".join(terms)
        output = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return [list(t) for t in terms], list(output)


@RULES.function(torch.einsum)
def einsum(ctx, node):
    """``torch.einsum(equation, *operands)``: letters shared by operands are joined, summed letters collapse."""
    equation, *operands = node.args
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    terms, out = _einsum_letters(equation, len(operands))
    return contract(ctx, list(zip(operands, terms)), out)


@RULES.function(F.scaled_dot_product_attention)
def scaled_dot_product_attention(ctx, node):
    """``softmax(q kᵀ · scale) v``: q and k meet on head_dim, q, k and v on every batch dim (the heads).

    With the default scale (``1/sqrt(head_dim)``, read from the pruned q) a head_dim that
    could shrink on its own would change the scale, so it is pinned; heads go whole.
    """
    q, k, v = (arg(node, i, name) for i, name in enumerate(("query", "key", "value")))
    if arg(node, 7, "enable_gqa", False):
        raise LayoutError("scaled_dot_product_attention with grouped-query attention")
    nd = len(ctx.shape(q))
    batch = [f"batch{i}" for i in range(nd - 2)]
    operands = []
    mask = arg(node, 3, "attn_mask")
    if mask is not None and ctx.channels(mask):
        # A bias per head (BEiT's relative positions) broadcasts against the logits, right-aligned: its heads meet
        # q's and k's.
        operands.append((mask, (batch + ["l", "s"])[-len(ctx.shape(mask)):]))
    elif isinstance(mask, torch.fx.Node) and ctx.shape(mask) is not None:
        # A mask made at a fixed size per head (T5's cross-attention bias, torch.zeros((1, n_heads, l, s))) cannot
        # lose heads with q, k and v; one that broadcasts over them (size 1 there) couples nothing.
        shape = ctx.shape(mask)
        for d in range(nd - 2):
            at = d - (nd - len(shape))
            if at >= 0 and shape[at] > 1:
                for x in (q, k, v):
                    block = (ctx.channels(x) or ChannelMap()).normalized(nd).block_at(d)
                    if block is not None:
                        ctx.pin(block.atoms, "an attention mask of a fixed size over the heads")
    if arg(node, 6, "scale") is None:
        for x in (q, k):
            cmap = (ctx.channels(x) or ChannelMap()).normalized(nd)
            block = cmap.block_at(nd - 1)
            if block is not None and block.dims == (nd - 1,):
                ctx.pin(block.atoms, "scaled_dot_product_attention's default scale reads head_dim")
    operands = [(q, batch + ["l", "e"]), (k, batch + ["s", "e"]), (v, batch + ["s", "ev"])] + operands
    return contract(ctx, operands, batch + ["l", "ev"])


@RULES.module(nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d)
@RULES.function(F.softmax, torch.softmax, F.log_softmax, torch.log_softmax, F.softmin)
@RULES.method("softmax", "log_softmax")
def softmax(ctx, node):
    """Normalises along one dim: channels elsewhere pass; channels along it are pinned (each depends on all).

    A multi-dim block (ResNeSt's radix x C attention logits, normalised over radix) loses whole slices across
    the normalised dim instead: every kept slice keeps all its terms, so its normaliser is unchanged.
    """
    x = input_arg(node)
    ndim = len(ctx.shape(x))
    dim = getattr(ctx.module(node), "dim", -3) if node.op == "call_module" else arg(node, 1, "dim")  # Softmax2d: -3
    if dim is None:
        raise LayoutError("softmax without an explicit dim")
    dim = int(dim) % ndim
    cmap = (ctx.channels(x) or ChannelMap()).normalized(ndim)
    block = cmap.block_at(dim)
    out = pass_through(ctx, node)
    if block is None:
        return out
    if len(block.dims) == 1:
        ctx.pin(block.atoms, "softmax over channels")
        return out
    projected = project(ctx, block, set(block.dims) - {dim})
    return ChannelMap(tuple(projected if b.dims == block.dims else b for b in out.blocks))
