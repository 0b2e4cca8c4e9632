"""A fast smoke run of the digits accuracy benchmark: tiny epochs, one model, a table and a plot come out."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def _benchmark():
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_pipeline_runs_and_writes_a_table_and_plot(tmp_path):
    bench = _benchmark()
    rows, missing = bench.run(["vgg8"], ["l2", "no_such_criterion"], epochs=2, finetune_epochs=1, macs=0.25,
                              iterative_steps=1, train_size=512, log=lambda s: None)
    assert missing == ["no_such_criterion"]
    assert [r.method for r in rows] == ["l2", "l2, iterative (1 step)"]
    for r in rows:
        assert r.macs <= 0.25 * r.dense_macs and r.macs > 0.15 * r.dense_macs
        assert 0.0 <= r.tuned_accuracy <= 1.0
    assert rows[0].dense_accuracy > 0.5  # two short epochs already learn the digits; a broken pipeline would not
    bench.write(rows, missing, tmp_path, "smoke", "1 epoch")
    text = (tmp_path / "accuracy.md").read_text()
    assert "| vgg8 | l2 |" in text and "no_such_criterion" in text
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
