"""Where and how a model runs when it is timed: one record for latency budgets and benchmarks alike.

>>> hw = Hardware("cuda", torch.bfloat16, batch_size=128)
>>> hw.dtype, hw.channels_last, hw.label()
('bfloat16', True, 'cuda b128 bfloat16 channels_last eager 1 thread')
>>> Hardware("cpu").key_prefix().startswith("cpu|float32|threads=1")
True
>>> Hardware(num_threads=0)
Traceback (most recent call last):
...
graphprune.InputError: num_threads must be a positive integer, got 0
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from ..base.checks import check_positive, check_record
from ..base.errors import InputError
from .runtimes import check_runtime, runner

__all__ = ["Hardware", "DTYPES", "as_hardware", "host_allocator"]

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Hardware:
    """The deployment a latency is measured for: device, dtype, batch size, runtime and CPU threads.

    - ``dtype``: a name in :data:`DTYPES` or a ``torch.dtype``; kept as its name.
    - ``batch_size`` (default: the example inputs' own) repeats the example batch to the size the
      model will serve.
    - ``runtime``: how the model runs (:mod:`graphprune.measure.runtimes`): ``"eager"``, ``"compile"``
      or ``"cudagraphs"``. Whole models are timed in it. Layers are timed alone in it too, except
      under ``"compile"``: inductor calls the same library conv and GEMM kernels as eager mode, and
      compiling every layer at every width would take hours, so layers are timed eagerly and what
      the compiler fuses around them is measured by the whole-model rounds.
    - ``num_threads``: CPU threads (1 by default: a shared machine's spare threads make timings noisy).
    - ``channels_last``: NHWC activations and conv weights; ``None`` means NHWC for fp16/bf16 on CUDA,
      where their convs run on tensor cores, and NCHW elsewhere.

    The rest tunes the measurement: ``cache`` (the layer table's JSON file, default
    :func:`graphprune.measure.latency_table.default_cache_path`), ``grid_points`` (widths per dim
    measured per layer: 16 on CUDA, whose latency has steps at tile boundaries, 6 on CPU),
    ``min_run_time`` (seconds per layer measurement: 0.01 on CUDA, 0.05 on CPU) and
    ``model_min_run_time`` (seconds per whole-model measurement).
    """

    device: str = "cpu"
    dtype: str | torch.dtype = "float32"
    batch_size: int | None = None
    runtime: str = "eager"
    num_threads: int = 1
    channels_last: bool | None = None
    cache: str | None = None
    grid_points: int | None = None
    min_run_time: float | None = None
    model_min_run_time: float = 0.5

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalised once, here
        set_(self, "device", str(self.device))
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise InputError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        dtype = str(self.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        set_(self, "dtype", dtype)
        if self.batch_size is not None:
            check_positive(self.batch_size, "batch_size", integer=True)
        check_runtime(self.runtime, self.device)
        check_positive(self.num_threads, "num_threads", integer=True)
        if self.channels_last is None:
            set_(self, "channels_last", self.is_cuda and dtype in ("float16", "bfloat16"))
        elif not isinstance(self.channels_last, bool):
            raise InputError(f"channels_last must be True, False or None, not {self.channels_last!r}")
        if self.grid_points is not None:
            check_positive(self.grid_points, "grid_points", integer=True)
        if self.min_run_time is not None:
            check_positive(self.min_run_time, "min_run_time")
        check_positive(self.model_min_run_time, "model_min_run_time")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def points(self) -> int:
        return self.grid_points or (16 if self.is_cuda else 6)

    @property
    def layer_min_run_time(self) -> float:
        return self.min_run_time or (0.01 if self.is_cuda else 0.05)

    @property
    def layer_runtime(self) -> str:
        """The runtime a layer is timed in alone (see the class docstring for ``"compile"``)."""
        return "eager" if self.runtime == "compile" else self.runtime

    def label(self) -> str:
        """A short human-readable name: device, batch, dtype, layout, runtime and threads."""
        batch = f" b{self.batch_size}" if self.batch_size else ""
        layout = "channels_last" if self.channels_last else "contiguous"
        threads = f"{self.num_threads} thread{'s' if self.num_threads > 1 else ''}"
        return f"{self.device}{batch} {self.dtype} {layout} {self.runtime} {threads}"

    def key_prefix(self) -> str:
        """What a layer timing depends on besides the layer: the key prefix of the latency table's cache."""
        name = self.device
        if self.is_cuda and torch.cuda.is_available():
            name = f"{self.device}:{torch.cuda.get_device_name(torch.device(self.device))}"
        layout = "|channels_last" if self.channels_last else ""
        batch = f"|batch={self.batch_size}" if self.batch_size else ""
        runtime = "" if self.layer_runtime == "eager" else f"|{self.layer_runtime}"
        return f"{name}|{self.dtype}|threads={self.num_threads}{batch}{layout}{runtime}"

    # -- placing and timing ---------------------------------------------------------
    def seconds(self, forward: Callable[[], object], min_run_time: float | None = None) -> float:
        """Median seconds of ``forward()`` under ``torch.utils.benchmark`` (CUDA is synchronised by the Timer)."""
        import torch.utils.benchmark as benchmark  # late: importing it costs a second and warns without CUDA

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

    def inputs(self, value: Any) -> Any:
        """Every tensor in ``value`` (a tensor, a tuple/list of args or a dict of keyword args) placed by :meth:`tensor`."""
        return pytree.tree_map_only(torch.Tensor, self.tensor, value)

    def place(self, module: nn.Module) -> nn.Module:
        """``module`` itself, moved to this device, dtype and layout, in eval mode."""
        module = module.to(self.device, self.torch_dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module.eval()

    def runner(self, model: nn.Module, inputs: Any) -> Callable[[], object]:
        """``model`` called on ``inputs`` as a warmed-up zero-argument callable on a placed copy, in this runtime
        (``model`` is untouched). Time it with :meth:`seconds`, as often as needed: compiling or
        capturing it is done once."""
        return runner(self.place(copy.deepcopy(model)), self.inputs(inputs), self.runtime)

    def model_seconds(self, model: nn.Module, inputs: Any) -> float:
        """Median seconds of one forward pass of ``model`` on ``inputs`` in this runtime (``model`` is untouched)."""
        return self.seconds(self.runner(model, inputs), self.model_min_run_time)


def as_hardware(hardware: Any) -> Hardware:
    """``hardware``, or the default (the CPU, float32, one thread) for None; InputError for anything else."""
    return check_record(hardware, Hardware, "hardware", "graphprune.Hardware(device='cuda', dtype='bfloat16', batch_size=128)")


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
