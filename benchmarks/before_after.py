"""The main job: shrink torchvision resnet50 and vgg16_bn at ratio 0.5 and print a before/after table.

Parameters and MACs come from torch.utils.flop_counter, latency from torch.utils.benchmark
(median, CPU, batch 1 at 224x224, one thread unless --threads says otherwise: the default of
graphprune's benchmarks and latency budgets, since a shared machine's spare threads make timings
noisy). The masked-vs-shrunk difference proves the rewrite.
Run: python benchmarks/before_after.py [--models resnet50 vgg16_bn] [--ratio 0.5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

import graphprune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vgg16_bn"])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for timing and shrinking (default 1)")
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds of timing per model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hardware = graphprune.Hardware(num_threads=args.threads, model_min_run_time=args.min_run_time)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    rows = []
    for name in args.models:
        model = getattr(torchvision.models, name)().eval()
        start = time.perf_counter()
        plan = graphprune.plan(model, args.ratio, example_inputs=x)
        shrunk = graphprune.apply(model, plan)
        seconds = time.perf_counter() - start
        rel = graphprune.verify(model, plan, shrunk, x)
        dense_ms = graphprune.measure_latency(model, x, hardware) * 1e3
        small_ms = graphprune.measure_latency(shrunk, x, hardware) * 1e3
        rows.append((name, graphprune.count_params(model), graphprune.count_params(shrunk),
                     graphprune.count_macs(model, x), graphprune.count_macs(shrunk, x), dense_ms, small_ms, seconds, rel))

    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
    print(f"\ngraphprune.shrink(model, {args.ratio}), CPU, batch 1, 224x224, {threads}, torch {torch.__version__}\n")
    print("| model | threads | params before | params after | MACs before | MACs after | latency before (ms) | latency after (ms) | speed-up | shrink (s) | masked-vs-shrunk rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, p0, p1, m0, m1, t0, t1, s, rel in rows:
        print(f"| {name} | {args.threads} | {p0 / 1e6:.2f} M | {p1 / 1e6:.2f} M ({p0 / p1:.2f}x fewer) | {m0 / 1e9:.2f} G | {m1 / 1e9:.2f} G ({m0 / m1:.2f}x fewer) "
              f"| {t0:.1f} | {t1:.1f} | {t0 / t1:.2f}x | {s:.2f} | {rel:.1e} |")


if __name__ == "__main__":
    main()
