"""Transformers: attention rules on hand-built graphs, and tiny torchvision ViT / Swin / Swin3d / MaxViT.

Attention is pruned in whole heads. Without a LayerNorm on the pruned widths the rewrite is
exact; torchvision's transformers tie heads to the residual stream, which LayerNorms
normalise, so their default plans are approximate and say so, and ``exact_only`` plans
(MLP hidden widths only) are exact.
"""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import VisionTransformer
from torchvision.models.maxvit import MaxVit
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2
from torchvision.models.video.swin_transformer import SwinTransformer3d

import graphprune
from graphprune.coupling import Role

from ..helpers import fingerprint, randomise


def _groups(model, x, **kwargs):
    coupling = graphprune.couple(model, example_inputs=x, **kwargs)
    return {tuple(g.sources): g for g in coupling.groups}


class HandAttention(nn.Module):
    """Attention written out: qkv view with literal head counts, unbind, and one of three kernels."""

    def __init__(self, kind, dim=16, heads=4):
        super().__init__()
        self.kind, self.dim, self.heads, self.scale = kind, dim, heads, (dim // heads) ** -0.5
        self.embed = nn.Linear(5, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.dim // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.kind == "matmul":
            y = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1) @ v
        elif self.kind == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            logits = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
            y = torch.einsum("bhij,bhjd->bhid", F.softmax(logits, -1), v)
        return self.head(x + self.proj(y.transpose(1, 2).reshape(b, n, self.dim)))


@pytest.mark.parametrize("kind", ["matmul", "sdpa", "einsum"])
def test_hand_written_attention_prunes_whole_heads_exactly(kind):
    torch.manual_seed(0)
    model, x = HandAttention(kind), torch.randn(2, 6, 5)
    groups = _groups(model, x)
    assert set(groups) == {("embed", "proj"), ("qkv",), ("head",)}
    heads = groups[("qkv",)]
    assert heads.size == 4  # one channel per head: q, k and v of a head go together
    qkv_rows = next(m for m in heads.members if m.use.tensor == "qkv.weight" and m.use.dim == 0)
    assert qkv_rows.channels.tolist() == [h for _ in range(3) for h in range(4) for _ in range(4)]
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert [(e.old, e.new) for e in plan.graph_edits] == [(4, 2), (16, 8)]  # heads, then the merged width
    shrunk = graphprune.apply(model, plan)
    assert shrunk.qkv.out_features == 24 and shrunk.proj.in_features == 8
    verdict = graphprune.verdict(model, plan, shrunk, x)
    assert verdict.exact and verdict.difference < 1e-5


class BiasedAttention(HandAttention):
    """Adds a relative position bias gathered from a ``[positions, heads]`` table by an index buffer."""

    def __init__(self, tokens=6):
        super().__init__("matmul")
        self.tokens = tokens
        self.table = nn.Parameter(torch.randn(7, self.heads))
        self.register_buffer("index", torch.randint(0, 7, (tokens * tokens,), generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        x = self.embed(x)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.dim // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.table[self.index].view(self.tokens, self.tokens, -1).permute(2, 0, 1).unsqueeze(0)
        y = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1) @ v
        return self.head(x + self.proj(y.transpose(1, 2).reshape(b, n, self.dim)))


def test_relative_position_table_is_sliced_by_heads_and_its_rows_kept():
    torch.manual_seed(0)
    model, x = BiasedAttention(), torch.randn(2, 6, 5)
    groups = _groups(model, x)
    heads = groups[("qkv", "table")]
    assert heads.size == 4 and not heads.pinned.any()
    assert groups[("table",)].pinned.all()  # the 7 positions: gathered by an index, never pruned
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert shrunk.table.shape == (7, 2)
    assert graphprune.verify(model, plan, shrunk, x) < 1e-5


def test_unsqueeze_and_squeeze_move_channels_with_their_dims():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(5, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)).unsqueeze(1).squeeze(1))

    torch.manual_seed(0)
    model, x = Net(), torch.randn(3, 5)
    assert set(_groups(model, x)) == {("a",), ("b",)}
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert graphprune.verify(model, plan, graphprune.apply(model, plan), x) < 1e-5


class SingleHead(nn.Module):
    def __init__(self, scale=None):
        super().__init__()
        self.scale = scale
        self.q, self.k, self.v = nn.Linear(5, 8), nn.Linear(5, 8), nn.Linear(5, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x), scale=self.scale))


def test_sdpa_default_scale_pins_a_head_dim_that_could_shrink_alone():
    x = torch.randn(2, 6, 5)
    groups = _groups(SingleHead(), x)
    assert groups[("q", "k")].pinned.all()  # 1/sqrt(head_dim) would change
    assert not groups[("v",)].pinned.any()
    groups = _groups(SingleHead(scale=0.3), x)
    assert not groups[("q", "k")].pinned.any()
    torch.manual_seed(0)
    model = SingleHead(scale=0.3)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert graphprune.verify(model, plan, graphprune.apply(model, plan), x) < 1e-5


def test_softmax_over_channels_pins_them():
    model = nn.Sequential(nn.Linear(5, 8), nn.Softmax(dim=-1), nn.Linear(8, 2))
    groups = _groups(model, torch.randn(2, 5))
    assert groups[("_0",)].pinned.all()


class TinyMHA(nn.Module):
    """A class token expanded with a literal width, and nn.MultiheadAttention on a residual stream."""

    def __init__(self, need_weights=False, return_weights=False):
        super().__init__()
        self.need_weights, self.return_weights = need_weights, return_weights
        self.embed = nn.Linear(5, 16)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.embed(x)
        x = torch.cat([self.cls.expand(x.shape[0], 1, 16), x], dim=1)
        y, weights = self.attn(x, x, x, need_weights=self.need_weights)
        out = self.head((x + y)[:, 0])
        return (out, weights) if self.return_weights else out


def test_multihead_attention_whole_heads_tied_to_the_stream():
    torch.manual_seed(0)
    model, x = randomise(TinyMHA()), torch.randn(2, 6, 5)
    before = fingerprint(model)
    groups = _groups(model, x)
    stream = groups[("embed", "cls")]
    assert stream.size == 4 and not stream.pinned.any()
    assert {(m.use.tensor, m.use.dim, m.use.role) for m in stream.members} >= {
        ("attn.in_proj_weight", 0, Role.PRODUCER), ("attn.in_proj_weight", 1, Role.CONSUMER),
        ("attn.out_proj.weight", 0, Role.PRODUCER), ("attn.out_proj.weight", 1, Role.CONSUMER),
        ("cls", 2, Role.DIRECT), ("head.weight", 1, Role.CONSUMER),
    }
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert [(e.old, e.new) for e in plan.graph_edits] == [(16, 8)]  # the expand's literal width
    shrunk = graphprune.apply(model, plan)
    assert (shrunk.attn.embed_dim, shrunk.attn.num_heads, shrunk.attn.head_dim) == (8, 2, 4)
    assert shrunk.attn.in_proj_weight.shape == (24, 8)
    assert graphprune.verdict(model, plan, shrunk, x).exact
    assert graphprune.verify(model, plan, shrunk, x) < 1e-5
    assert fingerprint(model) == before


def test_multihead_attention_whose_weights_are_read_keeps_its_width():
    x = torch.randn(2, 6, 5)
    assert _groups(TinyMHA(need_weights=True, return_weights=True), x)[("embed", "cls")].pinned.all()
    # Computed but unused (the default need_weights=True with ``y, _ = attn(...)``): heads stay prunable.
    assert not _groups(TinyMHA(need_weights=True), x)[("embed", "cls")].pinned.any()


class RunTimeWidth(nn.Module):
    """An inner width viewed back to the stream's width read at run time (``C`` from ``x.shape``)."""

    def __init__(self):
        super().__init__()
        self.embed, self.inner, self.head = nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        x = self.embed(x)
        b, n, c = x.shape
        y = torch.relu(self.inner(x).reshape(b * n, c)).view(b, n, c)
        return self.head(x * y)


def test_a_size_read_from_a_channel_dim_ties_the_view_to_those_channels():
    torch.manual_seed(0)
    model, x = RunTimeWidth(), torch.randn(2, 3, 5)
    groups = _groups(model, x)
    assert set(groups) == {("embed", "inner"), ("head",)}
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert shrunk.inner.out_features == 4
    assert graphprune.verify(model, plan, shrunk, x) < 1e-5


# -- torchvision families, tiny configurations -------------------------------------------------


def _tiny_vit():
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)


def _tiny_swin(v2=False):
    extra = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    return SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], **extra)


def _tiny_swin3d():
    return SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[2, 4, 4])


def _tiny_maxvit():
    return MaxVit(input_size=(32, 32), stem_channels=16, partition_size=2, block_channels=[32, 64],
                  block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0)


def _has_chunk_rule():
    return any(kind == "function" and key.endswith(".chunk") for kind, key, _ in graphprune.default_registry().entries())


FAMILIES = {
    # name: (builder, input shape, attention module and its head-count attribute, MLP first linear)
    "vit": (_tiny_vit, (2, 3, 32, 32), ("encoder.layers.encoder_layer_0.self_attention", "num_heads", 4),
            "encoder.layers.encoder_layer_0.mlp.0"),
    "swin": (_tiny_swin, (2, 3, 32, 32), ("features.1.0.attn", None, 2), "features.1.0.mlp.0"),
    "swin_v2": (lambda: _tiny_swin(v2=True), (2, 3, 32, 32), ("features.1.0.attn", None, 2), "features.1.0.mlp.0"),
    "swin3d": (_tiny_swin3d, (1, 3, 4, 32, 32), ("features.0.0.attn", None, 2), "features.0.0.mlp.0"),
    "maxvit": (_tiny_maxvit, (2, 3, 32, 32), None, "blocks.0.layers.0.layers.window_attention.mlp_layer.1"),
}


def _family(name):
    marks = []
    if name == "maxvit":
        marks.append(pytest.mark.skipif(not _has_chunk_rule(), reason="MaxViT needs the torch.chunk rule (coverage-cnn)"))
    return pytest.param(name, marks=marks)


@pytest.mark.parametrize("name", [_family(n) for n in FAMILIES])
def test_torchvision_transformer_default_plan_is_approximate_and_says_so(name):
    build, shape, attention, mlp = FAMILIES[name]
    torch.manual_seed(0)
    model, x = randomise(build()), torch.randn(shape)
    with pytest.warns(graphprune.InexactWarning):
        plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert plan.inexact and all("LayerNorm" in reason for reason in plan.inexact)
    shrunk = graphprune.apply(model, plan)
    assert shrunk(x).shape == model(x).shape
    assert graphprune.count_params(shrunk) < 0.45 * graphprune.count_params(model)
    assert shrunk.get_submodule(mlp).out_features == model.get_submodule(mlp).out_features // 2
    if attention is not None:
        path, attr, heads = attention
        attn = shrunk.get_submodule(path)
        if attr is not None:
            assert getattr(attn, attr) == heads // 2
        else:  # Swin: the head count is a graph constant; the bias table is sliced by heads
            if name == "swin_v2":  # heads index the logit scale and the continuous position bias MLP's output
                assert attn.logit_scale.shape == (heads // 2, 1, 1)
                assert shrunk.get_submodule(f"{path}.cpb_mlp.2").out_features == heads // 2
            else:
                assert attn.relative_position_bias_table.shape[1] == heads // 2
            # Traced into, the attention is a plain container of the tensors the graph reads.
            width = model.get_submodule(path).proj.out_features // 2
            assert attn.qkv.weight.shape == (3 * width, width) and attn.proj.weight.shape == (width, width)
    verdict = graphprune.verdict(model, plan, shrunk, x)
    assert not verdict.exact and str(verdict).startswith("not exact: LayerNorm")


@pytest.mark.parametrize("name", [_family(n) for n in FAMILIES])
def test_torchvision_transformer_exact_only_prunes_mlps_exactly(name):
    build, shape, attention, mlp = FAMILIES[name]
    torch.manual_seed(0)
    model, x = randomise(build()), torch.randn(shape)
    plan = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=x)
    assert plan.exact and plan.removed_channels > 0
    shrunk = graphprune.apply(model, plan)
    assert shrunk.get_submodule(mlp).out_features == model.get_submodule(mlp).out_features // 2
    if attention is not None:  # heads are tied to the stream, which a LayerNorm normalises: kept
        path, attr, heads = attention
        kept, original = shrunk.get_submodule(path), model.get_submodule(path)
        if attr is None:
            assert kept.qkv.weight.shape == original.qkv.weight.shape
        else:
            assert getattr(kept, attr) == heads
    assert graphprune.verify(model, plan, shrunk, x) < 1e-4


@pytest.mark.slow  # about 20 s on one core
def test_vit_b_16_exact_only_at_224():
    torch.manual_seed(0)
    model, x = randomise(torchvision.models.vit_b_16()), torch.randn(1, 3, 224, 224)
    plan = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert shrunk.encoder.layers.encoder_layer_0.mlp[0].out_features == 1536
    assert shrunk.encoder.layers.encoder_layer_0.self_attention.num_heads == 12
    assert graphprune.verify(model, plan, shrunk, x) < 1e-4
