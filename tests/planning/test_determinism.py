"""The same model, inputs and settings give a byte-identical plan, in one process and across processes.

Two fresh interpreters run with different ``PYTHONHASHSEED`` values, so any dependence on
set or dict-of-str iteration order (which Python randomises per process) would show.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import torch
import torchvision
from torch import nn

import graphprune

ROOT = Path(__file__).resolve().parents[2]  # the repository: tests/planning/ is two levels down

# Builds the models and prints one line per plan: name and sha256 of plan.to_json().
SCRIPT = r"""
import hashlib, torch
torch.set_num_threads(1)
from tests.planning.test_determinism import plans
for name, text in plans():
    print(name, hashlib.sha256(text.encode()).hexdigest())
"""


class Ties(nn.Module):
    """Equal filters, so the importance ties and only the tie-break decides what goes."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(16, 6, 1)
        self.head = nn.Conv2d(6, 2, 1)
        with torch.no_grad():
            self.a.weight.copy_(self.a.weight[:1].expand_as(self.a.weight))
            self.b.weight.fill_(0.5)
            self.c.weight.fill_(0.1)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.sigmoid(self.b(x))], 1)
        return self.head(torch.relu(self.c(y)) + self.c(y))


def plans() -> list[tuple[str, str]]:
    """Plans of a few seeded models, as JSON text."""
    out = []
    for name, build, shape in [
        ("resnet18", torchvision.models.resnet18, (1, 3, 32, 32)),
        ("ties", Ties, (1, 3, 8, 8)),
    ]:
        torch.manual_seed(0)
        model = build()
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        for ratio, importance in [(0.3, "l2"), (0.7, "l1")]:
            out.append((f"{name}@{ratio}/{importance}", graphprune.plan(model, ratio, example_inputs=x, importance=importance).to_json()))
    return out


def _hashes(text_plans) -> dict[str, str]:
    return {name: hashlib.sha256(text.encode()).hexdigest() for name, text in text_plans}


def test_plan_json_is_identical_within_a_process_and_round_trips():
    torch.set_num_threads(1)
    first, second = plans(), plans()
    assert first == second
    for _, text in first:
        assert graphprune.Plan.from_json(text).to_json() == text


def test_plan_json_is_identical_across_fresh_processes():
    torch.set_num_threads(1)
    here = _hashes(plans())
    runs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=600, check=True)
        runs.append(dict(line.split() for line in result.stdout.strip().splitlines()))
    assert runs[0] == runs[1] == here
    assert len(here) == 4


def test_ties_are_broken_towards_the_lower_index():
    torch.manual_seed(0)
    plan = graphprune.plan(Ties(), 0.5, example_inputs=torch.randn(1, 3, 8, 8))
    tied = next(g for g in plan.groups if g.sources == ["a"])
    assert len(set(tied.scores)) == 1 and tied.removed == [0, 1, 2, 3]
