"""graphprune.bench: the timing grid, the shared-dense bookkeeping, the table and the plot."""

import pytest
import torch
from torch import nn

import graphprune
from graphprune.bench import Config, default_configs, plot, run_benchmark, to_markdown


def _net(width):
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 4, 1)).eval()


def test_rows_share_the_dense_timing_and_report_macs(tmp_path):
    dense = _net(32)
    pairs = {"half": (dense, _net(16)), "quarter": (dense, _net(8))}
    configs = [Config("cpu", 2, "float32", False, "eager"), Config("cpu", 1, "bfloat16", True, "eager")]
    rows = run_benchmark(pairs, (3, 12, 12), configs, min_run_time=0.01, repeats=2, progress=False)
    assert [(r.model, r.config) for r in rows] == [(n, c) for c in configs for n in pairs]
    for first, second in (rows[:2], rows[2:]):
        assert first.dense_ms == second.dense_ms > 0  # one dense timing per configuration
    x = torch.randn(1, 3, 12, 12)
    assert rows[0].macs_dense == graphprune.count_macs(dense, x)
    assert rows[1].macs_reduction == pytest.approx(graphprune.count_macs(dense, x) / graphprune.count_macs(_net(8), x))
    assert rows[0].throughput("shrunk") == pytest.approx(2 / (rows[0].shrunk_ms / 1e3))
    table = to_markdown(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert "| quarter | cpu | 1 | bfloat16 | channels_last | eager |" in table[-1]
    plot(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_grid_and_refusals():
    configs = default_configs(["cpu"], modes=("eager", "cudagraphs"))
    assert {c.mode for c in configs} == {"eager"}  # CUDA graphs only on CUDA
    assert {(c.batch, c.dtype) for c in configs} == {(1, "float32"), (1, "bfloat16"), (16, "float32"), (16, "bfloat16")}
    pair = {"m": (_net(8), _net(4))}
    with pytest.raises(graphprune.InputError, match="CUDA graphs need"):
        run_benchmark(pair, (3, 8, 8), [Config("cpu", 1, "float32", False, "cudagraphs")])
    with pytest.raises(graphprune.InputError, match="unknown runtime"):
        run_benchmark(pair, (3, 8, 8), [Config("cpu", 1, "float32", False, "fast")])
    with pytest.raises(graphprune.InputError, match="unknown dtype"):
        run_benchmark(pair, (3, 8, 8), [Config("cpu", 1, "float42", False, "eager")])


@pytest.mark.slow  # inductor compiles C++ kernels: about a minute on one core
def test_compile_mode_times_compiled_models():
    rows = run_benchmark({"m": (_net(16), _net(8))}, (3, 8, 8), [Config("cpu", 1, "float32", False, "compile")],
                         min_run_time=0.01, progress=False)
    assert rows[0].dense_ms > 0 and rows[0].shrunk_ms > 0 and rows[0].macs_reduction == pytest.approx(2, rel=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replays_read_live_weights():
    import gc

    from graphprune.bench import _hardware

    x = torch.randn(2, 3, 12, 12)
    model = _net(16)
    replay = _hardware(Config("cuda", 2, "float32", False, "cudagraphs")).runner(model, (x,))
    gc.collect()
    # Churn the allocator: memory freed by a dropped copy would be handed out here, and replay would read it.
    churn = [torch.full((1 << 20,), float("nan"), device="cuda") for _ in range(8)]
    replay()
    torch.cuda.synchronize()
    kept = [k for k in replay.__defaults__ if isinstance(k, tuple)][0]
    assert any(isinstance(k, nn.Module) and next(k.parameters()).is_cuda for k in kept)
    del churn
