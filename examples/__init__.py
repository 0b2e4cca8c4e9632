"""Runnable examples: small CIFAR-style models, the digits data, and a DDP fine-tune script."""
