"""torch.nn layers that carry channels, each on a small model: exact against the masked original, or refused
by name. Models that chain them the way real networks do (a U-Net, an LSTM classifier over conv features,
an ESPCN super-resolution net) shrink exactly too.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune

from ..helpers import fingerprint, spread_batchnorm


def _shrinks_exactly(model, x, ratio=0.5, capture="auto", tolerance=1e-5):
    """Shrink ``model`` at ``ratio``; check it lost parameters, matches the masked original and kept the original."""
    torch.manual_seed(0)
    model = spread_batchnorm(model).eval()
    before = fingerprint(model)
    plan = graphprune.plan(model, ratio, example_inputs=x, scope=graphprune.Scope(capture=capture))
    shrunk = graphprune.apply(model, plan)
    assert graphprune.count_params(shrunk) < graphprune.count_params(model)
    assert graphprune.verify(model, plan, shrunk, x) <= tolerance
    assert fingerprint(model) == before
    return plan, shrunk


# -- transposed convolutions ------------------------------------------------------------------------------

class Decoder(nn.Module):
    def __init__(self, dims=2, groups=1, output_padding=0, depthwise=False):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        up = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
        norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        self.enc = conv(3, 12, 3, padding=1)
        self.bn = norm(12)
        if depthwise:
            self.up = up(12, 24, 3, stride=2, padding=1, output_padding=output_padding, groups=12)
        else:
            self.up = up(12, 8, 3, stride=2, padding=1, output_padding=output_padding, groups=groups, dilation=1)
        self.head = conv(self.up.out_channels, 2, 1)

    def forward(self, x):
        return self.head(F.relu(self.up(F.relu(self.bn(self.enc(x))))))


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("capture", ["fx", "export"])
def test_conv_transpose_shrinks_exactly(dims, capture):
    x = torch.randn(2, 3, *[6] * dims)
    plan, shrunk = _shrinks_exactly(Decoder(dims, output_padding=1), x, capture=capture)
    up = shrunk.up
    assert (up.in_channels, up.out_channels) == (6, 4) and up.weight.shape[:2] == (6, 4)
    assert shrunk(x).shape == (2, 2, *[12] * dims)


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_grouped_conv_transpose_prunes_whole_positions_of_every_group(capture):
    x = torch.randn(2, 3, 6, 6)
    plan, shrunk = _shrinks_exactly(Decoder(groups=4), x, capture=capture)
    if capture == "fx":
        up = shrunk.up
        assert up.groups == 4 and up.in_channels % 4 == 0 and up.out_channels % 4 == 0
        assert up.in_channels < 12 and up.out_channels < 8


def test_depthwise_conv_transpose_passes_channels_through():
    x = torch.randn(2, 3, 6, 6)
    plan, shrunk = _shrinks_exactly(Decoder(depthwise=True), x)
    up = shrunk.up
    assert up.groups == up.in_channels == 6 and up.out_channels == 12


class FunctionalUp(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 10, 3, padding=1)
        self.w = nn.Parameter(torch.randn(10, 6, 2, 2) * 0.3)
        self.b = nn.Parameter(torch.randn(6) * 0.1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(F.relu(F.conv_transpose2d(F.relu(self.enc(x)), self.w, self.b, stride=2)))


def test_functional_conv_transpose_over_the_models_own_tensors():
    plan, shrunk = _shrinks_exactly(FunctionalUp(), torch.randn(2, 3, 5, 5))
    assert shrunk.w.shape == (5, 3, 2, 2) and shrunk.b.shape == (3,)


class UNet(nn.Module):
    """Two levels: conv blocks down, transposed convs up, skip concatenations."""

    def __init__(self, c=8):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.down1, self.down2, self.bottom = block(3, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.dec2 = block(4 * c, 2 * c)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec1 = block(2 * c, c)
        self.out = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        b = self.bottom(F.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.out(u1)


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_unet_with_transposed_conv_decoders_shrinks_exactly(capture):
    x = torch.randn(2, 3, 16, 16)
    plan, shrunk = _shrinks_exactly(UNet(), x, capture=capture)
    assert type(shrunk) is UNet
    assert shrunk.up2.out_channels == shrunk.down2[0].out_channels == 8
    assert shrunk.up2.in_channels == shrunk.bottom[3].out_channels == 16
    assert shrunk(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    assert graphprune.count_macs(shrunk, x) < 0.35 * graphprune.count_macs(UNet(), x)


class FunctionalGroupedUp(nn.Module):
    """F.conv_transpose2d with groups: grouped (4) and depthwise (groups == channels)."""

    def __init__(self, depthwise):
        super().__init__()
        self.depthwise = depthwise
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.w = nn.Parameter(torch.randn(8, 2, 2, 2) * 0.3)  # in x out/groups x k x k
        self.b = nn.Parameter(torch.randn(16 if depthwise else 8) * 0.1)
        self.head = nn.Conv2d(16 if depthwise else 8, 2, 1)

    def forward(self, x):
        groups = 8 if self.depthwise else 4
        return self.head(F.relu(F.conv_transpose2d(F.relu(self.enc(x)), self.w, self.b, stride=2, groups=groups)))


@pytest.mark.parametrize("depthwise", [False, True])
def test_functional_grouped_and_depthwise_conv_transpose(depthwise):
    plan, shrunk = _shrinks_exactly(FunctionalGroupedUp(depthwise), torch.randn(2, 3, 5, 5))
    assert shrunk.w.shape[0] == 4 and shrunk.w.shape[1] == 2 if depthwise else shrunk.w.shape[0] % 4 == 0

