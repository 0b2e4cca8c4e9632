"""Accuracy after pruning on real data, offline on CPU: scikit-learn's digits at 32x32, a VGG and a ResNet.

For each model: train the dense model, prune with each importance criterion at the one uniform ratio that
keeps at most 25% of the MACs (graphprune.Budget(macs=0.25, allocation="uniform"): the same widths for
every criterion, since a uniform ratio's widths do not depend on the scores), and report the test accuracy
right after pruning and after a short fine-tune with the dense model as teacher (distillation).
Also one iterative run (graphprune.iterative: 2 steps, each pruned then fine-tuned with KD for the same epochs).
Every shrink is checked against the masked original (graphprune.verify <= 1e-4).
Writes docs/accuracy.md (the table) and docs/accuracy.png (accuracy against MACs).

    python benchmarks/accuracy.py            # about 5 minutes on one CPU thread
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import graphprune  # noqa: E402
from examples.digits import Digits, accuracy, finetune_distilled, load_digits_32, train  # noqa: E402
from examples.models import MODELS  # noqa: E402
from graphprune.planning.importance import Random, Taylor, resolve_importance  # noqa: E402

CRITERIA = ("l2", "bn_scale", "taylor", "random")
# random is the baseline, and one draw can be lucky: three seeds ("random:SEED").
DEFAULT_CRITERIA = ("l2", "bn_scale", "taylor", "random:0", "random:1", "random:2")


@dataclass
class Row:
    model: str
    method: str
    macs: int
    params: int
    dense_macs: int
    dense_accuracy: float
    pruned_accuracy: float | None  # before fine-tuning (None for the iterative run: see its history)
    recalibrated_accuracy: float | None  # before fine-tuning, BatchNorm statistics re-estimated
    tuned_accuracy: float


def _criterion(name: str, data: Digits, seed: int) -> Any:
    """The importance for a name: Taylor gets 8 training batches and the loss, random a seed."""
    if name == "taylor":
        return Taylor(calibration=list(zip(data.x_train.split(64)[:8], data.y_train.split(64)[:8])), loss_fn=F.cross_entropy)
    if name.partition(":")[0] == "random":
        return Random(seed=int(name.partition(":")[2] or seed))
    return name


def _available(criterion: str) -> bool:
    if criterion == "taylor" or criterion.partition(":")[0] == "random":  # need data / a seed: no plain name
        return True
    try:
        resolve_importance(criterion)
        return True
    except graphprune.InputError:
        return False


def _recalibrated(model: torch.nn.Module, data: Digits) -> torch.nn.Module:
    """A copy with BatchNorm statistics re-estimated on 8 training batches (no gradient step)."""
    return graphprune.recalibrate_batchnorm(copy.deepcopy(model), data.x_train.split(64)[:8])


def run(models: list[str], criteria: list[str], *, epochs: int, finetune_epochs: int, macs: float, seed: int = 0,
        iterative_steps: int = 2, train_size: int | None = None, log=print) -> tuple[list[Row], list[str]]:
    """Train, prune and fine-tune; returns the rows and the criteria graphprune does not provide.

    ``iterative_steps=0`` skips the iterative run; ``train_size`` keeps only the first training images (smoke runs).
    """
    data = load_digits_32(seed)
    if train_size is not None:
        data = Digits(data.x_train[:train_size], data.y_train[:train_size], data.x_test, data.y_test)
    x = data.x_test[:1]
    missing = [c for c in criteria if not _available(c)]
    rows: list[Row] = []
    for name in models:
        torch.manual_seed(seed)
        dense = train(MODELS[name](), data, epochs=epochs, seed=seed)
        dense_acc, dense_macs = accuracy(dense, data), graphprune.count_macs(dense, x)
        # The smallest uniform ratio whose counted MACs are at most the target: the same widths for every criterion.
        budget = graphprune.Budget(macs=macs, allocation="uniform")
        log(f"{name}: dense accuracy {dense_acc:.4f}, {dense_macs / 1e6:.2f} M MACs; one uniform ratio keeps <= {macs:.0%} of the MACs")
        for criterion in criteria:
            if criterion in missing:
                continue
            start = time.perf_counter()
            plan = graphprune.plan(dense, budget, example_inputs=x, importance=_criterion(criterion, data, seed))
            small = graphprune.apply(dense, plan)
            error = graphprune.verify(dense, plan, small, data.x_test[:16])
            assert error <= 1e-4, f"{name}/{criterion}: masked-vs-shrunk difference {error:.2e}"
            pruned = accuracy(small, data)
            recalibrated = accuracy(_recalibrated(small, data), data)
            finetune_distilled(small, dense, data, epochs=finetune_epochs, seed=seed)
            rows.append(Row(name, criterion, graphprune.count_macs(small, x), graphprune.count_params(small), dense_macs,
                            dense_acc, pruned, recalibrated, accuracy(small, data)))
            log(f"  {criterion}: pruned {pruned:.4f}, BN recalibrated {recalibrated:.4f}, "
                f"fine-tuned {rows[-1].tuned_accuracy:.4f} ({time.perf_counter() - start:.0f} s)")
        if not iterative_steps:
            continue
        start = time.perf_counter()
        small, history = graphprune.iterative(
            dense, budget, steps=iterative_steps, example_inputs=x, verbose=False,
            train=lambda m: finetune_distilled(m, dense, data, epochs=finetune_epochs, seed=seed),
            evaluate=lambda m: accuracy(m, data))
        rows.append(Row(name, f"l2, iterative ({iterative_steps} step{'s' if iterative_steps > 1 else ''})", history[-1].macs, history[-1].params, dense_macs, dense_acc,
                        None, None, history[-1].metric))
        log("  iterative: " + ", ".join(f"step {r.step}: {r.macs / dense_macs:.0%} MACs, "
                                          f"{'' if r.pruned_metric is None else f'{r.pruned_metric:.4f} -> '}{r.metric:.4f}"
                                          for r in history) + f" ({time.perf_counter() - start:.0f} s)")
    return rows, missing


def table(rows: list[Row]) -> str:
    lines = ["| model | importance | MACs | params | dense acc. | acc. after pruning | same, BN recalibrated "
             "| acc. after KD fine-tune | vs dense |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pruned = "" if r.pruned_accuracy is None else f"{r.pruned_accuracy:.2%}"
        recalibrated = "" if r.recalibrated_accuracy is None else f"{r.recalibrated_accuracy:.2%}"
        lines.append(f"| {r.model} | {r.method} | {r.macs / 1e6:.2f} M ({r.macs / r.dense_macs:.1%}) | {r.params / 1e3:.1f} k "
                     f"| {r.dense_accuracy:.2%} | {pruned} | {recalibrated} | {r.tuned_accuracy:.2%} "
                     f"| {100 * (r.tuned_accuracy - r.dense_accuracy):+.2f} pt |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = dict(zip(CRITERIA, "osD^"))  # the iterative run gets "P"
    for color, name in zip(("tab:blue", "tab:orange", "tab:green"), dict.fromkeys(r.model for r in rows)):
        mine = [r for r in rows if r.model == name]
        ax.scatter([mine[0].dense_macs / 1e6], [100 * mine[0].dense_accuracy], marker="*", s=160, color=color, label=f"{name} dense")
        for r in mine:
            m = markers.get(r.method.partition(":")[0], "P")
            if r.recalibrated_accuracy is not None:
                ax.scatter([r.macs / 1e6], [100 * r.recalibrated_accuracy], marker=m, facecolors="none", edgecolors=color)
            ax.scatter([r.macs / 1e6], [100 * r.tuned_accuracy], marker=m, color=color, label=f"{name} {r.method}")
    ax.set_xlabel("MACs per 32x32 image (millions)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("digits: filled = after KD fine-tune, hollow = after pruning (BN recalibrated)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(rows: list[Row], missing: list[str], out: Path, command: str, settings: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    note = f"\n\nNot available in this build of graphprune: {', '.join(missing)}." if missing else ""
    (out / "accuracy.md").write_text(
        "# Accuracy after pruning: digits, VGG8 and ResNet20, ~25% of the MACs\n\n"
        f"Produced by `{command}` ({settings}).\n\n"
        "scikit-learn's handwritten digits (offline), upsampled to 32x32, fixed stratified 80/20 split "
        "(1437 train / 360 test images). Models from `examples/models.py`. One uniform ratio for every criterion, "
        "the smallest whose MACs are at most the target (`graphprune.Budget(macs=..., allocation=\"uniform\")`); "
        "every shrink verified against the masked "
        "original (`graphprune.verify` <= 1e-4). Fine-tuning: SGD with the dense model as teacher "
        "(`graphprune.distillation_loss`, T=4, alpha=0.5). \"BN recalibrated\": the pruned model, before any "
        "training, with its BatchNorm statistics re-estimated on 8 training batches (`graphprune.recalibrate_batchnorm`); "
        "without it, stale statistics put every criterion near chance. Taylor: 8 training batches of calibration. "
        "Random: three seeds, since one draw can be lucky. One training seed: differences of one or two test images "
        "(0.3-0.6 pt) are noise.\n\n" + table(rows) + note + "\n\n![accuracy against MACs](accuracy.png)\n")
    plot(rows, out / "accuracy.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--criteria", nargs="+", default=list(DEFAULT_CRITERIA), help="random:SEED for a seeded random baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--macs", type=float, default=0.25, help="fraction of the dense MACs to keep")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows, missing = run(args.models, args.criteria, epochs=args.epochs, finetune_epochs=args.finetune_epochs, macs=args.macs,
                        seed=args.seed)
    settings = (f"{args.epochs} dense epochs, {args.finetune_epochs} fine-tune epochs, {args.threads} CPU thread(s), "
                f"torch {torch.__version__}, {time.perf_counter() - start:.0f} s in all")
    write(rows, missing, args.out, "python benchmarks/accuracy.py " + " ".join(sys.argv[1:]), settings)
    print("\n" + table(rows))
    if missing:
        print(f"\nnot available: {', '.join(missing)}")


if __name__ == "__main__":
    main()
