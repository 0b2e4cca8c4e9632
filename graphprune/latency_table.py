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

import copy
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.benchmark as benchmark
from torch import nn

from .arguments import check_positive
from .runtimes import check_runtime, runner

__all__ = ["Hardware", "LatencyTable", "LayerSpec", "LayerLatency", "layer_specs", "width_grid", "default_cache_path",
           "host_allocator"]


_GRAPH_CALLS = 8  # calls of a layer captured in one CUDA graph when it is timed alone


def host_allocator() -> str:
    """The memory allocator this process runs on: ``"jemalloc"``, ``"tcmalloc"`` or ``"mimalloc"`` when one is
    loaded (``LD_PRELOAD``), else ``"glibc"`` with any ``MALLOC_*_`` tuning variables, or ``"unknown"``.

    A CPU model's latency depends on it: under glibc's defaults every forward pass can fault in fresh pages
    for its activations, a cost a layer timed alone does not pay (see docs/latency_target.md). A latency
    plan records it, so that a figure can be reproduced under the same allocator.
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if f"lib{name}" in maps:
            return name
    tuning = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_") and k.endswith("_"))
    return "glibc" + (f" ({', '.join(tuning)})" if tuning else "")


def default_cache_path() -> Path:
    """``$GRAPHPRUNE_CACHE`` or ``~/.cache/graphprune``, plus ``latency.json``."""
    root = os.environ.get("GRAPHPRUNE_CACHE") or Path.home() / ".cache" / "graphprune"
    return Path(root) / "latency.json"


@dataclass(frozen=True)
class Hardware:
    """Where and how latency is measured: device, dtype, CPU threads, batch size, memory layout, cache file.

    ``batch_size`` (default: the example inputs' own) repeats the example batch to the size the
    model will serve; ``channels_last`` runs 4-d activations and conv weights in NHWC, the fast
    layout for fp16/bf16 convs on tensor cores. ``grid_points`` widths per dim are measured per
    layer (default 16 on CUDA, whose latency has steps at tile boundaries, 6 on CPU).
    ``min_run_time`` is the timing per layer measurement (default 0.01 s on CUDA, 0.05 s on CPU);
    ``model_min_run_time`` per whole-model measurement.

    ``runtime`` is how the model will be deployed (:mod:`graphprune.runtimes`): ``"eager"``,
    ``"compile"`` or ``"cudagraphs"``. Whole models are timed in it. Layers are timed alone in it
    too, except under ``"compile"``: inductor calls the same library conv and GEMM kernels as
    eager mode, and compiling every layer at every width would take hours, so layers are timed
    eagerly (sharing eager's cache) and what the compiler fuses around them is measured by the
    whole-model rounds.
    """

    device: str = "cpu"
    dtype: str = "float32"
    num_threads: int = 1
    cache: str | None = None
    min_run_time: float | None = None
    model_min_run_time: float = 0.5
    batch_size: int | None = None
    channels_last: bool = False
    grid_points: int | None = None
    runtime: str = "eager"

    def __post_init__(self) -> None:
        check_runtime(self.runtime, self.device)

    @classmethod
    def deployed(cls, device: str = "cpu", dtype: str = "float32", *, batch_size: int | None = None,
                 runtime: str = "eager", num_threads: int = 1) -> Hardware:
        """The measurement a deployment on ``device`` in ``dtype`` implies: channels-last for fp16/bf16 on
        CUDA (their convs run on tensor cores in NHWC), the rest as given. ``plan(..., device=...)`` uses it.

        >>> Hardware.deployed("cuda", "bfloat16", batch_size=128).channels_last
        True
        """
        dtype = str(dtype).removeprefix("torch.")
        if batch_size is not None:
            check_positive(batch_size, "batch_size", integer=True)
        check_positive(num_threads, "num_threads", integer=True)
        channels_last = str(device).startswith("cuda") and dtype in ("float16", "bfloat16")
        return cls(device=str(device), dtype=dtype, batch_size=batch_size, channels_last=channels_last,
                   runtime=runtime, num_threads=num_threads)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype.removeprefix("torch."))

    @property
    def is_cuda(self) -> bool:
        return str(self.device).startswith("cuda")

    @property
    def points(self) -> int:
        return self.grid_points or (16 if self.is_cuda else 6)

    @property
    def layer_min_run_time(self) -> float:
        return self.min_run_time or (0.01 if self.is_cuda else 0.05)

    def key_prefix(self) -> str:
        name = self.device
        if self.is_cuda and torch.cuda.is_available():
            name = f"{self.device}:{torch.cuda.get_device_name(torch.device(self.device))}"
        layout = "|channels_last" if self.channels_last else ""
        batch = f"|batch={self.batch_size}" if self.batch_size else ""
        runtime = "" if self.layer_runtime == "eager" else f"|{self.layer_runtime}"
        return f"{name}|{self.dtype.removeprefix('torch.')}|threads={self.num_threads}{batch}{layout}{runtime}"

    @property
    def layer_runtime(self) -> str:
        """The runtime a layer is timed in alone (see the class docstring for ``"compile"``)."""
        return "eager" if self.runtime == "compile" else self.runtime

    def seconds(self, forward: Callable[[], object], min_run_time: float | None = None) -> float:
        """Median seconds of ``forward()`` under ``torch.utils.benchmark`` (CUDA is synchronised by the Timer)."""
        t = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=self.num_threads)
        with torch.inference_mode():
            return t.blocked_autorange(min_run_time=min_run_time or self.layer_min_run_time).median

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on this device (floating tensors in this dtype), its batch repeated to ``batch_size``, in this layout."""
        if self.batch_size and t.dim() > 0 and t.shape[0] != self.batch_size:
            reps = -(-self.batch_size // t.shape[0])
            t = t.repeat(reps, *([1] * (t.dim() - 1)))[: self.batch_size]
        t = t.to(self.device, self.torch_dtype) if t.is_floating_point() else t.to(self.device)
        if self.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def place(self, module: nn.Module) -> nn.Module:
        """``module`` itself, moved to this device, dtype and layout, in eval mode."""
        module = module.to(self.device, self.torch_dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module.eval()

    def runner(self, model: nn.Module, args: tuple[Any, ...]) -> Callable[[], object]:
        """``model(*args)`` as a warmed-up zero-argument callable on a placed copy, in this runtime
        (``model`` is untouched). Time it with :meth:`seconds`, as often as needed: compiling or
        capturing it is done once."""
        moved = self.place(copy.deepcopy(model))
        moved_args = tuple(self.tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        return runner(moved, moved_args, self.runtime)

    def model_seconds(self, model: nn.Module, args: tuple[Any, ...]) -> float:
        """Median seconds of one forward pass of ``model(*args)`` in this runtime (``model`` is untouched)."""
        return self.seconds(self.runner(model, args), self.model_min_run_time)


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

    Fractions that round to the same multiple are measured once: ``width_grid(16, 8, 16)`` is ``[8, 16]``.

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
