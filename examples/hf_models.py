"""Random-weight Hugging Face transformers models from small configs, for tests, benchmarks and the LLM example.

Nothing is downloaded: each model is its transformers class built from a config. ``size="tiny"`` is what the
tests use (hidden size 32, 2 layers, 4 query heads sharing 2 KV heads); ``size="small"`` is large enough to time
(hidden size 256, 4 layers, 8 query heads sharing 4 KV heads, a 2,048-token vocabulary). The causal LMs are built
with ``use_cache=False``, so that torch.export captures a forward that returns tensors (a ``DynamicCache`` output is
not one); ``generate(..., use_cache=True)`` still uses the KV cache.

>>> model, (x,) = build("llama")
>>> type(model).__name__, tuple(x.shape), model.config.num_key_value_heads
('LlamaForCausalLM', (1, 8), 2)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FAMILIES", "CAUSAL", "build", "model"]

FAMILIES = ["llama", "qwen2", "mistral", "gpt2", "bert", "vit"]
CAUSAL = {"llama", "qwen2", "mistral", "gpt2"}

_SIZES = {
    "tiny": dict(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, vocab=64, positions=64, tokens=8, image=32,
                 patch=8),
    "small": dict(hidden=256, layers=4, heads=8, kv_heads=4, intermediate=704, vocab=2048, positions=512, tokens=128,
                  image=224, patch=16),
}


def build(name: str, size: str = "tiny", *, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The model ``name`` (one of :data:`FAMILIES`) at ``size``, in eval mode, and an example input tuple: token ids
    of batch 1 (an image for ViT). One-dimensional parameters (norm weights, biases) are drawn around one rather
    than left at their initial ones and zeros, so that a mis-sliced one shows in any comparison."""
    import transformers

    s = _SIZES[size]
    torch.manual_seed(seed)
    decoder = dict(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                   num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                   max_position_embeddings=s["positions"], use_cache=False)
    ids = torch.randint(0, s["vocab"], (1, s["tokens"]))
    if name == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**decoder))
    elif name == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**decoder))
    elif name == "mistral":
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**decoder))
    elif name == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=s["vocab"], n_embd=s["hidden"], n_layer=s["layers"], n_head=s["heads"],
            n_positions=s["positions"], use_cache=False, bos_token_id=0, eos_token_id=0))
    elif name == "bert":
        model = transformers.BertModel(transformers.BertConfig(
            vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"], intermediate_size=s["intermediate"],
            max_position_embeddings=s["positions"]))
    elif name == "vit":
        model = transformers.ViTModel(transformers.ViTConfig(
            image_size=s["image"], patch_size=s["patch"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"], intermediate_size=s["intermediate"]))
        ids = torch.randn(1, 3, s["image"], s["image"])
    else:
        raise ValueError(f"unknown family {name!r}; one of {FAMILIES}")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(1.0, 0.2)
    return model.eval(), (ids,)


def model(name: str, size: str = "tiny", seed: int = 0) -> nn.Module:
    """:func:`build`'s model alone: a factory ``graphprune.save(..., base="examples.hf_models:model",
    base_kwargs={"name": ...})`` can name, to rebuild the unpruned model that a saved plan replays on."""
    return build(name, size, seed=seed)[0]
