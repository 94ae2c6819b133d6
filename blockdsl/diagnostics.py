"""Parser diagnostics: a lark error becomes a ``BlockSyntaxError`` that names the mistake a
person made (a trailing ``->``, an unclosed ``(``, a missing ``,``), with its span and a hint.

In the spirit of lark's ``match_examples``, each kind of mistake is one small rule that looks at
the ``Situation`` at the unexpected token (the token, the tokens just before it, the bracket it
stands in) and either recognises it, returning the message, span and hint, or passes. ``RULES``
are tried in order, most specific first; the first that recognises the situation explains it.
A new diagnostic is a new rule in the right place of that list.

The LALR parser's own "expected" set is no guide here: LALR merges lookaheads, so it may
reduce past the place of the mistake before noticing it (``Norm, Attn`` reports only "end of
input" as expected). The tokens themselves are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from blockdsl.errors import BlockSyntaxError, Span

__all__ = ["RULES", "Situation", "explain", "open_brackets"]

#: The grammar's whitespace (its WS terminal).
WHITESPACE = " \t\n\r\f\v"
# Strings are skipped so that brackets inside them do not count.
BRACKETS = re.compile(r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[()\[\]]""")
CLOSER = {"(": ")", "[": "]"}

_STRING_HINT = "escapes are \\\\, \\\", \\', \\n, \\t and \\r"
_LOOSE_STRING = {q: re.compile(q + r"(?:[^" + q + r"\\\n]|\\.)*" + q) for q in "\"'"}

#: ``(message, start, end, hint)``: what a rule returns when it recognises a mistake.
Explained = tuple[str, int, int, "str | None"]


def open_brackets(text: str, upto: int) -> tuple[list[tuple[str, int]], tuple[str, int] | None]:
    """The brackets still open before offset ``upto`` (outermost first), and the first closer
    that has no matching opener (or None)."""
    stack: list[tuple[str, int]] = []
    for m in BRACKETS.finditer(text, 0, upto):
        ch = m.group()
        if ch in "([":
            stack.append((ch, m.start()))
        elif ch in ")]":
            if not stack or CLOSER[stack[-1][0]] != ch:
                return stack, (ch, m.start())
            stack.pop()
    return stack, None


def explain(text: str, err: UnexpectedInput, lexer: Lark) -> BlockSyntaxError:
    """One BlockSyntaxError for a lark error. ``lexer`` is a context-free lexer of the same
    grammar (it reads the tokens before the error)."""
    if isinstance(err, UnexpectedCharacters):
        message, start, end, hint = _explain_char(text, err)
    elif isinstance(err, UnexpectedToken):
        message, start, end, hint = _explain_token(Situation.of(text, err.token, lexer))
    else:  # UnexpectedEOF: the LALR parser reports end of input as a $END token instead
        message, start, end, hint = "unexpected end of input", *_last_char(text), None
    start = min(start, len(text) - 1)  # always inside the (non-empty) input
    return BlockSyntaxError(message, text, Span.at(text, start, max(end, start + 1)), hint=hint)


def _last_char(text: str) -> tuple[int, int]:
    """The span of the last non-whitespace character (where "end of input" is shown)."""
    end = len(text.rstrip(WHITESPACE)) or len(text)
    return end - 1, end


def describe(tok: Token) -> str:
    kind = tok.type
    if kind == "$END":
        return "end of input"
    if kind == "NAME":
        return f"name '{tok.value}'"
    if kind in ("NUMBER", "COUNT"):
        return f"number '{tok.value}'"
    if kind == "STRING":
        return f"string {tok.value}"
    if kind in ("LABEL", "GLOBAL_LABEL"):
        return f"label '{tok.value}'"
    return f"'{tok.value}'"


# ==================================================================== characters
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
    if text.startswith("##", pos):
        return (
            "missing label after '##'",
            pos,
            pos + 2,
            "a model-global label is letters, digits or '_' right after '##', e.g. 'Norm##ln'",
        )
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


# ==================================================================== tokens
@dataclass(frozen=True)
class Situation:
    """Where an unexpected token stands: the token, the (last three) tokens before it, and the
    innermost open bracket there: "top" (none), "group", "args", "children" or "list"."""

    text: str
    tok: Token
    before: tuple[Token, ...]
    ctx: str

    @classmethod
    def of(cls, text: str, tok: Token, lexer: Lark) -> Situation:
        pos = len(text) if tok.type == "$END" else tok.start_pos
        before, ctx = _scan(text, pos, lexer)
        return cls(text, tok, tuple(before), ctx)

    @property
    def kind(self) -> str:
        return self.tok.type

    @property
    def at_end(self) -> bool:
        return self.kind == "$END"

    @property
    def prev(self) -> Token | None:
        return self.before[-1] if self.before else None

    @property
    def prev_kind(self) -> str | None:
        return self.prev.type if self.prev else None

    @property
    def closing(self) -> bool:
        """The token ends something (a chain, a bracket, a branch, an item)."""
        return self.kind in ("$END", "RPAR", "RSQB", "PIPE", "COMMA")

    @property
    def after_count(self) -> bool:
        """A repeat count just before: ``*`` then a number (the context-free lexer may have
        read ``2.5`` or ``2e3`` whole where the parser's lexer read the count ``2``)."""
        return (
            self.prev_kind in ("COUNT", "NUMBER")
            and len(self.before) > 1
            and self.before[-2].type == "STAR"
        )

    @property
    def in_chain(self) -> bool:
        return self.ctx in ("top", "group", "children")

    @property
    def step_start(self) -> bool:
        """The token stands where a step should start."""
        return (
            self.prev is None
            or self.prev_kind in ("ARROW", "PIPE")
            or (self.prev_kind in ("LPAR", "LSQB", "COMMA") and self.in_chain)
            or (self.prev_kind == "EQUAL" and self.ctx == "children")  # a slot's block
        )

    @property
    def after_step(self) -> bool:
        """The token follows a complete step."""
        return self.in_chain and (
            self.prev_kind in ("NAME", "LABEL", "GLOBAL_LABEL", "RPAR", "RSQB", "PLUS")
            or self.after_count
        )

    def at_prev(self, message: str, hint: str | None) -> Explained:
        assert self.prev is not None
        return message, self.prev.start_pos, self.prev.end_pos, hint

    def at_tok(self, message: str, hint: str | None) -> Explained:
        start, end = (
            _last_char(self.text) if self.at_end else (self.tok.start_pos, self.tok.end_pos)
        )
        return message, start, end, hint


def _scan(text: str, pos: int, lexer: Lark) -> tuple[list[Token], str]:
    """The tokens before offset ``pos`` (the last three, all that the rules look at) and the
    innermost open bracket there."""
    last: list[Token] = []
    stack: list[str] = []
    try:
        for tok in lexer.lex(text):
            if tok.start_pos >= pos:
                break
            kind = tok.type
            inner = stack[-1] if stack else "top"
            after_name = bool(last) and last[-1].type in ("NAME", "LABEL", "GLOBAL_LABEL")
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


Rule = Callable[[Situation], "Explained | None"]
#: The rules, in the order they are tried (most specific first).
RULES: list[Rule] = []


def rule(function: Rule) -> Rule:
    """Add a rule at the end of ``RULES``."""
    RULES.append(function)
    return function


def _explain_token(s: Situation) -> Explained:
    for recognise in RULES:
        found = recognise(s)
        if found is not None:
            return found
    return s.at_tok(f"unexpected {describe(s.tok)}", None)


# ---- 1. an operator left unfinished: the token before the unexpected one wants more
@rule
def trailing_arrow(s: Situation) -> Explained | None:
    if s.closing and s.prev_kind == "ARROW":
        return s.at_prev(f"trailing '{s.prev.value}'", "a chain cannot end with '->'")
    return None


@rule
def empty_branch(s: Situation) -> Explained | None:
    if (s.closing or s.kind == "ARROW") and s.prev_kind == "PIPE":
        return s.at_prev("empty parallel branch", "write a chain on both sides of '|'")
    if s.kind == "PIPE" and s.step_start:
        return s.at_tok("empty parallel branch", "write a chain on both sides of '|'")
    return None


@rule
def missing_repeat_count(s: Situation) -> Explained | None:
    if s.prev_kind == "STAR" and s.kind not in ("NAME", "NUMBER", "COUNT", "STRING"):
        return s.at_prev("missing repeat count after '*'", "write how many times, e.g. 'Attn*2'")
    return None


@rule
def invalid_repeat_count(s: Situation) -> Explained | None:
    prev, tok = s.prev, s.tok
    if s.prev_kind == "STAR" or (
        s.after_count and s.kind in ("NAME", "NUMBER", "COUNT") and prev.end_pos >= tok.start_pos
    ):
        first = prev if s.prev_kind != "STAR" else tok
        end = max(first.end_pos, tok.end_pos)
        return (
            f"invalid repeat count '{s.text[first.start_pos : end]}'",
            first.start_pos,
            end,
            "a repeat count is a whole number, e.g. 'Attn*2'",
        )
    return None


@rule
def unnamed_child_after_slot(s: Situation) -> Explained | None:
    """``Attn[q=Norm, MLP]``: the grammar puts a combinator's children before the slots."""
    if s.ctx != "children" or s.kind == "EQUAL":
        return None
    pos = len(s.text) if s.at_end else s.tok.start_pos
    items, depth, current = [], 0, ""
    for index in range(pos - 1, -1, -1):  # back to the '[' that holds this item
        ch = s.text[index]
        if ch in ")]":
            depth += 1
        elif ch in "([":
            if depth == 0:
                break
            depth -= 1
        if depth == 0 and ch == ",":
            items.append(current)
            current = ""
        else:
            current = ch + current
    items.append(current)
    last, earlier = items[0], items[1:]
    named = [item for item in earlier if re.match(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=(?!>)", item)]
    if not named or "=" in last.replace("->", ""):
        return None
    start = pos - len(last) + (len(last) - len(last.lstrip()))
    return (
        "unnamed child after a named one",
        start,
        max(start + 1, pos - (len(last) - len(last.rstrip()))),
        "write a combinator's children first, then the slots, e.g. 'MoE[MLP, MLP, q=...]'",
    )


@rule
def missing_value(s: Situation) -> Explained | None:
    if s.prev_kind == "EQUAL" and s.closing:
        before = s.before
        name = before[-2] if len(before) > 1 and before[-2].type == "NAME" else s.prev
        if s.ctx == "children":
            return (
                f"missing block after '{name.value}='",
                name.start_pos,
                s.prev.end_pos,
                f"a slot holds a block string, e.g. '{name.value}=Norm'",
            )
        example = f"{name.value}=1" if name.type == "NAME" else "heads=8"
        return (
            "missing value after '='",
            name.start_pos,
            s.prev.end_pos,
            f"write a value, e.g. '{example}'",
        )
    return None


# ---- 2. commas and brackets
@rule
def stray_comma(s: Situation) -> Explained | None:
    if s.kind == "COMMA" and s.prev_kind == "COMMA":
        return s.at_tok("doubled ','", "remove one ','")
    if s.kind == "COMMA" and s.prev_kind in ("LPAR", "LSQB"):
        return s.at_tok("leading ','", "remove the ','")
    if s.closing and s.prev_kind == "COMMA":
        return s.at_prev("trailing ','", "remove the ',' or add an item after it")
    return None


@rule
def empty_brackets(s: Situation) -> Explained | None:
    if s.kind == "RPAR" and s.prev_kind == "LPAR":
        return (
            "empty parentheses",
            s.prev.start_pos,
            s.tok.end_pos,
            "a group needs at least one step, e.g. '(Norm->Attn->+)'",
        )
    if s.kind == "RSQB" and s.prev_kind == "LSQB":
        return (
            "empty children list",
            s.prev.start_pos,
            s.tok.end_pos,
            "a combinator needs at least one child, e.g. 'MoE[MLP, MLP]'",
        )
    return None


@rule
def unmatched_closer(s: Situation) -> Explained | None:
    if s.kind not in ("RPAR", "RSQB"):
        return None
    stack, unmatched = open_brackets(s.text, s.tok.end_pos)
    if unmatched and stack:
        opener, where = stack[-1]
        o = Span.at(s.text, where)
        return s.at_tok(
            f"mismatched '{s.tok.value}'",
            f"'{opener}' at {o.line}:{o.column} is closed by '{CLOSER[opener]}'",
        )
    if unmatched:
        return s.at_tok(f"unmatched '{s.tok.value}'", "there is no opening bracket for it")
    return None


@rule
def unclosed_bracket(s: Situation) -> Explained | None:
    if s.at_end:
        stack, _ = open_brackets(s.text, len(s.text))
        if stack:
            opener, where = stack[-1]
            return f"unclosed '{opener}'", where, where + 1, f"close it with '{CLOSER[opener]}'"
    return None


@rule
def comma_between_steps(s: Situation) -> Explained | None:
    if s.kind == "COMMA" and s.ctx in ("top", "group"):
        return s.at_tok("unexpected ','", "join steps with '->' and parallel branches with '|'")
    return None


# ---- 3. arrows
@rule
def misplaced_arrow(s: Situation) -> Explained | None:
    if s.kind == "ARROW" and s.prev_kind == "ARROW":
        return s.at_tok(f"doubled '{s.tok.value}'", "write one '->' between two steps")
    if s.kind == "ARROW" and s.step_start:
        return s.at_tok(f"leading '{s.tok.value}'", "a chain cannot start with '->'")
    return None


# ---- 4. something in the wrong place
@rule
def value_as_step(s: Situation) -> Explained | None:
    if s.step_start and s.kind in ("NUMBER", "COUNT", "STRING"):
        return s.at_tok(
            f"expected a component, found {describe(s.tok)}",
            "a step is a component name, a '(' group or '+'; values go in arguments, "
            "e.g. 'Attn(heads=8)'",
        )
    return None


@rule
def misplaced_children(s: Situation) -> Explained | None:
    if (s.step_start or s.after_step) and s.kind == "LSQB":
        return s.at_tok(
            "unexpected '['", "children '[...]' follow a component name, e.g. 'MoE[MLP, MLP]'"
        )
    return None


@rule
def misplaced_label(s: Situation) -> Explained | None:
    if s.kind in ("LABEL", "GLOBAL_LABEL"):
        return s.at_tok(
            f"misplaced label '{s.tok.value}'",
            "a label follows the component name, e.g. 'Norm#ln(eps=1e-6)'",
        )
    return None


@rule
def misplaced_star(s: Situation) -> Explained | None:
    if s.kind != "STAR":
        return None
    if s.prev_kind == "PLUS":
        return s.at_tok("'+' cannot be repeated", "repeat a group instead, e.g. '(Attn->+)*2'")
    if s.after_count:
        return s.at_tok("repeat of a repeat", "write 'Attn*6', or '(Attn*2)*3'")
    if s.prev_kind == "STAR":
        return s.at_tok("doubled '*'", "write one '*', e.g. 'Attn*2'")
    return s.at_tok("'*' without a step before it", "write a step before '*', e.g. 'Attn*2'")


@rule
def misplaced_equal(s: Situation) -> Explained | None:
    if s.kind != "EQUAL":
        return None
    if s.prev_kind == "EQUAL":
        return s.at_tok("doubled '='", "write one '=', e.g. 'heads=8'")
    if s.text.startswith(">", s.tok.end_pos):
        return s.at_tok("unexpected '='", "did you mean '->'?")
    if s.ctx in ("args", "list"):
        return s.at_tok("unexpected '='", "only a name can be given a value, e.g. 'heads=8'")
    if s.ctx == "children":
        return s.at_tok(
            "unexpected '='", "a slot is filled as name=block, e.g. 'Attn[q=Norm, k=Norm]'"
        )
    return s.at_tok("unexpected '='", "arguments go in parentheses, e.g. 'Norm(kind=rms)'")


@rule
def arguments_after_children(s: Situation) -> Explained | None:
    if s.after_step and s.kind == "LPAR" and s.prev_kind == "RSQB":
        return s.at_tok(
            "arguments after children",
            "write the arguments before the children, e.g. 'MoE(k=2)[MLP, MLP]'",
        )
    return None


@rule
def missing_arrow(s: Situation) -> Explained | None:
    if s.after_step and s.kind in ("NAME", "LPAR", "PLUS"):
        hint = "join steps with '->'"
        if s.prev_kind in ("NAME", "PLUS") and s.kind in ("NAME", "PLUS"):
            hint = f"did you mean '{s.prev.value}->{s.tok.value}'?"
        return s.at_tok(f"missing '->' before {describe(s.tok)}", hint)
    return None


@rule
def value_after_step(s: Situation) -> Explained | None:
    if s.after_step and s.kind in ("NUMBER", "COUNT"):
        return s.at_tok(
            f"unexpected {describe(s.tok)} after a step", "repeat a step with '*', e.g. 'Attn*2'"
        )
    if s.after_step and s.kind == "STRING":
        return s.at_tok(
            f"unexpected {describe(s.tok)} after a step",
            "values go in arguments, e.g. 'Attn(pos=\"rope\")'",
        )
    return None


_VALUES = ("NUMBER", "COUNT", "NAME", "STRING", "LSQB")


@rule
def missing_separator(s: Situation) -> Explained | None:
    if s.ctx == "args" and s.prev_kind == "NAME" and s.kind in _VALUES and s.kind != "LSQB":
        return s.at_tok(
            f"missing '=' or ',' between '{s.prev.value}' and '{s.tok.value}'",
            f"did you mean '{s.prev.value}={s.tok.value}'?",
        )
    if s.ctx == "args" and s.kind in _VALUES:
        return s.at_tok("missing ',' between arguments", "separate arguments with ','")
    if s.ctx == "list" and s.kind in _VALUES:
        return s.at_tok("missing ',' between list items", "separate list items with ','")
    return None


@rule
def step_syntax_in_values(s: Situation) -> Explained | None:
    if s.ctx == "list" and s.kind in ("ARROW", "PIPE", "PLUS", "LPAR", "LABEL", "GLOBAL_LABEL"):
        return s.at_tok(
            f"unexpected {describe(s.tok)} in a list", "a list holds values, e.g. [1, 2]"
        )
    if s.ctx == "args" and s.kind in ("ARROW", "PIPE", "PLUS", "LPAR"):
        return s.at_tok(
            f"unexpected {describe(s.tok)} in arguments",
            "arguments are values or name=value, e.g. 'Attn(8, kv_heads=2)'",
        )
    return None
