"""Saving and loading shrunk models without pickle, a supporting layer above the rewrite.

A saved model is a directory of JSON plans, safetensors weights and a manifest; loading
replays the plans on a fresh base model built from installed code (:mod:`.factory`).
"""

from .factory import build_model, is_spec
from .save import load, read_manifest, save

__all__ = ["save", "load", "read_manifest", "build_model", "is_spec"]
