"""Rules for recurrent layers: ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` (hidden units, projections, several
layers, both directions).

A hidden unit is one row in every gate of ``weight_ih``/``weight_hh`` and their biases, one column of
``weight_hh`` (or of ``weight_hr`` with ``proj_size``), and one feature of the output. The module has one
``hidden_size`` for every layer and direction, so unit j is one channel across all of them: removing it
removes row j of each, and every layer keeps the same width. ``proj_size`` units (rows of ``weight_hr``)
are channels of their own in the same way.

Removal is exact when the initial state is zero (the default): a unit whose rows are zero has every gate
pre-activation zero, so its cell and hidden state stay zero (LSTM: ``c = f*c + i*tanh(0)``; GRU:
``h = (1-z)*tanh(0) + z*h``; RNN: ``tanh(0)``, ``relu(0)``), and nothing reads a zero through the columns
that go. A given initial state ``hx`` pins the units; packed sequences are refused by name.

>>> import torch, graphprune
>>> class Tagger(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.lstm = torch.nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True)
...         self.head = torch.nn.Linear(16, 3)
...     def forward(self, x):
...         return self.head(self.lstm(x)[0])
>>> small = graphprune.shrink(Tagger(), 0.5, example_inputs=torch.randn(2, 5, 6))
>>> small.lstm.hidden_size, small.head.in_features, tuple(small.lstm.weight_ih_l1_reverse.shape)
(4, 8, (16, 8))
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..channels import ChannelMap, LayoutError
from ..context import Role
from ..registry import Registry
from ._common import arg, input_arg

__all__ = ["RULES"]

RULES = Registry()

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@RULES.module(nn.RNN, nn.LSTM, nn.GRU)
def recurrent(ctx, node):
    """Hidden units (and projection units) are channels shared by every layer and direction."""
    m = ctx.module(node)
    x, hx = input_arg(node), arg(node, 1, "hx")
    shape = ctx.shape(x)
    if shape is None:
        raise LayoutError(f"{type(m).__name__} over a packed sequence (its channels cannot be followed)")
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    last = len(shape) - 1
    if cmap.dims - {last}:
        raise LayoutError(f"{type(m).__name__} input carries channels on dims {sorted(cmap.dims - {last})} besides its features")
    gates = GATES[m.mode]
    directions = ("", "_reverse") if m.bidirectional else ("",)
    hidden = ctx.new_channels(m.hidden_size)
    proj = ctx.new_channels(m.proj_size) if m.proj_size else None
    unit = hidden if proj is None else proj  # what each direction outputs and feeds back
    if hx is not None:
        ctx.pin(hidden, f"{type(m).__name__} given an initial state: a removed unit would not start at zero")
        if proj is not None:
            ctx.pin(proj, f"{type(m).__name__} given an initial state")
    inputs = cmap.at(last)
    for layer in range(m.num_layers):
        for suffix in directions:
            name = f"l{layer}{suffix}"
            rows = np.tile(hidden, gates)
            ctx.use_tensor(node.target, f"weight_ih_{name}", 0, rows, Role.PRODUCER)
            ctx.use_tensor(node.target, f"weight_ih_{name}", 1, inputs, Role.CONSUMER)
            ctx.use_tensor(node.target, f"weight_hh_{name}", 0, rows, Role.PRODUCER)
            ctx.use_tensor(node.target, f"weight_hh_{name}", 1, unit, Role.CONSUMER)
            ctx.use_tensor(node.target, f"bias_ih_{name}", 0, rows, Role.BIAS)
            ctx.use_tensor(node.target, f"bias_hh_{name}", 0, rows, Role.BIAS)
            if proj is not None:
                ctx.use_tensor(node.target, f"weight_hr_{name}", 0, proj, Role.PRODUCER)
                ctx.use_tensor(node.target, f"weight_hr_{name}", 1, hidden, Role.CONSUMER)
        inputs = np.tile(unit, len(directions))  # the next layer reads both directions, concatenated
    output = ChannelMap.single(last, np.tile(unit, len(directions)))
    _, state = node.meta["tensor_meta"]  # (output, h_n), or (output, (h_n, c_n)) for an LSTM
    if m.mode == "LSTM":
        h_n, c_n = state
        return output, (ChannelMap.single(len(h_n.shape) - 1, unit), ChannelMap.single(len(c_n.shape) - 1, hidden))
    return output, ChannelMap.single(len(state.shape) - 1, unit)


@RULES.resizer(nn.RNN, nn.LSTM, nn.GRU)
def resize_recurrent(m: nn.Module) -> None:
    m.hidden_size = m.weight_hh_l0.shape[0] // GATES[m.mode]
    if m.proj_size:
        m.proj_size = m.weight_hr_l0.shape[0]
    m.input_size = m.weight_ih_l0.shape[1]
    m._init_flat_weights()  # the flat list the kernels read still holds the old tensors


CELL_GATES = ((nn.LSTMCell, 4), (nn.GRUCell, 3), (nn.RNNCell, 1))


@RULES.module(nn.RNNCell, nn.LSTMCell, nn.GRUCell)
def recurrent_cell(ctx, node):
    """One step: hidden units are channels, as in the full layers. A state passed in (``hx``, or ``(h, c)``)
    that came from this cell's last step carries the same units (joined); one from elsewhere pins them."""
    m = ctx.module(node)
    x, hx = input_arg(node), arg(node, 1, "hx")
    shape = ctx.shape(x)
    cmap = (ctx.channels(x) or ChannelMap()).normalized(len(shape))
    last = len(shape) - 1
    if cmap.dims - {last}:
        raise LayoutError(f"{type(m).__name__} input carries channels on dims {sorted(cmap.dims - {last})} besides its features")
    gates = next(n for cls, n in CELL_GATES if isinstance(m, cls))
    hidden = ctx.new_channels(m.hidden_size)
    for atoms in _state_features(ctx, hx):
        if atoms is None:
            ctx.pin(hidden, f"{type(m).__name__} given a state from outside: a removed unit would not start at zero")
        else:
            ctx.join(hidden, atoms)
    rows = np.tile(hidden, gates)
    ctx.use_tensor(node.target, "weight_ih", 0, rows, Role.PRODUCER)
    ctx.use_tensor(node.target, "weight_ih", 1, cmap.at(last), Role.CONSUMER)
    ctx.use_tensor(node.target, "weight_hh", 0, rows, Role.PRODUCER)
    ctx.use_tensor(node.target, "weight_hh", 1, hidden, Role.CONSUMER)
    ctx.use_tensor(node.target, "bias_ih", 0, rows, Role.BIAS)
    ctx.use_tensor(node.target, "bias_hh", 0, rows, Role.BIAS)
    out = ChannelMap.single(last, hidden)
    return (out, out) if gates == 4 else out


def _state_features(ctx, hx) -> list:
    """The last-dim atoms of each state tensor passed to a cell: ``hx``, a tuple of nodes ``(h, c)``, or one
    node holding the tuple a previous step returned."""
    if hx is None:
        return []
    if isinstance(hx, (tuple, list)):
        return [a for part in hx for a in _state_features(ctx, part)]
    maps, meta = ctx.channels(hx), hx.meta.get("tensor_meta")
    if isinstance(meta, (tuple, list)) and not hasattr(meta, "shape"):  # (h, c) as one value, not one tensor's metadata
        maps = maps if isinstance(maps, (tuple, list)) else [None] * len(meta)
        return [m.normalized(len(t.shape)).at(len(t.shape) - 1) if m else None for m, t in zip(maps, meta)]
    shape = ctx.shape(hx)
    return [maps.normalized(len(shape)).at(len(shape) - 1) if maps else None]


@RULES.resizer(nn.RNNCell, nn.LSTMCell, nn.GRUCell)
def resize_recurrent_cell(m: nn.Module) -> None:
    m.hidden_size = m.weight_hh.shape[1]
    m.input_size = m.weight_ih.shape[1]
