"""Interoperability: Hugging Face import (``blockdsl.interop.hf``, needs the optional
``transformers``) and exports of a model plan (``blockdsl.interop.export``: generated Python,
Graphviz dot, Mermaid, JSON). Neither is imported by ``import blockdsl``."""
