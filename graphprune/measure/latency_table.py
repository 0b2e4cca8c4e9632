"""A measured latency lookup table: each prunable layer at candidate widths, on the real device.

Latency is not proportional to MACs: kernels are picked per shape, and widths off the
vector or tensor-core tile run slower than wider aligned ones (on an H200 in bf16 a 3x3
conv with 129 output channels takes twice as long as with 128). So the planner predicts a
candidate's latency from measurements of each conv/linear layer, alone, on the target
device and dtype, at a grid of (input, output) widths, interpolated bilinearly between the
grid points, and timed with ``torch.utils.benchmark`` (which synchronises CUDA).

Measurements are cached as JSON (``~/.cache/graphprune/latency.json`` unless a path is
given), keyed by device, dtype, thread count and the layer's full shape signature.

>>> width_grid(64, 8)
[16, 32, 48, 64]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .hardware import Hardware
from .runtimes import runner

__all__ = ["LatencyTable", "LayerSpec", "LayerLatency", "width_grid", "default_cache_path"]


_GRAPH_CALLS = 8  # calls of a layer captured in one CUDA graph when it is timed alone


def default_cache_path() -> Path:
    """``$GRAPHPRUNE_CACHE`` or ``~/.cache/graphprune``, plus ``latency.json``."""
    root = os.environ.get("GRAPHPRUNE_CACHE") or Path.home() / ".cache" / "graphprune"
    return Path(root) / "latency.json"


@dataclass(frozen=True)
class LayerSpec:
    """A conv or linear layer as it runs in the model: its type, hyper-parameters and input shape."""

    name: str  # qualified module name
    weight: str  # canonical weight tensor name
    kind: str  # "conv2d" or "linear"
    in_channels: int
    out_channels: int
    input_shape: tuple[int, ...]  # with the dense channel count at dim 1 (conv) or -1 (linear)
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    depthwise: bool = False
    bias: bool = False

    def signature(self) -> str:
        return (f"{self.kind}|in={self.input_shape}|k={self.kernel}|s={self.stride}|p={self.padding}|"
                f"d={self.dilation}|dw={self.depthwise}|b={self.bias}")

    def build(self, cin: int, cout: int) -> tuple[nn.Module, tuple[int, ...]]:
        """A fresh layer of widths (cin, cout) and the shape of its input."""
        if self.kind == "linear":
            return nn.Linear(cin, cout, bias=self.bias), (*self.input_shape[:-1], cin)
        if self.depthwise:
            cin = cout
        module = nn.Conv2d(cin, cout, self.kernel, self.stride, self.padding, self.dilation,
                           groups=cin if self.depthwise else 1, bias=self.bias)
        return module, (self.input_shape[0], cin, *self.input_shape[2:])


def width_grid(size: int, round_to: int, points: int = 4) -> list[int]:
    """Candidate widths of a dim of ``size``: ``points`` fractions, each a multiple of ``round_to``, plus ``size``.

    Fractions that round to the same multiple are measured once: ``width_grid(16, 8, 16)`` is ``[8, 16]``.

    >>> width_grid(3, 8)
    [3]
    """
    widths = {size}
    for i in range(1, points):
        w = int(round(size * i / points / round_to)) * round_to
        if 0 < w < size:
            widths.add(w)
    return sorted(widths)


class LatencyTable:
    """Measured seconds per layer and width pair, cached on disk as JSON."""

    def __init__(self, hardware: Hardware, path: str | Path | None = None):
        self.hardware = hardware
        self.path = Path(path or hardware.cache or default_cache_path())
        self._entries: dict[str, float] = {}
        if self.path.exists():
            self._entries = json.loads(self.path.read_text())
        self.measured = 0  # new measurements made by this table (cache misses)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._entries, sort_keys=True, indent=0))
        tmp.replace(self.path)  # atomic: a concurrent reader never sees half a file

    def _key(self, spec: LayerSpec, cin: int, cout: int) -> str:
        return f"{self.hardware.key_prefix()}|{spec.signature()}|{cin}x{cout}"

    def lookup(self, spec: LayerSpec, cin: int, cout: int) -> float:
        """Seconds for the layer at widths (cin, cout): from the cache, else measured now."""
        key = self._key(spec, cin, cout)
        if key not in self._entries:
            self._entries[key] = self._measure(spec, cin, cout)
            self.measured += 1
        return self._entries[key]

    def _measure(self, spec: LayerSpec, cin: int, cout: int) -> float:
        hw = self.hardware
        module, shape = spec.build(cin, cout)
        module = hw.place(module)
        # Drawn on the device at the batch size: a batch-128 activation drawn on the host costs more than the timing.
        x = hw.tensor(torch.randn((hw.batch_size or shape[0], *shape[1:]), device=hw.device, dtype=hw.torch_dtype))
        # In a graph, a layer's kernels run back to back with the rest of the model's; one replay per call would add
        # a launch that the whole model's graph does not pay per layer.
        calls = _GRAPH_CALLS if hw.layer_runtime == "cudagraphs" else 1
        return hw.seconds(runner(module, (x,), hw.layer_runtime, calls=calls)) / calls


@dataclass
class LayerLatency:
    """One layer's latency over its (cin, cout) widths, from two measured lines through the dense point.

    Measured: every grid output width at the dense input width, and every grid input width at
    the dense output width. A pair is predicted as ``t(D, co) * t(ci, D) / t(D, D)`` (separable:
    exact when time is a product of the two widths' effects, as it is for a GEMM's M and K
    tiles), with each line interpolated linearly between grid points. Two lines of ``n`` points
    cost ``2n - 1`` measurements instead of ``n * n``, so the grid can be fine enough to see
    the steps at tile boundaries. A depthwise conv has one width, so one line.
    """

    spec: LayerSpec
    cins: Sequence[int]
    couts: Sequence[int]
    by_cout: np.ndarray  # seconds at (dense cin, each cout)
    by_cin: np.ndarray  # seconds at (each cin, dense cout); unused for depthwise

    @classmethod
    def measure(cls, spec: LayerSpec, table: LatencyTable, round_to: int) -> LayerLatency:
        points = table.hardware.points
        couts = width_grid(spec.out_channels, round_to, points)
        if spec.depthwise:
            line = np.array([table.lookup(spec, c, c) for c in couts])
            return cls(spec, couts, couts, line, line)
        cins = width_grid(spec.in_channels, round_to, points)
        by_cout = np.array([table.lookup(spec, spec.in_channels, co) for co in couts])
        by_cin = np.array([table.lookup(spec, ci, spec.out_channels) for ci in cins])
        return cls(spec, cins, couts, by_cout, by_cin)

    def __call__(self, cin: float, cout: float) -> float:
        along_cout = float(np.interp(cout, self.couts, self.by_cout))
        if self.spec.depthwise:
            return along_cout
        dense = float(self.by_cout[-1])
        along_cin = float(np.interp(cin, self.cins, self.by_cin))
        return along_cout * along_cin / dense if dense > 0 else along_cout
