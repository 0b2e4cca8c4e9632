"""The package version: one place, at the bottom of the stack, for the manifest, the CLI and ``graphprune.__version__``."""

__version__ = "0.1.0"
