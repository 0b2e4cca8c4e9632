"""Model size and speed, measured with the tools PyTorch ships: parameters, MACs (``torch.utils.flop_counter``), latency.

>>> import torch
>>> lin = torch.nn.Linear(8, 4)
>>> count_params(lin), count_macs(lin, torch.randn(2, 8))
(36, 64)
>>> per_module, total = module_macs(torch.nn.Sequential(lin), torch.randn(2, 8))
>>> sorted(per_module.items()), total
([('', 64), ('0', 64)], 64)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..base.checks import check_inputs, check_model
from ..base.running import call_model, device_of, eval_mode
from .hardware import Hardware, as_hardware

__all__ = ["count_params", "count_macs", "module_macs", "measure_latency"]


def count_params(model: nn.Module) -> int:
    """Number of parameters, each shared tensor counted once."""
    check_model(model)
    return sum(p.numel() for p in model.parameters())


def module_macs(model: nn.Module, inputs: Any) -> tuple[dict[str, int], int]:
    """Multiply-accumulates of one forward pass (eval mode, FLOPs / 2): per module by qualified name (direct and
    nested; ``""`` is the whole model), and the total."""
    check_model(model)
    check_inputs(inputs)
    # Imported here: the flop counter imports triton where it is installed, a tenth of a second of every CLI start.
    from torch.utils.flop_counter import FlopCounterMode

    # FlopCounterMode's module tracker hooks the gradients of module inputs that require them, and a parameter
    # passed to a submodule as an input (a class token) has none under no_grad: count with none required.
    requiring = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in requiring:
            p.requires_grad_(False)
        with torch.no_grad(), eval_mode(model), FlopCounterMode(display=False) as counter:
            call_model(model, inputs)
    finally:
        for p in requiring:
            p.requires_grad_(True)
    per_module = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        # Keys are "<RootClass>.<qualified name>", and the root's own is its class name alone.
        _, _, name = key.partition(".")
        per_module[name] = sum(ops.values()) // 2
    return per_module, counter.get_total_flops() // 2


def count_macs(model: nn.Module, inputs: Any) -> int:
    """Multiply-accumulates of one forward pass in eval mode."""
    return module_macs(model, inputs)[1]


def measure_latency(model: nn.Module, inputs: Any, hardware: Hardware | None = None) -> float:
    """Median seconds per forward pass in eval mode, timed as ``hardware`` says (default: where the model is,
    in float32, one thread, eager). The model is untouched: a placed copy is timed.

    >>> measure_latency(torch.nn.Linear(8, 4), torch.randn(2, 8), Hardware(model_min_run_time=0.01)) > 0
    True
    """
    check_model(model)
    check_inputs(inputs)
    hardware = Hardware(device=str(device_of(model))) if hardware is None else as_hardware(hardware)
    return hardware.model_seconds(model, inputs)
