"""How long graphprune takes to shrink a model, next to Torch-Pruning, and where the time goes.

For each model, in one warm process on one thread, alternating round by round:

- ``graphprune.shrink(model, 0.5)`` (L2 magnitude, the original untouched);
- Torch-Pruning 1.6.1 as its users run it: a deep copy, ``MagnitudePruner`` (L2 magnitude, ratio 0.5, the
  classifier ignored), which builds its dependency graph, and ``pruner.step()``;
- graphprune's stages one by one, to split its time: trace, shape propagation, couple, plan, apply (slicing,
  copying and rewriting) and check (the rewritten model's forward on meta tensors).

Medians over the rounds; the ratio is graphprune's median over Torch-Pruning's, and the paired ratio the median
of each round's ratio of the two (its calls a second apart, which a drift of the machine's speed disturbs least). ``--cold`` also times the
first call in a fresh process (imports excluded, reported apart), each tool in its own process, and
``--memory`` the peak resident memory of ``shrink(vgg16_bn)`` in a fresh process against the dense and
shrunk models' sizes.

``--startup`` times ``graphprune --help`` and ``--version`` against a bare ``import torch``.

``--paths`` compares the two capture paths on the same models (default resnet50), alternating: symbolic
tracing (``Scope(capture="fx")``) and ``torch.export`` (``Scope(capture="export")``), each split into capture
(graph and shapes), couple + plan, and apply (rewrite and check).

Run: python benchmarks/compile_time.py [--models resnet50 ...] [--repeats 5] [--cold] [--memory] [--startup]
     [--paths [MODEL ...]]
(Torch-Pruning: ``pip install torch-pruning==1.6.1``, never a graphprune dependency.)
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from scale import DeepResNet  # noqa: E402

import graphprune  # noqa: E402
from graphprune.base.collector import collector_paused  # noqa: E402
from graphprune.capture.fx import trace_fx  # noqa: E402
from graphprune.capture.inputs import positional_inputs  # noqa: E402
from graphprune.capture.shapes import propagate_shapes  # noqa: E402
from graphprune.capture import Captured, capture  # noqa: E402
from graphprune.coupling import couple  # noqa: E402
from graphprune.planning import plan_coupling  # noqa: E402
from graphprune.rewrite import apply as rewrite_apply  # noqa: E402

MODELS = ["resnet50", "vgg16_bn", "mobilenet_v2", "efficientnet_b0", "densenet121", "vit_b_16", "scale100",
          "scale2000"]
PHASES = ["trace", "shapes", "couple", "plan", "apply", "check"]


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name.startswith("scale"):
        return DeepResNet(int(name.removeprefix("scale"))).eval(), torch.randn(1, 3, 8, 8)
    return getattr(torchvision.models, name)().eval(), torch.randn(1, 3, 224, 224)


def torch_pruning(model: nn.Module, x: torch.Tensor) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(model)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]  # the classifier keeps its classes
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.5, ignored_layers=[head])
    pruner.step()
    return model


def phases(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """graphprune.shrink's stages, timed one by one (the same calls api.shrink makes)."""
    marks = [time.perf_counter()]
    gm = trace_fx(model)
    marks.append(time.perf_counter())
    args = positional_inputs(model, gm, x)
    propagate_shapes(gm, args)
    marks.append(time.perf_counter())
    coupling = couple(Captured(model, gm, args))
    marks.append(time.perf_counter())
    plan = plan_coupling(coupling, 0.5)
    marks.append(time.perf_counter())
    checked = []
    real = rewrite_apply._check_outputs

    def timed_check(*a, **kw):
        start = time.perf_counter()
        real(*a, **kw)
        checked.append(time.perf_counter() - start)

    rewrite_apply._check_outputs = timed_check
    try:
        rewrite_apply.apply_plan(model, plan, example_inputs=args, captured=gm)
    finally:
        rewrite_apply._check_outputs = real
    marks.append(time.perf_counter())
    out = {k: b - a for k, a, b in zip(PHASES, marks, marks[1:])}
    out["apply"] -= sum(checked)
    out["check"] = sum(checked)
    return out


def path_phases(model: nn.Module, x: torch.Tensor, method: str) -> dict[str, float]:
    """One capture path's capture, couple + plan, and apply times (the calls api.shrink makes)."""
    marks = [time.perf_counter()]
    captured = capture(model, x, method=method)
    marks.append(time.perf_counter())
    plan = plan_coupling(couple(captured), 0.5)
    marks.append(time.perf_counter())
    rewrite_apply.apply_plan(model, plan, example_inputs=captured.args, captured=captured.gm)
    marks.append(time.perf_counter())
    times = dict(zip(("capture", "couple+plan", "apply"), (b - a for a, b in zip(marks, marks[1:]))))
    return {**times, "total": marks[-1] - marks[0]}


def paths(names: list[str], repeats: int) -> None:
    print(f"\nCapture paths, one thread, warm process, ratio 0.5, medians of {repeats} alternating rounds\n")
    print("| model | path | capture (s) | couple + plan (s) | apply (s) | total (s) | total / fx |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in names:
        model, x = build(name)
        runs: dict[str, list[dict]] = {"fx": [], "export": []}
        for method in runs:
            path_phases(model, x, method)  # warm-up: export's first call compiles its own caches
        for _ in range(repeats):
            for method, rs in runs.items():
                rs.append(path_phases(model, x, method))
        med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
        for method, m in med.items():
            print(f"| {name} | {method} | {m['capture']:.3f} | {m['couple+plan']:.3f} | {m['apply']:.3f} | "
                  f"{m['total']:.3f} | {m['total'] / med['fx']['total']:.2f}x |")


def timed(fn) -> float:
    gc.collect()  # neither tool pays for the garbage of the one before
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def warm(names: list[str], repeats: int, with_tp: bool, long_run: float = 30.0) -> list[dict]:
    """Warm timings; a Torch-Pruning run longer than ``long_run`` seconds is not repeated (2,000 blocks)."""
    small, x = torchvision.models.resnet18().eval(), torch.randn(1, 3, 64, 64)
    graphprune.shrink(small, 0.5, example_inputs=x)  # warm-up of each tool: imports, caches
    if with_tp:
        torch_pruning(small, x)
    rows = []
    for name in names:
        model, x = build(name)
        graphprune.shrink(model, 0.5, example_inputs=x)
        gp, tp, split = [], [], []
        for _ in range(repeats):
            gp.append(timed(lambda: graphprune.shrink(model, 0.5, example_inputs=x)))
            if with_tp and not (tp and tp[0] > long_run):
                tp.append(timed(lambda: torch_pruning(model, x)))
            gc.collect()
            with collector_paused():  # as shrink runs its stages
                split.append(phases(model, x))
        row = {"model": name, "graphprune_s": statistics.median(gp),
               "torch_pruning_s": statistics.median(tp) if tp else None, "torch_pruning_runs": len(tp),
               # Each round's two calls ran a second apart, on the machine as it was then: the median of their
               # ratios is what a drift of the machine's speed over the run disturbs least.
               "paired_ratio": statistics.median(g / t for g, t in zip(gp, tp)) if tp else None,
               **{k: statistics.median(s[k] for s in split) for k in PHASES}}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


# -- cold first calls and memory, each in a fresh process ------------------------------------------------
_CHILD = """
import json, sys, time, warnings
def hwm():  # the peak resident set of this process (VmHWM): ru_maxrss would carry the parent's over the exec
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
warnings.filterwarnings("ignore")
t0 = time.perf_counter()
import torch, torchvision
torch.set_num_threads(1)
sys.path.insert(0, {bench!r})
import compile_time as ct
import graphprune
imported = time.perf_counter() - t0
rss_imports = hwm()
model, x = ct.build({name!r})
rss0 = hwm()
start = time.perf_counter()
out = graphprune.shrink(model, 0.5, example_inputs=x) if {tool!r} == "graphprune" else ct.torch_pruning(model, x)
first = time.perf_counter() - start
size = lambda m: sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
print(json.dumps({{"imported_s": imported, "first_s": first, "rss_imports_mib": rss_imports,
                  "rss_before_mib": rss0, "peak_mib": hwm(),
                  "dense_mib": size(model) / 2**20, "shrunk_mib": size(out) / 2**20}}))
"""


def child(name: str, tool: str) -> dict:
    code = _CHILD.format(bench=str(Path(__file__).parent), name=name, tool=tool)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def startup(rounds: int = 7) -> None:
    """Wall time of the CLI's start, alternating with a bare ``import torch``, medians; and what it prints on stderr."""
    commands = {"python -c 'import torch'": [sys.executable, "-c", "import torch"],
                "graphprune --help": [sys.executable, "-m", "graphprune", "--help"],
                "graphprune --version": [sys.executable, "-m", "graphprune", "--version"]}
    times: dict[str, list[float]] = {k: [] for k in commands}
    stderr = {}
    for _ in range(rounds):
        for label, cmd in commands.items():
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            times[label].append(time.perf_counter() - start)
            stderr[label] = done.stderr
    base = statistics.median(times["python -c 'import torch'"])
    print(f"Start-up, medians of {rounds} alternating runs in fresh processes\n")
    print("| command | wall (s) | over `import torch` (s) | stderr |")
    print("|---|---:|---:|---|")
    for label, ts in times.items():
        med = statistics.median(ts)
        print(f"| `{label}` | {med:.2f} | {med - base:+.2f} | {'empty' if not stderr[label] else repr(stderr[label][:60])} |")
    print()


def warm_table(rows: list[dict], repeats: int) -> None:
    print(f"graphprune {graphprune.__version__}, torch {torch.__version__.split('+')[0]}, one thread, warm process, "
          f"ratio 0.5, L2 magnitude, medians of {repeats} alternating rounds\n")
    print("| model | graphprune (s) | Torch-Pruning (s) | ratio | paired ratio | " + " | ".join(PHASES) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(PHASES))
    for r in rows:
        tp = r["torch_pruning_s"]
        ratio = f"{r['graphprune_s'] / tp:.2f}x" if tp else ""
        paired = f"{r['paired_ratio']:.2f}x" if r.get("paired_ratio") is not None else ""
        runs = "" if r["torch_pruning_runs"] in (0, repeats) else f" ({r['torch_pruning_runs']} run)"
        print(f"| {r['model']} | {r['graphprune_s']:.3f} | {'' if tp is None else f'{tp:.3f}'}{runs} | {ratio} | "
              f"{paired} | " + " | ".join(f"{r[k]:.3f}" for k in PHASES) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS, help="models to time warm (none: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds per model (medians)")
    parser.add_argument("--no-torch-pruning", action="store_true", help="graphprune only")
    parser.add_argument("--cold", nargs="*", default=None, metavar="MODEL",
                        help="first call in a fresh process, for these models (default resnet50 mobilenet_v2)")
    parser.add_argument("--memory", action="store_true", help="peak RSS of shrink(vgg16_bn) in a fresh process")
    parser.add_argument("--paths", nargs="*", default=None, metavar="MODEL",
                        help="symbolic tracing against torch.export on these models (default resnet50)")
    parser.add_argument("--startup", action="store_true",
                        help="graphprune --help / --version against a bare `import torch`, in fresh processes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    if args.startup:
        startup()
    with_tp = not args.no_torch_pruning
    if args.paths is not None:
        paths(args.paths or ["resnet50"], args.repeats)
    rows = warm(args.models, args.repeats, with_tp) if args.models else []
    if rows:
        warm_table(rows, args.repeats)
    if args.cold is not None:
        names = args.cold or ["resnet50", "mobilenet_v2"]
        print("\nCold: the first call in a fresh process (imports apart), each tool in its own process, "
              "alternating, medians of 3\n")
        print("| model | graphprune first call (s) | its imports (s) | Torch-Pruning first call (s) | its imports (s) | ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in names:
            runs = {"graphprune": [], "torch_pruning": []}
            for _ in range(3):
                for tool in runs:
                    runs[tool].append(child(name, tool))
            med = {tool: {k: statistics.median(r[k] for r in rs) for k in ("first_s", "imported_s")}
                   for tool, rs in runs.items()}
            g, t = med["graphprune"], med["torch_pruning"]
            print(f"| {name} | {g['first_s']:.3f} | {g['imported_s']:.2f} | {t['first_s']:.3f} | {t['imported_s']:.2f} "
                  f"| {g['first_s'] / t['first_s']:.2f}x |")
    if args.memory:
        r = child("vgg16_bn", "graphprune")
        models = r["peak_mib"] - r["rss_imports_mib"]  # what the process holds beyond torch and graphprune
        budget = 1.2 * (r["dense_mib"] + r["shrunk_mib"])
        print(f"\nMemory, shrink(vgg16_bn) in a fresh process: peak RSS {r['peak_mib']:.0f} MiB, of which "
              f"{r['rss_imports_mib']:.0f} MiB after the imports and {r['rss_before_mib']:.0f} MiB with the dense model "
              f"built. Beyond the imports: {models:.0f} MiB, against dense {r['dense_mib']:.0f} + shrunk "
              f"{r['shrunk_mib']:.0f} MiB + 20% = {budget:.0f} MiB ({'met' if models <= budget else 'missed'}).")

if __name__ == "__main__":
    main()
