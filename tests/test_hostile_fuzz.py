"""Hostile fuzzing: random block strings (valid or not) over every registered component,
including CrossAttn, Embed and Head in odd places, with random labels (hostile names, ``#``
and ``##``), arguments (right and wrong names, types and values), repeats (``*0`` too) and
children, used as a block, an embedding or a head. Every input either builds and runs
(forward and backward) or raises ``BlockDSLError``; nothing else escapes.

The default run draws a few hundred inputs; ``-m slow`` runs thousands."""

from __future__ import annotations

import keyword
import random
import typing
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import blockdsl
from blockdsl.errors import BlockDSLError
from blockdsl.registry import REGISTRY

VOCAB, D, CONTEXT, T = 16, 8, 8, 5
LABELS = [
    *keyword.kwlist[:12],
    "training",
    "forward",
    "context",
    "_modules",
    "self",
    "x",
    "state",
    "ln",
    "a",
    "0",
]
VALUES = [0, 1, 2, 3, 4, 8, -1, 0.0, 0.5, 1e-6, -2.5, True, False, "none", "rms", "x", [1, 2], []]


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value.isidentifier() else f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


@dataclass
class Generator:
    rng: random.Random
    names: list[str]

    def value_for(self, component: str, arg: str) -> object:
        try:
            param = REGISTRY.get(component).params.get(arg)
        except KeyError:
            param = None
        if param is not None and self.rng.random() < 0.6:
            choices = typing.get_args(param.annotation)
            if typing.get_origin(param.annotation) is typing.Literal and choices:
                return self.rng.choice(choices)
            if param.default is not None and not isinstance(param.default, type):
                default = param.default
                if isinstance(default, bool):
                    return not default
                if isinstance(default, int):
                    return self.rng.choice([1, 2, 4, default])
                if isinstance(default, float):
                    return self.rng.choice([0.0, 0.5, default])
        return self.rng.choice(VALUES)

    def call(self, depth: int) -> str:
        rng = self.rng
        name = rng.choice(self.names) if rng.random() < 0.95 else rng.choice(["Atn", "mlp", "X"])
        text = name
        if rng.random() < 0.25:
            text += rng.choice(["#", "##"]) + rng.choice(LABELS)
        if rng.random() < 0.35:
            try:
                params = list(REGISTRY.get(name).user_params)
            except KeyError:
                params = []
            args = []
            for _ in range(rng.randint(1, 2)):
                arg = rng.choice(params) if params and rng.random() < 0.85 else "bogus"
                value = _literal(self.value_for(name, arg))
                args.append(value if rng.random() < 0.15 else f"{arg}={value}")
            text += "(" + ", ".join(args) + ")"
        if depth > 0 and (name == "MoE" or rng.random() < 0.03):
            children = [self.block(depth - 1) for _ in range(rng.randint(1, 3))]
            text += "[" + ", ".join(children) + "]"
        return text

    def step(self, depth: int) -> str:
        rng = self.rng
        group = rng.random() < 0.12 and depth > 0
        body = f"({self.block(depth - 1)})" if group else self.call(depth)
        if rng.random() < 0.12:
            body += f"*{rng.choice([0, 1, 2, 3])}"
        return body

    def chain(self, depth: int) -> str:
        rng = self.rng
        steps = []
        for _ in range(rng.randint(1, 4)):
            steps.append(self.step(depth))
            if rng.random() < 0.45:
                steps.append("+")
        if rng.random() < 0.6 and steps[-1] != "+":
            steps.append("+")
        return "->".join(steps)

    def block(self, depth: int = 2) -> str:
        branches = [self.chain(depth) for _ in range(1 if self.rng.random() < 0.75 else 2)]
        return " | ".join(branches)


def _run(text: str, where: str, rng: random.Random) -> str:
    """Build a tiny model with ``text`` as its block, embedding or head; run it forward and
    backward. Returns "ran" or "rejected"; any other exception propagates."""
    model_table: dict[str, object] = {
        "vocab": VOCAB,
        "d_model": D,
        "context": CONTEXT,
        "layers": "block*2",
    }
    blocks = {"block": "Norm->MLP->+"}
    if where == "block":
        blocks["block"] = text
    else:
        model_table[where] = text
    config = {"model": model_table, "blocks": blocks, "defaults": {"Attn": {"heads": 2}}}
    try:
        model = blockdsl.build_model(config)
        idx = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(0))
        memory = torch.randn(2, 3, D) if rng.random() < 0.7 else None
        logits, loss, _ = model(idx, targets=idx, memory=memory)
        if loss.requires_grad:
            loss.backward()
        model.eval()
        state = model.state_dict()
        model.load_state_dict(state)
    except BlockDSLError:
        return "rejected"
    assert isinstance(logits, torch.Tensor)
    return "ran"


def _fuzz(count: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    names = sorted(c.name for c in REGISTRY.components())
    generator = Generator(rng, names)
    outcomes = {"ran": 0, "rejected": 0}
    torch.manual_seed(seed)
    for index in range(count):
        where = rng.choice(["block"] * 6 + ["embed", "head"])
        text = generator.block(depth=2)
        if where == "embed" and rng.random() < 0.7:
            text = "Embed->" + text
        if where == "head" and rng.random() < 0.7:
            text = text + "->Head"
        try:
            outcomes[_run(text, where, rng)] += 1
        except Exception as exc:  # anything but BlockDSLError is a bug: say which input
            raise AssertionError(
                f"input {index} (seed {seed}) as {where}: {text!r} raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return outcomes


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_hostile_fuzz_default_run():
    outcomes = _fuzz(300, seed=0)
    print(f"hostile fuzz: {outcomes}")
    assert outcomes["ran"] >= 30 and outcomes["rejected"] >= 30, outcomes


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_hostile_fuzz_thousands(seed):
    outcomes = _fuzz(1000, seed=seed)
    print(f"hostile fuzz seed {seed}: {outcomes}")
    assert outcomes["ran"] >= 100 and outcomes["rejected"] >= 100, outcomes


def test_generator_reaches_the_odd_places():
    rng = random.Random(0)
    generator = Generator(rng, sorted(c.name for c in REGISTRY.components()))
    texts = " ".join(generator.block() for _ in range(300))
    for needle in ("CrossAttn", "Embed", "Head", "MoE[", "##", "*0"):
        assert needle in texts, needle
    assert isinstance(nn.Module, type)
