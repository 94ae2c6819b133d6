"""Text → AST: the fast LALR parser for block strings, and its error messages.

The grammar lives in ``grammar/blockdsl.lark`` (shipped in the wheel as
``blockdsl/grammar/blockdsl.lark``); it is the single source of truth for the syntax. The Lark
parser is built once, lazily, with an inline transformer (``_AstBuilder``): the LALR parser
calls it as it reduces, so no intermediate parse tree is built and no step of the process
recurses (deep nesting cannot overflow the stack while parsing).

Every failure is a :class:`~blockdsl.errors.BlockSyntaxError`. Lark's exceptions are turned
into messages about the mistake a person actually made (a trailing ``->``, an unclosed
``(``, a missing ``,`` ...) by :func:`_explain`, which looks at the unexpected token, the
tokens just before it, and the brackets still open.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from blockdsl.ast import Arg, Block, Call, Chain, Group, Node, Repeat, Residual, Value
from blockdsl.errors import BlockSyntaxError, Span

__all__ = ["MAX_NESTING", "grammar_path", "lark_parser", "parse", "source_text"]

#: Deepest allowed nesting of ``(`` and ``[`` (groups, arguments, children and lists together).
#: Parsing itself never recurses, but everything that walks the tree afterwards (equality, the
#: printer, the graph builder) does; real blocks nest a handful of levels.
MAX_NESTING = 64

_WHITESPACE = " \t\n\r\f\v"  # the grammar's WS terminal
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
    if not text.strip(_WHITESPACE):
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
        raise _explain(text, err) from None
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
        return Residual(span=_tok_span(c[0]))

    def group(self, c: list) -> Group:
        return Group(c[1], span=_span(c[0], c[2]))

    def repeat(self, c: list) -> Repeat:
        body, _star, count = c
        return Repeat(body, _to_int(count), span=_span(body, count), count_span=_tok_span(count))

    def call(self, c: list) -> Call:
        name: Token = c[0]
        label = args = children = None
        for part in c[1:]:
            if isinstance(part, _Args):
                args = part
            elif isinstance(part, _Children):
                children = part
            else:
                label = part.value[1:]  # LABEL includes its '#'
        return Call(
            name.value,
            label,
            tuple(args) if args else (),
            tuple(children) if children else (),
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

# Strings are skipped so that brackets inside them do not count.
_BRACKETS = re.compile(r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[()\[\]]""")
_CLOSER = {"(": ")", "[": "]"}


def _check_nesting(text: str) -> None:
    if text.count("(") + text.count("[") <= MAX_NESTING:
        return  # cannot nest deeper than the number of openers; the common, cheap case
    depth = 0
    for m in _BRACKETS.finditer(text):
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


def _open_brackets(text: str, upto: int) -> tuple[list[tuple[str, int]], tuple[str, int] | None]:
    """The brackets still open before offset ``upto`` (outermost first), and the first closer
    that has no matching opener (or None)."""
    stack: list[tuple[str, int]] = []
    for m in _BRACKETS.finditer(text, 0, upto):
        ch = m.group()
        if ch in "([":
            stack.append((ch, m.start()))
        elif ch in ")]":
            if not stack or _CLOSER[stack[-1][0]] != ch:
                return stack, (ch, m.start())
            stack.pop()
    return stack, None


# ---- explaining errors --------------------------------------------------------------------

_STRING_HINT = "escapes are \\\\, \\\", \\', \\n, \\t and \\r"
_LOOSE_STRING = {q: re.compile(q + r"(?:[^" + q + r"\\\n]|\\.)*" + q) for q in "\"'"}


def _describe(tok: Token) -> str:
    kind = tok.type
    if kind == "$END":
        return "end of input"
    if kind == "NAME":
        return f"name '{tok.value}'"
    if kind in ("NUMBER", "COUNT"):
        return f"number '{tok.value}'"
    if kind == "STRING":
        return f"string {tok.value}"
    if kind == "LABEL":
        return f"label '{tok.value}'"
    return f"'{tok.value}'"


def _scan(text: str, pos: int) -> tuple[list[Token], str]:
    """The tokens before offset ``pos`` (the last three, all that the rules look at) and what
    the innermost open bracket there is: "top" (none), "group", "args", "children" or "list".

    The LALR parser's own "expected" set is no guide here: LALR merges lookaheads, so it may
    reduce past the place of the mistake before noticing it (``Norm, Attn`` reports only "end
    of input" as expected). The tokens themselves are."""
    last: list[Token] = []
    stack: list[str] = []
    try:
        for tok in _token_lexer().lex(text):
            if tok.start_pos >= pos:
                break
            kind = tok.type
            inner = stack[-1] if stack else "top"
            after_name = bool(last) and last[-1].type in ("NAME", "LABEL")
            if kind == "LPAR":
                stack.append("args" if after_name and inner not in ("args", "list") else "group")
            elif kind == "LSQB":
                stack.append("list" if inner in ("args", "list") else "children")
            elif kind in ("RPAR", "RSQB") and stack:
                stack.pop()
            last.append(tok)
            del last[:-3]
    except UnexpectedInput:
        pass
    return last, (stack[-1] if stack else "top")


def _explain(text: str, err: UnexpectedInput) -> BlockSyntaxError:
    """One BlockSyntaxError for a lark error, naming the likely mistake."""
    if isinstance(err, UnexpectedCharacters):
        message, start, end, hint = _explain_char(text, err)
    elif isinstance(err, UnexpectedToken):
        message, start, end, hint = _explain_token(text, err)
    else:  # UnexpectedEOF: the LALR parser reports end of input as a $END token instead
        message, start, end, hint = "unexpected end of input", *_last_char(text), None
    start = min(start, len(text) - 1)  # always inside the (non-empty) input
    return BlockSyntaxError(message, text, Span.at(text, start, max(end, start + 1)), hint=hint)


def _last_char(text: str) -> tuple[int, int]:
    """The span of the last non-whitespace character (where "end of input" is shown)."""
    end = len(text.rstrip(_WHITESPACE)) or len(text)
    return end - 1, end


Explained = tuple[str, int, int, "str | None"]


def _explain_char(text: str, err: UnexpectedCharacters) -> Explained:
    """A character that starts no token at all."""
    pos = err.pos_in_stream
    ch = text[pos]
    if ch in "\"'":
        loose = _LOOSE_STRING[ch].match(text, pos)
        if loose:  # a complete string with an escape the grammar does not know
            bad = re.search(r"\\[^\"'\\ntr]", loose.group())
            if bad:
                at = pos + bad.start()
                return f"unknown escape '{bad.group()}' in string", at, at + 2, _STRING_HINT
        line_end = text.find("\n", pos)
        line_end = len(text) if line_end < 0 else line_end
        return "unterminated string", pos, line_end, f"close the string with {ch}"
    if ch == "#":
        return (
            "missing label after '#'",
            pos,
            pos + 1,
            "a label is letters, digits or '_' right after '#', e.g. 'Norm#ln'",
        )
    hints = {
        "-": "did you mean '->'?",
        ">": "did you mean '->'?",
        "{": "group steps with '(' and ')'",
        "}": "group steps with '(' and ')'",
        ";": "join steps with '->'",
        "<": "did you mean '->'?",
    }
    if ch.isalpha() and not ch.isascii():
        hints[ch] = "names use ASCII letters, digits and '_'"
    shown = f"'{ch}'" if ch.isprintable() else repr(ch)
    return f"unexpected character {shown}", pos, pos + 1, hints.get(ch)


def _explain_token(text: str, err: UnexpectedToken) -> Explained:
    """A token the grammar does not allow where it stands. The rules, most specific first,
    look at the token, the tokens just before it, and the bracket it is in."""
    tok: Token = err.token
    kind = tok.type
    at_end = kind == "$END"
    pos = len(text) if at_end else tok.start_pos
    before, ctx = _scan(text, pos)
    prev = before[-1] if before else None
    prev_kind = prev.type if prev else None
    t_start, t_end = _last_char(text) if at_end else (tok.start_pos, tok.end_pos)
    # A repeat count just before: ``*`` then a number (the context-free lexer may have read
    # ``2.5`` or ``2e3`` whole where the parser's lexer read the count ``2``).
    after_count = prev_kind in ("COUNT", "NUMBER") and len(before) > 1 and before[-2].type == "STAR"
    in_chain = ctx in ("top", "group", "children")
    step_start = (
        prev is None
        or prev_kind in ("ARROW", "PIPE")
        or (prev_kind in ("LPAR", "LSQB", "COMMA") and in_chain)
    )
    after_step = in_chain and (
        prev_kind in ("NAME", "LABEL", "RPAR", "RSQB", "PLUS") or after_count
    )

    def at_prev(message: str, hint: str | None) -> Explained:
        assert prev is not None
        return message, prev.start_pos, prev.end_pos, hint

    def at_tok(message: str, hint: str | None) -> Explained:
        return message, t_start, t_end, hint

    closing = kind in ("$END", "RPAR", "RSQB", "PIPE", "COMMA")

    # 1. An operator left unfinished: the token before the unexpected one wants more.
    if closing and prev_kind == "ARROW":
        return at_prev(f"trailing '{prev.value}'", "a chain cannot end with '->'")
    if (closing or kind == "ARROW") and prev_kind == "PIPE":
        return at_prev("empty parallel branch", "write a chain on both sides of '|'")
    if kind == "PIPE" and step_start:
        return at_tok("empty parallel branch", "write a chain on both sides of '|'")
    if prev_kind == "STAR" and kind not in ("NAME", "NUMBER", "COUNT", "STRING"):
        return at_prev("missing repeat count after '*'", "write how many times, e.g. 'Attn*2'")
    if prev_kind == "STAR" or (
        after_count and kind in ("NAME", "NUMBER", "COUNT") and prev.end_pos >= tok.start_pos
    ):
        first = prev if prev_kind != "STAR" else tok
        end = max(first.end_pos, tok.end_pos)
        return (
            f"invalid repeat count '{text[first.start_pos : end]}'",
            first.start_pos,
            end,
            "a repeat count is a whole number, e.g. 'Attn*2'",
        )
    if prev_kind == "EQUAL" and closing:
        name = before[-2] if len(before) > 1 and before[-2].type == "NAME" else prev
        example = f"{name.value}=1" if name.type == "NAME" else "heads=8"
        return (
            "missing value after '='",
            name.start_pos,
            prev.end_pos,
            f"write a value, e.g. '{example}'",
        )

    # 2. Commas and brackets.
    if kind == "COMMA" and prev_kind == "COMMA":
        return at_tok("doubled ','", "remove one ','")
    if kind == "COMMA" and prev_kind in ("LPAR", "LSQB"):
        return at_tok("leading ','", "remove the ','")
    if closing and prev_kind == "COMMA":
        return at_prev("trailing ','", "remove the ',' or add an item after it")
    if kind == "RPAR" and prev_kind == "LPAR":
        return (
            "empty parentheses",
            prev.start_pos,
            tok.end_pos,
            "a group needs at least one step, e.g. '(Norm->Attn->+)'",
        )
    if kind == "RSQB" and prev_kind == "LSQB":
        return (
            "empty children list",
            prev.start_pos,
            tok.end_pos,
            "a combinator needs at least one child, e.g. 'MoE[MLP, MLP]'",
        )
    if kind in ("RPAR", "RSQB"):
        stack, unmatched = _open_brackets(text, tok.end_pos)
        if unmatched and stack:
            opener, where = stack[-1]
            o = Span.at(text, where)
            return at_tok(
                f"mismatched '{tok.value}'",
                f"'{opener}' at {o.line}:{o.column} is closed by '{_CLOSER[opener]}'",
            )
        if unmatched:
            return at_tok(f"unmatched '{tok.value}'", "there is no opening bracket for it")
    if at_end:
        stack, _ = _open_brackets(text, len(text))
        if stack:
            opener, where = stack[-1]
            hint = f"close it with '{_CLOSER[opener]}'"
            return f"unclosed '{opener}'", where, where + 1, hint
    if kind == "COMMA" and ctx in ("top", "group"):
        return at_tok("unexpected ','", "join steps with '->' and parallel branches with '|'")

    # 3. Arrows.
    if kind == "ARROW" and prev_kind == "ARROW":
        return at_tok(f"doubled '{tok.value}'", "write one '->' between two steps")
    if kind == "ARROW" and step_start:
        return at_tok(f"leading '{tok.value}'", "a chain cannot start with '->'")

    # 4. Something in the wrong place.
    if step_start and kind in ("NUMBER", "COUNT", "STRING"):
        return at_tok(
            f"expected a component, found {_describe(tok)}",
            "a step is a component name, a '(' group or '+'; values go in arguments, "
            "e.g. 'Attn(heads=8)'",
        )
    if (step_start or after_step) and kind == "LSQB":
        return at_tok(
            "unexpected '['", "children '[...]' follow a component name, e.g. 'MoE[MLP, MLP]'"
        )
    if kind == "LABEL":
        return at_tok(
            f"misplaced label '{tok.value}'",
            "a label follows the component name, e.g. 'Norm#ln(eps=1e-6)'",
        )
    if kind == "STAR":
        if prev_kind == "PLUS":
            return at_tok("'+' cannot be repeated", "repeat a group instead, e.g. '(Attn->+)*2'")
        if after_count:
            return at_tok("repeat of a repeat", "write 'Attn*6', or '(Attn*2)*3'")
        if prev_kind == "STAR":
            return at_tok("doubled '*'", "write one '*', e.g. 'Attn*2'")
        return at_tok("'*' without a step before it", "write a step before '*', e.g. 'Attn*2'")
    if kind == "EQUAL":
        if prev_kind == "EQUAL":
            return at_tok("doubled '='", "write one '=', e.g. 'heads=8'")
        if text.startswith(">", tok.end_pos):
            return at_tok("unexpected '='", "did you mean '->'?")
        if ctx in ("args", "list"):
            return at_tok("unexpected '='", "only a name can be given a value, e.g. 'heads=8'")
        return at_tok("unexpected '='", "arguments go in parentheses, e.g. 'Norm(kind=rms)'")
    if after_step and kind == "LPAR" and prev_kind == "RSQB":
        return at_tok(
            "arguments after children",
            "write the arguments before the children, e.g. 'MoE(k=2)[MLP, MLP]'",
        )
    if after_step and kind in ("NAME", "LPAR", "PLUS"):
        hint = "join steps with '->'"
        if prev_kind in ("NAME", "PLUS") and kind in ("NAME", "PLUS"):
            hint = f"did you mean '{prev.value}->{tok.value}'?"
        return at_tok(f"missing '->' before {_describe(tok)}", hint)
    if after_step and kind in ("NUMBER", "COUNT"):
        return at_tok(
            f"unexpected {_describe(tok)} after a step", "repeat a step with '*', e.g. 'Attn*2'"
        )
    if after_step and kind == "STRING":
        return at_tok(
            f"unexpected {_describe(tok)} after a step",
            "values go in arguments, e.g. 'Attn(pos=\"rope\")'",
        )
    values = ("NUMBER", "COUNT", "NAME", "STRING", "LSQB")
    if ctx == "args" and prev_kind == "NAME" and kind in values and kind != "LSQB":
        return at_tok(
            f"missing '=' or ',' between '{prev.value}' and '{tok.value}'",
            f"did you mean '{prev.value}={tok.value}'?",
        )
    if ctx == "args" and kind in values:
        return at_tok("missing ',' between arguments", "separate arguments with ','")
    if ctx == "list" and kind in values:
        return at_tok("missing ',' between list items", "separate list items with ','")
    if ctx == "list" and kind in ("ARROW", "PIPE", "PLUS", "LPAR", "LABEL"):
        return at_tok(f"unexpected {_describe(tok)} in a list", "a list holds values, e.g. [1, 2]")
    if ctx == "args" and kind in ("ARROW", "PIPE", "PLUS", "LPAR"):
        return at_tok(
            f"unexpected {_describe(tok)} in arguments",
            "arguments are values or name=value, e.g. 'Attn(8, kv_heads=2)'",
        )
    return at_tok(f"unexpected {_describe(tok)}", None)
