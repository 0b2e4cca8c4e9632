"""CNN coverage: grouped convs, squeeze-and-excitation, concatenation, split/chunk/slices, channel shuffle,
reductions, Conv3d, segmentation heads; and one torchvision model of every CNN family, proven equivalent."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import graphprune
from graphprune.coupling import Role
from graphprune.planning import Plan

from ..helpers import fingerprint, spread_batchnorm

pytestmark = pytest.mark.usefixtures("seed")


def _spread_batchnorm(model):
    return spread_batchnorm(model, bias=0.2)

def _shrink_and_verify(model, x, ratio=0.5):
    """Plan, apply, and prove: output shapes kept, parameters fewer, masked-vs-shrunk at round-off."""
    model = _spread_batchnorm(model.eval())
    before = fingerprint(model)
    plan = graphprune.plan(model, ratio, example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    with torch.no_grad():
        reference, out = model(x), shrunk(x)
    flat_ref = [t for t in torch.utils._pytree.tree_leaves(reference) if isinstance(t, torch.Tensor)]
    flat_out = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    assert [t.shape for t in flat_out] == [t.shape for t in flat_ref]
    assert all(t.std() > 0 for t in flat_ref)  # a constant output would make the check below vacuous
    assert graphprune.count_params(shrunk) < 0.8 * graphprune.count_params(model)
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-4
    assert fingerprint(model) == before
    return plan, shrunk


def _group_with_sources(plan: Plan, *sources):
    return next(g for g in plan.groups if tuple(g.sources) == sources)


# -- rules on small modules ---------------------------------------------------------------------


class Grouped(nn.Module):
    def __init__(self, groups=4, width=3, out_width=2):
        super().__init__()
        self.stem = nn.Conv2d(3, groups * width, 1)
        self.grouped = nn.Conv2d(groups * width, groups * out_width, 3, padding=1, groups=groups)
        self.bn = nn.BatchNorm2d(groups * out_width)
        self.head = nn.Conv2d(groups * out_width, 5, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.grouped(torch.relu(self.stem(x))))))


def test_grouped_conv_prunes_the_same_positions_in_every_group():
    model = Grouped(groups=4, width=6, out_width=4)
    x = torch.randn(2, 3, 8, 8)
    coupling = graphprune.couple(model, example_inputs=x)
    groups = {tuple(g.sources): g for g in coupling.groups}
    # Position i of every group is one channel: 24 input channels are 6 prunable channels.
    assert groups[("stem",)].size == 6 and groups[("grouped",)].size == 4
    plan, shrunk = _shrink_and_verify(model, x)
    assert shrunk.grouped.groups == 4
    assert (shrunk.grouped.in_channels, shrunk.grouped.out_channels) == (12, 8)
    assert shrunk.grouped.weight.shape == (8, 3, 3, 3)
    kept = plan.tensors["stem.weight"].keep[0]
    per_group = [sorted(c % 6 for c in kept if c // 6 == g) for g in range(4)]
    assert all(p == per_group[0] for p in per_group)


@pytest.mark.parametrize("ratio", [0.3, 0.9])
def test_grouped_conv_at_other_ratios(ratio):
    _shrink_and_verify(Grouped(groups=2, width=8, out_width=8), torch.randn(1, 3, 6, 6), ratio)


class SplitSizes(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 1)
        self.a = nn.Conv2d(4, 5, 1)
        self.b = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        left, right = torch.split(self.stem(x), [4, 8], dim=1)
        return self.a(left) + self.b(right)


def test_split_sizes_are_rewritten_to_kept_counts():
    plan, shrunk = _shrink_and_verify(SplitSizes(), torch.randn(1, 3, 4, 4))
    kept = plan.tensors["stem.weight"].keep[0]
    counts = [sum(c < 4 for c in kept), sum(c >= 4 for c in kept)]
    assert sum(counts) == 6
    expected = {(k, old, new) for k, (old, new) in enumerate(zip([4, 8], counts)) if old != new}
    assert {(e.path[-1], e.old, e.new) for e in plan.graph_edits} == expected and expected
    assert (shrunk.a.in_channels, shrunk.b.in_channels) == tuple(counts)
    assert isinstance(shrunk, torch.fx.GraphModule)
    assert Plan.from_json(plan.to_json()).graph_edits == plan.graph_edits


class Chunked(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.a = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        left, right = self.stem(x).chunk(2, dim=1)
        return torch.cat([self.a(left), right], dim=1).sum(dim=(2, 3))


def test_chunk_keeps_equal_pieces():
    model = Chunked()
    coupling = graphprune.couple(model, example_inputs=torch.randn(1, 3, 4, 4))
    stem = next(g for g in coupling.groups if g.sources == ("stem",))
    assert stem.size == 4  # stem channel i and i + 4 are one channel
    # the output is a reduction over space: the channels reach the output and are pinned
    assert stem.pinned.all()


class ChunkThenConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.a = nn.Conv2d(4, 3, 1)
        self.b = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        left, right = self.stem(x).chunk(2, dim=1)
        return self.a(left) * self.b(right)


def test_chunk_rewrite_is_equivalent():
    plan, shrunk = _shrink_and_verify(ChunkThenConv(), torch.randn(1, 3, 4, 4))
    assert shrunk.a.in_channels == shrunk.b.in_channels == 2


class Sliced(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 10, 1)
        self.a = nn.Conv2d(6, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.a(y[:, :6]) + self.b(y[:, 6:])


def test_channel_slices_get_kept_bounds():
    plan, shrunk = _shrink_and_verify(Sliced(), torch.randn(1, 3, 4, 4))
    kept = plan.tensors["stem.weight"].keep[0]
    first = sum(c < 6 for c in kept)
    assert len(kept) == 5 and 0 < first < 5
    edits = {(e.path[-1], e.old): e.new for e in plan.graph_edits}
    assert edits == {k: v for k, v in {("stop", 6): first, ("start", 6): first}.items() if v != 6}
    assert (shrunk.a.in_channels, shrunk.b.in_channels) == (first, 5 - first)


class Shuffle(nn.Module):
    """ShuffleNetV2's unit: chunk, a branch, concatenation, view-transpose-view with run-time sizes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.branch = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        x1, x2 = self.stem(x).chunk(2, dim=1)
        y = torch.cat([x1, self.branch(x2)], dim=1)
        b, c, h, w = y.size()
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        return self.head(y)


def test_channel_shuffle_is_equivalent():
    plan, shrunk = _shrink_and_verify(Shuffle(), torch.randn(1, 3, 4, 4))
    assert shrunk.head.in_channels == 4


class Reduce(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.gate = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        y = self.gate(self.conv(x))
        return self.fc(y.mean([2, 3])) + y.mean(1).sum()


def test_reduction_over_space_passes_channels_and_a_mean_over_channels_is_inexact():
    model = Reduce()
    coupling = graphprune.couple(model, example_inputs=torch.randn(1, 3, 4, 4))
    groups = {tuple(g.sources): g for g in coupling.groups}
    # Averaged over channels that are zero where removed: pruning changes the mean only by its count.
    assert not groups[("gate",)].pinned.any() and "counts them" in groups[("gate",)].inexact[0]
    assert not groups[("conv",)].pinned.any()
    assert any(m.use.tensor == "fc.weight" and m.use.role == Role.CONSUMER for m in groups[("gate",)].members)


class Conv3dSubclass(nn.Conv3d):
    """torchvision's Conv3DSimple: a subclass that keeps nn.Conv3d's forward."""


def test_conv3d_subclass_stays_a_module_call():
    model = nn.Sequential(Conv3dSubclass(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.Conv3d(8, 4, 1))
    plan, shrunk = _shrink_and_verify(model, torch.randn(1, 3, 4, 6, 6))
    assert type(shrunk[0]) is Conv3dSubclass and shrunk[0].out_channels == 4


class Upsampled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = F.interpolate(self.conv(x), size=(8, 8), mode="bilinear", align_corners=False)
        return {"out": self.head(y)}


def test_interpolate_and_dict_outputs():
    plan, shrunk = _shrink_and_verify(Upsampled(), torch.randn(1, 3, 4, 4))
    assert shrunk.conv.out_channels == 4


def test_squeeze_excitation_hidden_width_is_its_own_group():
    se = torchvision.ops.SqueezeExcitation(16, 8)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), se, nn.Conv2d(16, 4, 1))
    plan, shrunk = _shrink_and_verify(model, torch.randn(1, 3, 6, 6))
    hidden = _group_with_sources(plan, "_2_fc1")
    assert hidden.channels == 8 and len(hidden.removed) == 4
    assert shrunk[2].fc1.out_channels == 4 == shrunk[2].fc2.in_channels
    # The SE scale multiplies the stem's channels, so the SE output joins the stem's group.
    assert _group_with_sources(plan, "_0", "_2_fc2").channels == 16
    assert shrunk[0].out_channels == shrunk[2].fc1.in_channels == shrunk[2].fc2.out_channels == 8


# -- one torchvision model of every CNN family ---------------------------------------------------

# ResNeXt and EfficientNet have tests of their own below.
CLASSIFIERS = {
    "alexnet": 64,
    "mobilenet_v2": 32,
    "mobilenet_v3_small": 32,
    "regnet_x_400mf": 32,
    "densenet121": 32,
    "googlenet": 32,
    "inception_v3": 75,
    "squeezenet1_0": 32,
    "shufflenet_v2_x0_5": 32,
    "mnasnet0_5": 32,
}


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifier_families(name):
    size = CLASSIFIERS[name]
    model = torchvision.models.get_model(name, weights=None)
    plan, shrunk = _shrink_and_verify(model, torch.randn(1, 3, size, size))
    for m in shrunk.modules():
        if isinstance(m, nn.Conv2d):
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
            assert m.weight.shape[:2] == (m.out_channels, m.in_channels // m.groups)


def test_resnext_groups_keep_their_count_and_lose_width():
    model = torchvision.models.resnext50_32x4d()
    plan, shrunk = _shrink_and_verify(model, torch.randn(1, 3, 32, 32))
    conv = shrunk.layer1[0].conv2
    assert conv.groups == 32 and conv.in_channels == conv.out_channels == 64  # 4 -> 2 channels per group


def test_efficientnet_se_hidden_widths_are_pruned():
    model = torchvision.models.efficientnet_b0()
    plan, shrunk = _shrink_and_verify(model, torch.randn(1, 3, 32, 32))
    se = shrunk.features[1][0].block[1]
    assert isinstance(se, torchvision.ops.SqueezeExcitation)
    assert se.fc1.out_channels == 4  # 8 -> 4, a group of its own
    assert _group_with_sources(plan, "features_1_0_block_1_fc1").removed


def test_video_r3d():
    model = torchvision.models.video.r3d_18()
    plan, shrunk = _shrink_and_verify(model, torch.randn(1, 3, 4, 32, 32))
    conv = shrunk.layer1[0].conv1[0]
    assert isinstance(conv, nn.Conv3d) and conv.out_channels == 32


def test_segmentation_with_auxiliary_head():
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True)
    x = torch.randn(1, 3, 32, 32)
    plan, shrunk = _shrink_and_verify(model, x)
    with torch.no_grad():
        out = shrunk(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (1, 21, 32, 32)
    assert shrunk.classifier[0].out_channels == 256 and shrunk.aux_classifier[0].out_channels == 128


SLOW_MODELS = [
    (name, "classification") for name in torchvision.models.list_models(module=torchvision.models)
    if not name.startswith(("vit_", "swin", "maxvit", "convnext"))
] + [(name, "segmentation") for name in torchvision.models.list_models(module=torchvision.models.segmentation)] + [
    (name, "video") for name in ("r3d_18", "mc3_18", "r2plus1d_18", "s3d")
]


@pytest.mark.slow
@pytest.mark.parametrize("name,family", SLOW_MODELS)
def test_every_cnn(name, family):
    from benchmarks.zoo import build, example_shape

    torch.manual_seed(0)
    _shrink_and_verify(build(name, family), torch.randn(example_shape(name, family)))


def test_supported_ops_table_is_up_to_date():
    from pathlib import Path

    from graphprune.report.ops_table import supported_ops_markdown

    checked_in = Path(__file__).resolve().parents[2] / "docs" / "supported_ops.md"
    assert checked_in.read_text() == supported_ops_markdown(), "run: python docs/gen_ops_table.py"
    for op in ("torch.split", "torch.chunk", "torch.nn.functional.interpolate", "torch.mean", "torch.nn.modules.conv.Conv3d"):
        assert f"`{op}`" in checked_in.read_text()


class Normalized(nn.Module):
    """SSD's L2Norm: F.normalize over channels, then a per-channel scale."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.scale = nn.Parameter(torch.rand(8))
        self.head = nn.Conv2d(8, 4, 1)
        self.other = nn.Conv2d(3, 6, 1)
        self.head2 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.scale.view(1, -1, 1, 1) * F.normalize(self.conv(x))
        return self.head(y).sum() + self.head2(F.normalize(self.other(x), dim=2)).sum()


def test_normalize_over_a_layers_channels_is_pruned_exactly():
    # The removed filters make zeros, which leave the norm over channels as it was.
    x = torch.randn(1, 3, 6, 6)
    coupling = graphprune.couple(Normalized(), example_inputs=x)
    groups = {g.sources[-1]: g for g in coupling.groups}
    assert not groups["conv"].pinned.any() and not groups["conv"].inexact
    assert not groups["other"].pinned.any()  # normalised over a spatial dim: channels pass through
    model = Normalized().eval()
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert shrunk.conv.out_channels == 4 and shrunk.scale.shape == (4,)
    assert graphprune.verify(model, plan, shrunk, torch.randn(2, 3, 6, 6)) <= 1e-5


# -- ops that timm's models use: padding, stacking, norms, addcmul, roll ----------------------------------------------


class Padded(nn.Module):
    """TF-style 'same' padding (F.pad with a value) and a padding module between convs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.pad = nn.ReflectionPad2d(1)
        self.mid = nn.Conv2d(8, 8, 3)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.pad(torch.relu(self.conv(x)), (1, 2, 0, 1), value=0.5)
        return self.head(torch.sigmoid(self.mid(self.pad(y))))


def test_padding_passes_channels_exactly():
    plan, shrunk = _shrink_and_verify(Padded(), torch.randn(2, 3, 9, 9))
    assert shrunk.conv.out_channels == 4 and shrunk.mid.out_channels == 4


@pytest.mark.parametrize("mode", ["constant", "replicate"])
def test_padding_a_channel_dim_adds_kept_channels(mode):
    """Padded channels are new, fixed ones; the padded tensor's own channels stay prunable when the padding is a
    constant, and are kept when it copies their neighbours."""
    class PadChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 8, 1)
            self.head = nn.Conv1d(10, 4, 1)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            if mode == "replicate":  # replicate pads the last dim only: the channels go last
                return self.head(F.pad(y.transpose(1, 2), (1, 1), mode="replicate").transpose(1, 2))
            return self.head(F.pad(y, (0, 0, 1, 1), value=0.5))

    x = torch.randn(2, 3, 5)
    if mode == "constant":
        plan, shrunk = _shrink_and_verify(PadChannels(), x)
        assert shrunk.conv.out_channels == 4 and shrunk.head.in_channels == 6
    else:
        model = PadChannels()
        plan = graphprune.plan(model, 0.5, example_inputs=x)
        shrunk = graphprune.apply(model, plan)
        assert not any(g.removed for g in plan.groups) and shrunk.conv.out_channels == 8
        assert graphprune.verify(model, plan, shrunk, x) == 0


class SelectiveKernel(nn.Module):
    """SKNet's fusion: branches stacked on a new dim, summed over it, and a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.a = nn.Conv2d(6, 8, 3, padding=1)
        self.b = nn.Conv2d(6, 8, 3, padding=2, dilation=2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        stacked = torch.stack([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)  # (N, 2, C, H, W)
        return self.head(stacked.sum(1)), torch.stack([x, x], dim=-1).mean(-1)


def test_stacked_branches_share_their_channels():
    plan, shrunk = _shrink_and_verify(SelectiveKernel(), torch.randn(2, 3, 6, 6))
    assert _group_with_sources(plan, "a", "b").removed  # stacked index by index: one group
    assert shrunk.a.out_channels == shrunk.b.out_channels == 4
    assert shrunk.stem.out_channels == 6  # a model output: its channels stay


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN (an L2 norm over space divided by its mean over channels, applied with addcmul),
    next to a plain spatial norm used as a gate."""

    def __init__(self):
        super().__init__()
        self.grn_conv = nn.Conv2d(3, 8, 1)
        self.gamma = nn.Parameter(torch.rand(1, 8, 1, 1))
        self.beta = nn.Parameter(torch.rand(1, 8, 1, 1))
        self.gate_conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        g = self.grn_conv(x)
        gx = g.norm(p=2, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        g = torch.addcmul(self.beta, self.gamma, g * nx) + g
        h = self.gate_conv(x)
        h = h * torch.linalg.vector_norm(h, dim=(2, 3), keepdim=True) / torch.norm(h, 2, (2, 3), True).clamp_min(1)
        return self.head(torch.cat([g, h], 1))


def test_norms_over_space_pass_channels_and_over_channels_pin_them():
    model = GlobalResponseNorm()
    coupling = graphprune.couple(model, example_inputs=torch.randn(1, 3, 5, 5))
    groups = {g.sources[0]: g for g in coupling.groups}
    assert groups["grn_conv"].pinned.all()  # GRN divides by a mean over channels
    assert not groups["gate_conv"].pinned.any()
    assert {"gamma", "beta"} <= {m.use.tensor for m in groups["grn_conv"].members}  # joined through addcmul
    plan, shrunk = _shrink_and_verify(model, torch.randn(2, 3, 5, 5))
    assert shrunk.gate_conv.out_channels == 4 and shrunk.grn_conv.out_channels == 8


class Rolled(nn.Module):
    """Swin's cyclic shift over the spatial dims of a channels-last tensor."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x):  # (N, H, W, C)
        return self.fc2(torch.roll(torch.relu(self.fc1(x)), shifts=(-1, 2), dims=(1, 2)).roll(1, 1))


def test_roll_over_space_passes_channels_and_along_channels_is_refused():
    plan, shrunk = _shrink_and_verify(Rolled(), torch.randn(2, 4, 4, 3))
    assert shrunk.fc1.out_features == 4

    class RollChannels(Rolled):
        def forward(self, x):
            return self.fc2(torch.roll(self.fc1(x), 1, -1))

    with pytest.raises(graphprune.UnsupportedOpError, match="FX node: %roll") as info:
        graphprune.plan(RollChannels(), 0.5, example_inputs=torch.randn(2, 4, 4, 3))
    assert "moves them to other indices" in str(info.value)


class GatedSplit(nn.Module):
    """MambaOut's gated CNN block: one projection split three ways, a depthwise conv on the last piece only."""

    def __init__(self, dim=4, hidden=6, conv=2):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.split = (hidden, hidden - conv, conv)
        self.conv = nn.Conv2d(conv, conv, 3, padding=1, groups=conv)
        self.fc2 = nn.Linear(hidden, dim)
        with torch.no_grad():  # the conv's channels are the least important of their group
            self.fc1.weight[-conv:].mul_(1e-3)
            self.fc1.weight[hidden - conv:hidden].mul_(1e-3)
            self.conv.weight.mul_(1e-3)

    def forward(self, x):  # (N, H, W, C)
        g, i, c = torch.split(self.fc1(x), self.split, dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(F.gelu(g) * torch.cat((i, c), dim=-1)) + x


@pytest.mark.parametrize("budget", [{"ratio": 0.5}, {"ratio": 0.5, "round_to": 1}, {"macs": 0.5}])
def test_a_tensor_that_indexes_part_of_a_group_keeps_a_channel(budget):
    model, x = GatedSplit().eval(), torch.randn(2, 5, 5, 4)
    plan = graphprune.plan(model, graphprune.Budget(**budget), example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-5
    assert shrunk.conv.out_channels == 1  # its most important channel stays, the other goes
    assert shrunk.fc2.in_features < 6


class SplitAttention(nn.Module):
    """SKNet / ResNeSt fusion: attention logits for radix x C, viewed as (N, radix, C, 1, 1), weight the stacked
    branches, which carry only C."""

    def __init__(self, width=8, radix=2, outer=False):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.branches = nn.ModuleList(nn.Conv2d(6, width, 3, padding=1 + i, dilation=1 + i) for i in range(radix))
        self.reduce = nn.Conv2d(width, 4, 1)
        self.attn = nn.Conv2d(4, radix * width, 1)
        self.outer = outer
        self.rows = nn.Conv2d(6, radix, 1)
        self.cols = nn.Conv2d(6, width, 1)
        self.head = nn.Conv2d(width, 5, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        stacked = torch.stack([torch.relu(b(x)) for b in self.branches], dim=1)
        n, r = stacked.shape[:2]
        logits = self.attn(torch.relu(self.reduce(stacked.sum(1).mean((2, 3), keepdim=True))))
        if self.outer:  # radix and C each carry channels of their own here: no one channel map fits both
            rows = self.rows(x).mean((2, 3)).view(n, -1, 1, 1, 1)
            cols = self.cols(x).mean((2, 3)).view(n, 1, -1, 1, 1)
            return logits.view(n, r, -1, 1, 1) * (rows * cols)
        weights = torch.softmax(logits.view(n, r, -1, 1, 1), dim=1)
        return self.head((stacked * weights).sum(1))


def test_split_attention_removes_each_channel_from_every_radix_row():
    plan, shrunk = _shrink_and_verify(SplitAttention(), torch.randn(2, 3, 6, 6))
    assert shrunk.branches[0].out_channels == shrunk.branches[1].out_channels == 4
    assert shrunk.attn.out_channels == 2 * 4  # the same channels gone from both radix rows
    group = _group_with_sources(plan, "branches_0", "branches_1", "attn")
    assert len(group.removed) == 4


def test_a_block_meeting_two_blocks_over_its_dims_is_refused():
    with pytest.raises(graphprune.UnsupportedOpError, match="differently shaped channel blocks"):
        graphprune.plan(SplitAttention(outer=True), 0.5, example_inputs=torch.randn(2, 3, 6, 6))


class RadixSum(nn.Module):
    """ResNeSt's split: one conv's radix x C outputs viewed as (N, radix, C, H, W) and summed over radix."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2 * 4, 3, padding=1)
        self.head = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        n, _, h, w = y.shape
        return self.head(y.view(n, 2, -1, h, w).sum(1))


def test_a_reduction_over_part_of_a_block_removes_whole_slices():
    plan, shrunk = _shrink_and_verify(RadixSum(), torch.randn(2, 3, 5, 5))
    assert shrunk.conv.out_channels == 4 and shrunk.head.in_channels == 2
    kept = plan.tensors["conv.weight"].keep[0]
    columns = {k % 4 for k in kept}  # channel c of the sum is conv outputs c and 4 + c
    assert len(columns) == 2 and kept == [k for k in range(8) if k % 4 in columns]
