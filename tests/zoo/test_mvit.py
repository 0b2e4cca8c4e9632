"""MViT: repeat_interleave, tensor_split, heads folded into the batch, torchvision's MViT helpers and models.

torchvision's MViT pools q, k and v with one depthwise Conv3d and one LayerNorm(head_dim)
shared by every head (heads are folded into the batch). Heads are pruned whole, so those
stay as they are and removing a head is exact; the residual stream runs through
LayerNorms, so default plans are approximate and say so.
"""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.video.mvit import MSBlockConfig, MultiscaleAttention, MViT

import graphprune
from graphprune import UnsupportedOpError

from ..helpers import fingerprint, randomise


def _groups(model, x, **kwargs):
    coupling = graphprune.couple(model, example_inputs=x, **kwargs)
    return {tuple(g.sources): g for g in coupling.groups}


def _members(group):
    return {(m.use.tensor, m.use.dim) for m in group.members}


# -- repeat_interleave and tensor_split ----------------------------------------------------------


class RepeatFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).repeat_interleave(2, dim=1))


def test_repeat_interleave_repeats_each_channel_in_place():
    torch.manual_seed(0)
    model, x = RepeatFeatures(), torch.randn(2, 3)
    groups = _groups(model, x)
    assert set(groups) == {("a",), ("b",)}
    consumer = next(m for m in groups[("a",)].members if m.use.tensor == "b.weight")
    assert consumer.use.dim == 1 and consumer.channels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert shrunk.a.out_features == 2 and shrunk.b.in_features == 4
    assert graphprune.verify(model, plan, shrunk, x) < 1e-5


class RepeatCountFromChannels(nn.Module):
    """Repeats an untracked tensor as often as ``a`` has channels: those channels must stay."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        y = self.a(x)
        return self.b(y) + torch.repeat_interleave(x, y.shape[1], dim=1).sum(1, keepdim=True)


def test_repeat_count_read_from_a_channel_dim_pins_those_channels():
    assert _groups(RepeatCountFromChannels(), torch.randn(2, 3))[("a",)].pinned.all()


class RepeatFlat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(self.a(x).repeat_interleave(2).view(x.shape[0], 8))


def test_repeat_interleave_without_dim_over_channels_is_refused():
    with pytest.raises(UnsupportedOpError, match="flattens a tensor that carries channels"):
        graphprune.couple(RepeatFlat(), example_inputs=torch.randn(1, 3))


class SplitTokens(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):  # x: [B, tokens, 3]
        first, rest = torch.tensor_split(self.a(x), indices=(1,), dim=self.dim)
        return self.b(torch.cat((rest, first), dim=self.dim))


def test_tensor_split_along_tokens_passes_channels_and_along_channels_is_refused():
    torch.manual_seed(0)
    model, x = SplitTokens(1), torch.randn(2, 5, 3)
    assert set(_groups(model, x)) == {("a",), ("b",)}
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert graphprune.verify(model, plan, graphprune.apply(model, plan), x) < 1e-5
    with pytest.raises(UnsupportedOpError, match="tensor_split of channel dim 2"):
        graphprune.couple(SplitTokens(2), example_inputs=x)


# -- heads folded into the batch -----------------------------------------------------------------


class FoldedHeads(nn.Module):
    """Hand-written MViT-style pooling: k's heads become samples of one depthwise conv and one LayerNorm."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(5, 24)  # 2 heads of 4, times q/k/v
        self.pool = nn.Conv1d(4, 4, 3, padding=1, groups=4, bias=False)
        self.norm = nn.LayerNorm(4)
        self.proj = nn.Linear(8, 3)

    def forward(self, x):  # x: [B, N, 5]
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        k = k.transpose(2, 3)  # [B, heads, head_dim, N]
        bk, heads, width = k.shape[:3]
        k = self.pool(k.reshape(bk * heads, width, n))  # each head is a sample of the shared conv
        k = self.norm(k.reshape(bk, heads, width, n).transpose(2, 3))
        y = (q @ k.transpose(2, 3)).softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, 8))


def test_heads_folded_into_the_batch_go_whole_and_the_shared_conv_and_norm_stay():
    torch.manual_seed(0)
    model, x = randomise(FoldedHeads()), torch.randn(2, 6, 5)
    groups = _groups(model, x)
    assert set(groups) == {("qkv",), ("proj",)}
    heads = groups[("qkv",)]
    assert heads.size == 2 and not heads.pinned.any() and not heads.inexact
    assert _members(heads) == {("qkv.weight", 0), ("qkv.bias", 0), ("proj.weight", 1)}  # not pool or norm
    rows = next(m for m in heads.members if m.use.tensor == "qkv.weight")
    assert rows.channels.tolist() == [h for _ in range(3) for h in range(2) for _ in range(4)]
    plan = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert shrunk.qkv.out_features == 12 and shrunk.proj.in_features == 4
    assert shrunk.pool.weight.shape == (4, 1, 3) and shrunk.norm.weight.shape == (4,)
    assert graphprune.verify(model, plan, shrunk, x) < 1e-5


class Attention(nn.Module):
    """torchvision's MultiscaleAttention between a linear embedding and a classifier on the class token."""

    def __init__(self, heads=2, pool_q=True, rel_pos=True, residual_pool=True):
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.attn = MultiscaleAttention(
            [2, 4, 4], 8, 8, heads, kernel_q=[3, 3, 3] if pool_q else [], kernel_kv=[3, 3, 3],
            stride_q=[1, 2, 2] if pool_q else [], stride_kv=[1, 2, 2], residual_pool=residual_pool,
            residual_with_cls_embed=False, rel_pos_embed=rel_pos,
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # x: [B, 1 + 2 * 4 * 4, 5]
        y, _ = self.attn(self.embed(x), (2, 4, 4))
        return self.head(y[:, 0])


ATTENTION = {
    "v2": {},  # pooled q, k, v; relative positions; residual pooling
    "unpooled_q": {"pool_q": False},  # q keeps heads x head_dim, k and v are pooled
    "v1": {"pool_q": False, "rel_pos": False, "residual_pool": False},
}


@pytest.mark.parametrize("kind", list(ATTENTION))
def test_multiscale_attention_prunes_whole_heads_exactly(kind):
    torch.manual_seed(0)
    model, x = randomise(Attention(**ATTENTION[kind])), torch.randn(2, 33, 5)
    coupling = graphprune.couple(model, example_inputs=x)
    heads = next(g for g in coupling.groups if g.sources == ("attn_qkv",))
    assert heads.size == 2 and not heads.pinned.any() and not heads.inexact
    assert _members(heads) == {("attn.qkv.weight", 0), ("attn.qkv.bias", 0), ("attn.project.0.weight", 1)}
    tables = [g for g in coupling.groups if g.sources[0].startswith("attn_rel_pos")]
    assert len(tables) == (6 if kind != "v1" else 0)  # rows and head_dim of each table: kept
    assert all(g.pinned.all() for g in tables)
    plan = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=x)
    assert plan.exact
    assert sorted((e.old, e.new) for e in plan.graph_edits) == [(2, 1), (8, 4)]  # num_heads, output_dim
    shrunk = graphprune.apply(model, plan)
    assert shrunk.get_submodule("attn.qkv").out_features == 12
    assert shrunk.get_submodule("attn.project.0").in_features == 4
    for pool in ("pool_k", "pool_v") + (("pool_q",) if kind == "v2" else ()):
        assert shrunk.get_submodule(f"attn.{pool}.pool").weight.shape == (4, 1, 3, 3, 3)
    assert graphprune.verify(model, plan, shrunk, x) < 1e-5


def test_single_head_relative_position_tables_follow_head_dim():
    """With one head, head_dim is q's only channel dim: the tables' head_dim is joined with it."""
    model, x = Attention(heads=1), torch.randn(2, 33, 5)
    groups = _groups(model, x)
    inner = groups[("attn_qkv", "attn_rel_pos_h", "attn_rel_pos_w", "attn_rel_pos_t")]
    assert {("attn.rel_pos_h", 1), ("attn.rel_pos_w", 1), ("attn.rel_pos_t", 1)} <= _members(inner)
    assert ("attn.pool_k.pool.weight", 0) in _members(inner)  # head_dim is the pooling conv's channel
    assert inner.inexact  # and the pooling LayerNorm normalises it


# -- whole MViT models ----------------------------------------------------------------------------


def _tiny_mvit(v2):
    blocks = [
        MSBlockConfig(1, 8, 16, [], [3, 3, 3], [], [1, 2, 2]),
        MSBlockConfig(2, 16, 16, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1]),
        MSBlockConfig(2, 16, 32, [], [3, 3, 3], [], [1, 1, 1]),
        MSBlockConfig(4, 32, 32, [], [], [], []),
    ]
    if v2:
        flags = {"residual_pool": True, "residual_with_cls_embed": False, "rel_pos_embed": True, "proj_after_attn": True}
    else:
        flags = {"residual_pool": False, "residual_with_cls_embed": True, "rel_pos_embed": False, "proj_after_attn": False}
    return MViT(spatial_size=(32, 32), temporal_size=4, block_setting=blocks, num_classes=5, **flags)


def _exports(shrunk, x):
    with torch.no_grad():
        torch.jit.trace(shrunk, x, check_trace=False, strict=False)
        torch.export.export(shrunk, (x,))
        torch.fx.symbolic_trace(shrunk)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_tiny_mvit_default_plan_is_approximate_and_exact_only_is_exact(v2):
    torch.manual_seed(0)
    model, x = randomise(_tiny_mvit(v2)), torch.randn(1, 3, 4, 32, 32)
    before = fingerprint(model)
    with pytest.warns(graphprune.InexactWarning):
        plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert plan.inexact and all("LayerNorm" in reason for reason in plan.inexact)
    shrunk = graphprune.apply(model, plan)
    assert shrunk(x).shape == model(x).shape == (1, 5)
    assert graphprune.count_params(shrunk) < 0.5 * graphprune.count_params(model)
    assert str(graphprune.verdict(model, plan, shrunk, x)).startswith("not exact: LayerNorm")

    exact = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=x)
    assert exact.exact
    small = graphprune.apply(model, exact)
    assert graphprune.verify(model, exact, small, x) < 1e-4
    # Heads and MLP hidden widths go; the stream (LayerNorm) and the single-head block keep their widths.
    assert small.get_submodule("blocks.3.attn.qkv").out_features == 48
    assert small.get_submodule("blocks.3.mlp.0").out_features == 64
    assert small.get_submodule("blocks.0.attn.qkv").out_features == model.get_submodule("blocks.0.attn.qkv").out_features
    assert small.get_submodule("blocks.3.norm1").weight.shape == (32,)
    if v2:  # relative position tables are shared by every head: they keep their width
        assert small.get_submodule("blocks.3.attn").rel_pos_h.shape == model.get_submodule("blocks.3.attn").rel_pos_h.shape
    _exports(small, x)
    assert fingerprint(model) == before


@pytest.mark.slow  # about 20 s each on one core
@pytest.mark.parametrize("name", ["mvit_v1_b", "mvit_v2_s"])
def test_torchvision_mvit_at_224(name):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, x = randomise(torchvision.models.get_model(name, weights=None)), torch.randn(1, 3, 16, 224, 224)
    exact = graphprune.plan(model, graphprune.Budget(0.5, exact_only=True), example_inputs=x)
    small = graphprune.apply(model, exact)
    assert exact.exact and graphprune.verify(model, exact, small, x) < 1e-4
    assert small.get_submodule("blocks.15.attn.qkv").out_features == 3 * 768 // 2  # 8 heads -> 4
    with pytest.warns(graphprune.InexactWarning):
        plan = graphprune.plan(model, 0.5, example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert shrunk(x).shape == (1, 400)
    assert plan.inexact and all("LayerNorm" in reason for reason in plan.inexact)
    assert graphprune.count_params(shrunk) < 0.3 * graphprune.count_params(model)
    _exports(shrunk, x)
