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

from ..base.errors import PlanError
from ..coupling import Coupling
from ..measure.latency_table import LatencyTable, LayerLatency, LayerSpec
from .costs import Term

__all__ = ["layer_specs", "latency_terms"]


def layer_specs(gm: torch.fx.GraphModule, weights: Iterable[str]) -> list[LayerSpec]:
    """The plain Conv2d (groups 1 or depthwise) and Linear layers of ``gm`` whose weight is among ``weights``:
    ``call_module`` nodes of a symbolically traced graph, ``aten.conv2d`` / ``aten.linear`` calls on ``get_attr``
    weights of an exported one (named by the module that owns the weight, as the traced graph names it)."""
    wanted = set(weights)
    specs = []
    for node in gm.graph.nodes:
        spec = _module_spec(gm, node, wanted) if node.op == "call_module" else _aten_spec(gm, node, wanted)
        if spec is not None:
            specs.append(spec)
    return specs


def _input_shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    x = node.args[0] if node.args else None
    meta = x.meta.get("tensor_meta") if isinstance(x, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None else None


def _module_spec(gm: torch.fx.GraphModule, node: torch.fx.Node, wanted: set[str]) -> LayerSpec | None:
    module = gm.get_submodule(node.target)
    weight = f"{node.target}.weight"
    shape = _input_shape(node)
    if weight not in wanted or shape is None:
        return None
    bias = getattr(module, "bias", None) is not None
    if type(module) is nn.Conv2d and isinstance(module.padding, tuple):
        depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
        if module.groups != 1 and not depthwise:
            return None
        return LayerSpec(node.target, weight, "conv2d", module.in_channels, module.out_channels, shape,
                         module.kernel_size, module.stride, module.padding, module.dilation, depthwise, bias)
    if type(module) is nn.Linear:
        return LayerSpec(node.target, weight, "linear", module.in_features, module.out_features, shape, bias=bias)
    return None


def _aten_spec(gm: torch.fx.GraphModule, node: torch.fx.Node, wanted: set[str]) -> LayerSpec | None:
    if node.op != "call_function" or node.target not in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
        return None
    w = node.args[1] if len(node.args) > 1 else None
    if not isinstance(w, torch.fx.Node) or w.op != "get_attr" or w.target not in wanted:
        return None
    shape, meta = _input_shape(node), w.meta.get("tensor_meta")
    if shape is None or meta is None:
        return None
    args = list(node.args) + [None] * (7 - len(node.args))
    bias = isinstance(args[2], torch.fx.Node)
    name = w.target.rpartition(".")[0]
    if node.target == torch.ops.aten.linear.default:
        out_features, in_features = meta.shape
        return LayerSpec(name, w.target, "linear", in_features, out_features, shape, bias=bias)
    out_channels, per_group, kh, kw = meta.shape
    groups = args[6] if args[6] is not None else 1
    in_channels = per_group * groups
    depthwise = groups == in_channels == out_channels and groups > 1
    if not isinstance(groups, int) or (groups != 1 and not depthwise):
        return None
    pair = (lambda v, default: tuple(v) if isinstance(v, (list, tuple)) else (v, v) if isinstance(v, int) else default)
    return LayerSpec(name, w.target, "conv2d", in_channels, out_channels, shape, (kh, kw), pair(args[3], (1, 1)),
                     pair(args[4], (0, 0)), pair(args[5], (1, 1)), depthwise, bias)


def latency_terms(coupling: Coupling, table: LatencyTable, round_to: int, dense_seconds: float) -> list[Term]:
    """One term per prunable plain conv/linear: its measured latency at the kept widths, scaled so the dense
    layers sum to ``dense_seconds``. Shows a progress bar on a terminal while the table is measured."""
    weights = {use.tensor for use in coupling.uses}
    specs = layer_specs(coupling.gm, weights)
    if not specs:  # the cost model would predict the same time for every plan, and the planner would prune nothing
        raise PlanError("a latency budget needs prunable plain Conv2d (groups 1 or depthwise) or Linear layers to "
                        "time, and this model has none",
                        hint="use Budget(macs=...) or Budget(params=...), which count every layer")
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
