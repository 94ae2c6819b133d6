"""Shared test helpers: build any registered component generically from its declarations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

import blockdsl.components  # noqa: F401  registers the built-ins
from blockdsl.registry import REGISTRY, Component, Registry

D = 32  # feature size used throughout the component tests
VOCAB, CONTEXT = 50, 64
GLOBALS = {"vocab": VOCAB, "context": CONTEXT}


@dataclass
class Built:
    """A component resolved and built from a name and call arguments."""

    component: Component
    args: dict[str, Any]
    module: nn.Module

    def eval(self) -> Built:
        self.module.eval()
        return self

    def train(self) -> Built:
        self.module.train()
        return self

    def inputs(self, batch: int = 2, seq: int = 8, device: str | None = None) -> torch.Tensor:
        if self.component.tokens_in:
            return torch.randint(0, VOCAB, (batch, seq), device=device)
        return torch.randn(batch, seq, D, device=device)

    def context(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ctx = {}
        if "memory" in self.component.context:
            ctx["memory"] = torch.randn(x.shape[0], 5, D, device=x.device)
        if "rotary" in self.component.context:  # Rope: what a slot supplies; here unrotated
            ctx["rotary"] = lambda t: t
        return ctx

    def run(self, x: torch.Tensor, **ctx: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward; returns ``(y, aux)`` with ``aux`` None unless the component declares it."""
        if self.component.residual:  # forward(tap, h): the sublayer's output is another value
            out = self.module(x, torch.tanh(x), **ctx)
        else:
            out = self.module(x, **ctx)
        return out if self.component.aux_loss else (out, None)

    def aux_scalar(self, aux: torch.Tensor) -> torch.Tensor:
        combine = self.component.combine_aux_fn
        return combine([aux]) if combine is not None else aux.sum()


def resolve(
    name: str, kwargs: dict[str, Any] | None = None, registry: Registry = REGISTRY
) -> tuple[Component, dict[str, Any]]:
    component, bound = registry.resolve(name)
    args, issues = component.bind((), {**bound, **(kwargs or {})}, model_globals=GLOBALS, d_in=D)
    assert not issues, [i.message for i in issues]
    return component, args


def tied_embedding(module: nn.Module, component: Component) -> nn.Module | None:
    """A module whose weight is to be tied (``Head(tie=true)``) gets the token embedding of the
    registry's first component with an ``embedding`` hook, built with the same globals."""
    if component.tie_fn is None or getattr(module, "weight", 0) is not None:
        return None
    embed = next(c for c in REGISTRY.components() if c.embedding_fn is not None)
    _, args = resolve(embed.name)
    embedding = embed.build(args)  # on the current default device (cpu, or meta)
    component.tie_fn(module, embed.embedding_fn(embedding))
    return embedding


def build(
    name: str,
    kwargs: dict[str, Any] | None = None,
    children: list[nn.Module] | None = None,
    tie: bool = True,
) -> Built:
    component, args = resolve(name, kwargs)
    module = component.build(args, children or [])
    if tie:
        tied_embedding(module, component)
    return Built(component, args, module)


@pytest.fixture(autouse=True)
def _no_training_curves(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drawing ``curves.png`` at each evaluation costs about half a second of matplotlib per
    evaluation: in-process trainings of the suite skip it, except in the files that test the
    plots (a CLI run in a subprocess, as the docs run, still draws them)."""
    if request.module.__name__.rsplit(".", 1)[-1] in ("test_watch", "test_compare"):
        return
    from blockdsl.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "_plot", lambda self: None)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cli_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI output is compared with goldens rendered at the documented default width (120);
    an explicit width keeps them independent of whatever an earlier test in the same worker
    left behind as standard output (rich asks a terminal for its size)."""
    monkeypatch.setenv("COLUMNS", "120")
