"""One benchmark row computed in a child process, under a time limit: for a peer tool that may hang, crash or
run out of memory on a model, so that the parent's run goes on and the row says what happened.

The child prints ``ROW <json>``; :func:`run_child` returns that dict, or ``{"status": "timeout" | "error", ...}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["run_child", "print_row"]

ROOT = Path(__file__).resolve().parents[1]


def print_row(row: dict[str, Any]) -> None:
    """The child's side: hand ``row`` to the parent."""
    print("ROW " + json.dumps(row), flush=True)


def run_child(script: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python script *args`` on one thread with the project importable; its row, or why there is none."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no result after {timeout:.0f} s (stopped)"}
    for line in proc.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "error", "error": f"exit {proc.returncode}: {tail}"[:300]}
