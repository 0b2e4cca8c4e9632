"""Sensitivity sweeps and pictures."""

import pytest
import torch
from torch import nn

import graphprune
from graphprune import InputError
from graphprune.report.plots import layer_widths

from ..helpers import fingerprint


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.flatten(self.pool(x), 1))


def _net():
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # four dead channels in conv1: removing them changes nothing
        net.conv1.weight[4:] = 0
        net.conv1.bias[4:] = 0
    return net


def test_sensitivity_rows_match_real_single_group_shrinks(tmp_path):
    net, x = _net(), torch.randn(4, 3, 8, 8)
    dense = net(x).detach()
    before = fingerprint(net)

    def deviation(m):
        with torch.no_grad():
            return float((m(x) - dense).abs().max())

    report = graphprune.sensitivity(net, deviation, ratios=(0.25, 0.5, 0.75), example_inputs=x, plot=tmp_path / "s.png")
    assert fingerprint(net) == before
    assert report.baseline == 0
    assert [(r.layers, r.ratio, r.kept) for r in report.rows] == [
        ("conv1", 0.25, 6), ("conv1", 0.5, 4), ("conv1", 0.75, 2),
        ("conv2", 0.25, 6), ("conv2", 0.5, 4), ("conv2", 0.75, 2),
    ]
    metric = {(r.layers, r.ratio): r.metric for r in report.rows}
    assert metric[("conv1", 0.25)] == 0 and metric[("conv1", 0.5)] == 0  # only dead channels went
    assert metric[("conv1", 0.75)] > 0 and metric[("conv2", 0.75)] > 0
    # A trial's metric is the metric of the really shrunk model with that group alone pruned.
    shrunk = graphprune.shrink(net, graphprune.Budget(0.0, overrides={"conv2": 0.75}), example_inputs=x)
    assert deviation(shrunk) == pytest.approx(metric[("conv2", 0.75)], abs=1e-5)
    md = report.to_markdown().splitlines()
    assert len(md) == 2 + len(report.rows) and "| conv2 | 8 | 0.75 | 2 |" in md[-1]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_sensitivity_refuses_bad_ratios():
    with pytest.raises(InputError, match="ratios"):
        graphprune.sensitivity(_net(), lambda m: 0.0, ratios=(0.5, 1.0), example_inputs=torch.randn(1, 3, 8, 8))


def test_plot_widths_before_after(tmp_path):
    net, x = _net(), torch.randn(1, 3, 8, 8)
    shrunk = graphprune.shrink(net, 0.5, example_inputs=x)
    assert layer_widths(net, shrunk) == [("conv1", 8, 4), ("conv2", 8, 4), ("head", 3, 3)]
    path = graphprune.plot_widths(net, shrunk, tmp_path / "w.png")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
