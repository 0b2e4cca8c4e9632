"""The ``graphprune`` command: shrink, inspect and benchmark models from the shell.

MODEL is ``torchvision:NAME`` (random weights), ``package.module:factory`` (a function returning
an ``nn.Module``), or a directory written by ``graphprune shrink -o DIR`` / ``graphprune.save``.
Errors graphprune raises on purpose print one message (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base.errors import GraphPruneError, InputError
from .measure.runtimes import RUNTIMES

__all__ = ["main", "build_parser"]

_EPILOG_SHRINK = """examples:
  graphprune shrink torchvision:resnet50 --ratio 0.5 -o resnet50-half/
  graphprune shrink mypkg.models:build_net --ratio 0.3 --input-shape 1,3,32,32 -o net-small/
  graphprune shrink resnet50-half/ --ratio 0.2 -o resnet50-smaller/     (shrink a shrunk model again)
  graphprune shrink torchvision:resnet50 --latency 0.5 --device cuda --dtype bfloat16 --batch-size 128 -o r50-fast/
  graphprune shrink torchvision:resnet50 --latency 0.5 --device cuda --dtype bfloat16 --runtime cudagraphs -o r50-graphs/
  graphprune shrink torchvision:resnet50 --latency 0.6 --threads 8 -o r50-cpu8/     (for an 8-thread CPU server)
  graphprune shrink torchvision:resnet50 --macs 0.5 --round-to auto --device cuda --dtype bfloat16 -o r50-h200/

Load the result in Python with graphprune.load("resnet50-half/"). An existing output directory is
refused unless --force is given."""

_EPILOG_INSPECT = """examples:
  graphprune inspect torchvision:resnet18
  graphprune inspect torchvision:resnet18 --dot resnet18.dot      (render: dot -Tsvg resnet18.dot -o r.svg)
  graphprune inspect torchvision:mobilenet_v2 --png groups.png"""

_EPILOG_BENCH = """examples:
  graphprune bench torchvision:resnet50 resnet50-half/
  graphprune bench torchvision:resnet50 resnet50-half/ --batch 1 16 --dtype float32 bfloat16 \\
      --channels-last --mode eager compile --markdown table.md --plot speed.png

The realized column is the share of the MACs saving that shows up as time saved:
(1 - shrunk ms / dense ms) / (1 - shrunk MACs / dense MACs). 100% means latency fell as much as the
arithmetic; less means overheads (memory traffic, launches, narrow layers) kept part of it.
Timings run on --threads CPU threads (1 by default): on a shared machine more threads make them noisy,
and a model pruned for one thread count can speed up differently at another."""

_EPILOG = """examples:
  graphprune shrink torchvision:resnet50 --ratio 0.5 -o resnet50-half/
  graphprune inspect torchvision:resnet50 --dot resnet50.dot
  graphprune bench torchvision:resnet50 resnet50-half/

MODEL is torchvision:NAME (random weights), package.module:factory (a function that returns an
nn.Module), or a directory written by `graphprune shrink -o DIR`.
Run `graphprune COMMAND --help` for the options of each command."""


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,3,224,224, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"every dimension must be positive, got {text!r}")
    return shape


def _round_to(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return int(text)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", type=_input_shape, metavar="N,C,H,W",
                   help="shape of the example input (default: the saved model's, else 1,3,224,224)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``graphprune`` command."""
    parser = argparse.ArgumentParser(
        prog="graphprune",
        description="Structured channel pruning for PyTorch: make a model physically smaller, and prove it.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from .base.version import __version__

    parser.add_argument("--version", action="version", version=f"graphprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    shrink = sub.add_parser("shrink", help="remove channels and save the smaller model",
                            description="Remove a fraction of the channels of every coupled group, check the result "
                                        "against the masked original, and save it (JSON plan + safetensors weights).",
                            epilog=_EPILOG_SHRINK, formatter_class=argparse.RawDescriptionHelpFormatter)
    shrink.add_argument("model", metavar="MODEL", help="torchvision:NAME, package.module:factory, or a saved directory")
    budget = shrink.add_mutually_exclusive_group(required=True)
    budget.add_argument("--ratio", type=float, help="fraction of each group's channels to remove, in [0, 1)")
    budget.add_argument("--macs", type=float, help="target fraction of the model's MACs to keep (ranked globally, within 2%%)")
    budget.add_argument("--params", type=float, help="target fraction of the model's parameters to keep")
    budget.add_argument("--latency", type=float,
                        help="target fraction of the model's measured latency on --device (per-layer table, cached)")
    shrink.add_argument("--device", default="cpu",
                        help="where the model will run: --latency is measured and --round-to auto rounds for it (default: cpu)")
    shrink.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="the dtype it will run in, for --latency and --round-to auto (default: float32)")
    shrink.add_argument("--batch-size", type=int, default=None,
                        help="batch size --latency is measured at (default: that of --input-shape)")
    shrink.add_argument("--runtime", default="eager", choices=RUNTIMES,
                        help="the runtime --latency is measured in, as the model will be deployed (default: eager)")
    shrink.add_argument("--threads", type=int, default=1,
                        help="CPU threads --latency is measured with, as the model will be deployed (default: 1)")
    shrink.add_argument("--round-to", type=_round_to, default=None, metavar="N|auto",
                        help="keep every width a multiple of N, or 'auto' for --device and --dtype")
    shrink.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="directory to write the model to")
    shrink.add_argument("--force", action="store_true", help="overwrite DIR if it already holds files")
    shrink.add_argument("--importance", default="l2", help="channel importance criterion (default: l2)")
    _add_model_options(shrink)

    insp = sub.add_parser("inspect", help="print the groups of coupled channels",
                          description="Trace the model and print its groups of coupled channels: which layers must "
                                      "lose the same channels, and how many channels each group has.",
                          epilog=_EPILOG_INSPECT, formatter_class=argparse.RawDescriptionHelpFormatter)
    insp.add_argument("model", metavar="MODEL", help="torchvision:NAME, package.module:factory, or a saved directory")
    insp.add_argument("--dot", type=Path, metavar="FILE", help="also write the dependency graph as Graphviz DOT")
    insp.add_argument("--png", type=Path, metavar="FILE", help="also draw the dependency graph as a PNG (matplotlib)")
    _add_model_options(insp)

    bench = sub.add_parser("bench", help="time a dense model against its shrunk version",
                           description="Latency and throughput of MODEL vs SHRUNK (torch.utils.benchmark), next to "
                                       "their MACs (torch.utils.flop_counter).",
                           epilog=_EPILOG_BENCH, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("model", metavar="MODEL", help="the dense model")
    bench.add_argument("shrunk", metavar="SHRUNK", help="the shrunk model (usually a saved directory)")
    bench.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    bench.add_argument("--batch", nargs="+", type=int, default=None, help="batch sizes (default: 1 16, and 128 on cuda)")
    bench.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"],
                       help="dtypes to time (default: float32)")
    bench.add_argument("--channels-last", action="store_true", help="also time the channels_last memory layout")
    bench.add_argument("--mode", nargs="+", default=["eager"], choices=RUNTIMES,
                       help="execution modes (default: eager)")
    bench.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    bench.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per measurement")
    bench.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds; each model keeps its fastest")
    bench.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table to FILE")
    bench.add_argument("--plot", type=Path, metavar="FILE", help="also draw speed-up vs MACs reduction as a PNG")
    _add_model_options(bench)
    return parser


def _quiet() -> bool:
    return not sys.stderr.isatty()


def _load(spec: str, input_shape: tuple[int, ...] | None) -> tuple[nn.Module, str | None, tuple[int, ...]]:
    """The model MODEL names, its spec (None for a saved directory's own base), and the input shape to use."""
    from .storage import build_model, is_spec, load, read_manifest

    path = Path(spec)
    if path.is_dir():
        manifest = read_manifest(path)
        saved = manifest["inputs"][0] if manifest["inputs"] and manifest["inputs"][0] else None
        shape = input_shape or (tuple(saved["shape"]) if saved and saved.get("shape") else (1, 3, 224, 224))
        return load(path), None, shape
    if is_spec(spec):
        return build_model(spec), spec, input_shape or (1, 3, 224, 224)
    raise InputError(f"{spec!r} is neither a model spec nor a saved model directory",
                     hint="use torchvision:NAME, package.module:factory, or a directory written by `graphprune shrink`")


def _records(args: argparse.Namespace) -> tuple[Any, Any]:
    """The Budget and Hardware the arguments describe, checked before any model is built."""
    from .measure import Hardware
    from .planning import Budget

    targets = {k: getattr(args, k) for k in ("ratio", "macs", "params", "latency") if getattr(args, k) is not None}
    budget = Budget(**targets, round_to=args.round_to)
    hardware = Hardware(args.device, args.dtype, batch_size=args.batch_size, runtime=args.runtime,
                        num_threads=args.threads)
    return budget, hardware


def _cmd_shrink(args: argparse.Namespace) -> int:
    import warnings

    from tqdm.auto import tqdm

    from . import api
    from .measure import count_macs, count_params
    from .rewrite import plans_of, verify
    from .storage import read_manifest, save

    budget, hardware = _records(args)
    if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())) and not args.force:
        raise InputError(f"{args.output} already exists", hint="choose another -o DIR, or pass --force to overwrite it")
    steps = tqdm(total=4, desc="shrink", disable=_quiet())
    steps.set_postfix_str("load")
    model, spec, shape = _load(args.model, args.input_shape)
    if spec is None:  # a saved directory: the new plan extends its chain, rebuilt from the same base
        manifest = read_manifest(args.model)
        spec, base_kwargs = manifest["base"], manifest["base_kwargs"]
    else:
        base_kwargs = {}
    model.eval()
    x = torch.randn(shape)
    steps.update()
    steps.set_postfix_str("plan")
    with warnings.catch_warnings(record=True) as caught:  # printed after the progress bar, not through it
        warnings.simplefilter("always")
        plan = api.plan(model, budget, example_inputs=x, importance=args.importance, hardware=hardware)
    steps.update()
    steps.set_postfix_str("rewrite")
    small = api.apply(model, plan, example_inputs=x)
    steps.update()
    steps.set_postfix_str("verify")
    error = verify(model, plan, small, x)
    steps.update()
    steps.close()
    save(small, args.output, plan=plans_of(small), base=spec, base_kwargs=base_kwargs)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    p0, p1 = count_params(model), count_params(small)
    m0, m1 = count_macs(model, x), count_macs(small, x)
    print(plan.summary().splitlines()[0])
    print(plan.budget.describe())
    print(f"params {p0:,} -> {p1:,} ({p0 / p1:.2f}x fewer); MACs at {list(shape)} {m0:,} -> {m1:,} ({m0 / m1:.2f}x fewer)")
    print(f"masked-vs-shrunk max relative difference: {error:.1e}")
    print(f"saved to {args.output} (load with graphprune.load({str(args.output)!r}))")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .api import couple

    model, _, shape = _load(args.model, args.input_shape)
    coupling = couple(model, example_inputs=torch.randn(shape))
    print(f"{type(model).__name__}: {len(coupling.groups)} groups, "
          f"{sum(g.size for g in coupling.groups)} channels, {sum(g.num_prunable for g in coupling.groups)} prunable")
    print(f"{'group':>5} {'channels':>8} {'prunable':>8} {'tensors':>7}  layers (module paths, as Budget(overrides=) matches them)")
    for g in coupling.groups:
        paths = coupling.module_paths(g)
        layers = ", ".join(paths[:4]) + (f", ... (+{len(paths) - 4})" if len(paths) > 4 else "")
        print(f"{g.id:>5} {g.size:>8} {g.num_prunable:>8} {len(g.members):>7}  {layers}")
    if args.dot:
        from .report.dot import to_dot

        args.dot.write_text(to_dot(coupling))
        print(f"wrote {args.dot}")
    if args.png:
        from .report.dot import write_png

        write_png(coupling, args.png)
        print(f"wrote {args.png}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .measure.bench import default_configs, plot, run_benchmark, to_markdown

    configs = default_configs(args.device, modes=args.mode, dtypes=args.dtype, batches=args.batch,
                              channels_last=(False, True) if args.channels_last else (False,),
                              num_threads=args.threads, min_run_time=args.min_run_time)
    dense, _, shape = _load(args.model, args.input_shape)
    shrunk, _, shrunk_shape = _load(args.shrunk, args.input_shape or shape)
    name = Path(args.shrunk).name or args.shrunk
    rows = run_benchmark({name: (dense, shrunk)}, shape[1:], configs, repeats=args.repeats, progress=not _quiet())
    table = to_markdown(rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


_COMMANDS = {"shrink": _cmd_shrink, "inspect": _cmd_inspect, "bench": _cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``graphprune`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except GraphPruneError as exc:
        print(f"graphprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable output, a file where a directory should be
        print(f"graphprune {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
