"""Layouts that vision transformers and hybrids use, each on a small model and both capture paths: attention-bias
tables gathered by an index buffer, q/k/v picked by an int, a padded head dim with a kᵀv contraction, position
tables interpolated or tiled, chunks that do not divide evenly, reductions over channels, weight
standardisation, and regions with autocast switched off. Exact against the masked original, or reported.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune

from ..helpers import fingerprint, shrinks_exactly

CAPTURES = ["fx", "export"]


class BiasedAttention(nn.Module):
    """LeViT / EfficientFormer attention: q, k, v picked from one projection by an int, logits plus a learned
    per-head table gathered by a fixed index buffer; optionally through scaled_dot_product_attention's mask."""

    def __init__(self, dim=16, heads=4, tokens=6, sdpa=False):
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.embed = nn.Linear(5, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)
        self.biases = nn.Parameter(torch.randn(heads, 2 * tokens - 1))
        pos = torch.arange(tokens)
        self.register_buffer("idx", pos[:, None] - pos[None, :] + tokens - 1, persistent=False)

    def forward(self, x):
        x = self.embed(x)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, 4).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        bias = self.biases[:, self.idx]
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        else:
            attn = (q @ k.transpose(-2, -1)) * 0.5 + bias
            out = attn.softmax(-1) @ v
        return self.head(x + self.proj(out.transpose(1, 2).reshape(B, N, -1)))


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("sdpa", [False, True], ids=["matmul", "sdpa-mask"])
def test_an_attention_bias_table_follows_its_heads(capture, sdpa):
    x = torch.randn(2, 6, 5)
    plan, shrunk = shrinks_exactly(BiasedAttention(sdpa=sdpa), x, capture=capture)
    if capture == "fx":  # the exported one may come back as the rewritten graph
        heads = shrunk.biases.shape[0]
        assert heads < 4 and shrunk.qkv.out_features == 3 * heads * 4  # whole heads went, table rows with them
        assert shrunk.biases.shape[1] == 11  # the gathered positions stay


class MaskedAttention(nn.Module):
    """Attention through scaled_dot_product_attention with a mask made in the forward: one per head at a fixed
    size (T5's cross-attention, ``torch.zeros((1, n_heads, l, s))``), or one broadcast over the heads."""

    def __init__(self, per_head: bool, dim=16, heads=4):
        super().__init__()
        self.heads, self.per_head = heads, per_head
        self.embed, self.q, self.k, self.v = nn.Linear(5, dim), nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj, self.head = nn.Linear(dim, dim), nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        B, N, C = x.shape
        q, k, v = (f(x).reshape(B, N, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        mask = torch.zeros((1, self.heads if self.per_head else 1, N, N), dtype=x.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.head(x + self.proj(out.transpose(1, 2).reshape(B, N, C)))


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("per_head", [True, False], ids=["per-head", "broadcast"])
def test_an_attention_mask_of_a_fixed_size_per_head_keeps_the_heads(capture, per_head):
    x = torch.randn(2, 6, 5)
    coupling = graphprune.couple(MaskedAttention(per_head), example_inputs=x, scope=graphprune.Scope(capture=capture))
    (heads,) = [g for g in coupling.groups if {"q", "q_bias"} & set(g.sources)]
    assert heads.pinned.all() == per_head and (per_head or not heads.pinned.any())
    if not per_head:
        shrinks_exactly(MaskedAttention(per_head), x, capture=capture)


class LinearAttention(nn.Module):
    """EfficientViT's LiteMLA: v padded with a column of ones, kᵀv summed over the tokens, the last column
    divides the rest."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(8, 3 * dim, 1)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.proj = nn.Conv2d(dim, 5, 1)

    def forward(self, x):
        qkv = self.qkv(torch.relu(self.stem(x)))
        B, _, H, W = qkv.shape
        qkv = qkv.reshape(B, self.heads, 3 * 4, H * W).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = torch.relu(q), torch.relu(k)
        v = F.pad(v, (0, 1), mode="constant", value=1.0)
        out = q @ (k.transpose(-1, -2) @ v)
        out = out[..., :-1] / (out[..., -1:] + 1e-6)
        return self.proj(out.transpose(-1, -2).reshape(B, -1, H, W))


@pytest.mark.parametrize("capture", CAPTURES)
def test_a_padded_head_dim_through_a_kv_contraction_loses_whole_heads(capture):
    x = torch.randn(2, 3, 4, 4)
    plan, shrunk = shrinks_exactly(LinearAttention(), x, capture=capture)
    if capture == "fx":
        assert shrunk.stem.out_channels == 4 and shrunk.qkv.out_channels % 12 == 0 and shrunk.qkv.out_channels < 48


class PositionTable(nn.Module):
    """A learned position table resampled to the input's grid (SAM2, Qwen3-ViT) or tiled over it (MaxViT)."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pos = nn.Parameter(torch.randn(1, 8, 2, 2))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        B, _, H, W = y.shape
        if self.how == "interpolate":
            pos = F.interpolate(self.pos, size=(H, W), mode="bicubic")
        elif self.how == "tile":
            pos = self.pos.tile((H // 2, W // 2))
        else:
            pos = self.pos.repeat(B, 1, H // 2, W // 2)
        return self.head(torch.relu(y + pos))


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("how", ["interpolate", "tile", "repeat"])
def test_a_position_table_resampled_or_tiled_keeps_its_channels_prunable(how, capture):
    x = torch.randn(2, 3, 6, 6)
    plan, shrunk = shrinks_exactly(PositionTable(how), x, capture=capture)
    assert shrunk.conv.out_channels == 4 and shrunk.pos.shape == (1, 4, 2, 2)


class UnevenChunks(nn.Module):
    """EdgeNeXt's Res2Net-style split: chunk(3) of 11 channels gives 4, 4 and 3."""

    def __init__(self, use_split=False):
        super().__init__()
        self.use_split = use_split
        self.conv = nn.Conv2d(3, 11, 3, padding=1)
        self.a, self.b, self.c = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(3, 3, 1)
        self.head = nn.Conv2d(11, 2, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        a, b, c = y.split(4, dim=1) if self.use_split else y.chunk(3, dim=1)
        return self.head(torch.cat([self.a(a), self.b(b), self.c(c)], 1))


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("use_split", [False, True], ids=["chunk", "split"])
def test_chunks_that_do_not_divide_evenly_stay_valid(use_split, capture):
    x = torch.randn(2, 3, 5, 5)
    plan, shrunk = shrinks_exactly(UnevenChunks(use_split), x, capture=capture)
    kept = shrunk.conv.weight.shape[0]  # the export of split(4) comes back as the graph: plain modules
    assert kept < 11
    sizes = [t.shape[1] for t in torch.ones(1, kept).chunk(3, 1)]
    assert sizes == [shrunk.a.weight.shape[1], shrunk.b.weight.shape[1], shrunk.c.weight.shape[1]]


class ChannelStatistics(nn.Module):
    """timm's simple_norm (a variance over channels) and VOLO's ``x.max(1)[0]``: both read every channel."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 6, 1)
        self.head = nn.Conv2d(6, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        if self.how == "var":
            y = y * torch.rsqrt(torch.var(y, dim=1, keepdim=True) + 1e-5)
        else:
            y = y + y.max(1, keepdim=True)[0]
        return self.head(torch.relu(self.mid(y)))


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("how", ["var", "max"])
def test_a_statistic_over_channels_keeps_them(how, capture):
    """A max over channels pins them; a variance over channels that are zero where removed is pruned by default
    and reported inexact, as a LayerNorm's are, and kept under ``exact_only``."""
    x = torch.randn(2, 3, 5, 5)
    coupling = graphprune.couple(ChannelStatistics(how), example_inputs=x, scope=graphprune.Scope(capture=capture))
    (group,) = [g for g in coupling.groups if {"conv", "conv_bias"} & set(g.sources)]
    if how == "max":
        assert group.pinned.all()
    else:
        assert not group.pinned.any() and "counts them" in group.inexact[0]
    plan, shrunk = shrinks_exactly(ChannelStatistics(how), x, graphprune.Budget(0.5, exact_only=True), capture=capture)
    assert shrunk.conv.out_channels == 8 and shrunk.mid.out_channels == 3


class StdConv(nn.Conv2d):
    """timm's StdConv2d: every filter standardised over its own inputs and kernel taps before the convolution."""

    def forward(self, x):
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                              training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)


class StdConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = StdConv(3, 8, 3, padding=1), StdConv(8, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.parametrize("capture", CAPTURES)
def test_weight_standardisation_prunes_filters_and_reports_its_inputs(capture):
    """A filter standardised on its own goes with its parameter's rows; removing a filter's inputs changes its
    statistics, which the plan reports as inexact, and ``exact_only`` keeps those."""
    x = torch.randn(2, 3, 6, 6)
    model = StdConvNet().eval()
    with pytest.warns(graphprune.InexactWarning, match="batch statistics"):
        plan = graphprune.plan(model, 0.5, example_inputs=x, scope=graphprune.Scope(capture=capture))
    shrunk = graphprune.apply(model, plan)
    assert shrunk(x).shape == (2, 2, 6, 6) and plan.inexact
    plan, shrunk = shrinks_exactly(model, x, graphprune.Budget(ratio=0.5, exact_only=True), capture=capture)
    assert shrunk.b.weight.shape == (3, 8, 3, 3) and shrunk.a.weight.shape == (8, 3, 3, 3)


class CachedBias(nn.Module):
    """efficientvit_m0 caches its gathered attention biases in a dict on the first eval forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.cache = {}

    def forward(self, x):
        if x.shape[-1] > 2:  # a shape branch: symbolic tracing refuses it, the export takes it
            if "s" not in self.cache:
                self.cache["s"] = self.scale * 2
            x = self.conv(x) * self.cache["s"]
        return self.head(x)


def test_a_cache_the_forward_fills_while_exported_is_given_back_empty():
    model, x = CachedBias(), torch.randn(1, 3, 5, 5)
    before = fingerprint(model)
    shrunk = graphprune.shrink(model, 0.5, example_inputs=x)
    assert model.cache == {} and fingerprint(model) == before
    assert shrunk(x).shape == (1, 2, 5, 5)


class Float32Region(nn.Module):
    """EfficientViT runs its attention under ``torch.autocast(..., enabled=False)``: an export keeps the region
    as a nested graph, which the capture puts back inline."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        with torch.autocast(device_type="cpu", enabled=False):
            y = torch.relu(y.float()) * 2
        return self.head(y)


def test_a_region_with_autocast_switched_off_is_inlined():
    x = torch.randn(1, 3, 5, 5)
    plan, shrunk = shrinks_exactly(Float32Region(), x, capture="export")
    gm = graphprune.couple(Float32Region(), example_inputs=x, scope=graphprune.Scope(capture="export")).gm
    assert not [n for n in gm.graph.nodes if "autocast" in str(n.target)]


class ViewAsInput(nn.Module):
    """LeViT's ``bn(x.flatten(0, 1)).reshape_as(x)``: a norm over tokens flattened into the batch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = self.fc(x)
        return self.head(torch.relu(self.bn(y.flatten(0, 1)).reshape_as(y)))


@pytest.mark.parametrize("capture", CAPTURES)
def test_reshape_as_follows_the_other_tensors_channels(capture):
    plan, shrunk = shrinks_exactly(ViewAsInput(), torch.randn(2, 4, 5), capture=capture)
    assert shrunk.fc.out_features == 4 and shrunk.bn.num_features == 4


class Windows(nn.Module):
    """Halo attention cuts space into overlapping windows with ``Tensor.unfold``."""

    def __init__(self, along_channels=False):
        super().__init__()
        self.along_channels = along_channels
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8 * 2 if not along_channels else 4 * 3 * 2, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if self.along_channels:
            w = y.unfold(1, 2, 2).mean((2, 3))  # B, 4, 2 windows of channel pairs
        else:
            w = y.unfold(2, 2, 2).mean((2, 3))  # B, 8, 2 windows of rows
        return self.head(w.flatten(1) if not self.along_channels else w.repeat(1, 3, 1).flatten(1))


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("along_channels", [False, True], ids=["space", "channels"])
def test_unfold_windows(along_channels, capture):
    x = torch.randn(2, 3, 4, 4)
    if along_channels:  # windows over the channels keep them all: nothing left to prune but the model still runs
        model = Windows(True).eval()
        plan = graphprune.plan(model, 0.5, example_inputs=x, scope=graphprune.Scope(capture=capture))
        shrunk = graphprune.apply(model, plan)
        assert shrunk.conv.out_channels == 8 and graphprune.verify(model, plan, shrunk, x) <= 1e-5
    else:
        plan, shrunk = shrinks_exactly(Windows(), x, capture=capture)
        assert shrunk.conv.out_channels == 4 and shrunk.head.in_features == 8
