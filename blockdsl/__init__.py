"""blockdsl: a small language for neural-network blocks, compiled to PyTorch modules.

>>> import blockdsl
>>> model = blockdsl.build_model("llama", d_model=256, layers="block*4")
"""

import blockdsl.components  # noqa: F401  registers the built-ins
from blockdsl.ast import Block, Call, Chain, Group, Repeat, Residual
from blockdsl.config import ModelConfig, list_presets, load_config
from blockdsl.errors import (
    ArgumentError,
    BlockDSLError,
    BlockSyntaxError,
    BlockValidationError,
    BudgetError,
    ConfigError,
    RegistryError,
    ShapeError,
    Span,
    UnknownComponentError,
)
from blockdsl.graph import BlockGraph, build_graph
from blockdsl.lower import BlockModule, compile_block
from blockdsl.model import LanguageModel, build_model
from blockdsl.parser import parse
from blockdsl.printer import unparse
from blockdsl.registry import REGISTRY, Component, Registry, register, register_alias

__version__ = "0.1.0"

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


def __getattr__(name: str):
    """``blockdsl.hf`` (Hugging Face import) is loaded on first use, never by ``import
    blockdsl``; it imports the optional ``transformers`` only inside its functions. So is
    ``blockdsl.train`` (a callable package: ``blockdsl.train(spec, data=..., out=...)``)."""
    if name in ("hf", "train"):
        import importlib

        return importlib.import_module("blockdsl.hf")
    raise AttributeError(f"module 'blockdsl' has no attribute {name!r}")
