"""Model size and speed, measured with the tools PyTorch ships: parameters, MACs, latency.

>>> import torch
>>> lin = torch.nn.Linear(8, 4)
>>> count_params(lin), count_macs(lin, torch.randn(2, 8))
(36, 64)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.benchmark as benchmark
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .arguments import check_inputs, check_model, check_positive
from .running import call_model, eval_mode

__all__ = ["count_params", "count_macs", "measure_latency"]


def count_params(model: nn.Module) -> int:
    """Number of parameters, each shared tensor counted once."""
    check_model(model)
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, inputs: Any) -> int:
    """Multiply-accumulates of one forward pass, from ``torch.utils.flop_counter`` (FLOPs / 2)."""
    check_model(model)
    check_inputs(inputs)
    with torch.no_grad(), eval_mode(model), FlopCounterMode(display=False) as counter:
        call_model(model, inputs)
    return counter.get_total_flops() // 2


def measure_latency(model: nn.Module, inputs: Any, *, min_run_time: float = 1.0, num_threads: int = 1) -> float:
    """Median seconds per forward pass in eval mode, from ``torch.utils.benchmark``."""
    check_model(model)
    check_inputs(inputs)
    check_positive(min_run_time, "min_run_time")
    check_positive(num_threads, "num_threads", integer=True)
    with torch.no_grad(), eval_mode(model):
        timer = benchmark.Timer(
            stmt="call(model, inputs)",
            globals={"call": call_model, "model": model, "inputs": inputs},
            num_threads=num_threads,
        )
        return timer.blocked_autorange(min_run_time=min_run_time).median
