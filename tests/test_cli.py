"""The graphprune command, run as a user would: a subprocess, its output, its exit status."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import graphprune
from graphprune.cli import main

from .helpers import time_models_by
from .models import OldVGG

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "graphprune", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=300)


def test_shrink_saves_a_loadable_smaller_model(tmp_path):
    out = tmp_path / "r18"
    result = run("shrink", "torchvision:resnet18", "--ratio", "0.5", "--input-shape", "1,3,32,32", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "masked-vs-shrunk max relative difference" in result.stdout
    error = float(result.stdout.split("relative difference: ")[1].split()[0])
    assert error <= 1e-4
    small = graphprune.load(out)
    assert small.layer1[0].conv1.out_channels == 32
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base"] == "torchvision:resnet18" and manifest["inputs"][0]["shape"] == [1, 3, 32, 32]


def test_inspect_prints_groups_and_writes_dot_and_png(tmp_path):
    dot, png = tmp_path / "g.dot", tmp_path / "g.png"
    result = run("inspect", "tests.models:OldVGG", "--input-shape", "1,3,16,16", "--dot", dot, "--png", png)
    assert result.returncode == 0, result.stderr
    expected = graphprune.analyze(OldVGG(), example_inputs=torch.randn(1, 3, 16, 16))
    assert f"{len(expected.groups)} groups" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(g.id, g.size) for g in expected.groups]
    text = dot.read_text()
    assert text.startswith("digraph graphprune {") and text.count("subgraph cluster_") == len(expected.groups)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shrink_again_then_bench_a_saved_model(tmp_path):
    once, twice, table = tmp_path / "once", tmp_path / "twice", tmp_path / "t.md"
    assert run("shrink", "tests.models:OldVGG", "--ratio", "0.5", "--input-shape", "2,3,16,16", "-o", once).returncode == 0
    result = run("shrink", once, "--ratio", "0.5", "-o", twice)  # input shape from the manifest
    assert result.returncode == 0, result.stderr
    assert graphprune.load(twice).get_submodule("features.0").out_channels == 4
    result = run("bench", "tests.models:OldVGG", twice, "--batch", "2", "--min-run-time", "0.05",
                 "--input-shape", "1,3,16,16", "--markdown", table)
    assert result.returncode == 0, result.stderr
    row = [line for line in table.read_text().splitlines() if line.startswith("| twice ")]
    assert len(row) == 1 and "| cpu | 2 | float32 |" in row[0]
    macs_reduction = float(row[0].split("|")[12].strip().rstrip("x"))
    assert macs_reduction > 8  # two halvings of every conv: about 16x fewer MACs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["shrink", "torchvision:no_such_net", "--ratio", "0.5", "-o", "out"], "torchvision has no model 'no_such_net'"),
        (["shrink", "torchvision:resnet18", "--ratio", "1.5", "--input-shape", "1,3,32,32", "-o", "out"],
         "ratio must be a number in [0, 1)"),
        (["inspect", "missing_dir/"], "'missing_dir/' is neither a model spec nor a saved model directory"),
    ],
    ids=["unknown-model", "bad-ratio", "missing-file"],
)
def test_errors_exit_2_without_traceback(tmp_path, args, message):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_macs_budget(tmp_path):
    status = main(["shrink", "tests.models:OldVGG", "--macs", "0.5", "--input-shape", "1,3,16,16", "-o", str(tmp_path / "m")])
    assert status == 0
    x = torch.randn(1, 3, 16, 16)
    fraction = graphprune.count_macs(graphprune.load(tmp_path / "m"), x) / graphprune.count_macs(OldVGG(), x)
    assert abs(fraction - 0.5) <= 0.02  # the planner's contract: within 2% of the target


def test_params_and_latency_budgets(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))
    x = torch.randn(1, 3, 16, 16)
    assert main(["shrink", "tests.models:OldVGG", "--params", "0.4", "--input-shape", "1,3,16,16",
                 "-o", str(tmp_path / "p")]) == 0
    small = graphprune.load(tmp_path / "p")
    assert abs(graphprune.count_params(small) / graphprune.count_params(OldVGG()) - 0.4) <= 0.02
    assert main(["shrink", "tests.models:OldVGG", "--ratio", "0.3", "--round-to", "8", "--input-shape", "1,3,16,16",
                 "-o", str(tmp_path / "r")]) == 0
    widths = [m.out_channels for m in graphprune.load(tmp_path / "r").modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [8, 24]  # 16 and 32 less 30%, rounded to multiples of 8
    # Whole-model timings come from a deterministic stand-in (latency in proportion to MACs), so the test does
    # not depend on the machine's load; the per-layer table is still measured, at the batch asked for.
    dense_macs = graphprune.count_macs(OldVGG(), x)
    time_models_by(monkeypatch, lambda hw, m, args: graphprune.count_macs(m, x) / dense_macs)
    assert main(["shrink", "tests.models:OldVGG", "--latency", "0.6", "--batch-size", "4", "--threads", "2",
                 "--input-shape", "1,3,16,16", "-o", str(tmp_path / "l")]) == 0
    record = graphprune.plans_of(graphprune.load(tmp_path / "l"))[-1].budget
    assert record["kind"] == "latency" and record["latency"] == 0.6 and record["actual"] <= record["dense"]
    keys = json.loads((tmp_path / "cache" / "latency.json").read_text())
    assert keys and all("|threads=2|batch=4" in k for k in keys)  # at the threads and batch asked for
    assert record["hardware"].startswith("cpu|float32|threads=2|batch=4")
    assert record["runtime"] == "eager"
    assert main(["shrink", "tests.models:OldVGG", "--latency", "0.6", "--runtime", "cudagraphs", "--input-shape",
                 "1,3,16,16", "-o", str(tmp_path / "g")]) == 2  # CUDA graphs on the CPU: refused before any timing
    with pytest.raises(SystemExit) as info:
        main(["shrink", "tests.models:OldVGG", "--ratio", "0.5", "--round-to", "0", "-o", str(tmp_path / "x")])
    assert info.value.code == 2


def test_usage_errors_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["shrink", "torchvision:resnet18", "--ratio", "0.5", "--input-shape", "1,3,a", "-o", "x"])
    assert info.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["shrink", "torchvision:resnet18", "-o", "x"])  # no budget
    assert info.value.code == 2 and "one of the arguments --ratio --macs --params --latency is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["shrink", "--help"])
    assert info.value.code == 0 and "graphprune shrink torchvision:resnet50 --ratio 0.5" in capsys.readouterr().out
