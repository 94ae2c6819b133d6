"""Any label the grammar accepts works: Python keywords, every attribute of ``nn.Module`` and of
the generated block class, and random identifiers build a model that runs forward and
backward, switches between ``.train()`` and ``.eval()`` and round-trips its ``state_dict``
(lowering owns every Python name; docs/language.md, "Names in the generated module")."""

from __future__ import annotations

import itertools
import keyword

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import blockdsl
from blockdsl.lower import python_name, reserved_names

# One call per label, over components with and without parameters and call-time inputs.
SLOTS = ["Norm#{}", "Attn#{}(heads=2)", "Linear#{}", "Scale#{}", "MLP#{}(hidden=8)", "Gate#{}"]
PER_BLOCK = len(SLOTS)


def _sample_block() -> blockdsl.BlockModule:
    return blockdsl.compile_block("Norm->Attn->+", d_model=8)


def hostile_names() -> list[str]:
    """Every keyword (soft ones too) and every attribute name of nn.Module and of a generated
    block (class and instance), as far as the label grammar can write them."""
    block = _sample_block()
    names = {
        *keyword.kwlist,
        *keyword.softkwlist,
        *dir(nn.Module),
        *vars(nn.Module()),
        *dir(type(block)),
        *vars(block),
        "self",
        "x",
        "positions",
        "memory",
        "state",
        "add",
        "output",
    }
    return sorted(n for n in names if n.replace("_", "a").isalnum() and n.isascii())


def _block_text(labels: list[str]) -> str:
    steps = [slot.format(label) for slot, label in zip(itertools.cycle(SLOTS), labels)]
    return "->".join(steps) + "->+"


def _check_model(labels: list[str]) -> None:
    text = _block_text(labels)
    kwargs = dict(d_model=8, vocab=16, context=8, layers="block*2", blocks={"block": text})
    torch.manual_seed(0)
    model = blockdsl.build_model("tiny", **kwargs)
    idx = torch.randint(0, 16, (2, 6))
    model.train()
    loss = model(idx, targets=idx).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters()), text
    model.eval()
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        expected = model(idx).logits
    copy = blockdsl.build_model("tiny", **kwargs)
    copy.load_state_dict(model.state_dict())
    copy.eval()
    with torch.no_grad():
        assert torch.equal(copy(idx).logits, expected), text
    names = [name for name, _ in model.layers[0].named_children()]
    assert len(names) == len(labels)
    assert not set(names) & reserved_names()


NAMES = hostile_names()
CHUNKS = [NAMES[i : i + PER_BLOCK] for i in range(0, len(NAMES), PER_BLOCK)]


def test_the_hostile_list_is_complete():
    assert {"lambda", "class", "training", "_modules", "call_super_init", "self"} <= set(NAMES)
    assert {"forward", "code", "graph", "context", "block_graph", "state_attrs"} <= set(NAMES)
    assert len(NAMES) > 150


@pytest.mark.parametrize("labels", CHUNKS, ids=lambda c: f"{c[0]}..{c[-1]}")
def test_hostile_labels_build_run_and_round_trip(labels):
    _check_model(labels)


@pytest.mark.slow
@settings(max_examples=15, deadline=None, database=None)
@given(
    st.lists(
        st.from_regex(r"[A-Za-z0-9_]{1,10}", fullmatch=True),
        min_size=1,
        max_size=PER_BLOCK,
        unique=True,
    )
)
def test_random_labels_build_run_and_round_trip(labels):
    _check_model(labels)


def test_the_mapping_is_readable_and_documented():
    block = blockdsl.compile_block("Norm#lambda->Attn#training->+->Norm->MLP->+", d_model=64)
    assert [n for n, _ in block.named_children()] == ["lambda_", "training_", "norm", "mlp"]
    assert "lambda_ = self.lambda_(x)" in block.code
    assert python_name("class") == "class_"
    assert python_name("0") == "m_0"
    assert python_name("norm", {"norm"}) == "norm_1"
