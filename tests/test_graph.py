"""Graph IR: expansion semantics (docs/language.md, "Semantics"), checked structurally on the spec's
examples and numerically with parameter-free components whose arithmetic is easy to follow."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import blockdsl
from blockdsl import BlockDSLError, Registry, build_graph, compile_block
from blockdsl.graph import BlockGraph

D = 64

# ---------------------------------------------------------------- the spec's examples
SPEC_EXAMPLES = [
    # (block, nodes, edges, expression)
    (
        "Norm->Attn->+->Norm->MLP->+",
        8,
        9,
        "x + Attn(Norm(x)) + MLP(Norm(x + Attn(Norm(x))))",
    ),
    (
        "(Attn->+)->Norm->(MLP->+)->Norm",
        8,
        9,
        "Norm(Norm(x + Attn(x)) + MLP(Norm(x + Attn(x))))",
    ),
    (
        "Norm->Attn->Norm->+->Norm->MLP->Norm->+",
        10,
        11,
        "x + Norm(Attn(Norm(x))) + Norm(MLP(Norm(x + Norm(Attn(Norm(x))))))",
    ),
    (
        "Norm#ln->Attn->+ | Norm#ln->MLP->+",
        7,
        8,
        "x + Attn(Norm#ln(x)) + MLP(Norm#ln(x))",
    ),
    (
        "Norm->Attn->+ | Norm->MLP->+",
        8,
        9,
        "x + Attn(Norm(x)) + MLP(Norm(x))",
    ),
    (
        "Norm->Attn->+->Norm->MLP->+ | Norm->MoE->+",
        11,
        13,
        "x + Attn(Norm(x)) + MLP(Norm(x + Attn(Norm(x)))) + MoE(Norm(x))",
    ),
    (
        "Norm->MoE(k=2)[MLP, MLP(act=gelu), Norm->MLP]->+",
        5,
        5,
        "x + MoE(Norm(x))",
    ),
    (
        "(Norm->Attn->+)*2->Norm->MLP->+",
        11,
        13,
        # A group has its own taps: the final '+' adds to the chain's input.
        "x + MLP(Norm(x + Attn(Norm(x)) + Attn(Norm(x + Attn(Norm(x))))))",
    ),
]


@pytest.mark.parametrize(("src", "nodes", "edges", "expression"), SPEC_EXAMPLES)
def test_spec_examples_build(src: str, nodes: int, edges: int, expression: str) -> None:
    graph = build_graph(src, d_model=D)
    assert isinstance(graph.nx, nx.DiGraph)
    assert nx.is_directed_acyclic_graph(graph.nx)
    assert graph.nx.number_of_nodes() == nodes
    assert graph.nx.number_of_edges() == edges
    assert graph.expression() == expression
    kinds = {data["kind"] for _, data in graph.nodes()}
    assert kinds <= {"input", "call", "add", "output"}


@pytest.mark.parametrize(("src", "nodes", "edges", "expression"), SPEC_EXAMPLES)
def test_graph_params_equal_built_module(src: str, nodes: int, edges: int, expression: str) -> None:
    graph = build_graph(src, d_model=D)
    block = compile_block(src, d_model=D)
    assert graph.params() == sum(p.numel() for p in block.parameters())


def test_call_nodes_carry_resolved_arguments_and_spans() -> None:
    src = "Norm->Attn(heads=4)->+"
    graph = build_graph(src, d_model=D, defaults={"Attn": {"kv_heads": 2, "heads": 8}})
    (_, attn), *_ = [(n, d) for n, d in graph.calls() if d["name"] == "attn"]
    assert attn["component"] == "Attn"
    assert (attn["args"]["heads"], attn["label"], attn["d_in"], attn["d_out"]) == (4, None, D, D)
    spec = graph.modules[attn["module"]]
    assert spec.component.name == "Attn"
    # inline > [defaults] > component defaults
    assert spec.args["heads"] == 4
    assert spec.args["kv_heads"] == 2
    assert spec.args["causal"] is True
    assert spec.args["d_model"] == D
    assert (spec.d_in, spec.d_out) == (D, D)
    assert attn["span"].column == 7
    assert src[attn["span"].start : attn["span"].end] == "Attn(heads=4)"


def test_alias_arguments_sit_between_inline_and_defaults() -> None:
    graph = build_graph("RMSNorm(eps=0.1)", d_model=D, defaults={"Norm": {"kind": "layer"}})
    (spec,) = graph.modules.values()
    assert spec.args["kind"] == "rms"
    assert spec.args["eps"] == 0.1


def test_feature_sizes_flow_through_size_changing_components() -> None:
    graph = build_graph("Norm->Linear(out=32)->Linear(out=64)->+", d_model=D)
    sizes = [data["size"] for _, data in graph.nodes()]
    assert sizes == [64, 64, 32, 64, 64, 64]


def test_flops_count_each_application_of_a_shared_module() -> None:
    once = build_graph("Norm#n->MLP#m->+", d_model=D)
    twice = build_graph("(Norm#n->MLP#m->+)*2", d_model=D)
    assert twice.params() == once.params()
    assert twice.flops(16) == 2 * once.flops(16)


# ---------------------------------------------------------------- numerical semantics
class Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


class Inc(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class Counter(nn.Module):
    """Triples its input and counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 3 * x


class SumOf(nn.Module):
    """Combinator: the sum of its children's outputs."""

    def __init__(self, children: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(children)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


@pytest.fixture
def toy() -> Registry:
    registry = Registry()
    for name, cls in [
        ("Double", Double),
        ("Inc", Inc),
        ("Sq", Square),
        ("Count", Counter),
        ("Sum", SumOf),
    ]:
        registry.register(name)(cls)
    return registry


ARITHMETIC = [
    # taps
    ("Double->+", 3 + 6),
    ("Double->Inc", 7),
    ("Double->+->Inc->+", 9 + 10),
    ("Double->+->Sq->+", 9 + 81),
    # groups: own taps, the outer tap stays
    ("(Double->+)->Inc->+", 3 + 10),
    ("(Double->+)->Sq", 81),
    ("Inc->(Double->+)->+", 3 + (4 + 8)),
    # repeats: N applications in sequence
    ("Double*3->+", 3 + 24),
    ("(Double->+)*2", 27),
    ("(Inc->+)*3", ((3 + 4) + 8) + 16),
    # parallel branches: input + every update, no subtraction
    ("Double->+ | Inc->+", 3 + 6 + 4),
    ("Double->+->Sq->+ | Inc->+", 3 + 6 + 81 + 4),
    ("Double->+ | Inc->+ | Sq->+", 3 + 6 + 4 + 9),
    ("Double->+ | Inc->+->Inc->+", 3 + 6 + 4 + 8),
    ("(Double->+ | Inc->+)->Sq", (3 + 6 + 4) ** 2),
    # children: the combinator receives each child block as a module
    ("Sum[Double, Inc]->+", 3 + 6 + 4),
    ("Sum[Double->Inc, Sq]", 7 + 9),
    ("Sum[Double->+, Inc]", 9 + 4),
    # labels: one module, computed once per value
    ("Count#c->+ | Count#c->+", 3 + 9 + 9),
    ("Count#c->Count#c", 27),
]


@pytest.mark.parametrize(("src", "expected"), ARITHMETIC)
def test_block_arithmetic(toy: Registry, src: str, expected: float) -> None:
    block = compile_block(src, d_model=4, registry=toy)
    out = block(torch.full((1, 2, 4), 3.0))
    assert torch.equal(out, torch.full((1, 2, 4), float(expected)))


def test_shared_label_on_the_same_value_runs_once(toy: Registry) -> None:
    block = compile_block("Count#c->+ | Count#c->+", d_model=4, registry=toy)
    (counter,) = [m for m in block.modules() if isinstance(m, Counter)]
    block(torch.ones(1, 1, 4))
    assert counter.calls == 1


def test_labelled_module_applied_to_different_values_runs_each_time(toy: Registry) -> None:
    block = compile_block("Count#c->Count#c->+", d_model=4, registry=toy)
    (counter,) = [m for m in block.modules() if isinstance(m, Counter)]
    block(torch.ones(1, 1, 4))
    assert counter.calls == 2


def test_unlabelled_repeats_are_distinct_modules() -> None:
    block = compile_block("(MLP->+)*3", d_model=16)
    assert len([m for m in block.modules() if type(m).__name__ == "MLP"]) == 3
    shared = compile_block("(MLP#m->+)*3", d_model=16)
    assert len([m for m in shared.modules() if type(m).__name__ == "MLP"]) == 1


def test_parallel_sum_is_exact_in_float() -> None:
    """The parallel result is computed as input + updates, never as a difference of branch
    outputs, so it matches a hand-written sum bit for bit."""
    torch.manual_seed(0)
    block = compile_block("Norm->Attn->+->Norm->MLP->+ | Norm->MLP->+", d_model=32).eval()
    x = torch.randn(2, 5, 32) * 1e4
    mods = dict(block.named_children())
    a = mods["attn"](mods["norm"](x))
    m = mods["mlp"](mods["norm_1"](x + a))
    e = mods["mlp_1"](mods["norm_2"](x))
    assert torch.equal(block(x), x + a + m + e)


# ---------------------------------------------------------------- structure
def test_graph_is_a_small_closed_ir() -> None:
    graph = build_graph("Norm->Attn->+ | Norm->MLP->+", d_model=D)
    for node, data in graph.nodes():
        assert data["kind"] in ("input", "call", "add", "output")
        assert list(data["inputs"]) == [
            p for p in data["inputs"] if p in set(graph.nx.predecessors(node))
        ]
    assert graph.nx.in_degree(graph.input) == 0
    assert graph.nx.out_degree(graph.output) == 0


def test_children_are_owned_subgraphs() -> None:
    graph = build_graph("MoE[MLP, Norm->MLP]", d_model=D)
    (spec,) = graph.modules.values()
    assert [type(child) for child in spec.children] == [BlockGraph, BlockGraph]
    assert spec.children[1].expression() == "MLP(Norm(x))"


def test_global_labels_are_shared_across_blocks_of_one_model() -> None:
    model = blockdsl.build_model(
        "tiny",
        d_model=32,
        layers="shared*3",
        blocks={"shared": "Norm##a->Attn##b->+->Norm##c->MLP##d->+"},
        defaults={"Attn": {"heads": 2, "kv_heads": 1}, "MLP": {"hidden": 64}},
    )
    layer_params = sum(p.numel() for p in model.layers.parameters())
    one = blockdsl.compile_block(
        "Norm->Attn->+->Norm->MLP->+",
        d_model=32,
        defaults={
            "Norm": {"kind": "rms"},
            "Attn": {"heads": 2, "kv_heads": 1},
            "MLP": {"hidden": 64, "act": "silu", "gated": True},
        },
    )
    assert layer_params == sum(p.numel() for p in one.parameters())
    assert model.layers[0].a is model.layers[2].a


# ---------------------------------------------------------------- invalid blocks, verbatim
def _load_invalid(path: Path) -> list[tuple[str, str]]:
    entries = path.read_text().split("\n---\n")[1:]
    cases = []
    for entry in entries:
        first, _, expected = entry.partition("\n")
        cases.append((json.loads(first), expected.rstrip("\n")))
    return cases


INVALID = _load_invalid(Path(__file__).parent / "fixtures" / "invalid_semantics.txt")


def test_invalid_fixture_is_large_enough() -> None:
    assert len(INVALID) >= 25


@pytest.mark.parametrize(("src", "expected"), INVALID, ids=[s for s, _ in INVALID])
def test_semantic_errors_verbatim(src: str, expected: str) -> None:
    with pytest.raises(BlockDSLError) as info:
        build_graph(src, d_model=64)
    assert str(info.value) == expected
    for problem in info.value.problems:
        assert 1 <= problem.column <= len(src.split("\n")[problem.line - 1]) + 1


# ---------------------------------------------------------------- random architectures
STEP_CALLS = [
    "Norm",
    "Norm(kind=layer, bias=true)",
    "Attn(heads=2)",
    "Attn(heads=4, kv_heads=2, window=3)",
    "MLP(hidden=24)",
    "MLP(hidden=16, act=silu, gated=true)",
    "Linear(out=16)->Linear(out=16)",
    "Scale",
    "Conv(kernel=3)",
    "Shift",
    "MoE(experts=3, k=2, hidden=8)",
    "MoE(k=1)[MLP(hidden=8), Norm->MLP(hidden=8)]",
]


@st.composite
def architectures(draw: st.DrawFn, depth: int = 2) -> str:
    """A valid block string over STEP_CALLS: segments closed by '+', groups, repeats,
    labels and parallel branches."""

    def segment(level: int) -> str:
        steps = []
        for _ in range(draw(st.integers(1, 3))):
            if level < depth and draw(st.booleans()):
                inner = segment(level + 1)
                step = f"({inner})"
            else:
                index = draw(st.integers(0, len(STEP_CALLS) - 1))
                step = STEP_CALLS[index]
                if "->" not in step and "[" not in step and draw(st.booleans()):
                    # A label names one module: derive it from the call so that every use
                    # of a label has the same component and arguments.
                    name, paren, rest = step.partition("(")
                    step = f"{name}#l{index}_{draw(st.integers(0, 1))}{paren}{rest}"
            if draw(st.integers(0, 4)) == 0:
                step = f"({step})*{draw(st.integers(1, 2))}"
            steps.append(step)
        return "->".join(steps) + ("->+" if draw(st.booleans()) else "")

    branches = draw(st.integers(1, 3))
    if branches == 1:
        return segment(0)
    return " | ".join(segment(0).removesuffix("->+") + "->+" for _ in range(branches))


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(architectures())
def test_random_architectures_are_dags_with_exact_parameter_counts(src: str) -> None:
    graph = build_graph(src, d_model=16)
    assert nx.is_directed_acyclic_graph(graph.nx)
    block = compile_block(src, d_model=16)
    assert graph.params() == sum(p.numel() for p in block.parameters())
    out = block(torch.randn(1, 5, 16))
    out = out[0] if block.has_aux else out
    assert out.shape == (1, 5, 16)


def test_a_user_class_with_only_the_register_decorator_compiles() -> None:
    @blockdsl.register("HalfTest")
    class Half(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x / 2

    try:
        block = compile_block("Norm->HalfTest->+", d_model=8)
        x = torch.randn(2, 3, 8)
        torch.testing.assert_close(block(x), x + block.norm(x) / 2)
    finally:
        blockdsl.REGISTRY.unregister("HalfTest")
