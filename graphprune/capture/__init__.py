"""Stage 1, capture: the model's graph (``torch.fx``) with the shape of every value on ``node.meta``.

The graph is the IR of every later stage. :func:`capture` traces the model, turns the example
inputs into one positional argument per placeholder and propagates shapes under fake tensors.
Imports only :mod:`graphprune.base`.
"""

from .captured import Captured, capture
from .fx import source_lines

__all__ = ["Captured", "capture", "source_lines"]
