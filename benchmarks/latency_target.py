"""Latency targets: requested vs measured latency, MACs and params, against uniform pruning at equal MACs.

For each model and target fraction, ``graphprune.plan(model, Budget(latency=target))`` measures a
per-layer latency table on the device (cached), plans against it and checks by timing. The
baselines are a uniform ratio (every group loses the same fraction) tuned to the same MACs as
the latency-aware plan, with the same width rounding and without any: at equal MACs, the
latency-aware plan should run faster.

Dense and pruned models are timed back to back with torch.utils.benchmark (median). Run:
    python benchmarks/latency_target.py [--models resnet50 vgg16_bn mobilenet_v2] [--targets 0.75 0.5]
        [--size 160] [--threads 1] [--device cpu] [--cache PATH] [--out docs/latency_target.md]
    python benchmarks/latency_target.py --device cuda --dtype bfloat16 --channels-last --batch 128 --size 224
        [--runtime cudagraphs]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from pathlib import Path

import torch
import torchvision

import graphprune
from graphprune import Hardware
from graphprune.measure import RUNTIMES
from graphprune.planning.budget import resolve_round_to
from graphprune.planning.policy import POLICIES


def _uniform_at_macs(model: torch.nn.Module, x: torch.Tensor, macs: int, round_to: int | None) -> tuple[float, torch.nn.Module]:
    """The uniform ratio whose MACs match ``macs`` (MACs shrink about as (1 - r)^2; three corrections)."""
    dense = graphprune.count_macs(model, x)
    ratio, shrunk = 1 - math.sqrt(macs / dense), None
    for _ in range(4):
        plan = graphprune.plan(model, graphprune.Budget(ratio, round_to=round_to), example_inputs=x)
        shrunk = graphprune.apply(model, plan)
        got = graphprune.count_macs(shrunk, x)
        if abs(got / macs - 1) < 0.01:
            break
        ratio = min(0.95, max(0.0, 1 - (1 - ratio) * math.sqrt(macs / got)))
    return ratio, shrunk


def _uniform_at_latency(model: torch.nn.Module, x: torch.Tensor, fraction: float, round_to: int,
                        timing: Hardware) -> tuple[float, graphprune.Plan, float]:
    """The uniform ratio (same rounding) whose measured latency is ``fraction`` of dense: bisected, 6 timings."""
    dense = timing.model_seconds(model, (x,))
    low, high, best = 0.0, 0.95, None
    for _ in range(6):
        ratio = (low + high) / 2
        plan = graphprune.plan(model, graphprune.Budget(ratio, round_to=round_to), example_inputs=x)
        got = timing.model_seconds(graphprune.apply(model, plan), (x,)) / dense
        if best is None or abs(got - fraction) < abs(best[2] - fraction):
            best = (ratio, plan, got)
        if abs(got / fraction - 1) <= 0.03:
            break
        low, high = (ratio, high) if got > fraction else (low, ratio)
    assert best is not None
    return best


def _row(name: str, target: float, model: torch.nn.Module, x: torch.Tensor, hw: Hardware, timing: Hardware,
         repeats: int, tradeoff: float | None) -> dict:
    macs0, params0 = graphprune.count_macs(model, x), graphprune.count_params(model)
    start = time.perf_counter()
    plan = graphprune.plan(model, graphprune.Budget(latency=target, tradeoff=tradeoff), example_inputs=x, hardware=hw)
    seconds = time.perf_counter() - start
    shrunk = graphprune.apply(model, plan)
    rel = graphprune.verify(model, plan, shrunk, x)
    macs, params = graphprune.count_macs(shrunk, x), graphprune.count_params(shrunk)
    round_to = plan.budget.round_to
    # Baselines at the same MACs: uniform with the same width rounding (only the allocation differs), and
    # uniform unrounded (what a MACs-only pruner gives: widths off the hardware's tiles).
    ratio, uniform = _uniform_at_macs(model, x, macs, round_to)
    raw_ratio, raw = _uniform_at_macs(model, x, macs, None)
    # At equal latency instead: how much of the network a uniform plan keeps, against the latency-aware one.
    lat_ratio, lat_plan, lat_fraction = _uniform_at_latency(model, x, plan.budget.measured_fraction, round_to, timing)
    lat_macs = graphprune.count_macs(graphprune.apply(model, lat_plan), x)
    # Timed back to back, alternating, so slow drifts of a shared machine hit all of them alike.
    # Each is prepared (compiled, captured) once and timed `repeats` times.
    runs = {key: timing.runner(m, (x,)) for key, m in (("dense", model), ("plan", shrunk), ("uniform", uniform), ("raw", raw))}
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            times[key].append(timing.seconds(run, timing.model_min_run_time) * 1e3)
    d, s, u, r = (min(times[k]) for k in ("dense", "plan", "uniform", "raw"))
    b = plan.budget
    # The planner's figures are fractions of its own dense timing; they are shown in this run's dense ms.
    return {"model": name, "target": target, "tradeoff": tradeoff if tradeoff is not None else POLICIES["latency"].tradeoff, "dense_ms": d, "requested_ms": target * d, "predicted_ms": b.predicted / b.dense * d,
            "measured_ms": s, "fraction": s / d, "in_plan_fraction": b.measured_fraction,
            "chosen_on_fraction": b.chosen_on / b.dense if b.chosen_on is not None else None, "fell_back": b.note is not None,
            "load": os.getloadavg()[0], "gmacs": macs / 1e9, "macs_fraction": macs / macs0, "mparams": params / 1e6,
            "params_fraction": params / params0, "uniform_ratio": ratio, "uniform_ms": u, "speedup_vs_uniform": u / s,
            "raw_ratio": raw_ratio, "raw_ms": r, "speedup_vs_raw": r / s, "plan_s": seconds, "verify": rel,
            "round_to": round_to, "runtime": b.runtime, "allocator": b.allocator, "table_measurements": b.table_measurements,
            "kept_channels": plan.kept_fraction, "uniform_equal_latency_ratio": lat_ratio,
            "uniform_equal_latency_fraction": lat_fraction, "uniform_equal_latency_kept_channels": lat_plan.kept_fraction,
            "uniform_equal_latency_macs_fraction": lat_macs / macs0}


def _markdown(row: dict) -> str:
    note = " (fell back to dense)" if row["fell_back"] else ""
    return (f"| {row['model']} | {row['target']} | {row['tradeoff']} | {row['dense_ms']:.2f} | {row['requested_ms']:.2f} | {row['predicted_ms']:.2f} "
            f"| {row['measured_ms']:.2f}{note} | {row['fraction']:.3f} | {row['in_plan_fraction']:.3f} | {row['load']:.1f} "
            f"| {row['gmacs']:.3f} ({row['macs_fraction']:.2f}) | {row['mparams']:.2f} ({row['params_fraction']:.2f}) "
            f"| {row['uniform_ratio']:.3f} | {row['uniform_ms']:.2f} | {row['speedup_vs_uniform']:.2f}x "
            f"| {row['raw_ms']:.2f} | {row['speedup_vs_raw']:.2f}x "
            f"| {row['kept_channels']:.2f} / {row['uniform_equal_latency_kept_channels']:.2f} "
            f"| {row['macs_fraction']:.2f} / {row['uniform_equal_latency_macs_fraction']:.2f} "
            f"| {row['plan_s']:.0f} | {row['verify']:.0e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vgg16_bn", "mobilenet_v2"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.75, 0.5])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=1, help="batch size the latency is planned and measured at")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--channels-last", action="store_true", help="run convs in NHWC (the fast layout for bf16 on CUDA)")
    parser.add_argument("--runtime", default="eager", choices=RUNTIMES,
                        help="the runtime planned for and timed in (graphprune.measure.runtimes)")
    parser.add_argument("--cache", default=None, help="latency table JSON (default ~/.cache/graphprune/latency.json)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per whole-model measurement")
    parser.add_argument("--repeats", type=int, default=2, help="alternating timing rounds; each model keeps its fastest")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--tradeoffs", nargs="+", type=float, default=[None],
                        help="planner tradeoffs to compare (Budget.tradeoff; default: the library's)")
    parser.add_argument("--jsonl", default=None, help="also append one JSON object per row here, as each row finishes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hw = Hardware(device=args.device, dtype=args.dtype, num_threads=args.threads, cache=args.cache,
                  batch_size=args.batch, channels_last=args.channels_last, runtime=args.runtime)
    timing = Hardware(device=args.device, dtype=args.dtype, num_threads=args.threads, batch_size=args.batch,
                      channels_last=args.channels_last, model_min_run_time=args.min_run_time, runtime=args.runtime)
    x = torch.randn(1, 3, args.size, args.size)
    layout = ", channels_last" if args.channels_last else ""
    header = (f"graphprune.plan(model, Budget(latency=target)), {args.device} {args.dtype}{layout}, {args.runtime}, batch {args.batch}, "
              f"{args.size}x{args.size}, {args.threads} thread(s), torch {torch.__version__}"
              f"{', ' + torch.cuda.get_device_name() if hw.is_cuda else ''}, random-init torchvision models, "
              f"widths rounded to round_to='auto' = {resolve_round_to('auto', hw)}")
    lines = [header, "",
             "| model | target | tradeoff | dense ms | requested ms | predicted ms | measured ms | measured / dense | in-plan paired measured / dense "
             "| load avg | GMACs/img (frac.) | Mparams (frac.) | uniform ratio at equal MACs (same round_to) | uniform ms "
             "| latency-aware speed-up vs uniform | uniform unrounded ms | speed-up vs unrounded "
             "| channels kept: latency-aware / uniform at equal latency | MACs kept: same | plan (s) | verify |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    print(header, flush=True)
    for name in args.models:
        model = getattr(torchvision.models, name)().eval()
        for target, tradeoff in itertools.product(args.targets, args.tradeoffs):
            try:
                row = _row(name, target, model, x, hw, timing, args.repeats, tradeoff)
            except Exception as exc:  # one failing row must not lose the others' measurements
                print(f"| {name} | {target} | {tradeoff} | error: {type(exc).__name__}: {exc} |", flush=True)
                continue
            lines.append(_markdown(row))
            print(lines[-1], flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(row) + "\n")
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
