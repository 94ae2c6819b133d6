"""Interoperability: Hugging Face import (``blockdsl.interop.hf``, needs the optional
``transformers``) and exports of a model plan (``blockdsl.interop.export``: generated Python,
Graphviz dot, Mermaid, JSON) and the Hugging Face export (``blockdsl.interop.hf_export``:
the importer's records run backwards). None is imported by ``import blockdsl``."""
