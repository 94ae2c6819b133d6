"""Text → AST: the fast LALR parser for block strings, and its error messages.

The grammar lives in ``grammar/blockdsl.lark`` (shipped in the wheel as
``blockdsl/grammar/blockdsl.lark``); it is the single source of truth for the syntax. The Lark
parser is built once, lazily, with an inline transformer (``_AstBuilder``): the LALR parser
calls it as it reduces, so no intermediate parse tree is built and no step of the process
recurses (deep nesting cannot overflow the stack while parsing).

Every failure is a :class:`~blockdsl.errors.BlockSyntaxError`. Lark's exceptions are turned
into messages about the mistake a person actually made (a trailing ``->``, an unclosed
``(``, a missing ``,`` ...) by the ordered rules of ``blockdsl.diagnostics``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer
from lark.exceptions import LarkError, UnexpectedInput

from blockdsl.ast import (
    Arg,
    Block,
    Call,
    Chain,
    Group,
    Node,
    Repeat,
    Residual,
    SlotFill,
    Value,
)
from blockdsl.diagnostics import BRACKETS, WHITESPACE, explain
from blockdsl.errors import BlockSyntaxError, Span

__all__ = ["MAX_NESTING", "grammar_path", "lark_parser", "parse", "source_text"]

#: Deepest allowed nesting of ``(`` and ``[`` (groups, arguments, children and lists together).
#: Parsing itself never recurses, but everything that walks the tree afterwards (equality, the
#: printer, the graph builder) does; real blocks nest a handful of levels.
MAX_NESTING = 64

_BOOLEANS = {"true": True, "false": False, "True": True, "False": False}
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}


# ---- loading the grammar ------------------------------------------------------------------


def grammar_path() -> Path:
    """Where the grammar is: inside the package when installed from a wheel, else at the top
    of the repository (a source checkout)."""
    packaged = Path(__file__).parent / "grammar" / "blockdsl.lark"
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "grammar" / "blockdsl.lark"


@functools.cache
def lark_parser() -> Lark:
    """The LALR parser, built on first use and cached (building it takes ~50 ms)."""
    return Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        transformer=_AstBuilder(),
        keep_all_tokens=True,  # spans need the brackets, which lark would otherwise drop
    )


@functools.cache
def _token_lexer() -> Lark:
    """A context-free lexer for the same terminals, used only to explain errors."""
    return Lark(grammar_path().read_text(encoding="utf-8"), parser="lalr", lexer="basic")


# ---- public entry points ------------------------------------------------------------------


def source_text(src: str | Sequence[str]) -> str:
    """The text that the spans of ``parse(src)`` point into: ``src`` itself, or a list's
    branches joined by ``" | "``."""
    if isinstance(src, str):
        return src
    return " | ".join(_check_branches(src))


def parse(src: str | Sequence[str]) -> Block:
    """Parse a block string, or a list of strings meaning parallel branches.

    A list is equivalent to its strings joined by ``" | "``. Each string is first parsed on its
    own, so that a syntax error points into the string at fault (``context="branch i"``);
    the returned Block's spans are offsets into the joined text (see :func:`source_text`).

    Raises :class:`~blockdsl.errors.BlockSyntaxError` for any text that is not a block string,
    and ``TypeError`` if ``src`` is neither a string nor a sequence of strings.
    """
    if isinstance(src, str):
        return _parse_text(src)
    branches = _check_branches(src)
    for i, branch in enumerate(branches):
        try:
            _parse_text(branch)
        except BlockSyntaxError as err:
            raise err.with_context(f"branch {i + 1}") from None
    return _parse_text(" | ".join(branches))


def _check_branches(src: Any) -> list[str]:
    if isinstance(src, (bytes, bytearray)) or not isinstance(src, Sequence):
        raise TypeError(f"a block is a string or a list of strings, not {type(src).__name__}")
    branches = list(src)
    for branch in branches:
        if not isinstance(branch, str):
            raise TypeError(f"a parallel branch must be a string, not {type(branch).__name__}")
    return branches


def _parse_text(text: str) -> Block:
    if not text.strip(WHITESPACE):
        raise BlockSyntaxError(
            "empty block string",
            text,
            Span.at(text, 0, len(text)),
            hint="a block needs at least one step, e.g. 'Norm->Attn->+'",
        )
    # Before parsing, so that absurdly deep input fails fast (the parser would cope, but
    # everything downstream recurses).
    _check_nesting(text)
    try:
        block = lark_parser().parse(text)
    except UnexpectedInput as err:
        raise explain(text, err, _token_lexer()) from None
    except _BuildError as err:
        raise BlockSyntaxError(
            err.message, text, Span.at(text, err.start, err.end), hint=err.hint
        ) from None
    except RecursionError:  # not expected (nothing recurses), but never let it escape
        raise _too_deep(text, 0) from None
    except LarkError as err:  # a lark failure not foreseen above: still one of ours
        raise BlockSyntaxError(f"cannot parse: {err}".splitlines()[0], text) from None
    return block


# ---- building the AST ---------------------------------------------------------------------


class _BuildError(Exception):
    """A problem found while building the AST (the grammar cannot express it); turned into a
    BlockSyntaxError by ``_parse_text``, which knows the source text."""

    def __init__(self, message: str, start: int, end: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.start, self.end, self.hint = message, start, end, hint


class _Args(tuple):
    """The result of the ``args`` rule, told apart from ``children`` by its type."""

    span: Span


class _Children(tuple):
    span: Span


def _tok_span(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.start_pos, tok.end_pos)


def _span(first: Token | Node | _Args | _Children, last: Token | Node | _Args | _Children) -> Span:
    """From the start of ``first`` to the end of ``last`` (tokens or built nodes)."""
    a = _tok_span(first) if isinstance(first, Token) else first.span
    b = _tok_span(last) if isinstance(last, Token) else last.span
    return Span(a.line, a.column, a.start, b.end)


class _AstBuilder(Transformer):
    """Called by the LALR parser at each reduction; every method receives all the rule's
    children, tokens included (``keep_all_tokens``), and returns an AST node.

    Careful: lark also calls methods named like a *terminal* (upper case) on every token, so
    this class must define none."""

    def start(self, c: list) -> Block:
        return c[0]

    def block(self, c: list) -> Block:
        chains = tuple(c[0::2])  # chain PIPE chain PIPE ...
        return Block(chains, span=_span(c[0], c[-1]))

    def chain(self, c: list) -> Chain:
        return Chain(tuple(c[0::2]), span=_span(c[0], c[-1]))

    def residual(self, c: list) -> Residual:
        if len(c) == 1:
            return Residual(span=_tok_span(c[0]))
        return Residual(tuple(c[1]), span=_span(c[0], c[1]))

    def group(self, c: list) -> Group:
        return Group(c[1], span=_span(c[0], c[2]))

    def repeat(self, c: list) -> Repeat:
        body, _star, count = c
        return Repeat(body, _to_int(count), span=_span(body, count), count_span=_tok_span(count))

    def call(self, c: list) -> Call:
        name: Token = c[0]
        label = args = children = None
        global_label = False
        for part in c[1:]:
            if isinstance(part, _Args):
                args = part
            elif isinstance(part, _Children):
                children = part
            else:  # LABEL ('#name') or GLOBAL_LABEL ('##name')
                global_label = part.type == "GLOBAL_LABEL"
                label = part.value.lstrip("#")
        children = children or ()
        return Call(
            name.value,
            label,
            tuple(args) if args else (),
            tuple(child for child in children if isinstance(child, Block)),
            tuple(child for child in children if isinstance(child, SlotFill)),
            global_label=global_label,
            span=_span(name, c[-1]),
            name_span=_tok_span(name),
        )

    def args(self, c: list) -> _Args:
        # LPAR arg COMMA arg ... RPAR; ``arg`` is inlined, so a positional one is a bare Value.
        out = _Args(Arg(None, a, span=a.span) if isinstance(a, Value) else a for a in c[1:-1:2])
        out.span = _span(c[0], c[-1])
        return out

    def children(self, c: list) -> _Children:
        out = _Children(c[1:-1:2])
        out.span = _span(c[0], c[-1])
        return out

    def slot(self, c: list) -> SlotFill:
        name, _eq, block = c
        return SlotFill(name.value, block, span=_span(name, block), name_span=_tok_span(name))

    def kwarg(self, c: list) -> Arg:
        name, _eq, value = c
        return Arg(name.value, value, span=_span(name, value))

    def number(self, c: list) -> Value:
        tok: Token = c[0]
        text = tok.value
        if any(ch in text for ch in ".eE"):
            # Like Python, a float literal too large for a float is infinity (printed 1e999).
            return Value("float", float(text), span=_tok_span(tok))
        return Value("int", _to_int(tok), span=_tok_span(tok))

    def name(self, c: list) -> Value:
        tok: Token = c[0]
        if tok.value in _BOOLEANS:
            return Value("bool", _BOOLEANS[tok.value], span=_tok_span(tok))
        return Value("name", tok.value, span=_tok_span(tok))

    def string(self, c: list) -> Value:
        tok: Token = c[0]
        return Value("string", _unescape(tok.value[1:-1]), span=_tok_span(tok))

    def list(self, c: list) -> Value:
        return Value("list", tuple(c[1:-1:2]), span=_span(c[0], c[-1]))


def _to_int(tok: Token) -> int:
    try:
        return int(tok.value)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        raise _BuildError(
            "number too large", tok.start_pos, tok.end_pos, hint="write fewer than 4300 digits"
        ) from None


def _unescape(body: str) -> str:
    if "\\" not in body:
        return body
    # The grammar admits only the escapes in _ESCAPES, so every backslash starts one.
    return re.sub(r"\\(.)", lambda m: _ESCAPES[m.group(1)], body)


# ---- nesting ------------------------------------------------------------------------------


def _check_nesting(text: str) -> None:
    if text.count("(") + text.count("[") <= MAX_NESTING:
        return  # cannot nest deeper than the number of openers; the common, cheap case
    depth = 0
    for m in BRACKETS.finditer(text):
        ch = m.group()
        if ch in "([":
            depth += 1
            if depth > MAX_NESTING:
                raise _too_deep(text, m.start())
        elif ch in ")]":
            depth -= 1


def _too_deep(text: str, pos: int) -> BlockSyntaxError:
    return BlockSyntaxError(
        "nesting too deep",
        text,
        Span.at(text, pos, pos + 1),
        hint=f"at most {MAX_NESTING} levels of '(' and '[' are allowed",
    )
