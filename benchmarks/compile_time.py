"""Time to plan and rewrite (graphprune.shrink) resnet50 and vgg16_bn on CPU, one thread, median of 5.

Run: python benchmarks/compile_time.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torchvision

import graphprune


def main() -> None:
    torch.set_num_threads(1)
    graphprune.shrink(torchvision.models.resnet18(), 0.5)  # warm-up: imports, fake-tensor caches
    print("| model | params | size (MB) | plan (s) | apply (s) | shrink total (s), median of 5 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ["resnet50", "vgg16_bn"]:
        model = getattr(torchvision.models, name)()
        plans, applies, totals = [], [], []
        for _ in range(5):
            t0 = time.perf_counter()
            plan = graphprune.plan(model, 0.5)
            t1 = time.perf_counter()
            graphprune.apply(model, plan)
            t2 = time.perf_counter()
            plans.append(t1 - t0)
            applies.append(t2 - t1)
            totals.append(t2 - t0)
        params = graphprune.count_params(model)
        size_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
        print(f"| {name} | {params / 1e6:.1f} M | {size_mb:.0f} | {statistics.median(plans):.3f} "
              f"| {statistics.median(applies):.3f} | {statistics.median(totals):.3f} |")


if __name__ == "__main__":
    main()
