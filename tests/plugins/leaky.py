"""Deliberately broken components for the fuzzing tests (``blockdsl fuzz --plugin``).

``Leak`` looks one token ahead (a future-token leak); ``Frozen`` has a parameter that never
receives a gradient (it is detached). Registered with ``replace=True`` so that the file can be
imported again; tests unregister them afterwards.
"""

import torch
import torch.nn.functional as F
from torch import nn

from blockdsl.registry import register


@register("Leak", replace=True)
class Leak(nn.Module):
    """Mixes in the next token: position t sees t+1."""

    def __init__(self, d_model: int, amount: float = 0.5) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.amount = amount

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        x_next = F.pad(x, (0, 0, 0, 1))[:, 1:]  # x_next[:, t] = x[:, t + 1]
        return self.proj(x + self.amount * x_next)


@register("Frozen", replace=True)
class Frozen(nn.Module):
    """A scale whose weight is detached: it never receives a gradient."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return self.proj(x) * self.weight.detach()
