"""Rule unit tests on tiny hand-built graphs: the exact groups each coupling produces."""

import numpy as np
import pytest
import torch
from torch import nn

import graphprune
from graphprune.coupling import ChannelMap, Role
from graphprune.coupling.channels import reshape_channels


def _groups(model, x, scope=None):
    coupling = graphprune.couple(model, example_inputs=x, scope=scope)
    return {tuple(g.sources): g for g in coupling.groups}, coupling


class ResidualBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return self.head(x + y)


def test_residual_add_joins_both_branches():
    groups, _ = _groups(ResidualBlock(), torch.randn(1, 3, 8, 8))
    assert set(groups) == {("stem", "conv2"), ("conv1",), ("head",)}
    residual = groups[("stem", "conv2")]
    assert residual.size == 8 and residual.prunable and not residual.pinned.any()
    members = {(m.use.tensor, m.use.dim, m.use.role) for m in residual.members}
    assert members == {
        ("stem.weight", 0, Role.PRODUCER), ("stem.bias", 0, Role.BIAS),
        ("conv1.weight", 1, Role.CONSUMER),
        ("conv2.weight", 0, Role.PRODUCER), ("conv2.bias", 0, Role.BIAS),
        ("head.weight", 1, Role.CONSUMER),
    }
    inner = groups[("conv1",)]
    assert {(m.use.tensor, m.use.dim) for m in inner.members} == {
        ("conv1.weight", 0), ("conv1.bias", 0), ("bn1.weight", 0), ("bn1.bias", 0),
        ("bn1.running_mean", 0), ("bn1.running_var", 0), ("conv2.weight", 1),
    }
    # The model output is never pruned.
    assert groups[("head",)].pinned.all() and not groups[("head",)].prunable


class FlattenHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2, 6)

    def forward(self, x):
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 2), 1)
        return self.fc(x)


def test_flatten_into_linear_maps_each_channel_to_consecutive_features():
    groups, _ = _groups(FlattenHead(), torch.randn(1, 3, 8, 8))
    assert set(groups) == {("conv",), ("fc",)}
    conv = groups[("conv",)]
    fc_in = next(m for m in conv.members if m.use.tensor == "fc.weight")
    assert fc_in.use.dim == 1
    assert fc_in.channels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]


def test_flatten_plan_slices_linear_features_and_is_exact():
    torch.manual_seed(0)
    model = FlattenHead()
    x = torch.randn(2, 3, 8, 8)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    kept = plan.groups[0].kept
    assert shrunk.fc.in_features == 8
    assert plan.tensors["fc.weight"].keep[1] == [4 * c + s for c in kept for s in range(4)]
    assert graphprune.verify(model, plan, shrunk, x) < 1e-6


class ViewHead(nn.Module):
    """The old VGG style: a literal size in a view, which must be rewritten."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.conv(x), 2)
        return self.fc(x.view(x.size(0), 8 * 4 * 4))


def test_view_constant_is_rewritten():
    torch.manual_seed(0)
    model, x = ViewHead(), torch.randn(2, 3, 8, 8)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert [(e.old, e.new) for e in plan.graph_edits] == [(128, 64)]
    shrunk = graphprune.apply(model, plan)
    assert isinstance(shrunk, torch.fx.GraphModule)
    assert shrunk.fc.in_features == 64
    assert graphprune.verify(model, plan, shrunk, x) < 1e-6


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.conv(x)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 1)))))
        return self.head(x * s)


def test_broadcast_multiply_couples_scale_and_features_and_hidden_width_is_its_own_group():
    groups, _ = _groups(SqueezeExcite(), torch.randn(1, 3, 8, 8))
    assert set(groups) == {("conv", "fc2"), ("fc1",), ("head",)}
    torch.manual_seed(0)
    model, x = SqueezeExcite(), torch.randn(2, 3, 8, 8)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert graphprune.verify(model, plan, graphprune.apply(model, plan), x) < 1e-6


def test_depthwise_conv_passes_channels_and_concat_offsets():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 6, 1)
            self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
            self.head = nn.Conv2d(10, 2, 1)

        def forward(self, x):
            return self.head(self.dw(torch.cat([self.a(x), self.b(x)], 1)))

    groups, _ = _groups(Net(), torch.randn(1, 3, 8, 8))
    assert set(groups) == {("a",), ("b",), ("head",)}
    dw_in_b = next(m for m in groups[("b",)].members if m.use.tensor == "dw.weight")
    assert dw_in_b.positions.tolist() == list(range(4, 10))
    torch.manual_seed(0)
    model, x = Net(), torch.randn(2, 3, 8, 8)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert shrunk.dw.groups == shrunk.dw.in_channels == 5
    assert graphprune.verify(model, plan, shrunk, x) < 1e-6


def test_shared_module_called_twice_is_one_group():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 6, 1)
            self.shared = nn.Conv2d(6, 6, 3, padding=1)
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            return self.head(self.shared(torch.relu(self.shared(x))))

    groups, _ = _groups(Net(), torch.randn(1, 3, 8, 8))
    # The second call's input is the first call's output: stem, and both outputs of shared, are tied.
    assert set(groups) == {("stem", "shared", "shared_1"), ("head",)}
    torch.manual_seed(0)
    model, x = Net(), torch.randn(2, 3, 8, 8)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert graphprune.verify(model, plan, graphprune.apply(model, plan), x) < 1e-6


def test_ignore_keeps_module_shapes():
    model, x = ResidualBlock(), torch.randn(1, 3, 8, 8)
    shrunk = graphprune.shrink(model, 0.5, example_inputs=x, scope=graphprune.Scope(ignore=["conv1"]))
    assert shrunk.conv1.out_channels == 4 and shrunk.conv1.in_channels == 8
    assert shrunk.stem.out_channels == 8  # tied to conv1's input


def test_reshape_channels_channel_shuffle_is_a_permutation():
    cmap = ChannelMap.single(1, np.arange(6))
    split, changed, _ = reshape_channels(cmap, (1, 6, 4, 4), (1, 2, 3, 4, 4))
    assert split.blocks[0].dims == (1, 2) and changed == [1, 2]
    swapped = split.remap([0, 2, 1, 3, 4])
    merged, _, _ = reshape_channels(swapped, (1, 3, 2, 4, 4), (1, 6, 4, 4))
    assert merged.at(1).tolist() == [0, 3, 1, 4, 2, 5]


def test_custom_rule_extends_a_registry_without_touching_the_default():
    class Scale(nn.Module):
        def forward(self, x):
            return x * 2

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.scale, self.head = nn.Conv2d(3, 4, 1), Scale(), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(self.scale(self.conv(x)))

    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(graphprune.UnsupportedOpError, match="Scale"):
        graphprune.plan(Net(), 0.5, example_inputs=x, scope=graphprune.Scope(leaf_modules=["scale"]))
    registry = graphprune.default_registry()

    @registry.module(Scale)
    def scale_rule(ctx, node):
        return ctx.channels(node.args[0])

    scope = graphprune.Scope(leaf_modules=["scale"], rules=registry)
    plan = graphprune.plan(Net(), 0.5, example_inputs=x, scope=scope)
    assert plan.removed_channels == 2
    assert graphprune.default_registry().rule_for_module(Scale()) is None


class SizeTupleView(torch.nn.Module):
    """BERT's ``x.size()[:-1] + (heads, head_dim)``: the view's shape is one tuple built at run time."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x):
        y = self.qkv(x)
        y = y.view(y.size()[:-1] + (2, 4)).transpose(1, 2).transpose(1, 2)
        return self.out(y.reshape(x.shape[0], x.shape[1], 8))


def test_a_view_shaped_by_one_run_time_tuple_is_refused_by_name_not_crashed():
    with pytest.raises(graphprune.UnsupportedOpError, match="one value built at run time") as info:
        graphprune.shrink(SizeTupleView(), 0.5, example_inputs=torch.randn(2, 3, 8))
    assert "FX node" in str(info.value)


def test_unary_minus_passes_channels_through():
    """``-x`` (rotary embeddings' rotate_half writes ``torch.cat((-x2, x1), -1)``) is element-wise."""

    class Negated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.b(-self.a(x))

    model, x = Negated(), torch.randn(3, 4)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert shrunk.a.out_features == 4 and graphprune.verify(model, plan, shrunk, x) <= 1e-6


class SizeArithmetic(torch.nn.Module):
    """swinv2_cr's ``qkv.view(B, L, 3, heads, D // heads)``, D read from another tensor's channel dim: the
    arithmetic hides that count from the view, so those channels must not change."""

    def __init__(self):
        super().__init__()
        self.stem, self.mix, self.head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        y = self.stem(x)
        B, L, D = y.shape
        z = self.mix(torch.relu(y)).view(B, L, 2, D // 2)
        return self.head(torch.relu(z).flatten(2) + y)


def test_a_channel_count_used_in_size_arithmetic_is_kept():
    model, x = SizeArithmetic(), torch.randn(2, 3, 4)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    shrunk = graphprune.apply(model, plan)  # the postcondition ran the model's own forward at the new widths
    assert shrunk.stem.out_features == 8 and graphprune.verify(model, plan, shrunk, x) <= 1e-6
