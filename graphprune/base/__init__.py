"""The bottom of the stack: errors, argument checks and running a model on its inputs.

Every other layer may import from here; nothing here imports another part of graphprune.
"""
