"""Shrink every torchvision transformer at ratio 0.5 and report whether it runs and how exact it is.

For each model: the default plan (heads and the embedding width go too, approximately, since
LayerNorms normalise over them) and the ``exact_only`` plan (MLP hidden widths only), with the
parameter counts and :func:`graphprune.verdict` of each. Random weights; the norms' affine
parameters and the zero-initialised heads are re-drawn so that a slicing mistake would show.

    python benchmarks/vision_transformers.py                  # all 15 (vit_h_14 and the video models are slow)
    python benchmarks/vision_transformers.py vit_b_16 swin_t  # a few

Hugging Face transformers models (Llama with GQA, Qwen2, Mistral, GPT-2, BERT, ViT) have their own table:
``python benchmarks/hf_transformers.py`` (a script named transformers.py here would shadow the ``transformers`` package).
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

import graphprune

MODELS = {
    "vit_b_16": (1, 3, 224, 224), "vit_b_32": (1, 3, 224, 224), "vit_l_16": (1, 3, 224, 224),
    "vit_l_32": (1, 3, 224, 224), "vit_h_14": (1, 3, 224, 224),
    "swin_t": (1, 3, 112, 112), "swin_s": (1, 3, 112, 112), "swin_b": (1, 3, 112, 112),
    "swin_v2_t": (1, 3, 128, 128), "swin_v2_s": (1, 3, 128, 128), "swin_v2_b": (1, 3, 128, 128),
    "maxvit_t": (1, 3, 224, 224),
    "mvit_v1_b": (1, 3, 16, 224, 224), "mvit_v2_s": (1, 3, 16, 224, 224),
    "swin3d_t": (1, 3, 8, 64, 64), "swin3d_s": (1, 3, 8, 64, 64), "swin3d_b": (1, 3, 8, 64, 64),
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1 or not param.abs().max():
                param.normal_(0, 0.2)
    return model


def measure(name: str, ratio: float) -> list[str]:
    model = build(name)
    x = torch.randn(MODELS[name])
    rows = []
    for exact_only in (False, True):
        start = time.perf_counter()
        try:
            plan = graphprune.plan(model, graphprune.Budget(ratio, exact_only=exact_only), example_inputs=x)
            shrunk = graphprune.apply(model, plan)
            verdict = graphprune.verdict(model, plan, shrunk, x)
            reasons = f"not exact ({len(verdict.reasons)} LayerNorms)" if not verdict.exact else "exact"
            result = (f"{graphprune.count_params(model) / 1e6:7.2f}M -> {graphprune.count_params(shrunk) / 1e6:7.2f}M"
                      f"  {reasons}, max rel diff {verdict.difference:.1e}")
        except graphprune.GraphPruneError as exc:
            result = f"FAILS: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        rows.append(f"{name:10s} {'exact_only' if exact_only else 'default':10s} {result}  ({time.perf_counter() - start:.0f}s)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models:
        for row in measure(name, args.ratio):
            print(row, flush=True)


if __name__ == "__main__":
    main()
