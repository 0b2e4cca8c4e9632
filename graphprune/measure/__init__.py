"""Measurement, a supporting layer: where a model runs (:class:`Hardware`), how (runtimes), and what it costs.

Counts (parameters, MACs), the per-layer latency table the planner predicts from, and dense vs
shrunk benchmarks. Imports only :mod:`graphprune.base`: the planner and the benchmarks both
stand on it, so a benchmark times exactly what a latency budget was planned for.
"""

from .counts import count_macs, count_params, measure_latency, module_macs
from .hardware import DTYPES, Hardware, as_hardware, host_allocator
from .runtimes import RUNTIMES

__all__ = ["Hardware", "DTYPES", "RUNTIMES", "as_hardware", "host_allocator", "count_params", "count_macs", "module_macs",
           "measure_latency"]
