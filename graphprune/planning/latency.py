"""The latency cost model: each prunable conv/linear's measured time at the kept widths.

Latency is not proportional to MACs (kernels are picked per shape; widths off the vector or
tensor-core tile run slower than wider aligned ones), so a candidate's latency is predicted
from a :class:`~graphprune.measure.latency_table.LatencyTable` of each layer timed alone on the
target hardware, scaled so the dense layers sum to the measured dense model. The rest of the
model (norms, activations) is assumed to shrink with the layers it sits between; the planner's
rounds correct what that misses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.fx
from torch import nn
from tqdm.auto import tqdm

from ..coupling import Coupling
from ..measure.latency_table import LatencyTable, LayerLatency, LayerSpec
from .costs import Term

__all__ = ["layer_specs", "latency_terms"]


def layer_specs(gm: torch.fx.GraphModule, weights: Iterable[str]) -> list[LayerSpec]:
    """The plain Conv2d (groups 1 or depthwise) and Linear layers of ``gm`` whose weight is among ``weights``."""
    wanted = set(weights)
    specs = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        weight = f"{node.target}.weight"
        if weight not in wanted or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        shape = tuple(node.args[0].meta["tensor_meta"].shape)
        bias = getattr(module, "bias", None) is not None
        if type(module) is nn.Conv2d and isinstance(module.padding, tuple):
            depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
            if module.groups != 1 and not depthwise:
                continue
            specs.append(LayerSpec(node.target, weight, "conv2d", module.in_channels, module.out_channels, shape,
                                   module.kernel_size, module.stride, module.padding, module.dilation, depthwise, bias))
        elif type(module) is nn.Linear:
            specs.append(LayerSpec(node.target, weight, "linear", module.in_features, module.out_features, shape, bias=bias))
    return specs



def latency_terms(coupling: Coupling, table: LatencyTable, round_to: int, dense_seconds: float) -> list[Term]:
    """One term per prunable plain conv/linear: its measured latency at the kept widths, scaled so the dense
    layers sum to ``dense_seconds``. Shows a progress bar on a terminal while the table is measured."""
    weights = {use.tensor for use in coupling.uses}
    specs = layer_specs(coupling.gm, weights)
    surfaces = [(spec, LayerLatency.measure(spec, table, round_to))
                for spec in tqdm(specs, desc="latency table", unit="layer", disable=None, leave=False)]  # None: shown on a terminal only
    table.save()
    dense_layers = sum(s(spec.in_channels, spec.out_channels) for spec, s in surfaces)
    scale = dense_seconds / dense_layers if dense_layers > 0 else 1.0
    terms = []
    for spec, surface in surfaces:
        def fn(kept: Mapping[int, int], surface: LayerLatency = surface, spec: LayerSpec = spec) -> float:
            cout = kept.get(0, spec.out_channels)
            return scale * (surface(cout, cout) if spec.depthwise else surface(kept.get(1, spec.in_channels), cout))

        terms.append(Term(spec.weight, (0,) if spec.depthwise else (0, 1), fn))
    return terms
