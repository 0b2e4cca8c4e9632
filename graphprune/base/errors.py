"""Exceptions raised by graphprune.

Every error that concerns one operation of the user's model names the FX node
(``node.format_node()``) and, when tracing recorded it, the user's source line,
and ends with a hint on how to proceed.
"""

from __future__ import annotations

import torch.fx

__all__ = [
    "GraphPruneError",
    "InputError",
    "TraceError",
    "UnsupportedOpError",
    "PlanError",
    "RewriteError",
    "describe_node",
    "InexactWarning",
    "BudgetWarning",
    "RewriteWarning",
]


def _user_line(stack_trace: str | None) -> str | None:
    """The innermost frame of an FX stack trace outside torch itself: the user's line that made the node."""
    if not stack_trace:
        return None
    lines = [line for line in stack_trace.strip().splitlines() if line.strip()]
    # FX records frames as 'File "...", line N, in f' followed by the source line.
    frames = [(i, line) for i, line in enumerate(lines) if line.lstrip().startswith("File ")]
    user = [(i, line) for i, line in frames if "/torch/" not in line]
    if not (user or frames):
        return lines[-1].strip()
    i, _ = (user or frames)[-1]
    return "\n    ".join(s.strip() for s in lines[i:i + 2])


def describe_node(node: torch.fx.Node) -> str:
    """A human-readable description of an FX node and where it came from."""
    text = f"FX node: {node.format_node()}"
    source = _user_line(node.stack_trace)
    if source:
        text += f"\nsource: {source}"
    return text


class GraphPruneError(Exception):
    """Base class of every error graphprune raises on purpose."""

    def __init__(self, message: str, *, node: torch.fx.Node | None = None, hint: str | None = None):
        self.message = message
        self.node = node
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.message]
        if self.node is not None:
            parts.append(describe_node(self.node))
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)

    def refresh(self) -> None:
        """Render the message again: its node has learnt its source line since it was raised."""
        self.args = (self._render(),)


class InputError(GraphPruneError, ValueError):
    """An argument to a public function is invalid, or the example inputs do not fit the model."""


class TraceError(GraphPruneError):
    """``torch.fx`` could not trace the model."""


class UnsupportedOpError(GraphPruneError):
    """An op carries prunable channels but graphprune has no rule for it, or cannot use it safely."""


class PlanError(GraphPruneError, ValueError):
    """A plan does not fit the model it is applied to, or no valid plan exists."""


class RewriteError(GraphPruneError):
    """The rewritten model failed its postcondition (a bug in a rule: please report it)."""


class BudgetWarning(UserWarning):
    """A budgeted plan was not measured within tolerance of its target, or fell back to the dense model.

    The plan meets the budget (it is never slower or larger than asked) but may prune more than needed;
    ``plan.budget`` records the requested, predicted and measured figures.
    """


class RewriteWarning(UserWarning):
    """The shrunk model is not the user's class but the rewritten captured graph (a ``torch.fx.GraphModule``):
    the class's own forward fixes a width in Python that the rewrite could not change. The warning names where."""


class InexactWarning(UserWarning):
    """A plan removes channels that a LayerNorm normalises over: the shrunk model approximates the original.

    Issued by :func:`graphprune.plan` (and so :func:`graphprune.shrink`); ``Budget(..., exact_only=True)`` avoids it.
    """


# Raised to users, so shown under the name they import them by: graphprune.InputError, not graphprune.base.errors.
for _cls in (GraphPruneError, InputError, TraceError, UnsupportedOpError, PlanError, RewriteError, BudgetWarning,
             InexactWarning, RewriteWarning):
    _cls.__module__ = "graphprune"
del _cls
