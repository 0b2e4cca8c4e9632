"""The bottom of the stack: errors, argument checks, running a model on its inputs, pausing the collector.

Every other layer may import from here; nothing here imports another part of graphprune.
"""
