"""Parser and printer: the fixture files, list input, spans, and robustness edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import blockdsl
from blockdsl import BlockDSLError, BlockSyntaxError, parse, unparse
from blockdsl.ast import Arg, Block, Call, Chain, Group, Repeat, Residual, Value, walk
from blockdsl.parser import MAX_NESTING, grammar_path, source_text

FIXTURES = Path(__file__).parent / "fixtures"


def _valid_cases() -> list[tuple[str, str]]:
    cases = []
    for line in (FIXTURES / "valid_blocks.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        given, canonical = line.split("  =>  ")
        if given.startswith("json:"):
            given = json.loads(given[len("json:") :])
        cases.append((given, canonical))
    return cases


def _invalid_cases() -> list[tuple[str, str]]:
    text = (FIXTURES / "invalid_blocks.txt").read_text(encoding="utf-8")
    cases = []
    for entry in text.split("\n---\n")[1:]:
        first, _, expected = entry.partition("\n")
        cases.append((json.loads(first), expected.rstrip("\n")))
    return cases


VALID = _valid_cases()
INVALID = _invalid_cases()


def test_fixture_sizes():
    assert len(VALID) >= 40
    assert len(INVALID) >= 30


@pytest.mark.parametrize(("given", "canonical"), VALID, ids=[c for _, c in VALID])
def test_valid_blocks(given: str, canonical: str):
    block = parse(given)
    assert unparse(block) == canonical
    assert parse(canonical) == block  # round trip
    assert unparse(parse(canonical)) == canonical  # fixed point


@pytest.mark.parametrize(("given", "expected"), INVALID, ids=[repr(g) for g, _ in INVALID])
def test_invalid_blocks(given: str, expected: str):
    with pytest.raises(BlockSyntaxError) as info:
        parse(given)
    err = info.value
    assert str(err) == expected
    assert err.source == given
    assert f" at {err.line}:{err.column}" in str(err).splitlines()[0]
    if given:
        assert 0 <= err.span.start < len(given)


# ---- AST shape ----------------------------------------------------------------------------


def test_ast_of_a_typical_block():
    block = parse("Norm#ln(eps=1e-6)->MoE(2, act=gelu)[MLP, (A->+)*2]->+")
    norm, moe, plus = block.chains[0].steps
    assert norm == Call("Norm", "ln", (Arg("eps", Value("float", 1e-6)),))
    assert moe.args == (Arg(None, Value("int", 2)), Arg("act", Value("name", "gelu")))
    assert moe.children[0] == Block((Chain((Call("MLP"),)),))
    inner = Block((Chain((Call("A"), Residual())),))
    assert moe.children[1] == Block((Chain((Repeat(Group(inner), 2),)),))
    assert plus == Residual()


def test_single_call_group_stays_a_group():
    (step,) = parse("(Attn)").chains[0].steps
    assert isinstance(step, Group)
    assert unparse(step) == "(Attn)"


def test_value_kinds():
    (call,) = parse("A(1, -2.5, true, False, gelu, 'gelu', [1, [x]], [])").chains[0].steps
    kinds = [(a.value.kind, a.value.to_python()) for a in call.args]
    assert kinds == [
        ("int", 1),
        ("float", -2.5),
        ("bool", True),
        ("bool", False),
        ("name", "gelu"),
        ("string", "gelu"),
        ("list", [1, ["x"]]),
        ("list", []),
    ]


def test_names_and_strings_differ_but_print_as_written():
    assert parse("A(act=gelu)") != parse('A(act="gelu")')
    assert unparse(parse("A(act=gelu)")) == "A(act=gelu)"
    assert unparse(parse("A(act='gelu')")) == 'A(act="gelu")'


def test_unparse_any_node():
    block = parse('MoE#m(k=2, s="a")[MLP, B]*3')
    repeat = block.chains[0].steps[0]
    call = repeat.body
    assert (
        unparse(block)
        == unparse(block.chains[0])
        == unparse(repeat)
        == 'MoE#m(k=2, s="a")[MLP, B]*3'
    )
    assert unparse(call) == 'MoE#m(k=2, s="a")[MLP, B]'
    assert unparse(call.args[0]) == "k=2"
    assert unparse(call.args[1].value) == '"a"'
    assert unparse(Value("list", (Value("float", 0.1), Value("bool", False)))) == "[0.1, false]"
    assert unparse(Residual()) == "+"
    with pytest.raises(TypeError):
        unparse("Norm")  # type: ignore[arg-type]


def test_unparse_hand_built_names_that_would_not_reparse():
    assert unparse(Value("name", "true")) == '"true"'
    assert unparse(Value("name", "has space")) == '"has space"'


def test_repeat_count_zero_is_syntax_ok():
    (step,) = parse("Attn*0").chains[0].steps
    assert step.count == 0  # the graph stage rejects it


# ---- spans --------------------------------------------------------------------------------


def test_name_span():
    call = parse("Norm->Atn->+").chains[0].steps[1]
    assert call.name_span.line == 1 and call.name_span.column == 7
    assert (call.name_span.start, call.name_span.end) == (6, 9)


def test_spans_cover_their_text():
    src = "Norm#ln(eps=1e-6, k=[1, 2])\n  -> MoE[MLP, (A->+)*2] -> +"
    block = parse(src)
    texts = {}
    for node in walk(block):
        span = node.span
        assert src[span.start : span.end] == src[span.start : span.end].strip()
        texts.setdefault(type(node).__name__, []).append(src[span.start : span.end])
    assert texts["Call"][0] == "Norm#ln(eps=1e-6, k=[1, 2])"
    assert texts["Arg"] == ["eps=1e-6", "k=[1, 2]"]
    assert texts["Value"] == ["1e-6", "[1, 2]", "1", "2"]
    assert texts["Repeat"] == ["(A->+)*2"]
    assert texts["Group"] == ["(A->+)"]
    moe = block.chains[0].steps[1]
    assert (moe.span.line, moe.span.column) == (2, 6)
    assert src[moe.name_span.start : moe.name_span.end] == "MoE"
    repeat = moe.children[1].chains[0].steps[0]
    assert src[repeat.count_span.start : repeat.count_span.end] == "2"
    assert (repeat.count_span.line, repeat.count_span.column) == (2, 22)
    assert block.span.start == 0 and block.span.end == len(src)


# ---- list input and source_text -----------------------------------------------------------


ARCTIC = ["Norm->Attn->+->Norm->MLP->+", "Norm->MoE->+"]


def test_list_is_parallel_branches():
    assert parse(ARCTIC) == parse(" | ".join(ARCTIC))
    assert parse(ARCTIC).is_parallel
    assert parse(("Norm->Attn->+",)) == parse("Norm->Attn->+")


def test_list_spans_point_into_joined_text():
    text = source_text(ARCTIC)
    assert text == "Norm->Attn->+->Norm->MLP->+ | Norm->MoE->+"
    moe = parse(ARCTIC).chains[1].steps[1]
    assert text[moe.name_span.start : moe.name_span.end] == "MoE"
    assert source_text("Norm") == "Norm"


def test_list_error_points_into_its_branch():
    with pytest.raises(BlockSyntaxError) as info:
        parse(["Norm->Attn->+", "Norm->MoE->"])
    err = info.value
    assert err.context == "branch 2"
    assert err.source == "Norm->MoE->"
    assert (err.line, err.column) == (1, 10)
    assert str(err).splitlines()[0] == "blockdsl: trailing '->' at 1:10 in branch 2"


def test_empty_list_and_empty_branch():
    with pytest.raises(BlockSyntaxError, match="empty block string"):
        parse([])
    with pytest.raises(BlockSyntaxError) as info:
        parse(["A->+", " "])
    assert info.value.context == "branch 2"


def test_wrong_types():
    with pytest.raises(TypeError):
        parse(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse(b"Norm")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse(["Norm", 3])  # type: ignore[list-item]


# ---- robustness ---------------------------------------------------------------------------


def test_empty_input_points_at_1_1():
    with pytest.raises(BlockSyntaxError) as info:
        parse("")
    assert (info.value.line, info.value.column, info.value.source) == (1, 1, "")


def test_nul_and_control_characters():
    for src in ["Norm\x00", "\x00", "Norm->\x1b[31m", "A(s='\x00')"]:
        try:
            parse(src)
        except BlockDSLError as err:
            assert err.span.start < len(src)


def test_deep_nesting_is_a_syntax_error():
    ok = "(" * MAX_NESTING + "A" + ")" * MAX_NESTING
    assert unparse(parse(ok)) == ok
    for deep in [
        "(" * (MAX_NESTING + 1) + "A" + ")" * (MAX_NESTING + 1),
        "(" * 100_000 + "A" + ")" * 100_000,
        "A(x=" + "[" * 5000 + "]" * 5000 + ")",
        "M[" * 3000 + "A" + "]" * 3000,
        "(" * 100_000,
    ]:
        with pytest.raises(BlockSyntaxError, match="nesting too deep"):
            parse(deep)
    with pytest.raises(BlockSyntaxError, match="unclosed"):
        parse("(" * MAX_NESTING)


def test_huge_numbers():
    with pytest.raises(BlockSyntaxError, match="number too large"):
        parse("A*" + "9" * 5000)
    with pytest.raises(BlockSyntaxError, match="number too large"):
        parse("A(x=" + "9" * 5000 + ")")
    block = parse("A(x=1e400, y=-1e400)")
    assert unparse(block) == "A(x=1e999, y=-1e999)"
    assert parse(unparse(block)) == block


def test_long_input():
    src = "->".join(["Norm->Attn->+"] * 5000)
    assert len(parse(src).chains[0].steps) == 15000
    with pytest.raises(BlockSyntaxError, match="trailing"):
        parse(src + "->")


def test_grammar_is_found_and_exported():
    assert grammar_path().is_file()
    assert blockdsl.parse is parse and blockdsl.unparse is unparse
    assert {"parse", "unparse"} <= set(blockdsl.__all__)
