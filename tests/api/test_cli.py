"""The graphprune command, run as a user would: a subprocess, its output, its exit status."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import graphprune
from graphprune.cli import main

from ..helpers import time_models_by
from ..models import OldVGG

ROOT = Path(__file__).resolve().parents[2]


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
    expected = graphprune.couple(OldVGG(), example_inputs=torch.randn(1, 3, 16, 16))
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
    lines = table.read_text().splitlines()
    header = [cell.strip() for cell in lines[0].split("|")]
    row = [line for line in lines if line.startswith("| twice ")]
    assert len(row) == 1 and "| cpu | 2 | float32 |" in row[0]
    cells = dict(zip(header, (cell.strip() for cell in row[0].split("|"))))
    assert cells["runtime"] == "eager" and cells["threads"] == "1"  # the thread count it was timed with
    macs_reduction = float(cells["MACs reduction"].rstrip("x"))
    assert macs_reduction > 8  # two halvings of every conv: about 16x fewer MACs
    # The printed table and the file say what "realized" means.
    assert "realized" in header
    for text in (result.stdout, table.read_text()):
        assert "Realized: the share of the MACs saving that shows up as time saved" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["shrink", "torchvision:no_such_net", "--ratio", "0.5", "-o", "out"], "torchvision has no model 'no_such_net'"),
        (["shrink", "torchvision:resnet18", "--ratio", "1.5", "--input-shape", "1,3,32,32", "-o", "out"],
         "ratio must be a fraction in [0, 1), got 1.5"),
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
    assert isinstance(record, graphprune.PlanBudget)
    assert record.kind == "latency" and record.request.latency == 0.6 and record.measured <= record.dense
    keys = json.loads((tmp_path / "cache" / "latency.json").read_text())
    assert keys and all("|threads=2|batch=4" in k for k in keys)  # at the threads and batch asked for
    assert record.hardware.startswith("cpu|float32|threads=2|batch=4")
    assert record.runtime == "eager"
    assert main(["shrink", "tests.models:OldVGG", "--latency", "0.6", "--runtime", "cudagraphs", "--input-shape",
                 "1,3,16,16", "-o", str(tmp_path / "g")]) == 2  # CUDA graphs on the CPU: refused before any timing
    with pytest.raises(SystemExit) as info:
        main(["shrink", "tests.models:OldVGG", "--ratio", "0.5", "--round-to", "0", "-o", str(tmp_path / "x")])
    assert info.value.code == 2


def test_round_to_auto_rounds_for_the_device_and_dtype_given(tmp_path):
    """The issue's bug: `--macs 0.5 --round-to auto --device cuda --dtype bfloat16` rounded for the CPU, since the
    hardware reached the planner only with --latency. A MACs budget needs no GPU to plan for one."""
    out = tmp_path / "h200"
    assert main(["shrink", "tests.models:OldVGG", "--macs", "0.5", "--round-to", "auto", "--device", "cuda",
                 "--dtype", "bfloat16", "--input-shape", "1,3,16,16", "-o", str(out)]) == 0
    record = graphprune.plans_of(graphprune.load(out))[-1].budget
    assert record.round_to == 8  # tensor-core tiles for bf16 on CUDA, whatever this machine's SIMD width
    small = graphprune.load(out)
    widths = [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)] + [small.classifier[0].out_features]
    assert all(w % 8 == 0 for w in widths) and widths != [16, 32, 64], widths


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


def test_version_exits_0_with_nothing_on_stderr():
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.strip() == f"graphprune {graphprune.__version__}"


def test_inspect_prints_module_paths(capsys):
    import torchvision

    assert main(["inspect", "torchvision:resnet18", "--input-shape", "1,3,32,32"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "layer4.1.conv2" in out
    assert "layer1_0_conv1" not in out  # FX node names are not what Budget(overrides=) matches
    coupling = graphprune.couple(torchvision.models.resnet18(), example_inputs=torch.randn(1, 3, 32, 32))
    rows = [line.split(None, 4) for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [g.id for g in coupling.groups]
    for row, group in zip(rows, coupling.groups):
        assert row[4].startswith(", ".join(coupling.module_paths(group)[:4])), row


def _shrink_args(out, *extra):
    return ["shrink", "tests.models:OldVGG", "--ratio", "0.5", "--input-shape", "1,3,16,16", "-o", str(out), *extra]


def test_shrink_refuses_an_existing_output_directory_unless_forced(tmp_path, monkeypatch, capsys):
    import graphprune.storage

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with monkeypatch.context() as patch:  # refused before the model is built
        patch.setattr(graphprune.storage, "build_model", _not_called)
        assert main(_shrink_args(out)) == 2
    err = capsys.readouterr().err
    assert f"graphprune shrink: error: {out} already exists" in err and "--force" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # untouched
    assert main(_shrink_args(out, "--force")) == 0
    assert graphprune.load(out).get_submodule("features.0").out_channels == 8
    assert main(_shrink_args(out)) == 2  # a directory holding a saved model is refused too
    assert "already exists" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(_shrink_args(empty)) == 0  # an existing empty directory is fine
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(_shrink_args(a_file)) == 2
    assert "already exists" in capsys.readouterr().err and a_file.read_text() == "x"


def _not_called(*args, **kwargs):
    raise AssertionError("the model was built before the arguments were checked")


@pytest.mark.parametrize("budget, message", [
    (["--ratio", "1.5"], "ratio must be a fraction in [0, 1), got 1.5"),
    (["--ratio", "-0.5"], "ratio must be a fraction in [0, 1), got -0.5"),
    (["--macs", "0"], "macs must be a fraction in (0, 1], got 0.0"),
    (["--params", "1.2"], "params must be a fraction in (0, 1], got 1.2"),
    (["--latency", "0"], "latency must be a fraction in (0, 1], got 0.0"),
    (["--latency", "0.5", "--runtime", "cudagraphs"], "CUDA graphs need a CUDA device, not 'cpu'"),
    (["--latency", "0.5", "--threads", "0"], "num_threads must be a positive integer, got 0"),
    (["--latency", "0.5", "--batch-size", "0"], "batch_size must be a positive integer, got 0"),
    (["--latency", "0.5", "--device", "tpu"], "device must be 'cpu' or 'cuda[:N]', got 'tpu'"),
], ids=["ratio-1.5", "ratio-negative", "macs-0", "params-1.2", "latency-0", "cudagraphs-on-cpu", "threads-0",
        "batch-0", "device"])
def test_bad_budget_fails_before_the_model_is_built(tmp_path, monkeypatch, capsys, budget, message):
    import graphprune.storage

    monkeypatch.setattr(graphprune.storage, "build_model", _not_called)
    out = tmp_path / "out"
    assert main(["shrink", "torchvision:resnet18", *budget, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"graphprune shrink: error: {message}" in err, err
    assert not out.exists()
    with pytest.raises(AssertionError, match="the model was built"):  # the stand-in does intercept building
        main(["shrink", "torchvision:resnet18", "--ratio", "0.5", "-o", str(out)])


def test_bad_budget_is_reported_before_a_bad_model(tmp_path):
    result = run("shrink", "tests.models:NoSuchFactory", "--ratio", "1.5", "-o", "out", cwd=tmp_path)
    assert result.returncode == 2
    assert "ratio must be a fraction in [0, 1), got 1.5" in result.stderr and "NoSuchFactory" not in result.stderr
    assert "Traceback" not in result.stderr


def test_latency_shrink_prints_one_line_with_requested_predicted_and_measured(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))
    x = torch.randn(1, 3, 16, 16)
    dense_macs = graphprune.count_macs(OldVGG(), x)
    time_models_by(monkeypatch, lambda hw, m, args: 1e-3 * graphprune.count_macs(m, x) / dense_macs)  # 1 ms dense
    assert main(["shrink", "tests.models:OldVGG", "--latency", "0.6", "--input-shape", "1,3,16,16",
                 "-o", str(tmp_path / "l")]) == 0
    captured = capsys.readouterr()
    record = graphprune.plans_of(graphprune.load(tmp_path / "l"))[-1].budget
    lines = [line for line in captured.out.splitlines()
             if line.startswith("budget") or "predicted" in line or "measured" in line]
    assert lines == [record.describe()], captured.out
    line = lines[0]
    assert re.fullmatch(r"budget: latency 0\.6; predicted \d\.\d{3}, measured \d\.\d{3} of dense "
                        r"\(1\.000 -> \d\.\d{3} ms\)", line), line
    assert f"predicted {record.predicted / record.dense:.3f}" in line
    assert f"measured {record.measured_fraction:.3f}" in line
    assert f"-> {record.measured * 1e3:.3f} ms" in line
    assert record.measured_fraction <= 0.6 * 1.05  # the stand-in's timings are exact: within the planner's tolerance


def test_warnings_are_printed_after_the_progress_bar_not_raised_through_it(tmp_path, monkeypatch, capsys):
    import warnings

    import graphprune.cli

    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(graphprune.cli, "_quiet", lambda: False)  # draw the progress bar, as on a terminal
    # Every plan "runs" as fast as the dense model: none is faster, so the planner warns and keeps the dense model.
    time_models_by(monkeypatch, lambda hw, m, args: 1e-3)
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        assert main(["shrink", "tests.models:OldVGG", "--latency", "0.6", "--input-shape", "1,3,16,16",
                     "-o", str(tmp_path / "l")]) == 0
    assert not [w for w in leaked if issubclass(w.category, (graphprune.BudgetWarning, graphprune.InexactWarning))]
    captured = capsys.readouterr()
    err = captured.err.replace("\r", "\n").splitlines()
    bar = [i for i, line in enumerate(err) if line.startswith("shrink")]
    warned = [i for i, line in enumerate(err) if line.startswith("warning: ")]
    assert bar and warned, captured.err
    assert max(bar) < min(warned)  # after the bar, on lines of their own
    assert any("not faster than the dense" in err[i] for i in warned)
    assert "BudgetWarning" not in captured.err and "warnings.warn" not in captured.err
    assert "fell back to the dense model" in captured.out


def test_bench_help_explains_realized_and_threads(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "The realized column is the share of the MACs saving that shows up as time saved" in out
    assert "--threads" in out and "--threads CPU threads" in out
