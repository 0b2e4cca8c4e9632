"""graphprune.measure.bench: the timing grid, the shared-dense bookkeeping, the table and the plot."""

import pytest
import torch
from torch import nn

import graphprune
from graphprune import Hardware
from graphprune.measure.bench import REALIZED, default_configs, plot, run_benchmark, to_markdown


def _net(width):
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 4, 1)).eval()


def test_rows_share_the_dense_timing_and_report_macs(tmp_path):
    dense = _net(32)
    pairs = {"half": (dense, _net(16)), "quarter": (dense, _net(8))}
    configs = [Hardware("cpu", "float32", batch_size=2, channels_last=False, runtime="eager", model_min_run_time=0.01),
               Hardware("cpu", "bfloat16", batch_size=1, channels_last=True, runtime="eager", model_min_run_time=0.01)]
    rows = run_benchmark(pairs, (3, 12, 12), configs, repeats=2, progress=False)
    assert [(r.model, r.config) for r in rows] == [(n, c) for c in configs for n in pairs]
    for first, second in (rows[:2], rows[2:]):
        assert first.dense_ms == second.dense_ms > 0  # one dense timing per configuration
    x = torch.randn(1, 3, 12, 12)
    assert rows[0].macs_dense == graphprune.count_macs(dense, x)
    assert rows[1].macs_reduction == pytest.approx(graphprune.count_macs(dense, x) / graphprune.count_macs(_net(8), x))
    assert rows[0].throughput("shrunk") == pytest.approx(2 / (rows[0].shrunk_ms / 1e3))
    table = to_markdown(rows).splitlines()
    # A header, its rule, one line per row, then a blank line and what "realized" means.
    assert len(table) == 2 + len(rows) + 2
    assert "| threads |" in table[0] and "| runtime |" in table[0]
    assert "| quarter | cpu | 1 | bfloat16 | channels_last | eager | 1 |" in table[1 + len(rows)]
    assert table[-2] == "" and table[-1].lower().startswith(REALIZED.split(":")[0])
    plot(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_a_configuration_without_a_batch_size_is_timed_at_batch_one():
    rows = run_benchmark({"m": (_net(8), _net(4))}, (3, 8, 8), [Hardware(model_min_run_time=0.01)], progress=False)
    assert rows[0].config.batch_size == 1 and rows[0].throughput("dense") == pytest.approx(1 / (rows[0].dense_ms / 1e3))


def test_grid_and_refusals():
    configs = default_configs(["cpu"], modes=("eager", "cudagraphs"))
    assert {c.runtime for c in configs} == {"eager"}  # CUDA graphs only on CUDA
    assert {(c.batch_size, c.dtype) for c in configs} == {(1, "float32"), (1, "bfloat16"), (16, "float32"), (16, "bfloat16")}
    assert all(isinstance(c, Hardware) for c in configs) and {c.channels_last for c in configs} == {False, True}
    assert {c.num_threads for c in default_configs(["cpu"], num_threads=2)} == {2}
    assert {c.model_min_run_time for c in default_configs(["cpu"], min_run_time=0.2)} == {0.2}
    pair = {"m": (_net(8), _net(4))}
    with pytest.raises(graphprune.InputError, match="CUDA graphs need"):
        run_benchmark(pair, (3, 8, 8), [Hardware("cpu", "float32", batch_size=1, channels_last=False, runtime="cudagraphs")])
    with pytest.raises(graphprune.InputError, match="unknown runtime"):
        run_benchmark(pair, (3, 8, 8), [Hardware("cpu", "float32", batch_size=1, channels_last=False, runtime="fast")])
    with pytest.raises(graphprune.InputError, match="dtype must be one of"):
        run_benchmark(pair, (3, 8, 8), [Hardware("cpu", "float42", batch_size=1, channels_last=False, runtime="eager")])
    with pytest.raises(graphprune.InputError, match="repeats must be a positive integer"):
        run_benchmark(pair, (3, 8, 8), [Hardware(batch_size=1)], repeats=0)


def test_configurations_must_be_hardware_records():
    pair = {"m": (_net(8), _net(4))}
    # bench.Config is gone: a configuration is a Hardware record, and anything else is refused by name.
    with pytest.raises(graphprune.InputError, match="configs must be graphprune.Hardware records, not tuple"):
        run_benchmark(pair, (3, 8, 8), [("cpu", 1, "float32", False, "eager")])


@pytest.mark.slow  # inductor compiles C++ kernels: about a minute on one core
def test_compile_mode_times_compiled_models():
    config = Hardware("cpu", "float32", batch_size=1, channels_last=False, runtime="compile", model_min_run_time=0.01)
    rows = run_benchmark({"m": (_net(16), _net(8))}, (3, 8, 8), [config], progress=False)
    assert rows[0].dense_ms > 0 and rows[0].shrunk_ms > 0 and rows[0].macs_reduction == pytest.approx(2, rel=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replays_read_live_weights():
    import gc

    x = torch.randn(2, 3, 12, 12)
    model = _net(16)
    replay = Hardware("cuda", "float32", batch_size=2, channels_last=False, runtime="cudagraphs").runner(model, (x,))
    gc.collect()
    # Churn the allocator: memory freed by a dropped copy would be handed out here, and replay would read it.
    churn = [torch.full((1 << 20,), float("nan"), device="cuda") for _ in range(8)]
    replay()
    torch.cuda.synchronize()
    kept = [k for k in replay.__defaults__ if isinstance(k, tuple)][0]
    assert any(isinstance(k, nn.Module) and next(k.parameters()).is_cuda for k in kept)
    del churn
