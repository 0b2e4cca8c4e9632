"""Hugging Face transformers 5 models through graphprune: heads with their GQA groups and MLP widths, exactly.

Measures Hugging Face transformers 5 models (``examples/hf_models.py``, ``size="small"``: random
weights, nothing downloaded): Llama with GQA, Qwen2, Mistral, GPT-2, BERT and ViT, each shrunk with
``Budget(ratio, exact_only=True)`` (whole heads with their KV groups, MLP widths), and writes docs/transformers_hf.md:
parameters before and after, CPU latency at batch 1 on one thread (per generated token for the causal LMs: a greedy
``generate`` of 32 tokens with the KV cache after a 128-token prompt; per forward of 128 tokens or one 224 px image
for the encoders; dense and shrunk interleaved, medians of ``torch.utils.benchmark``, each keeping its best of
three rounds), ``verify``, whether the config describes the result (``save_pretrained`` / ``from_pretrained`` give
the same outputs), shrink time, and Torch-Pruning 1.6.1 on the same model set up as its LLM example (heads given per
attention module, ``prune_num_heads=True``, ``prune_head_dims=False``, the output layer ignored), in a subprocess
with a time limit and an address-space cap.

    python benchmarks/hf_transformers.py [--skip-tp] [--families llama bert]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import graphprune  # noqa: E402


def _seconds_per_call(fn, min_run_time: float) -> float:
    return graphprune.Hardware(num_threads=1).seconds(fn, min_run_time)


def _latency_fns(name: str, model, x, tokens: int):
    from examples.hf_models import CAUSAL

    if name in CAUSAL:
        def generate():
            model.generate(x[0], max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, use_cache=True,
                           pad_token_id=0)
        return generate, tokens
    return (lambda: model(*x)), 1


def _reloads_equal(model, x) -> bool:
    with tempfile.TemporaryDirectory() as path:
        model.save_pretrained(path)
        again = type(model).from_pretrained(path, local_files_only=True).eval()
    with torch.no_grad():
        a, b = model(*x), again(*x)
    key = "logits" if hasattr(a, "logits") else "last_hidden_state"
    return torch.equal(getattr(a, key), getattr(b, key))


def hf_row(name: str, args) -> dict:
    from examples.hf_models import build

    model, x = build(name, "small")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = graphprune.plan(model, graphprune.Budget(args.ratio, exact_only=True), example_inputs=x)
        small = graphprune.apply(model, plan)
    seconds = time.perf_counter() - start
    said = [str(w.message) for w in caught if issubclass(w.category, graphprune.RewriteWarning)]
    row = {"family": name, "class": type(model).__name__, "class_kept": type(small) is type(model),
           "exact": plan.exact, "verify": graphprune.verify(model, plan, small, x), "shrink_s": seconds,
           "params_before": graphprune.count_params(model), "params_after": graphprune.count_params(small),
           "config_described": not any("config cannot describe" in w for w in said)}
    row["reload_equal"] = _reloads_equal(small, x) if row["config_described"] else None
    dense_fn, calls = _latency_fns(name, model, x, args.tokens)
    small_fn, _ = _latency_fns(name, small, x, args.tokens)
    dense, shrunk = [], []
    for _ in range(args.repeats):  # interleaved: both see the same machine load
        dense.append(_seconds_per_call(dense_fn, args.min_run_time) / calls)
        shrunk.append(_seconds_per_call(small_fn, args.min_run_time) / calls)
    row.update(dense_ms=1e3 * min(dense), shrunk_ms=1e3 * min(shrunk), per="token" if calls > 1 else "forward")
    print(f"{name}: {row['params_before']:,} -> {row['params_after']:,}, verify {row['verify']:.1e}, "
          f"{row['dense_ms']:.2f} -> {row['shrunk_ms']:.2f} ms per {row['per']}", flush=True)
    return row


def tp_child(name: str, ratio: float, mem_gb: float) -> dict:
    """Torch-Pruning 1.6.1 as its LLM example sets it up, on the same model; run in a child process."""
    limit = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from examples.hf_models import build

    torch.set_num_threads(1)
    model, x = build(name, "small")
    with torch.no_grad():
        before = model(*x)
    key = "logits" if hasattr(before, "logits") else "last_hidden_state"
    row = {"params_before": graphprune.count_params(model)}
    heads, ignored = {}, []
    for module in model.modules():
        for q, k, v in (("q_proj", "k_proj", "v_proj"), ("query", "key", "value")):
            if all(hasattr(module, a) for a in (q, k, v)):
                kv = getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads
                heads[getattr(module, q)] = model.config.num_attention_heads
                heads[getattr(module, k)] = heads[getattr(module, v)] = kv
    for attr in ("lm_head", "pooler"):
        if hasattr(model, attr):
            ignored.append(getattr(model, attr))
    start = time.perf_counter()
    try:
        import torch_pruning as tp

        pruner = tp.pruner.MetaPruner(model, x[0], importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=ignored, num_heads=heads,
                                      prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio)
        pruner.step()
    except BaseException as exc:  # noqa: BLE001 - the row records what Torch-Pruning did, whatever it raised
        row.update(status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200],
                   seconds=time.perf_counter() - start)
        return row
    row.update(status="pruned", seconds=time.perf_counter() - start, params=graphprune.count_params(model))
    try:
        with torch.no_grad():
            after = model(*x)
        row["shapes_kept"] = getattr(after, key).shape == getattr(before, key).shape
    except Exception as exc:  # noqa: BLE001 - a pruned model that no longer runs is a result too
        row.update(shapes_kept=False, forward_error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}"[:200])
    return row


def _run_tp(name: str, args) -> dict:
    from child_row import run_child

    return run_child(__file__, ["--tp-child", name, "--ratio", str(args.ratio), "--tp-mem-gb", str(args.tp_mem_gb)],
                     args.tp_timeout)


def _tp_cell(tp: dict | None) -> str:
    if tp is None:
        return "not run"
    if tp["status"] != "pruned":
        return tp["error"].replace("|", "/")
    if tp["params"] == tp["params_before"]:
        return f"nothing pruned ({tp['seconds']:.1f} s)"
    runs = "outputs keep their shape" if tp.get("shapes_kept") else f"forward: {tp.get('forward_error', 'other shape')}"
    return f"{tp['params_before'] / 1e6:.2f} M → {tp['params'] / 1e6:.2f} M in {tp['seconds']:.1f} s; {runs}"


def hf_markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| model | class kept | params before → after | CPU ms before → after (speed-up) | verify "
             "| config describes it (from_pretrained equal) | shrink (s) | Torch-Pruning 1.6.1 |",
             "|---|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        config = ("yes (equal)" if r["reload_equal"] else "yes (outputs differ)") if r["config_described"] else \
            "no: warned, save with graphprune.save"
        lines.append(
            f"| {r['family']} ({r['class']}) | {'yes' if r['class_kept'] else 'no'} "
            f"| {r['params_before'] / 1e6:.2f} M → {r['params_after'] / 1e6:.2f} M "
            f"| {r['dense_ms']:.2f} → {r['shrunk_ms']:.2f} per {r['per']} ({r['dense_ms'] / r['shrunk_ms']:.2f}x) "
            f"| {r['verify']:.1e} | {config} | {r['shrink_s']:.1f} | {_tp_cell(r.get('torch_pruning'))} |")
    return "\n".join(lines)


def hf_main(args) -> None:
    import transformers

    from examples.hf_models import FAMILIES

    torch.set_num_threads(1)
    started, load = time.perf_counter(), os.getloadavg()[0]
    rows = []
    for name in args.families or FAMILIES:
        row = hf_row(name, args)
        if not args.skip_tp:
            row["torch_pruning"] = _run_tp(name, args)
            print(f"{name}: Torch-Pruning {row['torch_pruning']['status']}", flush=True)
        rows.append(row)
    command = " ".join(["python benchmarks/hf_transformers.py", *sys.argv[1:]])
    header = (f"`{command}` on {datetime.date.today().isoformat()}: torch {torch.__version__}, transformers "
              f"{transformers.__version__}, 1 CPU thread ({os.cpu_count()} cores, load average {load:.1f} at the "
              f"start, {os.getloadavg()[0]:.1f} at the end), `Budget({args.ratio:g}, exact_only=True)`, "
              f"{(time.perf_counter() - started) / 60:.0f} min in all.")
    table = hf_markdown(rows, header)
    print(table)
    if args.out:
        args.out.write_text(HF_DOC.format(table=table) + "\n")
        args.out.with_suffix(".jsonl").write_text("".join(json.dumps({"command": command, **r}) + "\n" for r in rows))


HF_DOC = """# Hugging Face transformers: heads, GQA groups and MLP widths

Random-weight transformers 5 models from small configs (`examples/hf_models.py`, `size="small"`: hidden size 256,
4 layers, 8 query heads; Llama, Qwen2 and Mistral share them among 4 KV heads), shrunk on the torch.export path with
`Budget(0.5, exact_only=True)`: whole heads go (a KV head with its group of query heads) and half of each MLP, the
hidden size stays, so the rewrite is exact. Every model comes back as its transformers class.

{table}

**Columns.** *verify*: the original with the removed channels zeroed against the shrunk model, max relative
difference. *CPU ms*: per generated token for the causal LMs (greedy `generate` of 32 tokens with the KV cache after
a 128-token prompt, divided by 32), per forward for BERT (128 tokens) and ViT (one 224 px image); one thread, dense
and shrunk interleaved, best of three `torch.utils.benchmark` medians. *Config*: after the rewrite graphprune
searches the config's integer fields for one that builds the shrunk widths and keeps it only if the model still
computes the same (`graphprune/rewrite/config.py`); *equal* means `save_pretrained` → `from_pretrained` gave
bit-identical outputs. BERT and GPT-2 derive the head size from the hidden size, so a model that lost heads and kept
its hidden size has no stock config: graphprune says so (a `RewriteWarning`) and `graphprune.save` / `load` keep it.
*Torch-Pruning*: `MetaPruner` with group L2 magnitude, `pruning_ratio=0.5`, heads given per attention module and
`prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5` as in its LLM example, the output layer (and
BERT's pooler) ignored; it prunes the hidden size too, so its parameter count is not comparable one for one, and its
outputs are not checked against anything.

**Per-token times are mostly `generate`'s own Python.** Llama and Mistral are the same network at these sizes, yet their
speed-ups differ from run to run (on 2026-12-03, 1.44x and 0.99x in one run, 1.27x and 1.25x in another): at 4 M parameters a decoded token costs a few milliseconds of Python per step, which pruning
does not touch. The encoders' per-forward times, compute-bound, show the work saved.

**Plans a stock config can describe.** A config has one width per kind for every layer, so the ratio budget (the
same count in each layer) fits it, as does `Budget(params=..., allocation="uniform")` or `macs=...`; the global
allocation, which lets layers differ, warns that the config cannot say it. T5 (`tests/zoo/test_hf_families.py`)
shares one relative-position table per stack, so its self-attention heads go together in every layer, while its
cross-attention keeps all heads (it adds a bias made at `n_heads`): one `num_heads` cannot describe both, and the
rewrite warns. With every `T5Attention` in `Scope(ignore=...)`, only `d_ff` changes, and `save_pretrained` /
`from_pretrained` round-trip.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--families", nargs="*", help="some of examples.hf_models.FAMILIES (default: all)")
    parser.add_argument("--skip-tp", action="store_true", help="do not run Torch-Pruning")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per timing")
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tp-timeout", type=float, default=150.0)
    parser.add_argument("--tp-mem-gb", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "transformers_hf.md", help="markdown ('' for none)")
    parser.add_argument("--tp-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tp_child:
        from child_row import print_row

        print_row(tp_child(args.tp_child, args.ratio, args.tp_mem_gb))
        return
    args.out = args.out if str(args.out) else None
    hf_main(args)


if __name__ == "__main__":
    main()
