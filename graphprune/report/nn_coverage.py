"""Every ``torch.nn`` module class, and what graphprune does with it: a rule, a refusal with its reason, or
nothing to do (it carries no channels, or it is not a layer).

The classes come from ``torch.nn.modules`` itself, so a new torch release that adds one shows up
unclassified, and the test that keeps ``docs/supported_ops.md`` current fails until it is classified.

>>> rows = {name: (status, detail) for name, status, detail in nn_coverage()}
>>> rows["ConvTranspose2d"][0], rows["LSTM"][1]
('rule', 'recurrent.recurrent')
>>> rows["MaxUnpool2d"][0], rows["CrossEntropyLoss"][0]
('refused', 'no channels')
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.modules.loss import _Loss

from ..coupling import Registry, default_registry

__all__ = ["nn_coverage", "nn_coverage_markdown", "REFUSED", "NOT_LAYERS"]

# Layers that carry channels and have no rule, with the reason; each is refused by name when channels reach it.
REFUSED = {
    "FractionalMaxPool2d": "draws random pooling regions per channel: a smaller model would draw other ones",
    "FractionalMaxPool3d": "draws random pooling regions per channel: a smaller model would draw other ones",
    "MaxUnpool1d": "scatters by the indices of a pooling layer: not followed yet",
    "MaxUnpool2d": "scatters by the indices of a pooling layer: not followed yet",
    "MaxUnpool3d": "scatters by the indices of a pooling layer: not followed yet",
    "CosineSimilarity": "reduces its inputs over a dim with an epsilon floor: not followed yet",
    "PairwiseDistance": "adds an epsilon to every entry before its norm, so a removed channel still counts",
    "AdaptiveLogSoftmaxWithLoss": "an output head with its own vocabulary cut-offs and loss: keep it whole",
    "Transformer": "a composite whose fast paths symbolic tracing cannot follow: build it from nn.MultiheadAttention "
                   "and nn.Linear, or keep it whole with Scope(ignore=[...])",
    "TransformerEncoder": "as Transformer",
    "TransformerDecoder": "as Transformer",
    "TransformerEncoderLayer": "as Transformer",
    "TransformerDecoderLayer": "as Transformer",
}
# Classes that are not layers: their contents are traced, or they wrap a model.
NOT_LAYERS = {
    "Module": "the base class: a user module's forward is traced",
    "Container": "deprecated base class: its children are traced",
    "Sequential": "a container: its children are traced",
    "ModuleList": "a container: its children are traced",
    "ModuleDict": "a container: its children are traced",
    "ParameterList": "a container of parameters, read through get_attr",
    "ParameterDict": "a container of parameters, read through get_attr",
    "RNNBase": "the base of RNN, LSTM and GRU (covered)",
    "RNNCellBase": "the base of RNNCell, LSTMCell and GRUCell (covered)",
}


def _classes() -> list[type]:
    found = (getattr(nn.modules, name) for name in dir(nn.modules))
    return sorted({c for c in found if inspect.isclass(c) and issubclass(c, nn.Module)}, key=lambda c: c.__name__)


def nn_coverage(registry: Registry | None = None) -> Iterator[tuple[str, str, str]]:
    """``(class name, status, detail)`` for every class in ``torch.nn.modules``. Status is ``rule`` (detail: the
    rule), ``lazy`` (covered once a forward initialised it), ``refused`` (detail: why), ``no channels`` (a
    loss) or ``not a layer``; ``unclassified`` means a class this table does not know yet."""
    registry = registry or default_registry()
    for cls in _classes():
        name = cls.__name__
        rule = registry.rule_for_class(cls)
        if name in REFUSED:
            yield name, "refused", REFUSED[name]
        elif issubclass(cls, _Loss) or name.endswith("Loss"):
            yield name, "no channels", "an objective: it is not part of the model's forward"
        elif issubclass(cls, LazyModuleMixin):
            target = getattr(cls, "cls_to_become", None)
            yield name, "lazy", f"becomes {target.__name__} at its first forward, then covered as it is" if target else ""
        elif rule is not None:
            yield name, "rule", f"{rule.__module__.rpartition('.')[2]}.{rule.__name__}"
        elif name in NOT_LAYERS:
            yield name, "not a layer", NOT_LAYERS[name]
        elif name == "DataParallel":
            yield name, "not a layer", "a wrapper: shrink its .module"
        else:
            yield name, "unclassified", ""


def nn_coverage_markdown(registry: Registry | None = None) -> str:
    rows = list(nn_coverage(registry))
    counts: dict[str, int] = {}
    for _, status, _ in rows:
        counts[status] = counts.get(status, 0) + 1
    lines = [
        "## Every torch.nn module",
        "",
        f"{len(rows)} classes in `torch.nn.modules`: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".",
        "A refused layer stops `shrink` with an error naming it only when prunable channels reach it; "
        "`Scope(ignore=[...])` keeps the channels around it.",
        "",
        "| class | status | rule, or why |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {status} | {detail.replace('|', '/')} |" for name, status, detail in rows]
    return "\n".join(lines) + "\n"
