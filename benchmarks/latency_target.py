"""Latency targets: requested vs measured latency, MACs and params, against uniform pruning at equal MACs.

For each model and target fraction, ``graphprune.plan(model, latency=target)`` measures a
per-layer latency table on the device (cached), plans against it and checks by timing. The
baseline is a uniform ratio (every group loses the same fraction) tuned to the same MACs as
the latency-aware plan: at equal MACs, the latency-aware plan should run faster.

Dense and pruned models are timed back to back with torch.utils.benchmark (median). Run:
    python benchmarks/latency_target.py [--models resnet50 vgg16_bn mobilenet_v2] [--targets 0.75 0.5]
        [--size 160] [--threads 1] [--device cpu] [--cache PATH] [--out docs/latency_target.md]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
import torchvision

import graphprune
import graphprune.budget
from graphprune.latency_table import Hardware


def _ms(model: torch.nn.Module, x: torch.Tensor, hw: Hardware, seconds: float) -> float:
    model = model.to(hw.device, hw.torch_dtype).eval()
    x = x.to(hw.device, hw.torch_dtype)
    return graphprune.measure_latency(model, x, min_run_time=seconds, num_threads=hw.num_threads) * 1e3


def _uniform_at_macs(model: torch.nn.Module, x: torch.Tensor, macs: int, round_to: int | None) -> tuple[float, torch.nn.Module]:
    """The uniform ratio whose MACs match ``macs`` (MACs shrink about as (1 - r)^2; three corrections)."""
    dense = graphprune.count_macs(model, x)
    ratio, shrunk = 1 - math.sqrt(macs / dense), None
    for _ in range(4):
        plan = graphprune.plan(model, ratio, example_inputs=x, round_to=round_to)
        shrunk = graphprune.apply(model, plan)
        got = graphprune.count_macs(shrunk, x)
        if abs(got / macs - 1) < 0.01:
            break
        ratio = min(0.95, max(0.0, 1 - (1 - ratio) * math.sqrt(macs / got)))
    return ratio, shrunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vgg16_bn", "mobilenet_v2"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.75, 0.5])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--cache", default=None, help="latency table JSON (default ~/.cache/graphprune/latency.json)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per model in the table")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hw = Hardware(device=args.device, dtype=args.dtype, num_threads=args.threads, cache=args.cache)
    x = torch.randn(1, 3, args.size, args.size)
    header = (f"graphprune.plan(model, latency=target), {args.device} {args.dtype}, batch 1, {args.size}x{args.size}, "
              f"{args.threads} thread(s), torch {torch.__version__}, random-init torchvision models, "
              f"widths rounded to round_to='auto' = {graphprune.budget.resolve_round_to('auto', args.device, args.dtype)}")
    lines = [header, "",
             "| model | target | dense ms | requested ms | predicted ms | measured ms | measured / dense | in-plan paired measured / dense | load avg | GMACs (frac.) | Mparams (frac.) "
             "| uniform ratio at equal MACs (same round_to) | uniform ms | latency-aware speed-up vs uniform | plan (s) | verify |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in args.models:
        model = getattr(torchvision.models, name)().eval()
        macs0, params0 = graphprune.count_macs(model, x), graphprune.count_params(model)
        for target in args.targets:
            start = time.perf_counter()
            plan = graphprune.plan(model, example_inputs=x, latency=target, hardware=hw)
            seconds = time.perf_counter() - start
            shrunk = graphprune.apply(model, plan)
            rel = graphprune.verify(model, plan, shrunk, x)
            macs, params = graphprune.count_macs(shrunk, x), graphprune.count_params(shrunk)
            # The baseline gets the same width rounding as the latency plan: only the allocation differs.
            ratio, uniform = _uniform_at_macs(model, x, macs, plan.budget["round_to_resolved"])
            # Timed back to back, alternating, so slow drifts of a shared machine hit all three alike.
            dense_ms, small_ms, uni_ms = [], [], []
            for _ in range(2):
                dense_ms.append(_ms(model, x, hw, args.min_run_time))
                small_ms.append(_ms(shrunk, x, hw, args.min_run_time))
                uni_ms.append(_ms(uniform, x, hw, args.min_run_time))
            d, s, u = min(dense_ms), min(small_ms), min(uni_ms)
            b = plan.budget
            note = " (fell back to dense)" if "note" in b else ""
            lines.append(
                f"| {name} | {target} | {d:.1f} | {target * d:.1f} | {b['predicted'] * 1e3:.1f} | {s:.1f}{note} | {s / d:.3f} "
                f"| {b['actual_fraction']:.3f} | {os.getloadavg()[0]:.1f} "
                f"| {macs / 1e9:.3f} ({macs / macs0:.2f}) | {params / 1e6:.2f} ({params / params0:.2f}) | {ratio:.3f} "
                f"| {u:.1f} | {u / s:.2f}x | {seconds:.0f} | {rel:.0e} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
