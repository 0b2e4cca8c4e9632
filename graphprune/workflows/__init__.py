"""Training workflows around the verbs: prune, fine-tune, evaluate, repeat.

The iterative loop, per-group sensitivity sweeps, sparsity regularisers, distillation and
DistributedDataParallel helpers. They stand on :mod:`graphprune.api` and take the same records.
"""
