"""Dense vs shrunk latency: how much of the MACs cut becomes real speed.

Every configuration is a :class:`~graphprune.Hardware` (device, batch size, dtype, memory
layout, runtime, threads), the same record a latency budget is planned for, so a benchmark
times exactly what the planner timed. Each times the dense and the shrunk model with
``torch.utils.benchmark`` (median of blocked auto-ranged runs, inference mode, eval mode, on
copies: the caller's models are not converted). MACs and parameters come from
``torch.utils.flop_counter``.

*Realized* is the fraction of the MACs saving that shows up as time saved (:data:`REALIZED`).

>>> import torch
>>> dense = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 1))
>>> small = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 1))
>>> rows = run_benchmark({"toy": (dense, small)}, (3, 16, 16), [Hardware(batch_size=1, model_min_run_time=0.01)])
>>> rows[0].macs_dense, rows[0].macs_shrunk
(219520, 109760)
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..base.errors import InputError
from .counts import count_macs, count_params
from .hardware import Hardware

__all__ = ["Row", "REALIZED", "default_configs", "run_benchmark", "to_markdown", "plot"]

REALIZED = ("realized: the share of the MACs saving that shows up as time saved, (1 - shrunk ms / dense ms) / "
            "(1 - shrunk MACs / dense MACs); 100% means latency fell as much as the arithmetic, less means overheads "
            "(memory traffic, launches, narrow layers) kept part of it")


@dataclass
class Row:
    """Timings of one model pair under one configuration."""

    model: str
    config: Hardware
    dense_ms: float
    shrunk_ms: float
    macs_dense: int
    macs_shrunk: int
    params_dense: int
    params_shrunk: int

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.shrunk_ms

    @property
    def macs_reduction(self) -> float:
        return self.macs_dense / self.macs_shrunk

    @property
    def realized(self) -> float:
        saved_macs = 1 - self.macs_shrunk / self.macs_dense
        return (1 - self.shrunk_ms / self.dense_ms) / saved_macs if saved_macs > 0 else math.nan

    def throughput(self, which: str) -> float:
        """Images (samples) per second."""
        ms = self.dense_ms if which == "dense" else self.shrunk_ms
        return self.config.batch_size / (ms / 1e3)


def default_configs(devices: Sequence[str] | None = None, *, modes: Sequence[str] = ("eager",),
                    dtypes: Sequence[str] | None = None, channels_last: Sequence[bool] = (False, True),
                    batches: Sequence[int] | None = None, num_threads: int = 1,
                    min_run_time: float = 0.5) -> list[Hardware]:
    """The standard grid: batch 1 and 16 (and 128 on CUDA); fp32 and bf16 (and fp16 on CUDA); ``num_threads``
    CPU threads; ``min_run_time`` seconds per measurement."""
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    configs = []
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError("CUDA is not available on this machine")
        device_batches = batches or ((1, 16, 128) if device == "cuda" else (1, 16))
        device_dtypes = dtypes or (("float32", "bfloat16", "float16") if device == "cuda" else ("float32", "bfloat16"))
        device_modes = [m for m in modes if m != "cudagraphs" or device.startswith("cuda")]
        for batch, dtype, layout, mode in itertools.product(device_batches, device_dtypes, channels_last, device_modes):
            configs.append(Hardware(device, dtype, batch_size=batch, runtime=mode, num_threads=num_threads,
                                    channels_last=layout, model_min_run_time=min_run_time))
    return configs


def run_benchmark(pairs: dict[str, tuple[nn.Module, nn.Module]], input_shape: Sequence[int],
                  configs: Iterable[Hardware], *, repeats: int = 1, progress: bool | None = None) -> list[Row]:
    """Time every (dense, shrunk) pair under every configuration; ``input_shape`` excludes the batch dim,
    which is each configuration's ``batch_size`` (1 where it has none).

    Under each configuration every distinct model is timed once per round, the rounds interleave the
    models, and each model keeps its fastest round's median: other processes can only add time, so the
    minimum is the least disturbed estimate, and interleaving spreads slow phases over all models alike.
    A dense model shared by several pairs is timed once.
    """
    from tqdm.auto import tqdm

    configs = list(configs)
    for config in configs:
        if not isinstance(config, Hardware):
            raise InputError(f"configs must be graphprune.Hardware records, not {type(config).__name__}")
        if config.is_cuda and not torch.cuda.is_available():
            raise InputError("CUDA is not available on this machine")
    configs = [c if c.batch_size else dataclasses.replace(c, batch_size=1) for c in configs]
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"repeats must be a positive integer, got {repeats!r}")
    models: dict[int, nn.Module] = {}
    for dense, shrunk in pairs.values():
        models.setdefault(id(dense), dense)
        models.setdefault(id(shrunk), shrunk)
    one = torch.randn(1, *input_shape)
    macs = {key: count_macs(m, one) for key, m in models.items()}
    quiet = not sys.stderr.isatty() if progress is None else not progress
    rows: list[Row] = []
    bar = tqdm(total=len(configs) * repeats * len(models), desc="benchmark", disable=quiet)
    for config in configs:
        x = torch.randn(config.batch_size, *input_shape)
        calls = {key: config.runner(m, (x,)) for key, m in models.items()}
        best = dict.fromkeys(calls, math.inf)
        for _ in range(repeats):
            for key, fn in calls.items():
                best[key] = min(best[key], config.seconds(fn, config.model_min_run_time) * 1e3)
                bar.update()
        del calls
        for name, (dense, shrunk) in pairs.items():
            rows.append(Row(name, config, best[id(dense)], best[id(shrunk)], macs[id(dense)], macs[id(shrunk)],
                            count_params(dense), count_params(shrunk)))
    bar.close()
    return rows


def to_markdown(rows: Sequence[Row]) -> str:
    """One line per model and configuration: latency, throughput, speed-up next to the MACs reduction, the thread
    count it was timed with, and a line saying what *realized* means."""
    lines = [
        "| model | device | batch | dtype | layout | runtime | threads | dense ms | shrunk ms | dense img/s "
        "| shrunk img/s | speed-up | MACs reduction | realized |",
        "|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = r.config
        lines.append(
            f"| {r.model} | {c.device} | {c.batch_size} | {c.dtype} | {'channels_last' if c.channels_last else 'contiguous'} "
            f"| {c.runtime} | {c.num_threads} | {r.dense_ms:.2f} | {r.shrunk_ms:.2f} | {r.throughput('dense'):.1f} "
            f"| {r.throughput('shrunk'):.1f} | {r.speedup:.2f}x | {r.macs_reduction:.2f}x | {r.realized:.0%} |"
        )
    lines += ["", f"{REALIZED[0].upper()}{REALIZED[1:]}."]
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: str | Path) -> None:
    """A PNG bar chart: speed-up per configuration and model, each bar marked with its MACs reduction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in rows))
    labels = list(dict.fromkeys(r.config.label() for r in rows))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 * len(labels) * max(len(models), 1) ** 0.5 + 4), 4.5))
    for i, model in enumerate(models):
        mine = {r.config.label(): r for r in rows if r.model == model}
        xs = [k + i * width for k, label in enumerate(labels) if label in mine]
        here = [mine[label] for label in labels if label in mine]
        ax.bar(xs, [r.speedup for r in here], width, label=model)
        # The MACs reduction is the speed-up the arithmetic alone would give: a tick across each bar.
        ax.hlines([r.macs_reduction for r in here], [x - width / 2 for x in xs], [x + width / 2 for x in xs],
                  colors="black", linestyles="dashed", linewidth=1.2,
                  label="MACs reduction" if i == 0 else None)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks([k + width * (len(models) - 1) / 2 for k in range(len(labels))], labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("speed-up (dense / shrunk latency)")
    ax.set_title("graphprune: measured speed-up (bars) vs MACs reduction (dashed)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
