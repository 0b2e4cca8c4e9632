"""Shrink every torchvision classification, segmentation and video model (or a curated list of timm models) at one
ratio, and tabulate the result.

Each model runs in its own subprocess (one thread, a time limit and a memory cap), so one
model's failure or hang becomes a row, never a crash. Finished rows are appended to a JSON-lines
file as they complete: a rerun skips them (pass ``--force`` to redo), so the sweep is resumable.

    python benchmarks/zoo.py                          # all 95 models -> docs/zoo.md, docs/zoo.csv
    python benchmarks/zoo.py resnet18 mobilenet_v2    # some models
    python benchmarks/zoo.py --family classification --timeout 600
    python benchmarks/zoo.py --family timm            # timm: curated + one per family -> docs/zoo_timm.md, .csv
    python benchmarks/zoo.py --refresh-timm-families  # re-pick the smallest model of each timm module

A model graphprune refuses (an op whose channel semantics it does not know, a forward neither torch.fx nor
torch.export can capture) is a "refused" row with the error's first line; "error" is anything else. *capture*
says which path captured the model: ``fx`` (symbolic tracing) or ``export`` (``torch.export``, used when
tracing fails).

timm's list is the curated one below plus one model of every timm family (``timm.list_modules()``): the one
with the fewest parameters, counted on the meta device, skipping timm's ``test_*`` models. The picks are
stored in ``benchmarks/timm_families.json`` (with the timm version), since counting takes minutes.

Columns: prunable groups found; parameters and MACs before and after; the masked-vs-shrunk
relative difference (``graphprune.verify``), or "not exact" with the reasons the plan gives
(``plan.inexact``: channel-mixing norms whose statistics change); seconds to shrink (plan + apply); and whether ``torch.jit.trace``,
``torch.export.export`` and ``torch.fx.symbolic_trace`` accept the shrunk model.

Weights are random (no downloads). BatchNorm statistics and affine parameters are drawn away
from their (0, 1, 1, 0) initial values first, so that a wrongly sliced statistic changes the
output instead of hiding behind an identity normalisation. Parameters initialised to zero or
nearly (ViT's classifier head, swinv2_cr's zero post-norm gains, layer scales of 1e-5) are redrawn,
since a branch multiplied by (nearly) zero would make any rewrite look exact.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("classification", "segmentation", "video")  # torchvision's
# One or two small members of each timm family: CNNs, hybrids, MLPs and transformers.
TIMM_MODELS = (
    "resnet18d resnet26t seresnet18 ecaresnet26t resnext26ts cspresnet50 cspdarknet53 dla34 dpn68 ghostnet_100 "
    "hrnet_w18_small mixnet_s mobilenetv3_large_100 efficientnet_b0 tf_efficientnet_b0 rexnet_100 repvgg_a0 "
    "regnety_002 convnext_atto convnextv2_atto levit_128s vit_tiny_patch16_224 deit_tiny_patch16_224 "
    "swin_tiny_patch4_window7_224 mobilevit_xxs efficientvit_b0 fastvit_t8 edgenext_xx_small res2net50_14w_8s "
    "selecsls42b densenet121 vgg11_bn inception_v3 xception41 nfnet_l0 tresnet_m gernet_s lcnet_050 tinynet_a "
    "mnasnet_small hardcorenas_a resnest14d skresnet18 poolformer_s12 mobileone_s0 ghostnetv2_100 "
    "mobilenetv4_conv_small darknet17 fbnetc_100 resnetv2_50 bat_resnext26ts gcresnet33ts sebotnet33ts_256 "
    "eca_nfnet_l0 regnetz_005 efficientformer_l1 coat_lite_tiny pvt_v2_b0 convmixer_768_32 mixer_b16_224 "
    "resmlp_12_224 inception_next_atto repghostnet_050 hgnetv2_b0 dm_nfnet_f0 vovnet39a ese_vovnet19b_dw "
    "rdnet_tiny starnet_s1 mambaout_femto"
).split()
FAMILY_PICKS = Path(__file__).with_name("timm_families.json")
COLUMNS = [
    "model", "family", "status", "capture", "input", "groups", "params_before", "params_after", "macs_before", "macs_after",
    "equivalence", "shrink_s", "jit_trace", "export", "fx", "error",
]


def pick_timm_families() -> dict[str, str]:
    """The smallest model (fewest parameters, built on the meta device) of every timm module, by module."""
    import timm
    import torch

    picks = {}
    for module in timm.list_modules():
        sizes = []
        for name in timm.list_models(module=module):
            if name.startswith("test_"):
                continue  # timm's own miniature test models: no user prunes those
            try:
                with torch.device("meta"):
                    model = timm.create_model(name, pretrained=False)
            except Exception:  # noqa: BLE001 - a model that does not build on meta is not a candidate
                continue
            sizes.append((sum(p.numel() for p in model.parameters()), name))
        if sizes:
            picks[module] = min(sizes)[1]
    return picks


def timm_family_models() -> list[str]:
    if not FAMILY_PICKS.exists():
        return []
    return list(json.loads(FAMILY_PICKS.read_text())["picks"].values())


def model_names(family: str) -> list[str]:
    if family == "timm":
        return list(dict.fromkeys([*TIMM_MODELS, *timm_family_models()]))
    import torchvision.models as M

    module = {"classification": M, "segmentation": M.segmentation, "video": M.video}[family]
    return M.list_models(module=module)


def example_shape(name: str, family: str) -> tuple[int, ...]:
    """The smallest convenient input each model accepts."""
    if family == "timm":  # 64x64 unless fixed; run_one also falls back when a model rejects 64x64
        import timm

        cfg = timm.get_pretrained_cfg(name)
        return (1, *cfg.input_size) if cfg.fixed_input_size else (1, 3, 64, 64)
    if family == "video":
        if name == "s3d" or name.startswith("mvit"):
            return (1, 3, 16, 224, 224)  # s3d's final pooling is 2x7x7; MViT has fixed positional embeddings
        return (1, 3, 8, 64, 64)
    if name == "inception_v3":
        return (1, 3, 96, 96)  # needs >= 75
    if name.startswith(("vit_", "maxvit")):
        return (1, 3, 224, 224)  # fixed image size (ViT positional embedding, MaxViT partitions)
    return (1, 3, 64, 64)


def build(name: str, family: str):
    if family == "timm":
        import timm

        return timm.create_model(name, pretrained=False).eval()
    import torchvision

    kwargs = {"weights": None}
    if family == "segmentation":
        kwargs.update(weights_backbone=None, aux_loss=True if name.startswith(("fcn", "deeplab")) else None)
    return torchvision.models.get_model(name, **kwargs).eval()


def spread_norm_statistics(model) -> None:
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
        for p in model.parameters():  # zero or tiny heads, layer scales and post-norm gains make any check vacuous
            if p.is_floating_point() and (not p.any() or p.ndim == 1 and p.abs().max() < 1e-3):
                p.normal_(0.0, 0.02 if p.ndim > 1 else 0.2)


def _ok(fn) -> str:
    try:
        fn()
        return "yes"
    except Exception as exc:  # a row records why, the sweep goes on
        return f"no: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def run_one(name: str, family: str, ratio: float) -> dict:
    import torch

    import graphprune

    torch.manual_seed(0)
    torch.set_num_threads(1)
    shape = example_shape(name, family)
    row = {"model": name, "family": family, "input": "x".join(map(str, shape)), "status": "error"}
    model = build(name, family)
    if family == "timm" and not _accepts(model, shape):  # inception_v3 needs 75x75; blocked attention a multiple of its block
        import timm

        shape = (1, *timm.get_pretrained_cfg(name).input_size)
        row["input"] = "x".join(map(str, shape))
    spread_norm_statistics(model)
    x = torch.randn(shape)
    row["params_before"] = graphprune.count_params(model)
    row["macs_before"] = graphprune.count_macs(model, x)
    start = time.perf_counter()
    plan = graphprune.plan(model, ratio, example_inputs=x)
    shrunk = graphprune.apply(model, plan, example_inputs=x)
    row["shrink_s"] = round(time.perf_counter() - start, 2)
    row["capture"] = plan.capture
    row["groups"] = sum(1 for g in plan.groups if g.removed)
    row["params_after"] = graphprune.count_params(shrunk)
    row["macs_after"] = graphprune.count_macs(shrunk, x)
    diff = graphprune.verify(model, plan, shrunk, x)
    if plan.exact:
        row["equivalence"] = f"{diff:.1e}"
    else:  # the plan says which channel-mixing layers make the rewrite approximate
        reasons = sorted({reason.split(" at ")[0] for reason in plan.inexact})
        row["equivalence"] = f"not exact: {'; '.join(reasons)[:120]} ({diff:.1e})"
    row["status"] = "ok" if not plan.exact or diff <= 1e-4 else "MISMATCH"
    with torch.no_grad():
        row["jit_trace"] = _ok(lambda: torch.jit.trace(shrunk, x, check_trace=False, strict=False))
        row["export"] = _ok(lambda: torch.export.export(shrunk, (x,)))
        row["fx"] = _ok(lambda: torch.fx.symbolic_trace(shrunk))
    return row


def _accepts(model, shape: tuple[int, ...]) -> bool:
    import torch

    try:
        with torch.no_grad():
            model(torch.randn(shape))
        return True
    except Exception:  # noqa: BLE001 - any refusal of the input size
        return False


def _child(name: str, family: str, ratio: float, mem_gb: float) -> None:
    limit = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from graphprune import GraphPruneError

    try:
        row = run_one(name, family, ratio)
    except BaseException as exc:  # noqa: BLE001 - the row records every failure
        message = str(exc).splitlines()[0] if str(exc) else ""
        row = {"model": name, "family": family, "status": "refused" if isinstance(exc, GraphPruneError) else "error",
               "input": "x".join(map(str, example_shape(name, family))),
               "error": f"{type(exc).__name__}: {message}"[:300]}
    print("ROW " + json.dumps(row), flush=True)


def run_in_subprocess(name: str, family: str, ratio: float, timeout: float, mem_gb: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--child", name, "--family", family, "--ratio", str(ratio), "--mem-gb", str(mem_gb)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"model": name, "family": family, "status": "error", "error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": name, "family": family, "status": "error", "error": f"exit {proc.returncode}: {tail}"[:300]}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and value >= 10_000:
        return f"{value / 1e6:.2f}M"
    return str(value).replace("|", "/")


def write_tables(rows: list[dict], md: Path, csv_path: Path, ratio: float, command: str = "python benchmarks/zoo.py") -> None:
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in COLUMNS})
    ok = sum(r["status"] == "ok" for r in rows)
    refused = sum(r["status"] == "refused" for r in rows)
    refusals = f", {refused} are refused by name (the error names the FX node or submodule and the source line)" if refused else ""
    lines = [
        f"# Model zoo at ratio {ratio}",
        "",
        f"Generated by `{command}` (random weights, one CPU thread). {ok} of {len(rows)} models shrink "
        f"and pass their check{refusals}. *equivalence* is `graphprune.verify` (masked original vs shrunk model, max relative "
        "difference; exact rewrites are at float round-off); \"not exact\" names the channel-mixing norms whose "
        "statistics change when channels go. *groups* counts the groups that lost channels.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |")
    md.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names (default: every model of the chosen families)")
    parser.add_argument("--family", choices=(*FAMILIES, "timm"), action="append",
                        help="repeatable; default: torchvision's three. timm runs on its own, into docs/zoo_timm.*")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per model")
    parser.add_argument("--mem-gb", type=float, default=8.0, help="address-space cap per model subprocess")
    parser.add_argument("--results", type=Path, default=None, help="resumable row store (default docs/zoo.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="writes OUT.md and OUT.csv (default docs/zoo)")
    parser.add_argument("--force", action="store_true", help="rerun models that already have a row")
    parser.add_argument("--render-only", action="store_true", help="write the tables from the stored rows, run nothing")
    parser.add_argument("--refresh-timm-families", action="store_true",
                        help=f"re-pick one timm model per family into {FAMILY_PICKS.name}, then stop")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.refresh_timm_families:
        import timm

        picks = pick_timm_families()
        FAMILY_PICKS.write_text(json.dumps({"timm": timm.__version__, "picks": picks}, indent=1, sort_keys=True) + "\n")
        print(f"{len(picks)} timm families -> {FAMILY_PICKS}")
        return
    if args.child:
        _child(args.child, args.family[0], args.ratio, args.mem_gb)
        return

    families = args.family or list(FAMILIES)
    on_timm = "timm" in families
    if on_timm and len(families) > 1:
        parser.error("--family timm runs on its own (timm and torchvision share model names)")
    stem = "zoo_timm" if on_timm else "zoo"
    args.results = args.results or ROOT / "docs" / f"{stem}.jsonl"
    args.out = args.out or ROOT / "docs" / stem
    todo = [(n, f) for f in families for n in model_names(f) if not args.models or n in args.models]
    unknown = set(args.models) - {n for n, _ in todo}
    if unknown:
        parser.error(f"unknown models: {sorted(unknown)}")
    done: dict[str, dict] = {}
    if args.results.exists():
        for line in args.results.read_text().splitlines():
            row = json.loads(line)
            done[row["model"]] = row
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for name, family in ([] if args.render_only else todo):
        if name in done and not args.force:
            continue
        row = run_in_subprocess(name, family, args.ratio, args.timeout, args.mem_gb)
        done[name] = row
        with args.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name:36s} {row['status']:8s} {row.get('equivalence', '')} {row.get('error', '')}", flush=True)
    order = {n: i for i, n in enumerate(n for f in (["timm"] if on_timm else FAMILIES) for n in model_names(f))}
    rows = sorted(done.values(), key=lambda r: order.get(r["model"], len(order)))
    write_tables(rows, args.out.with_suffix(".md"), args.out.with_suffix(".csv"), args.ratio,
                 "python benchmarks/zoo.py --family timm" if on_timm else "python benchmarks/zoo.py")


if __name__ == "__main__":
    main()
