"""Parameterised residuals ``+(args)``: the ``Residual`` component's identities, parallel
branches, errors, the printer, sizes and decoding. Plain ``+`` stays a bare add."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from torch import nn

import blockdsl
from blockdsl import ast
from blockdsl.errors import BlockDSLError, RegistryError
from blockdsl.graph import build_graph
from blockdsl.lower import compile_block
from blockdsl.parser import parse
from blockdsl.printer import unparse
from blockdsl.testing import DEFAULT_GLOBALS, block_asts, check_architecture

D = 16


def _pair(residual: str, plain: str) -> tuple[nn.Module, nn.Module]:
    """Two blocks with the same sublayer weights (the residual's alpha is its own)."""
    torch.manual_seed(0)
    first = compile_block(residual, d_model=D).eval()
    second = compile_block(plain, d_model=D).eval()
    missing, unexpected = first.load_state_dict(second.state_dict(), strict=False)
    assert not unexpected and all(".alpha" in key or key == "residual.alpha" for key in missing)
    return first, second


def test_plain_plus_is_still_a_bare_add() -> None:
    graph = build_graph("Norm->MLP->+", d_model=D)
    assert [spec.component.name for spec in graph.modules.values()] == ["Norm", "MLP"]
    assert graph.expression() == "x + MLP(Norm(x))"


def test_scale_with_alpha_one_is_plain_plus() -> None:
    scaled, plain = _pair("Norm->MLP->+(scale, init=1.0)", "Norm->MLP->+")
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(scaled(x), plain(x), rtol=0, atol=0)


def test_lerp_with_alpha_one_replaces_the_stream() -> None:
    lerp, no_residual = _pair("Norm->MLP->+(lerp, init=1.0)", "Norm->MLP")
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(lerp(x), no_residual(x))


def test_lerp_with_alpha_zero_leaves_the_stream() -> None:
    block = compile_block("Norm->MLP->+(lerp, init=0.0)", d_model=D)
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def test_lerp_is_a_per_channel_interpolation() -> None:
    lerp, no_residual = _pair("Norm->MLP->+(lerp)", "Norm->MLP")
    alpha = torch.linspace(0.0, 1.0, D)
    with torch.no_grad():
        lerp.residual.alpha.copy_(alpha)
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(lerp(x), torch.lerp(x, no_residual(x), alpha))


def test_parallel_branches_sum_their_updates() -> None:
    """``x + u1 + u2``: each branch's update, with its own alpha, added to the shared input."""
    torch.manual_seed(0)
    block = compile_block(["Norm->Attn(heads=2)->+(lerp)", "Norm->MLP->+(scale)"], d_model=D)
    with torch.no_grad():
        block.residual.alpha.copy_(torch.rand(D))
        block.residual_1.alpha.copy_(torch.rand(D))
    x = torch.randn(2, 5, D)
    attn = block.attn(block.norm(x))
    mlp = block.mlp(block.norm_1(x))
    want = x + block.residual.alpha * (attn - x) + block.residual_1.alpha * mlp
    torch.testing.assert_close(block(x), want)


@pytest.mark.parametrize(
    "src",
    [
        "Norm->Attn->+(lerp)",
        "Norm->Attn->+(mix=scale, init=0.1, per_channel=false)->Norm->MLP->+",
        "Norm->MLP->+(lerp) | Norm->Attn->+",
    ],
)
def test_parameterised_residuals_round_trip_through_the_printer(src: str) -> None:
    assert unparse(parse(src)) == src
    build_graph(src, d_model=D)


def test_sizes_parameters_flops_and_expression() -> None:
    plain = build_graph("Norm->MLP->+", d_model=D)
    mixed = build_graph("Norm->MLP->+(lerp)", d_model=D)
    scalar = build_graph("Norm->MLP->+(lerp, per_channel=false)", d_model=D)
    assert mixed.params() == plain.params() + D
    assert scalar.params() == plain.params() + 1
    assert mixed.flops(8) == plain.flops(8) + 2 * D * 8
    assert mixed.expression() == "x + Residual(x, MLP(Norm(x)))"


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("Norm->Residual->+", "Residual is a residual step, not a sublayer"),
        ("Norm->Residual(scale)", "write it as +(...)"),
        ("Norm->MLP->+(lerp, bogus=1)", "unknown argument 'bogus' for Residual"),
        ("Norm->MLP->+(mix=sum)", "argument 'mix' of Residual must be lerp|scale"),
        ("+(lerp)->Norm->MLP", "'+' has nothing to add"),
        ("Norm->Linear(out=8)->+(lerp)", "'+' adds features of different sizes: 16 and 8"),
        ("Norm->MLP->+(lerp)->Norm->MLP", None),  # valid: a chain may end after a '+'
    ],
)
def test_errors_name_the_residual(src: str, message: str | None) -> None:
    if message is None:
        build_graph(src, d_model=D)
        return
    with pytest.raises(BlockDSLError, match=re.escape(message)):
        build_graph(src, d_model=D)


def test_a_registry_without_a_residual_says_so() -> None:
    registry = blockdsl.Registry()
    registry.register("Twice")(_Twice)
    with pytest.raises(BlockDSLError, match=r"needs a registered 'Residual' component"):
        build_graph("Twice->+(lerp)", d_model=D, registry=registry)
    build_graph("Twice->+", d_model=D, registry=registry)


class _Twice(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_a_residual_cannot_mix_positions() -> None:
    registry = blockdsl.Registry()
    with pytest.raises(RegistryError, match="a residual"):
        registry.register("Residual", residual=True, mixes_positions=True)(_Twice)


def test_cached_generation_equals_uncached() -> None:
    torch.manual_seed(0)
    model = blockdsl.build_model(
        {
            "model": {"vocab": 29, "d_model": D, "context": 24, "layers": "b*2"},
            "blocks": {"b": "Norm->Attn(heads=2)->+(lerp)->Norm->MLP->+(scale, init=0.5)"},
        }
    ).eval()
    prompt = torch.randint(0, 29, (2, 5))
    cached = model.generate(prompt, 6, greedy=True)
    assert torch.equal(cached, model.generate(prompt, 6, greedy=True, use_cache=False))


def test_residual_between_layers_is_refused() -> None:
    with pytest.raises(BlockDSLError, match="cannot stand between layers"):
        blockdsl.build_model(
            {
                "model": {"vocab": 29, "d_model": D, "context": 8, "layers": "b->+(lerp)->b"},
                "blocks": {"b": "Norm->MLP->+"},
            }
        )


# ---------------------------------------------------------------- property
def _parameterise(node, draw):
    """``node`` with every '+' replaced by a drawn ``+(args)`` (or kept plain)."""
    if isinstance(node, ast.Residual):
        return draw(_RESIDUALS)
    if isinstance(node, ast.Block):
        return ast.Block(tuple(_parameterise(c, draw) for c in node.chains))
    if isinstance(node, ast.Chain):
        return ast.Chain(tuple(_parameterise(s, draw) for s in node.steps))
    if isinstance(node, ast.Group):
        return ast.Group(_parameterise(node.block, draw))
    if isinstance(node, ast.Repeat):
        return ast.Repeat(_parameterise(node.body, draw), node.count)
    return node  # calls: their children and slots keep plain '+'


def _arg(name: str, kind: str, value: object) -> ast.Arg:
    return ast.Arg(name, ast.Value(kind, value))


_RESIDUALS = st.one_of(
    st.just(ast.Residual()),
    st.builds(
        lambda mix, init, per_channel: ast.Residual(
            (
                _arg(None, "name", mix),
                _arg("init", "float", init),
                _arg("per_channel", "bool", per_channel),
            )
        ),
        st.sampled_from(["lerp", "scale"]),
        st.sampled_from([0.0, 0.25, 1.0]),
        st.booleans(),
    ),
)


# Mixers, position-wise steps and a stateful step (the residuals are what is drawn here)
_COMPONENTS = ["Attn", "MLP", "Norm", "Linear", "Gate", "Scale", "RWKV7ChannelMix"]


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(block_asts(_COMPONENTS, d_model=D, max_depth=1, max_length=2), st.data())
def test_random_blocks_with_parameterised_residuals_pass_every_invariant(block, data) -> None:
    """Random blocks with their '+' steps drawn as '+(args)': they print and parse back, build,
    and pass every invariant (shape, causality, gradients, ...)."""
    mixed = _parameterise(block, data.draw)
    text = unparse(mixed)
    note(text)
    assert parse(text) == mixed
    module = compile_block(text, d_model=D, model_globals=DEFAULT_GLOBALS)
    check_architecture(module, d_model=D, architecture=text)
