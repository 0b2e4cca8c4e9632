"""Tiny random transformers 5 models (Llama with GQA, Qwen2, Mistral, GPT-2, BERT, ViT), captured by torch.export.

Whole attention heads (with their GQA groups) and MLP widths shrink exactly, the model stays its transformers class,
and the original is untouched. Where the stock config can describe the new widths, the rewrite updates it, so
``save_pretrained`` / ``from_pretrained`` round-trip; where it cannot (BERT and GPT-2 derive the head size from the
hidden size, so a model that lost heads but kept its hidden size has no stock config), the rewrite says so and
``graphprune.save`` / ``load`` round-trip instead.
"""

import warnings

import numpy as np
import pytest
import torch

import graphprune

from ..helpers import fingerprint

transformers = pytest.importorskip("transformers")


def _build(name):
    from examples.hf_models import build

    return build(name, "tiny")


def _out(model, x):
    with torch.no_grad():
        out = model(*x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


NAMES = ["llama", "qwen2", "mistral", "gpt2", "bert", "vit"]  # examples.hf_models.FAMILIES
DESCRIBED = {"llama", "qwen2", "mistral", "vit"}  # their stock config can say "fewer heads, same head size"


@pytest.fixture(scope="module", params=NAMES)
def shrunk(request):
    model, x = _build(request.param)
    before, config_before = fingerprint(model), _fields(model.config)
    plan = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = graphprune.apply(model, plan)
    said = [str(w.message) for w in caught if issubclass(w.category, graphprune.RewriteWarning)]
    assert fingerprint(model) == before and _fields(model.config) == config_before
    return request.param, model, x, plan, small, said


def test_heads_and_mlp_widths_shrink_exactly_and_the_class_is_kept(shrunk):
    name, model, x, plan, small, _ = shrunk
    assert plan.capture == "export" and plan.exact
    assert type(small) is type(model)
    assert graphprune.count_params(small) < 0.8 * graphprune.count_params(model)
    assert graphprune.verify(model, plan, small, x) <= 1e-4
    if name != "vit":  # another batch and length
        assert graphprune.verify(model, plan, small, (torch.randint(0, 64, (2, 5)),)) <= 1e-4


def test_config_describes_the_shrunk_model_or_the_rewrite_says_it_cannot(shrunk, tmp_path):
    name, model, x, plan, small, said = shrunk
    if name in DESCRIBED:
        assert not said
        reloaded = type(small).from_pretrained(_saved(small, tmp_path), local_files_only=True).eval()
        _assert_reloaded(reloaded, small, lambda m: _out(m, x))
        assert _fields(reloaded.config) == _fields(small.config)
    else:
        assert len(said) == 1 and "config cannot describe the shrunk widths" in said[0]
        assert "graphprune.save" in said[0]
        assert _fields(small.config) == _fields(model.config)  # left as it was, not half-updated
        graphprune.save(small, tmp_path / "gp", base="examples.hf_models:model", base_kwargs={"name": name})
        again = graphprune.load(tmp_path / "gp").eval()
        assert type(again) is type(model)
        _assert_reloaded(again, small, lambda m: _out(m, x))


def _fields(config):
    return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}  # where it was last saved


def _saved(model, path):
    model.save_pretrained(path)
    return path


def _assert_reloaded(reloaded, small, run):
    """``reloaded`` is ``small``: the same tensors bit for bit under the same names, and the same outputs up to
    float rounding. Not bit-equal outputs: safetensors maps a weight at any 8-byte offset, and a weight at
    another alignment takes another SIMD path through the same kernel (a 5e-10 difference in BERT's logits)."""
    mine, theirs = small.state_dict(), reloaded.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    with torch.no_grad():
        torch.testing.assert_close(run(reloaded), run(small), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral"])
def test_decoder_config_counts_heads_and_kv_groups(name):
    model, x = _build(name)
    small = graphprune.shrink(model, graphprune.Budget(0.5, exact_only=True), example_inputs=x)
    config = small.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.intermediate_size) \
        == (2, 1, 8, 32)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    for layer in small.model.layers:
        attention = layer.self_attn
        assert attention.q_proj.out_features == 16 and attention.k_proj.out_features == 8
        assert attention.num_key_value_groups == 2 and attention.head_dim == 8


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "gpt2"])
@pytest.mark.parametrize("use_cache", [False, True], ids=["no-cache", "kv-cache"])
def test_generate_gives_the_masked_originals_tokens(name, use_cache):
    model, x = _build(name)
    plan = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", graphprune.RewriteWarning)  # GPT-2's config: the test above
        small = graphprune.apply(model, plan)
    masked = graphprune.mask(model, plan)
    with torch.no_grad():
        mine = small.generate(x[0], max_new_tokens=8, do_sample=False, use_cache=use_cache)
        theirs = masked.generate(x[0], max_new_tokens=8, do_sample=False, use_cache=use_cache)
    assert mine.shape == (1, 16) and torch.equal(mine, theirs)


COUNTED = "a mean over removed channels counts them"  # RMSNorm written out: x * rsqrt(x.pow(2).mean(-1) + eps)


@pytest.mark.parametrize("name,reason", [("gpt2", "LayerNorm normalises over removed channels"), ("llama", COUNTED),
                                         ("qwen2", COUNTED), ("mistral", COUNTED)])
def test_hidden_size_plan_is_reported_not_exact_and_the_config_follows(name, reason, tmp_path):
    """The default plan prunes the residual stream too: LayerNorm, or RMSNorm's mean of squares, then runs over
    fewer channels, which the plan and the verdict say; the config still describes the result."""
    model, x = _build(name)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert not plan.exact and any(reason in r for r in plan.inexact)
    with warnings.catch_warnings():
        warnings.simplefilter("error", graphprune.RewriteWarning)  # its config can describe this one
        small = graphprune.apply(model, plan)
    assert type(small) is type(model) and not graphprune.verdict(model, plan, small, x).exact
    hidden = "n_embd" if name == "gpt2" else "hidden_size"
    assert getattr(small.config, hidden) == 16 and getattr(model.config, hidden) == 32
    assert small.get_input_embeddings().weight.shape == (64, 16)
    reloaded = type(small).from_pretrained(_saved(small, tmp_path), local_files_only=True).eval()
    _assert_reloaded(reloaded, small, lambda m: _out(m, x))


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_classifier_hidden_size_plan_gets_the_head_count_its_forward_reads(kind, tmp_path):
    """hidden 32 -> 16 with heads 4 -> 2 builds the same shapes as hidden 16 with 4 heads of 4, and random
    weights attend almost uniformly, so the outputs cannot tell them apart; the head size the attention's forward
    reads (``attention_head_size`` 8) can, and the config says 2 heads."""
    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=64, num_labels=3)
        model, x = transformers.BertForSequenceClassification(config).eval(), (torch.randint(0, 64, (1, 8)),)
    else:
        config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=64, num_labels=3)
        model, x = transformers.ViTForImageClassification(config).eval(), (torch.randn(1, 3, 32, 32),)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert not plan.exact and any("LayerNorm" in r for r in plan.inexact)
    with warnings.catch_warnings():
        warnings.simplefilter("error", graphprune.RewriteWarning)
        small = graphprune.apply(model, plan)
    assert (small.config.hidden_size, small.config.num_attention_heads) == (16, 2)
    assert model.config.hidden_size == 32
    reloaded = type(small).from_pretrained(_saved(small, tmp_path), local_files_only=True).eval()
    _assert_reloaded(reloaded, small, lambda m: m(*x).logits)


def _lm_loss(out, ids):
    """Next-token cross-entropy: the language-model loss, from the ids themselves."""
    logits = out.logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


@pytest.mark.parametrize("criterion", ["activation", "taylor"])
def test_data_driven_criteria_score_a_decoder_on_token_ids(criterion):
    """Calibration on token ids, in batches larger than the example the graph was exported on: each batch runs
    as example-sized pieces, so two sequences at once score as the same two one by one."""
    from graphprune.importance import Activation, Taylor

    model, x = _build("llama")
    torch.manual_seed(1)
    texts = [torch.randint(0, 64, (2, x[0].shape[1])) for _ in range(2)]
    make = {"activation": lambda batches: Activation(batches),
            "taylor": lambda batches: Taylor([(b, b) for b in batches], _lm_loss)}[criterion]
    budget = graphprune.Budget(0.5, exact_only=True)
    plan = graphprune.plan(model, budget, example_inputs=x, importance=make(texts))
    one_by_one = graphprune.plan(model, budget, example_inputs=x,
                                 importance=make([t[i:i + 1] for t in texts for i in range(2)]))
    magnitude = graphprune.plan(model, budget, example_inputs=x)
    scored = [g for g in plan.groups if g.scores]
    assert plan.importance.startswith(criterion) and scored
    for mine, single, l2 in zip(scored, [g for g in one_by_one.groups if g.scores],
                                [g for g in magnitude.groups if g.scores]):
        # Taylor sums gradients over batches (a batch of two gives its pieces' mean): equal up to one scale.
        assert np.array(mine.scores) / sum(mine.scores) == pytest.approx(np.array(single.scores) / sum(single.scores),
                                                                         rel=1e-6)
    assert any(g.scores != m.scores for g, m in zip(scored, [g for g in magnitude.groups if g.scores]))
    small = graphprune.apply(model, plan)
    assert type(small) is type(model) and graphprune.verify(model, plan, small, x) <= 1e-4


def test_calibration_batches_an_exported_graph_cannot_take_are_refused_with_its_shapes():
    from graphprune.importance import Activation

    model, x = _build("llama")
    longer = torch.randint(0, 64, (1, x[0].shape[1] + 3))
    with pytest.raises(graphprune.InputError, match="does not fit the graph torch.export captured"):
        graphprune.plan(model, 0.5, example_inputs=x, importance=Activation([longer]))


def test_a_causal_lm_with_its_cache_on_is_captured_with_use_cache_off_in_the_inputs():
    """transformers' default config returns a DynamicCache, which torch.export cannot return: the refusal says to
    pass ``use_cache=False`` as an input, and with it the model shrinks and still generates with its cache."""
    model, x = _build("llama")
    model.config.use_cache = True
    (ids,) = x
    with pytest.raises(graphprune.TraceError, match="use_cache"):
        graphprune.plan(model, 0.5, example_inputs=x)
    inputs = {"input_ids": ids, "use_cache": False}
    plan = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=inputs)
    small = graphprune.apply(model, plan)
    assert small.config.use_cache and graphprune.verify(model, plan, small, inputs) <= 1e-4
    masked = graphprune.mask(model, plan)
    with torch.no_grad():
        mine = small.generate(ids, max_new_tokens=8, do_sample=False)
        theirs = masked.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(mine, theirs)


@pytest.mark.parametrize("budget", [graphprune.Budget(params=0.7, allocation="uniform", exact_only=True),
                                    graphprune.Budget(macs=0.6, allocation="uniform", exact_only=True)],
                         ids=["params", "macs"])
def test_a_uniform_budget_other_than_a_ratio_gives_a_model_the_stock_config_describes(budget, tmp_path):
    """One config field per width: a MACs or params budget with allocation='uniform' loses the same count in every
    layer, so the config is refit and round-trips, where the global allocation says it cannot."""
    model, x = _build("llama")
    plan = graphprune.plan(model, budget, example_inputs=x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", graphprune.RewriteWarning)
        small = graphprune.apply(model, plan)
    assert graphprune.count_params(small) < graphprune.count_params(model)
    assert small.config.intermediate_size < model.config.intermediate_size
    assert graphprune.verify(model, plan, small, x) <= 1e-4
    reloaded = type(small).from_pretrained(_saved(small, tmp_path), local_files_only=True).eval()
    _assert_reloaded(reloaded, small, lambda m: _out(m, x))


def _t5():
    config = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, use_cache=False, decoder_start_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config).eval()
    return model, {"input_ids": torch.randint(1, 64, (1, 8)), "decoder_input_ids": torch.randint(1, 64, (1, 5))}


def test_t5_shrinks_exactly_with_its_cross_attention_heads_kept():
    """T5: one relative-position table per stack, shared by its layers, so self-attention heads go together in
    every layer of a stack; cross-attention adds a bias made at n_heads (torch.zeros), so its heads stay. One
    ``num_heads`` cannot say both, and the rewrite says so."""
    model, inputs = _t5()
    before = fingerprint(model)
    plan = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=inputs)
    with pytest.warns(graphprune.RewriteWarning, match="config cannot describe"):
        small = graphprune.apply(model, plan)
    assert type(small) is type(model) and fingerprint(model) == before
    assert graphprune.verify(model, plan, small, inputs) <= 1e-4
    for stack in (small.encoder, small.decoder):
        assert {b.layer[0].SelfAttention.q.out_features for b in stack.block} == {16}  # 2 of 4 heads, every layer
        assert stack.block[0].layer[-1].DenseReluDense.wi.out_features == 32
    assert {b.layer[1].EncDecAttention.q.out_features for b in small.decoder.block} == {32}


def test_t5_with_its_attention_ignored_prunes_mlp_widths_its_stock_config_describes(tmp_path):
    """The T5 plan a stock config can say: every attention module in ``Scope.ignore`` keeps all heads, so only
    ``d_ff`` changes, the same in every layer, and ``save_pretrained`` / ``from_pretrained`` round-trip."""
    from transformers.models.t5.modeling_t5 import T5Attention

    model, inputs = _t5()
    scope = graphprune.Scope(ignore=tuple(m for m in model.modules() if isinstance(m, T5Attention)))
    plan = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=inputs, scope=scope)
    with warnings.catch_warnings():
        warnings.simplefilter("error", graphprune.RewriteWarning)
        small = graphprune.apply(model, plan)
    assert graphprune.verify(model, plan, small, inputs) <= 1e-4
    assert small.config.d_ff == 32 and small.config.num_heads == 4 and small.config.d_model == 32
    assert {b.layer[-1].DenseReluDense.wi.out_features for s in (small.encoder, small.decoder) for b in s.block} == {32}
    reloaded = type(small).from_pretrained(_saved(small, tmp_path), local_files_only=True).eval()
    _assert_reloaded(reloaded, small, lambda m: m(**inputs).logits)
