"""Small helpers shared by the built-in components."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from blockdsl.errors import ArgumentError

Activation = Literal["relu", "gelu", "gelu_tanh", "silu", "relu2"]


def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU (Primer)."""
    return F.relu(x).square()


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (GPT-2's ``gelu_new``)."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": gelu_tanh,
    "silu": F.silu,
    "relu2": relu2,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ArgumentError(f"unknown activation '{name}'", hint=f"one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


#: What a validator returns: None, a reason, or a reason and a hint.
Problem = str | tuple[str, str] | None


def raise_problem(problem: Problem) -> None:
    """Raise the ``ArgumentError`` a validator reports. Each component's constructor calls the
    same validator its registration declares as ``check``, so a module built directly is held
    to exactly the rules a block string is checked against before anything is allocated."""
    if problem:
        message, hint = (problem, None) if isinstance(problem, str) else problem
        raise ArgumentError(message, hint=hint)


def accepts_any(**_) -> Problem:
    """The ``check`` of a component whose every schema-typed argument combination is valid."""
    return None


def require(condition: bool, message: str, hint: str | None = None) -> None:
    """Raise an ``ArgumentError`` (a ``BlockDSLError``) when a combination of args is invalid."""
    if not condition:
        raise ArgumentError(message, hint=hint)


def init_linear_(weight: torch.Tensor, fan_in: int) -> None:
    """``nn.Linear``'s default init: uniform in ``±1/sqrt(fan_in)``."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    nn.init.uniform_(weight, -bound, bound)


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """Gemma 2's soft-capping: ``cap * tanh(x / cap)``."""
    return cap * torch.tanh(x / cap)


def same_size(d_in: int, **_) -> int:
    """``out_features`` of a component that keeps the feature size (saves a meta-device probe)."""
    return d_in


def flops_from_steps(steps_fn):
    """A ``flops`` hook that adds up the FLOPs (index 3) of a component's ``shape_steps`` rows
    for one sequence, so that the ``--depth 2`` table and the total cannot disagree."""
    return lambda d_in, seq, **args: sum(step[3] for step in steps_fn(d_in, seq, 1, **args))
