"""A smoke run of ``benchmarks/compile_time.py``: its stage split still calls what ``shrink`` calls.

The benchmark times graphprune's stages by reaching into them (the rewrite's postcondition is timed apart), so a
refactor that renames one breaks it silently until someone measures; this runs each of its timing functions once on
a small model. It asserts nothing about the times.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


def _benchmark():
    spec = importlib.util.spec_from_file_location("compile_time_benchmark", ROOT / "benchmarks" / "compile_time.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_stage_is_timed_on_both_capture_paths():
    bench = _benchmark()
    model, x = torchvision.models.resnet18().eval(), torch.randn(1, 3, 32, 32)
    split = bench.phases(model, x)
    assert list(split) == bench.PHASES and all(t >= 0 for t in split.values()) and split["check"] > 0
    for method in ("fx", "export"):
        times = bench.path_phases(model, x, method)
        assert set(times) == {"capture", "couple+plan", "apply", "total"} and times["total"] > 0
