"""The latency table's pieces without timing: hardware placement, width grids, the separable surface."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from graphprune.measure import Hardware, host_allocator
from graphprune.measure.latency_table import LayerLatency, LayerSpec, width_grid

from ..helpers import fingerprint


def test_hardware_repeats_the_batch_and_sets_layout_and_dtype():
    hw = Hardware(dtype="bfloat16", batch_size=5, channels_last=True)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    t = hw.tensor(x)
    assert t.shape == (5, 3, 4, 4) and t.dtype == torch.bfloat16
    assert t.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(t[2].float(), x[0]) and torch.equal(t[3].float(), x[1])  # whole copies of the example batch
    ids = hw.tensor(torch.tensor([[1, 2]]))
    assert ids.dtype == torch.int64 and ids.shape == (5, 2)  # integer inputs keep their dtype
    placed = hw.place(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train())
    assert not placed.training and placed[0].weight.dtype == torch.bfloat16
    assert placed[0].weight.is_contiguous(memory_format=torch.channels_last)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    before = fingerprint(model)
    assert Hardware(batch_size=3, min_run_time=0.001, model_min_run_time=0.001).model_seconds(model, (x,)) > 0
    assert model.training and fingerprint(model) == before  # timed on a placed copy
    assert hw.key_prefix() == "cpu|bfloat16|threads=1|batch=5|channels_last"
    assert Hardware().key_prefix() == "cpu|float32|threads=1"
    assert Hardware(device="cuda:0").points == 16 and Hardware().points == 6


def test_width_grid_is_aligned_and_ends_at_the_dense_width():
    assert width_grid(256, 8, 16)[-1] == 256 and all(w % 8 == 0 for w in width_grid(256, 8, 16))
    # 16 fractions of 136 rounded to multiples of 8: 72 is skipped (9/16 * 136 = 76.5 rounds to 80), 136 kept.
    assert width_grid(136, 8, 16) == [8, 16, 24, 32, 40, 48, 56, 64, 80, 88, 96, 104, 112, 120, 128, 136]
    assert width_grid(3, 8, 16) == [3]  # narrower than one multiple: only the dense width


class _FakeTable:
    """Seconds = cin * cout * 1e-6 plus a 1e-3 step past 64 output channels: a tile boundary."""

    def __init__(self):
        self.hardware = Hardware(grid_points=8)
        self.asked = []

    def lookup(self, spec, cin, cout):
        self.asked.append((cin, cout))
        return cin * cout * 1e-6 + (1e-3 if cout > 64 else 0.0)


def test_separable_surface_is_exact_on_measured_lines_and_sees_steps():
    spec = LayerSpec("conv", "conv.weight", "conv2d", 128, 128, (1, 128, 8, 8), (3, 3), (1, 1), (1, 1), (1, 1))
    table = _FakeTable()
    surface = LayerLatency.measure(spec, table, round_to=8)
    assert list(surface.couts) == list(surface.cins) == [16, 32, 48, 64, 80, 96, 112, 128]
    assert len(set(table.asked)) == 2 * 8 - 1  # two lines of 8 through the dense point, which they share
    for co in surface.couts:  # on the measured line through the dense input width: the measurement itself
        assert surface(128, co) == pytest.approx(128 * co * 1e-6 + (1e-3 if co > 64 else 0.0))
    assert surface(128, 80) - surface(128, 64) > 128 * 16e-6 + 0.9e-3  # the step at the boundary is seen
    # Off the lines, t(ci, co) ~ t(D, co) * t(ci, D) / t(D, D): for a product-shaped cost without the step, exact.
    assert surface(64, 48) == pytest.approx((128 * 48e-6) * (64 * 128e-6 + 1e-3) / (128 * 128e-6 + 1e-3))
    depthwise = LayerSpec("dw", "dw.weight", "conv2d", 64, 64, (1, 64, 8, 8), (3, 3), (1, 1), (1, 1), (1, 1), True)
    line = LayerLatency.measure(depthwise, _FakeTable(), round_to=8)
    assert line(0, 32) == pytest.approx(32 * 32e-6) and np.array_equal(line.by_cin, line.by_cout)


def test_the_host_allocator_is_named_with_its_tuning(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "4000000000")
    name = host_allocator()
    if Path("/proc/self/maps").exists():  # Linux
        assert name in ("jemalloc", "tcmalloc", "mimalloc") or name == "glibc (MALLOC_TRIM_THRESHOLD_=4000000000)"
    else:
        assert name == "unknown"
