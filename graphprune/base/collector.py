"""Pausing Python's cyclic garbage collector while a verb builds its graphs.

A trace, a dependency graph and a rewrite make tens of thousands of small objects (FX nodes, their
metadata, rule records) that stay alive until the verb returns. Python counts each allocation, and its
collector walks the young objects again and again, promotes them, and every few verbs walks the whole
heap (torch and its imports: some 370,000 objects, a quarter of a second a time), finding them all still
alive. A quarter of a MobileNet's shrink went there. With the collector paused, what the verb leaves behind is
collected once, young, when it returns.

>>> import gc
>>> with collector_paused():
...     gc.isenabled()
False
>>> gc.isenabled()
True
>>> @collector_paused()
... def verb():
...     return gc.isenabled()
>>> verb(), gc.isenabled()
(False, True)
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["collector_paused"]


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause automatic collection for the duration, then collect the young generation once.

    Only the outermost of nested uses pauses and resumes, and a collector the user disabled stays disabled.
    Reference counting still frees every object outside a cycle at once, tensors among them, so memory
    holds only the verb's cyclic garbage until it returns. The collector is the process's: another thread's
    cycles wait for the verb too. Use it around work that ends: not around a loop that realises and times one
    candidate model after another.
    """
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()
            gc.collect(0)  # now, while the verb is timed, not at the caller's next allocation
