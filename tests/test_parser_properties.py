"""Property tests: generated block strings round-trip, and no input makes ``parse`` raise
anything but a well-placed BlockDSLError."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

from blockdsl import BlockDSLError, parse, unparse
from blockdsl.parser import lark_parser

# CI runs on two cores: keep every property to a few seconds.
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _quote(body: str, q: str) -> str:
    escaped = body.replace("\\", "\\\\").replace(q, "\\" + q)
    return q + escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + q


_ALNUM = "abcxyzABCXYZ0123456789_"
# Strategies for the grammar's regex terminals. Hypothesis can derive them from the regexes
# itself, but that costs ~5 ms a token (minutes per test); these are fast, and
# test_terminal_strategies_match_the_grammar keeps them honest.
TERMINALS = {
    "NAME": st.one_of(
        st.sampled_from(["Norm", "Attn", "MLP", "MoE", "gelu", "true", "False", "_x", "A1"]),
        st.builds(str.__add__, st.sampled_from("aZ_"), st.text(_ALNUM, max_size=5)),
    ),
    "LABEL": st.text(_ALNUM, min_size=1, max_size=4).map("#".__add__),
    "COUNT": st.one_of(
        st.integers(0, 99).map(str), st.sampled_from(["007", "12345678901234567890"])
    ),
    "NUMBER": st.one_of(
        st.integers(-(10**20), 10**20).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(["1.", ".5", "-.5", "1e-6", "-2.5E+3", "007", "1e999", "-0.0", "0"]),
    ),
    "STRING": st.builds(_quote, st.text(max_size=6), st.sampled_from("\"'")),
    "WS": st.sampled_from([" ", "  ", "\n", "\t", " \r\n  "]),
}
BLOCKS = from_lark(lark_parser(), start="start", explicit=TERMINALS)

SEEDS = [
    line.split("  =>  ")[0]
    for line in (Path(__file__).parent / "fixtures" / "valid_blocks.txt")
    .read_text(encoding="utf-8")
    .splitlines()
    if line.strip() and not line.startswith("#") and not line.startswith("json:")
]


def check_parse_or_placed_error(src: str) -> None:
    """``parse`` either succeeds (and then round-trips) or raises a BlockDSLError whose
    position lies inside the input. Anything else propagates and fails the test."""
    try:
        block = parse(src)
    except BlockDSLError as err:
        assert err.source == src
        assert err.line >= 1 and err.column >= 1
        if src:
            assert 0 <= err.span.start < len(src)
            lines = src.split("\n")
            assert err.line <= len(lines)
            assert err.column <= len(lines[err.line - 1]) + 1
        else:
            assert (err.line, err.column) == (1, 1)
        str(err)  # renders
        return
    text = unparse(block)
    assert parse(text) == block
    assert unparse(parse(text)) == text


# from_lark draws cost ~1 ms a grammar symbol (the strings average ~100 characters), so this
# property gets fewer examples than the others: 60 take ~15 s on one core.
@pytest.mark.slow
@settings(FAST, max_examples=60)
@given(BLOCKS)
def test_grammar_strings_parse_and_round_trip(src: str):
    block = parse(src)
    text = unparse(block)
    assert parse(text) == block
    assert unparse(parse(text)) == text


@pytest.mark.parametrize("name", sorted(TERMINALS))
def test_terminal_strategies_match_the_grammar(name: str):
    pattern = re.compile(lark_parser().get_terminal(name).pattern.to_regexp())

    @FAST
    @given(TERMINALS[name])
    def check(token: str) -> None:
        assert pattern.fullmatch(token), token

    check()


@FAST
@given(st.text())
def test_arbitrary_text(src: str):
    check_parse_or_placed_error(src)


@FAST
@given(st.text(alphabet="()[]#*+-><=|,.\"'\\ \n\t0123456789aAx_→é\x00"))
def test_arbitrary_text_from_the_languages_characters(src: str):
    check_parse_or_placed_error(src)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid string with a few characters deleted, duplicated, swapped or inserted."""
    src = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        if not src:
            break
        i = draw(st.integers(0, len(src) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "insert"]))
        if op == "delete":
            src = src[:i] + src[i + 1 :]
        elif op == "duplicate":
            src = src[: i + 1] + src[i:]
        elif op == "swap" and i + 1 < len(src):
            src = src[:i] + src[i + 1] + src[i] + src[i + 2 :]
        elif op == "insert":
            src = src[:i] + draw(st.sampled_from("()[]#*+-><=|,.\"' \n0a→")) + src[i:]
    return src


@FAST
@given(mutated())
def test_mutated_valid_strings(src: str):
    check_parse_or_placed_error(src)


@FAST
@given(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=4))
def test_list_input_is_joined_branches(branches: list[str]):
    assert parse(branches) == parse(" | ".join(branches))
