"""A measured latency lookup table: each prunable layer at candidate widths, on the real device.

Latency is not proportional to MACs: kernels are picked per shape, and widths off the
vector or tensor-core tile run slower than wider aligned ones (on an H200 in bf16 a 3x3
conv with 129 output channels takes twice as long as with 128). So the planner predicts a
candidate's latency from measurements of each conv/linear layer, alone, on the target
device and dtype, at a grid of (input, output) widths, interpolated bilinearly between the
grid points, and timed with ``torch.utils.benchmark`` (which synchronises CUDA).

Measurements are cached as JSON (``~/.cache/graphprune/latency.json`` unless a path is
given), keyed by device, dtype, thread count and the layer's full shape signature.

>>> hw = Hardware(device="cpu", dtype="float32")
>>> hw.key_prefix().startswith("cpu|float32|threads=")
True
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.benchmark as benchmark
from torch import nn

__all__ = ["Hardware", "LatencyTable", "LayerSpec", "LayerLatency", "layer_specs", "width_grid", "default_cache_path"]


def default_cache_path() -> Path:
    """``$GRAPHPRUNE_CACHE`` or ``~/.cache/graphprune``, plus ``latency.json``."""
    root = os.environ.get("GRAPHPRUNE_CACHE") or Path.home() / ".cache" / "graphprune"
    return Path(root) / "latency.json"


@dataclass(frozen=True)
class Hardware:
    """Where latency is measured: device, dtype, CPU threads, and the cache file."""

    device: str = "cpu"
    dtype: str = "float32"
    num_threads: int = 1
    cache: str | None = None
    min_run_time: float = 0.05  # per layer measurement
    model_min_run_time: float = 0.5  # per whole-model measurement (dense, and each candidate plan)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype.removeprefix("torch."))

    def key_prefix(self) -> str:
        name = self.device
        if self.device.startswith("cuda") and torch.cuda.is_available():
            name = f"{self.device}:{torch.cuda.get_device_name(torch.device(self.device))}"
        return f"{name}|{self.dtype.removeprefix('torch.')}|threads={self.num_threads}"

    def timer(self, stmt: str, glob: dict[str, Any], min_run_time: float | None = None) -> float:
        """Median seconds of ``stmt`` under ``torch.utils.benchmark`` (CUDA is synchronised by the Timer)."""
        t = benchmark.Timer(stmt=stmt, globals=glob, num_threads=self.num_threads)
        return t.blocked_autorange(min_run_time=min_run_time or self.min_run_time).median


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


def layer_specs(gm: torch.fx.GraphModule, weights: Iterable[str]) -> list[LayerSpec]:
    """The plain Conv2d (groups 1 or depthwise) and Linear layers of ``gm`` whose weight is among ``weights``."""
    wanted = set(weights)
    specs = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        weight = f"{node.target}.weight"
        if weight not in wanted or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        shape = tuple(node.args[0].meta["tensor_meta"].shape)
        bias = getattr(module, "bias", None) is not None
        if type(module) is nn.Conv2d and isinstance(module.padding, tuple):
            depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
            if module.groups != 1 and not depthwise:
                continue
            specs.append(LayerSpec(node.target, weight, "conv2d", module.in_channels, module.out_channels, shape,
                                   module.kernel_size, module.stride, module.padding, module.dilation, depthwise, bias))
        elif type(module) is nn.Linear:
            specs.append(LayerSpec(node.target, weight, "linear", module.in_features, module.out_features, shape, bias=bias))
    return specs


def width_grid(size: int, round_to: int, points: int = 4) -> list[int]:
    """Candidate widths of a dim of ``size``: ``points`` fractions, each a multiple of ``round_to``, plus ``size``.

    >>> width_grid(64, 8)
    [16, 32, 48, 64]
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
        module = module.to(hw.device, hw.torch_dtype).eval()
        x = torch.randn(shape, device=hw.device, dtype=hw.torch_dtype)
        with torch.no_grad():
            module(x)  # warm-up: kernel selection, allocator
            return hw.timer("module(x)", {"module": module, "x": x})


@dataclass
class LayerLatency:
    """One layer's latency surface over its (cin, cout) grid, interpolated bilinearly."""

    spec: LayerSpec
    cins: Sequence[int]
    couts: Sequence[int]
    table: np.ndarray  # seconds, [len(cins), len(couts)]

    @classmethod
    def measure(cls, spec: LayerSpec, table: LatencyTable, round_to: int) -> LayerLatency:
        couts = width_grid(spec.out_channels, round_to)
        cins = couts if spec.depthwise else width_grid(spec.in_channels, round_to)
        if spec.depthwise:
            values = np.array([[table.lookup(spec, c, c) for c in couts]])
            return cls(spec, [spec.in_channels], couts, values)
        values = np.array([[table.lookup(spec, ci, co) for co in couts] for ci in cins])
        return cls(spec, cins, couts, values)

    def __call__(self, cin: float, cout: float) -> float:
        rows = np.array([np.interp(cout, self.couts, row) for row in self.table])
        return float(np.interp(cin, self.cins, rows)) if len(self.cins) > 1 else float(rows[0])
