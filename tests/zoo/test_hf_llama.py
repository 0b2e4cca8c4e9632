"""A tiny random LlamaForCausalLM from transformers 5: symbolic tracing cannot take it, torch.export can.

Its MLP widths shrink exactly and it stays a ``LlamaForCausalLM`` whose ``generate`` gives the masked
original's tokens. (Heads, GQA groups and the config come with the transformers issue.)
"""

import pytest
import torch

import graphprune

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama():
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(1.0, 0.2)  # RMSNorm weights away from one, so a mis-sliced norm shows
    ids = torch.randint(0, 64, (1, 8))
    plan = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=(ids,))  # not RMSNorm's
    return model, ids, plan, graphprune.apply(model, plan)


def test_symbolic_tracing_refuses_llama_and_export_captures_it(llama):
    model, ids, plan, _ = llama
    with pytest.raises(graphprune.TraceError):
        graphprune.couple(model, example_inputs=(ids,), scope=graphprune.Scope(capture="fx"))
    assert plan.capture == "export"


def test_llama_mlp_widths_shrink_exactly_and_it_stays_a_llama(llama):
    model, ids, plan, shrunk = llama
    assert type(shrunk) is type(model)
    for layer in shrunk.model.layers:
        assert layer.mlp.gate_proj.out_features == layer.mlp.up_proj.out_features == layer.mlp.down_proj.in_features
        assert layer.mlp.gate_proj.out_features == 32
    assert graphprune.count_params(shrunk) < graphprune.count_params(model)
    other = torch.randint(0, 64, (3, 5))  # another batch size and length
    assert graphprune.verify(model, plan, shrunk, (ids,)) <= 1e-5
    assert graphprune.verify(model, plan, shrunk, (other,)) <= 1e-5


def test_shrunk_llama_generates_the_masked_originals_tokens(llama):
    model, ids, plan, shrunk = llama
    masked = graphprune.mask(model, plan)
    with torch.no_grad():
        mine = shrunk.generate(ids, max_new_tokens=6, do_sample=False)
        theirs = masked.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(mine, theirs) and mine.shape == (1, 14)
