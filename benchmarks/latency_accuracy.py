"""Accuracy at equal measured latency: a latency-budget plan against uniform pruning, on real data (digits).

The latency-aware planner keeps the channels whose time is worth their importance, so at the
same measured latency it keeps more of the network than uniform pruning does (see
docs/latency_target.md). Whether that buys accuracy is the question here. For each model
(trained on scikit-learn's digits at 32x32, offline):

- ``graphprune.plan(dense, Budget(latency=target), hardware=Hardware(batch_size=B))``, timed on this CPU;
- uniform pruning, same width rounding, its ratio bisected on measured latency to the same fraction;

both fine-tuned with the dense model as teacher for the same epochs, BatchNorm statistics
recalibrated before the "pruned" figure. Every rewrite is checked (verify <= 1e-4).

    python benchmarks/latency_accuracy.py                  # about 10 minutes on one CPU thread
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import graphprune  # noqa: E402
from examples.digits import accuracy, finetune_distilled, load_digits_32, train  # noqa: E402
from examples.models import MODELS  # noqa: E402
from graphprune import Hardware  # noqa: E402
from latency_target import _uniform_at_latency  # noqa: E402


def _recalibrated_accuracy(model: torch.nn.Module, data) -> float:
    graphprune.recalibrate_batchnorm(model, data.x_train.split(128)[:8])
    return accuracy(model, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--targets", nargs="+", type=float, default=[0.8])
    parser.add_argument("--batch", type=int, default=256, help="batch size the latency is planned and measured at")
    parser.add_argument("--epochs", type=int, default=12, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hw = Hardware(batch_size=args.batch, model_min_run_time=0.3)
    lines = [f"digits 32x32, CPU fp32, 1 thread, batch {args.batch}, torch {torch.__version__}; {args.epochs} dense epochs, "
             f"{args.finetune_epochs} fine-tune epochs (KD from the dense model); widths rounded to round_to='auto'", "",
             "| model | seed | target | plan | latency / dense | channels kept | MACs kept | pruned acc. (BN recal.) "
             "| fine-tuned acc. | dense acc. | verify |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    start = time.perf_counter()
    for name in args.models:
        for seed in args.seeds:
            data = load_digits_32(seed)
            x = data.x_test[:1]
            torch.manual_seed(seed)
            dense = train(MODELS[name](), data, epochs=args.epochs, seed=seed)
            dense_acc, dense_macs = accuracy(dense, data), graphprune.count_macs(dense, x)
            for target in args.targets:
                try:
                    plan = graphprune.plan(dense, graphprune.Budget(latency=target), example_inputs=x, hardware=hw)
                except graphprune.PlanError as exc:  # an unreachable target is a result too, not the end of the run
                    lines.append(f"| {name} | {seed} | {target} | refused: {str(exc).splitlines()[0]} | | | | | | {dense_acc:.4f} | |")
                    print(lines[-1], flush=True)
                    continue
                fraction = plan.budget.measured_fraction
                ratio, uniform, uniform_fraction = _uniform_at_latency(dense, x, fraction, plan.budget.round_to, hw)
                for label, p, measured in (("latency-aware", plan, fraction), (f"uniform {ratio:.3f}", uniform, uniform_fraction)):
                    small = graphprune.apply(dense, p)
                    error = graphprune.verify(dense, p, small, data.x_test[:16])
                    assert error <= 1e-4, f"{name}/{label}: masked-vs-shrunk difference {error:.2e}"
                    macs = graphprune.count_macs(small, x) / dense_macs
                    pruned = _recalibrated_accuracy(small, data)
                    finetune_distilled(small, dense, data, epochs=args.finetune_epochs, seed=seed)
                    lines.append(f"| {name} | {seed} | {target} | {label} | {measured:.3f} | {p.kept_fraction:.2f} | {macs:.2f} "
                                 f"| {pruned:.4f} | {accuracy(small, data):.4f} | {dense_acc:.4f} | {error:.0e} |")
                    print(lines[-1], flush=True)
    lines += ["", f"{time.perf_counter() - start:.0f} s in all. Command: `python benchmarks/latency_accuracy.py "
              + " ".join(sys.argv[1:]) + "`"]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
