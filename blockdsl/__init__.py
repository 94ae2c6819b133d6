"""blockdsl: a small language for neural-network blocks, compiled to PyTorch modules.

>>> import blockdsl
>>> model = blockdsl.build_model("llama", d_model=256, layers="block*4")
"""

import blockdsl.components  # noqa: F401  registers the built-ins
from blockdsl._version import __version__ as __version__
from blockdsl.ast import Block, Call, Chain, Group, Repeat, Residual
from blockdsl.config import ModelConfig, list_presets, load_config
from blockdsl.errors import (
    ArgumentError,
    BlockDSLError,
    BlockSyntaxError,
    BlockValidationError,
    BudgetError,
    ConfigError,
    InputError,
    RegistryError,
    ShapeError,
    Span,
    UnknownComponentError,
)
from blockdsl.graph import BlockGraph, build_graph
from blockdsl.lower import BlockModule, compile_block
from blockdsl.model import LanguageModel, LMOutput, build_model
from blockdsl.parser import parse
from blockdsl.printer import unparse
from blockdsl.registry import REGISTRY, Component, Registry, register, register_alias

__all__ = [
    "REGISTRY",
    "ArgumentError",
    "Block",
    "BlockDSLError",
    "BlockGraph",
    "BlockModule",
    "BlockSyntaxError",
    "BlockValidationError",
    "BudgetError",
    "Call",
    "Chain",
    "Component",
    "ConfigError",
    "Group",
    "InputError",
    "LMOutput",
    "LanguageModel",
    "ModelConfig",
    "Registry",
    "RegistryError",
    "Repeat",
    "Residual",
    "ShapeError",
    "Span",
    "UnknownComponentError",
    "build_graph",
    "build_model",
    "compile_block",
    "list_presets",
    "load_config",
    "parse",
    "register",
    "register_alias",
    "unparse",
]


# Loaded on first use, never by ``import blockdsl`` (they need the optional safetensors or
# transformers, or are rarely used): name -> the module that defines it.
_LAZY = {
    "save": "blockdsl.checkpoint",
    "load": "blockdsl.checkpoint",
    "trace": "blockdsl.tracing",
    "export_hf": "blockdsl.hf.exporter",
}


def __getattr__(name: str):
    """``blockdsl.hf`` (Hugging Face import) is loaded on first use, never by ``import
    blockdsl``; it imports the optional ``transformers`` only inside its functions. So are
    ``save``, ``load`` and ``trace`` (see ``_LAZY``), ``blockdsl.train`` (a callable package:
    ``blockdsl.train(spec, data=..., out=...)``), ``blockdsl.compare`` and ``blockdsl.evaluate``
    (callable modules: ``blockdsl.evaluate(["runs/a"], data=...)``)."""
    import importlib

    if name in ("hf", "train", "compare", "evaluate"):  # all but hf are callable modules
        return importlib.import_module(f"blockdsl.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'blockdsl' has no attribute {name!r}")
