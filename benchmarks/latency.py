"""Dense vs shrunk latency and throughput: how much of the MACs cut becomes real speed.

Shrinks each torchvision model at the given ratio (random weights), checks the rewrite
(masked-vs-shrunk), then times both with torch.utils.benchmark under every configuration
of the grid: batch sizes, dtypes, memory layouts, modes (eager, torch.compile, CUDA graphs on
CUDA). Writes a markdown table (speed-up next to MACs reduction) and a PNG plot.

The same measurement for a saved model: `graphprune bench torchvision:resnet50 out/`.

Run (what docs/latency_cpu.md shows):
  python benchmarks/latency.py --models resnet50 vgg16_bn mobilenet_v2 --ratio 0.5 --threads 1 \\
      --markdown docs/latency_cpu.md --plot docs/latency_cpu.png
Everything the machine has (CUDA too, when present):
  python benchmarks/latency.py --dtype float32 bfloat16 float16 --channels-last --runtime eager compile cudagraphs
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
import torchvision

import graphprune
from graphprune.measure import RUNTIMES
from graphprune.measure.bench import default_configs, plot, run_benchmark, to_markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vgg16_bn", "mobilenet_v2"])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--round-to", default=None, help="width multiple for the shrunk models (an int, or auto)")
    parser.add_argument("--device", nargs="+", default=None, help="default: cpu, plus cuda when present")
    parser.add_argument("--batch", nargs="+", type=int, default=None, help="default: 1 16 (and 128 on cuda)")
    parser.add_argument("--dtype", nargs="+", default=["float32"])
    parser.add_argument("--channels-last", action="store_true", help="also time channels_last")
    parser.add_argument("--runtime", "--mode", dest="runtime", nargs="+", default=["eager"], choices=RUNTIMES,
                        help="how the models run (--mode is the old spelling)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; each model keeps its fastest")
    parser.add_argument("--torch-pruning", action="store_true",
                        help="also time Torch-Pruning (pip install graphprune[compare]) at the same MACs")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (3, args.size, args.size)
    x = torch.randn(1, *shape)
    pairs, checks = {}, []
    for name in args.models:
        model = torchvision.models.get_model(name).eval()
        round_to = None if args.round_to is None else args.round_to if args.round_to == "auto" else int(args.round_to)
        plan = graphprune.plan(model, graphprune.Budget(args.ratio, round_to=round_to), example_inputs=x)
        small = graphprune.apply(model, plan)
        checks.append(f"{name}: masked-vs-shrunk max relative difference {graphprune.verify(model, plan, small, x):.1e}")
        pairs[name] = (model, small)
        if args.torch_pruning:
            from torch_pruning_baseline import prune_to_macs

            baseline, tp_ratio = prune_to_macs(model, x, graphprune.count_macs(small, x))
            checks.append(f"{name} (torch-pruning): MetaPruner L2, pruning_ratio {tp_ratio:.3f} for equal MACs")
            pairs[f"{name} (torch-pruning)"] = (model, baseline)
    configs = default_configs(args.device, modes=args.runtime, dtypes=args.dtype, batches=args.batch,
                              channels_last=(False, True) if args.channels_last else (False,),
                              num_threads=args.threads, min_run_time=args.min_run_time)
    rows = run_benchmark(pairs, shape, configs, repeats=args.repeats)

    cpu = platform.processor() or platform.machine()
    header = (f"graphprune.shrink(model, {args.ratio}); torch {torch.__version__}, {args.threads} CPU thread(s) ({cpu})"
              f"{', ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}; input {args.size}x{args.size}; "
              f"fastest of {args.repeats} interleaved medians of torch.utils.benchmark blocked_autorange ({args.min_run_time} s each); MACs from torch.utils.flop_counter.\n"
              "realized = (1 - t_shrunk/t_dense) / (1 - MACs_shrunk/MACs_dense): the share of the MACs saving that became time saved.")
    text = "\n".join([header, "", to_markdown(rows), "", *[f"- {c}" for c in checks], "",
                      "Command: `python " + " ".join(["benchmarks/latency.py", *sys.argv[1:]]) + "`"])
    print(text)
    if args.markdown:
        devices = " and ".join(dict.fromkeys(r.config.device.upper() for r in rows))
        args.markdown.write_text(f"# {devices} latency: dense vs shrunk\n\n" + text + "\n")
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
