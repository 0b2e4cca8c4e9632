"""Stock ultralytics YOLO through graphprune, end to end: shrink, train step, ONNX, CPU latency, budgets, Torch-Pruning.

One row per model (yolov8n, yolo11n, yolo26n, yolov8n-seg, yolo11n-pose; built from their yaml, random weights,
nothing downloaded), each shrunk with ``graphprune.shrink(model, 0.5)``:

- parameters, and MACs at 640x640 (``torch.utils.flop_counter``), before and after;
- CPU latency at 640x640, batch 1, one thread: medians of ``torch.utils.benchmark``, dense and shrunk models
  interleaved round by round and each keeping its fastest round (``graphprune.measure.bench.run_benchmark``);
- ``verify``: masked original vs shrunk, max relative difference, at 640 and at 320 with batch 2 (the class is
  given another input than the one it was shrunk on);
- whether the ultralytics class comes back, and the shrink time;
- a training step: train mode, the model's own loss (``model.loss(batch)``: v8/E2E detection, segmentation, pose
  criteria) on a synthetic batch at 160 px, backward, and every parameter that requires a gradient has one;
- ONNX: the shrunk and the dense model in export mode (the head's ``export`` flag), ``torch.onnx.export``
  (dynamo), run in onnxruntime on one thread, max absolute difference from PyTorch, and both files' sizes;
- Torch-Pruning 1.6.1 on the same stock model, in a subprocess with a time limit and an address-space cap:
  its error, a timeout, or its parameters and whether the outputs keep their shapes.

For yolov8n, budget plans as well: ``Budget(macs=0.5)``, ``Budget(params=0.5)`` and ``Budget(latency=0.5)`` on
this CPU at one thread (target against what was counted or measured, interleaved with the dense model).

Run (about 15 minutes on two cores; writes docs/yolo.md and docs/yolo.jsonl):
    python benchmarks/yolo.py [--models yolov8n yolo11n] [--skip-tp] [--quick]
``--quick`` uses 160x160 inputs, short timings and no latency budget, and prints without writing the docs
(unless ``--out`` says where).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

__all__ = ["MODELS", "check_train_step", "torch_pruning_child", "main"]

MODELS = ["yolov8n", "yolo11n", "yolo26n", "yolov8n-seg", "yolo11n-pose"]


def _env() -> None:
    # Before ultralytics is first imported: nothing downloaded, settings in a temporary directory.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def check_train_step(model, *, imgsz: int = 160, batch_size: int = 2) -> dict[str, Any]:
    """One training step of a copy of ``model`` with its own loss on a synthetic batch: the loss, whether it is
    finite, and how many of the parameters that require a gradient got one."""
    import torch

    from examples.yolo_finetune import synthetic_batch, train_step

    trainee = copy.deepcopy(model)  # training updates BatchNorm statistics: keep the measured model as it is
    start = time.perf_counter()
    loss, items = train_step(trainee, synthetic_batch(trainee, batch_size=batch_size, imgsz=imgsz))
    seconds = time.perf_counter() - start
    wanting = [p for p in trainee.parameters() if p.requires_grad]
    with_grad = [p for p in wanting if p.grad is not None and torch.isfinite(p.grad).all()]
    return {"loss": float(loss.detach().sum()), "finite": bool(torch.isfinite(loss).all()), "items": sorted(items),
            "grads": len(with_grad), "params_wanting_grad": len(wanting), "seconds": seconds}


# -- Torch-Pruning, in a subprocess -------------------------------------------------------------------------------

def torch_pruning_child(name: str, size: int, ratio: float, mem_gb: float) -> dict[str, Any]:
    """Torch-Pruning's MetaPruner (L2 magnitude, ``pruning_ratio=ratio``) on the stock model, its Detect head
    ignored as in Torch-Pruning's own YOLOv8 example (the head's output widths are the interface); run by
    :func:`main` in a child process under an address-space cap of ``mem_gb``."""
    limit = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _env()
    import torch

    import graphprune
    from examples.yolo_finetune import output_tensors, yolo_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = yolo_model(f"{name}.yaml")
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        before = [tuple(t.shape) for t in output_tensors(model(x))]
    row: dict[str, Any] = {"params_before": graphprune.count_params(model)}
    start = time.perf_counter()
    try:
        import torch_pruning as tp

        row["version"] = tp.__version__
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=[model.model[-1]])
        pruner.step()
    except BaseException as exc:  # noqa: BLE001 - the row records what Torch-Pruning did, whatever it raised
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        row.update(status="error", error=_first_line(exc), where=f"{Path(frame.filename).name}:{frame.lineno}",
                   seconds=time.perf_counter() - start)
        return row
    row.update(status="pruned", seconds=time.perf_counter() - start, params=graphprune.count_params(model))
    try:
        with torch.no_grad():
            after = [tuple(t.shape) for t in output_tensors(model(x))]
        row["shapes_kept"] = after == before
    except Exception as exc:  # noqa: BLE001 - a pruned model that no longer runs is a result too
        row.update(shapes_kept=False, forward_error=_first_line(exc))
    return row


def _run_torch_pruning(name: str, size: int, ratio: float, timeout: float, mem_gb: float) -> dict[str, Any]:
    from child_row import run_child

    return run_child(__file__, ["--tp-child", name, "--size", str(size), "--ratio", str(ratio),
                                "--tp-mem-gb", str(mem_gb)], timeout)


# -- the parent ---------------------------------------------------------------------------------------------------

def _shrink(model, budget, x, hardware=None):
    import graphprune

    start = time.perf_counter()
    plan = graphprune.plan(model, budget, example_inputs=x, hardware=hardware)
    small = graphprune.apply(model, plan)
    return plan, small, time.perf_counter() - start


def _other_size(size: int) -> int:
    """Half of ``size``, down to a multiple of the largest stride (32), where the heads' grids line up."""
    return max(32, size // 2 // 32 * 32)


def _model_row(name: str, args, x, work: Path) -> tuple[dict[str, Any], Any, Any]:
    import torch

    import graphprune
    from examples.yolo_finetune import onnx_roundtrip, yolo_model

    torch.manual_seed(0)
    model = yolo_model(f"{name}.yaml")
    plan, small, seconds = _shrink(model, args.ratio, x)
    other = torch.randn(2, 3, _other_size(args.size), _other_size(args.size))  # not the capture's batch or size
    row: dict[str, Any] = {
        "kind": "model", "model": name, "ratio": args.ratio, "class": type(model).__name__,
        "class_kept": type(small) is type(model), "capture": plan.capture, "exact": plan.exact,
        "params_before": graphprune.count_params(model), "params_after": graphprune.count_params(small),
        "macs_before": graphprune.count_macs(model, x), "macs_after": graphprune.count_macs(small, x),
        "verify": graphprune.verify(model, plan, small, x), "verify_other": graphprune.verify(model, plan, small, other),
        "shrink_s": seconds,
    }
    print(f"{name}: shrunk in {seconds:.1f} s, verify {row['verify']:.1e}", flush=True)
    try:
        row["train"] = check_train_step(small)
    except Exception as exc:  # noqa: BLE001 - the row says the step failed, and how
        row["train"] = {"error": _first_line(exc)}
    for which, m in (("dense", model), ("shrunk", small)):
        try:
            row[f"onnx_{which}"] = onnx_roundtrip(m, x, work / f"{name}-{which}.onnx")
        except Exception as exc:  # noqa: BLE001 - an export that fails is reported, not fatal to the run
            row[f"onnx_{which}"] = {"error": _first_line(exc)}
    print(f"{name}: train step and ONNX done", flush=True)
    if not args.skip_tp:
        row["torch_pruning"] = _run_torch_pruning(name, args.size, args.ratio, args.tp_timeout, args.tp_mem_gb)
        print(f"{name}: Torch-Pruning {row['torch_pruning']['status']}", flush=True)
    return row, model, small


def _budget_rows(name: str, args, x, hardware) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import torch

    import graphprune
    from examples.yolo_finetune import yolo_model

    torch.manual_seed(0)
    model = yolo_model(f"{name}.yaml")
    budgets = [graphprune.Budget(macs=0.5), graphprune.Budget(params=0.5)]
    if not args.quick:
        budgets.append(graphprune.Budget(latency=0.5))
    rows, pairs = [], {}
    dense_macs, dense_params = graphprune.count_macs(model, x), graphprune.count_params(model)
    for budget in budgets:
        label = f"{name} Budget({budget.kind}={budget.target:g})"
        try:
            plan, small, seconds = _shrink(model, budget, x, hardware if budget.kind == "latency" else None)
        except graphprune.GraphPruneError as exc:  # a budget graphprune refuses is a result: the row says why
            rows.append({"kind": "budget_error", "model": name, "label": label, "error": _first_line(exc)})
            print(f"{label}: {_first_line(exc)}", flush=True)
            continue
        rows.append({"kind": "budget", "model": name, "budget": budget.to_dict(), "label": label,
                     "target": budget.target, "macs_fraction": graphprune.count_macs(small, x) / dense_macs,
                     "params_fraction": graphprune.count_params(small) / dense_params,
                     "planner_measured_fraction": plan.budget.measured_fraction if budget.kind == "latency" else None,
                     "round_to": plan.budget.round_to, "rounds": plan.budget.rounds,
                     "verify": graphprune.verify(model, plan, small, x), "class_kept": type(small) is type(model),
                     "plan_s": seconds})
        pairs[label] = (model, small)
        print(f"{label}: planned in {seconds:.1f} s", flush=True)
    return rows, pairs


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _tp_cell(tp: dict[str, Any] | None) -> str:
    if tp is None:
        return "not run"
    if tp["status"] == "pruned":
        shapes = "outputs keep their shapes" if tp.get("shapes_kept") else \
            f"outputs change: {tp.get('forward_error', 'other shapes')}"
        return f"{tp['params'] / 1e6:.2f} M params in {tp['seconds']:.1f} s; {shapes}"
    where = f" (in {tp['where']})" if tp.get("where") else ""
    return f"{tp['error']}{where}".replace("|", "/")


def _train_cell(t: dict[str, Any]) -> str:
    if "error" in t:
        return f"fails: {t['error']}".replace("|", "/")
    ok = "yes" if t["finite"] and t["grads"] == t["params_wanting_grad"] else "no"
    return f"{ok}: loss {t['loss']:.1f} ({', '.join(t['items'])}), grads {t['grads']}/{t['params_wanting_grad']}"


def _onnx_cells(row: dict[str, Any]) -> tuple[str, str]:
    dense, small = row["onnx_dense"], row["onnx_shrunk"]
    if "error" in small:
        return f"fails: {small['error']}".replace("|", "/"), ""
    diff = f"{small['max_abs_diff']:.1e} (outputs up to {small['scale']:.0f})"
    size = _mb(small["bytes"]) if "error" in dense else f"{_mb(dense['bytes'])} → {_mb(small['bytes'])}"
    return diff, size


def to_markdown(rows: list[dict[str, Any]], latency: dict[str, tuple[float, float]], args, header: str) -> str:
    size = f"{args.size}x{args.size}"
    models = [r for r in rows if r["kind"] == "model"]
    lines = [header, "",
             f"| model | class kept | params before → after | MACs at {size} before → after | CPU ms at {size} "
             f"before → after (speed-up) | verify at {size} / at {_other_size(args.size)}x{_other_size(args.size)} batch 2 "
             "| shrink (s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in models:
        dense_ms, small_ms = latency[r["model"]]
        lines.append(
            f"| {r['model']} | {'yes' if r['class_kept'] else 'no'} ({r['class']}) "
            f"| {r['params_before'] / 1e6:.2f} M → {r['params_after'] / 1e6:.2f} M "
            f"| {r['macs_before'] / 1e9:.2f} G → {r['macs_after'] / 1e9:.2f} G "
            f"| {dense_ms:.1f} → {small_ms:.1f} ({dense_ms / small_ms:.2f}x) "
            f"| {r['verify']:.1e} / {r['verify_other']:.1e} | {r['shrink_s']:.1f} |")
    lines += ["", "| model | train step (own loss, 160 px, batch 2) | ONNX max abs diff vs PyTorch | ONNX file before → after "
              "| Torch-Pruning 1.6.1, pruning_ratio " + f"{args.ratio:g} |", "|---|---|---:|---:|---|"]
    for r in models:
        diff, onnx_size = _onnx_cells(r)
        lines.append(f"| {r['model']} | {_train_cell(r['train'])} | {diff} | {onnx_size} "
                     f"| {_tp_cell(r.get('torch_pruning'))} |")
    budgets = [r for r in rows if r["kind"] in ("budget", "budget_error")]
    if budgets:
        lines += ["", "| budget | target | MACs kept | params kept | latency kept: planner's timing / interleaved "
                  "timing here | verify | class kept | plan (s) |", "|---|---:|---:|---:|---:|---:|---|---:|"]
        for r in budgets:
            if r["kind"] == "budget_error":
                lines.append(f"| `{r['label']}` | refused: {r['error'].replace('|', '/')} | | | | | | |")
                continue
            dense_ms, small_ms = latency[r["label"]]
            planner = r["planner_measured_fraction"]
            lat = f"{planner:.0%} / {small_ms / dense_ms:.0%}" if planner is not None else f"– / {small_ms / dense_ms:.0%}"
            lines.append(f"| `{r['label']}` | {r['target']:.0%} | {r['macs_fraction']:.0%} | {r['params_fraction']:.0%} "
                         f"| {lat} | {r['verify']:.1e} | {'yes' if r['class_kept'] else 'no'} | {r['plan_s']:.1f} |")
    return "\n".join(lines)


DOC = """# Ultralytics YOLO: shrink, fine-tune, deploy

Stock ultralytics detectors, segmenters and pose models, built from their yaml with random weights (nothing is
downloaded), shrunk by `graphprune.shrink(model, {ratio:g}, example_inputs=x)`: torch.export captures them (symbolic
tracing cannot), the rewrite is exact on the kept channels, and the model comes back as its own ultralytics class,
so ultralytics' loss, trainer, checkpoints and export flags keep working. Every number below was measured by the
command in the header; nothing is edited by hand.

{table}

**Columns.** *verify*: the original with the removed channels zeroed against the shrunk model, max relative
difference (float round-off is 1e-7 to 1e-6). *CPU ms*: median of `torch.utils.benchmark` blocked autoranges,
dense and shrunk models interleaved in {repeats} rounds, each keeping its fastest round. *Train step*: a copy of the
shrunk model in train mode, its own criterion (`model.loss(batch)`: v8 detection, YOLO26's end-to-end loss,
segmentation, pose) on a synthetic batch (`examples/yolo_finetune.py: synthetic_batch`), backward, and how many of
the parameters that require a gradient got a finite one. *ONNX*: the head's `export` flag set (predictions only),
`torch.onnx.export(..., dynamo=True)`, run in onnxruntime on one thread on the benchmark input; YOLO26's head ends
in a top-k over scores, so a near tie can reorder its rows. *Latency kept*: the latency plan's own fresh timing of
the chosen model, and this run's interleaved timing against the dense model.

## Fine-tuning with ultralytics' trainer

`python examples/yolo_finetune.py` draws a small detection data set on disk in YOLO format, shrinks yolov8n
(`--model yolo11n.yaml` works too), trains it one epoch on the CPU with ultralytics' own trainer, and reloads the
trainer's checkpoint. The stock trainer would not train the shrunk model: it rebuilds the model from its yaml, and
loads given weights through `intersect_dicts`, which silently skips every tensor whose shape differs (for a
yolov8n shrunk at 0.5, 76 of 355 tensors would survive). `PrunedTrainer` returns the shrunk model from `get_model`
and refuses weights; `finetune()` checks that the trained model, the trainer's EMA and `last.pt` all have the shrunk
shapes. The checkpoint holds the EMA model in float16; reloaded with `YOLO(path)`, its outputs equal the trained
model's rounded to float16 exactly, and the float32 trained model's to float16 round-off.

## Reproduce

```bash
pip install -e ".[yolo,export,compare]"    # ultralytics, onnx/onnxruntime, torch-pruning==1.6.1
python benchmarks/yolo.py                  # this page and docs/yolo.jsonl
python benchmarks/yolo.py --quick --skip-tp --models yolov8n   # a minute: 160x160, printed only
python examples/yolo_finetune.py
python -m pytest -q tests/zoo/test_yolo.py && python -m pytest -q -m slow tests/zoo/test_yolo.py
```

## Notes

- **License.** ultralytics is AGPL-3.0. graphprune does not depend on it: it is the optional `yolo` extra
  (`pip install -e ".[yolo]"`), used by these benchmarks, tests and the example only; a model you shrink, train
  and ship with ultralytics' code is under ultralytics' terms.
- **Torch-Pruning** (Apache-2.0) is run on the same stock model in a subprocess ({tp_timeout:g} s limit,
  {tp_mem:g} GB address space): `MetaPruner` with L2 magnitude importance and `pruning_ratio={ratio:g}`, the Detect
  head in `ignored_layers` as in its own YOLOv8 example. That example first replaces ultralytics' `C2f` with a
  rewritten `C2f_v2` (its `chunk` becomes two convs) because the dependency graph cannot follow the split; on the
  stock modules the column shows what happens. graphprune follows `chunk`/`split` as they are.
- Timings share the machine with whatever else runs on it (load average in the header); CPU latency is measured on
  one thread, as graphprune's latency budgets are by default.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, help="ultralytics yaml names without .yaml")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=None, help="input height and width (default 640, 160 with --quick)")
    parser.add_argument("--quick", action="store_true", help="160x160, short timings, no latency budget, no docs")
    parser.add_argument("--skip-tp", action="store_true", help="do not run Torch-Pruning")
    parser.add_argument("--budget-model", default="yolov8n", help="the model of the macs/params/latency budget rows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds per timing (default 1, 0.2 quick)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--tp-timeout", type=float, default=180.0, help="seconds before Torch-Pruning is stopped")
    parser.add_argument("--tp-mem-gb", type=float, default=8.0, help="address-space cap of the Torch-Pruning child")
    parser.add_argument("--out", type=Path, default=None, help="markdown (default docs/yolo.md; none with --quick)")
    parser.add_argument("--jsonl", type=Path, default=None, help="rows (default: next to --out, .jsonl)")
    parser.add_argument("--tp-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or (160 if args.quick else 640)
    if args.tp_child:
        from child_row import print_row

        print_row(torch_pruning_child(args.tp_child, args.size, args.ratio, args.tp_mem_gb))
        return
    min_run_time = args.min_run_time or (0.2 if args.quick else 1.0)
    out = args.out or (None if args.quick else ROOT / "docs" / "yolo.md")
    jsonl = args.jsonl or (out.with_suffix(".jsonl") if out else None)

    _env()
    import onnxruntime
    import torch
    import ultralytics

    import graphprune
    from graphprune.measure.bench import run_benchmark

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    x = torch.randn(1, 3, args.size, args.size)
    hardware = graphprune.Hardware(num_threads=args.threads, model_min_run_time=min_run_time)
    rows, pairs = [], {}
    with tempfile.TemporaryDirectory(prefix="yolo-bench-") as work:
        for name in args.models:
            row, model, small = _model_row(name, args, x, Path(work))
            rows.append(row)
            pairs[name] = (model, small)
    if args.budget_model:
        budget_rows, budget_pairs = _budget_rows(args.budget_model, args, x, hardware)
        rows += budget_rows
        pairs.update(budget_pairs)
    print("timing...", flush=True)
    timed = run_benchmark(pairs, tuple(x.shape[1:]), [hardware], repeats=args.repeats, progress=False)
    latency = {r.model: (r.dense_ms, r.shrunk_ms) for r in timed}
    for row in rows:
        if row["kind"] != "budget_error":
            key = row["model"] if row["kind"] == "model" else row["label"]
            row["dense_ms"], row["shrunk_ms"] = latency[key]
    minutes = (time.perf_counter() - started) / 60
    load_after = os.getloadavg()

    command = "python " + " ".join(["benchmarks/yolo.py", *(argv if argv is not None else sys.argv[1:])])
    header = (f"`{command}` on {datetime.date.today().isoformat()}: torch {torch.__version__}, ultralytics "
              f"{ultralytics.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} CPU thread(s) "
              f"({_cpu_name()}, {os.cpu_count()} cores, load average {load_before[0]:.1f} at the start and "
              f"{load_after[0]:.1f} at the end), ratio {args.ratio:g}, batch 1, {minutes:.0f} min in all.")
    table = to_markdown(rows, latency, args, header)
    print(table)
    if out:
        out.write_text(DOC.format(table=table, ratio=args.ratio, repeats=args.repeats, tp_timeout=args.tp_timeout,
                                  tp_mem=args.tp_mem_gb))
    if jsonl:
        with jsonl.open("w") as f:
            for row in rows:
                f.write(json.dumps({"command": command, "torch": torch.__version__, "threads": args.threads,
                                    "size": args.size, **row}) + "\n")


if __name__ == "__main__":
    main()
