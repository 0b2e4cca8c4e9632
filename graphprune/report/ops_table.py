"""The supported-ops table, rendered from a rule registry so that it can never drift from the code.

``python docs/gen_ops_table.py`` writes it to ``docs/supported_ops.md``; a test checks that
the checked-in file matches the built-in registry.

>>> table = supported_ops_markdown()
>>> "| module | `torch.nn.modules.conv.Conv2d` |" in table
True
"""

from __future__ import annotations

from ..coupling import Registry, default_registry
from .nn_coverage import nn_coverage_markdown

__all__ = ["supported_ops_markdown"]

_KINDS = {"module": "modules (`call_module`)", "function": "functions (`call_function`)", "method": "tensor methods (`call_method`)"}


def _summary(rule) -> str:
    doc = (rule.__doc__ or "").strip()
    line = doc.splitlines()[0] if doc else "(no description)"
    return line.replace("|", "\\|")


def supported_ops_markdown(registry: Registry | None = None) -> str:
    """One row per registered op: its kind, its key, the rule's name and the first line of its docstring."""
    registry = registry or default_registry()
    entries = sorted(registry.entries(), key=lambda e: (list(_KINDS).index(e[0]), e[1]))
    counts = {kind: sum(1 for e in entries if e[0] == kind) for kind in _KINDS}
    lines = [
        "# Supported ops",
        "",
        "Generated from `graphprune.default_registry()` by `python docs/gen_ops_table.py`; do not edit by hand.",
        "An op that is not listed here and carries prunable channels is refused with an error naming it.",
        "",
        ", ".join(f"{counts[k]} {label}" for k, label in _KINDS.items()) + ".",
        "",
        "| kind | op | rule | what it does to channels |",
        "|---|---|---|---|",
    ]
    for kind, key, rule in entries:
        lines.append(f"| {kind} | `{key}` | `{rule.__module__.rpartition('.')[2]}.{rule.__name__}` | {_summary(rule)} |")
    return "\n".join(lines) + "\n\n" + nn_coverage_markdown(registry)
