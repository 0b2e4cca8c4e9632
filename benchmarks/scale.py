"""How graphprune scales with depth: synthetic residual networks of 100, 500 and 2,000 blocks.

Each block is conv3x3-BN-ReLU-conv3x3-BN plus the identity, then ReLU, at 16 channels on
a 1x16x8x8 input; every block's residual stream is one coupled group. Each depth runs in
a fresh process (one thread) so that its peak resident memory (``resource.getrusage``
``ru_maxrss``: the whole process, Python and torch included) is its own. Times are
seconds of one run after a warm-up on a small network: wall (``time.perf_counter``) and
CPU (``time.process_time``, which a busy machine disturbs less).

Run: python benchmarks/scale.py [--depths 100 500 2000] [--torch-pruning [--tp-timeout 600]]
(Torch-Pruning runs in a process of its own; ``pip install torch-pruning==1.6.1`` first.)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch import nn

CHANNELS, SIZE = 16, 8


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class DeepResNet(nn.Module):
    def __init__(self, blocks: int, c: int = CHANNELS):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.Sequential(*(Block(c) for _ in range(blocks)))
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    w, c = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - w, time.process_time() - c


def _measure(blocks: int) -> dict:
    """One depth, in this process: times of plan, apply and shrink, the proof, and peak RSS."""
    import graphprune

    x = torch.randn(1, 3, SIZE, SIZE)
    graphprune.shrink(DeepResNet(2), 0.5, example_inputs=x)  # warm-up: imports, fake-tensor caches
    model = DeepResNet(blocks).eval()
    row: dict = {"blocks": blocks, "params": sum(p.numel() for p in model.parameters())}
    row["nodes"] = len(torch.fx.symbolic_trace(model).graph.nodes)
    plan, row["plan_s"], _ = _timed(lambda: graphprune.plan(model, 0.5, example_inputs=x))
    shrunk, row["apply_s"], _ = _timed(lambda: graphprune.apply(model, plan))
    _, row["shrink_s"], row["shrink_cpu_s"] = _timed(lambda: graphprune.shrink(model, 0.5, example_inputs=x))
    row["verify"] = graphprune.verify(model, plan, shrunk, x)
    row["kept"] = shrunk.stem.out_channels
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return row


def _measure_torch_pruning(blocks: int) -> dict:
    """The same network and ratio through Torch-Pruning's MetaPruner (L2 magnitude), for comparison."""
    import torch_pruning as tp

    x = torch.randn(1, 3, SIZE, SIZE)
    model = DeepResNet(blocks).eval()

    def prune():
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=0.5, ignored_layers=[model.head])
        pruner.step()

    _, wall, cpu = _timed(prune)
    return {"torch_pruning_s": wall, "torch_pruning_cpu_s": cpu, "torch_pruning_kept": model.stem.out_channels}


def _child(blocks: int, what: str, timeout: float | None) -> dict | None:
    cmd = [sys.executable, __file__, "--one", str(blocks), "--what", what]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        return None
    return json.loads(out.strip().splitlines()[-1])


def _tp_cells(row: dict, timeout: float) -> str:
    if row["torch_pruning_s"] is None:
        return f" > {timeout:.0f} (stopped) | |"
    return f" {row['torch_pruning_s']:.1f} | {row['torch_pruning_cpu_s']:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--torch-pruning", action="store_true", help="also time torch_pruning's MetaPruner (if installed)")
    parser.add_argument("--tp-timeout", type=float, default=600, help="seconds before a Torch-Pruning run is given up")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one depth, print JSON
    parser.add_argument("--what", default="graphprune", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        print(json.dumps(_measure(args.one) if args.what == "graphprune" else _measure_torch_pruning(args.one)))
        return
    rows = []
    for blocks in args.depths:
        row = _child(blocks, "graphprune", None)
        if args.torch_pruning:
            row.update(_child(blocks, "torch_pruning", args.tp_timeout) or {"torch_pruning_s": None})
        rows.append(row)
    tp = args.torch_pruning
    print("| blocks | FX nodes | params | plan (s) | apply (s) | shrink (s) | shrink CPU (s) | CPU s per 100 blocks "
          "| peak RSS (MiB) | verify |" + (" Torch-Pruning 1.6.1 (s) | its CPU (s) |" if tp else ""))
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if tp else ""))
    for r in rows:
        print(f"| {r['blocks']} | {r['nodes']} | {r['params'] / 1e6:.2f} M | {r['plan_s']:.1f} | {r['apply_s']:.1f} "
              f"| {r['shrink_s']:.1f} | {r['shrink_cpu_s']:.1f} | {100 * r['shrink_cpu_s'] / r['blocks']:.2f} "
              f"| {r['peak_rss_mib']:.0f} | {r['verify']:.1e} |"
              + (_tp_cells(r, args.tp_timeout) if tp else ""))
    by_depth = {r["blocks"]: r for r in rows}
    if 500 in by_depth and 2000 in by_depth:
        wall, cpu = (by_depth[2000][k] / by_depth[500][k] for k in ("shrink_s", "shrink_cpu_s"))
        print(f"\nshrink, 2000 blocks / 500 blocks: {wall:.2f}x wall, {cpu:.2f}x CPU (linear: 4x)")


if __name__ == "__main__":
    main()
