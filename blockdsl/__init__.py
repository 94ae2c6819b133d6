"""blockdsl: a small language for neural-network blocks, compiled to PyTorch modules.

>>> import blockdsl
>>> model = blockdsl.build_model("llama", d_model=256, layers="block*4")
"""

import blockdsl.components  # noqa: F401  registers the built-ins
from blockdsl.ast import Block, Call, Chain, Group, Repeat, Residual
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
from blockdsl.registry import REGISTRY, Component, Registry, register, register_alias

__version__ = "0.1.0"

__all__ = [
    "REGISTRY",
    "ArgumentError",
    "Block",
    "BlockDSLError",
    "BlockSyntaxError",
    "BlockValidationError",
    "BudgetError",
    "Call",
    "Chain",
    "Component",
    "ConfigError",
    "Group",
    "Registry",
    "RegistryError",
    "Repeat",
    "Residual",
    "ShapeError",
    "Span",
    "UnknownComponentError",
    "register",
    "register_alias",
]
