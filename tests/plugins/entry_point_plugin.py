"""A plugin as a third-party package would publish it, through the entry-point group
``blockdsl.components``: a callable that receives the registry."""

import torch
from torch import nn


def register(registry) -> None:
    @registry.register("Twice")
    class Twice(nn.Module):
        """Doubles its input."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x


def broken(registry) -> None:  # referenced by a test that expects the failure to be reported
    raise RuntimeError("this plugin is broken")
