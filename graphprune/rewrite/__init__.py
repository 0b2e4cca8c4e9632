"""Stage 4, rewrite: the physically smaller model a plan describes, and the proof that it is equivalent.

:func:`apply_plan` slices every recorded tensor, resizes the modules that own them and rewrites
the graph constants that count channels; :func:`verify` zeroes the removed channels in a copy of
the original (:func:`mask`) and measures how far the shrunk model is from it. The rewritten model
records the plans that made it (:func:`plans_of`). Imports the stages below it.
"""

from .apply import apply_plan, check_plan_fits
from .provenance import plans_of, record_plan
from .difference import relative_difference
from .verify import Verdict, mask, verdict, verify

__all__ = ["apply_plan", "check_plan_fits", "plans_of", "record_plan", "mask", "verify", "verdict", "Verdict",
           "relative_difference"]
