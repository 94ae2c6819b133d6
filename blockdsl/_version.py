"""The package version, in a module of its own so that modules inside the package read it
without importing ``blockdsl/__init__``."""

__version__ = "0.1.0"
