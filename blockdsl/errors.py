"""One hierarchy of errors for every stage, each pointing at the exact characters at fault.

Every error carries the source text and a span; ``str(error)`` renders the familiar
compiler-style message::

    blockdsl: unknown component 'Atn' at 1:7
      Norm->Atn->+
            ^^^
      did you mean 'Attn'?

Several problems found in one pass are raised together as one error whose ``problems``
lists them; its own position is that of the first problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """Where a piece of source text lies: 1-based line and column of its first character,
    0-based ``start`` and exclusive ``end`` offsets into the source."""

    line: int
    column: int
    start: int
    end: int

    @classmethod
    def at(cls, source: str, start: int, end: int | None = None) -> Span:
        """The span of ``source[start:end]``, computing line and column from the offset."""
        start = max(0, min(start, len(source)))
        end = start if end is None else max(start, min(end, len(source)))
        line = source.count("\n", 0, start) + 1
        column = start - (source.rfind("\n", 0, start) + 1) + 1
        return cls(line, column, start, end)

    @classmethod
    def whole(cls, source: str) -> Span:
        return cls.at(source, 0, len(source))


def suggest(name: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to ``name`` (case-insensitive), or None if nothing is close."""
    candidates = list(candidates)
    by_lower = {c.lower(): c for c in candidates}
    if name.lower() in by_lower and by_lower[name.lower()] != name:
        return by_lower[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    best = suggest(name, candidates)
    return f"did you mean '{best}'?" if best else None


def render_caret(source: str, span: Span) -> tuple[str, str]:
    """The source line that holds ``span`` and a caret line under the span (clipped to that
    line, at least one caret wide)."""
    lines = source.split("\n")
    text = lines[span.line - 1] if 0 < span.line <= len(lines) else ""
    width = max(1, min(span.end - span.start, len(text) - (span.column - 1)))
    return text, " " * (span.column - 1) + "^" * width


class BlockDSLError(Exception):
    """Root of every error blockdsl raises for bad input.

    Attributes: ``message`` (one line), ``source`` (the text the span points into), ``span``,
    ``line`` and ``column`` (1-based), ``hint`` (a suggestion or None), ``context`` (where the
    source came from, e.g. ``"[blocks] moe"``, or None), ``problems`` (the individual errors
    when several were collected; ``[self]`` otherwise).
    """

    def __init__(
        self,
        message: str,
        source: str | None = None,
        span: Span | None = None,
        *,
        hint: str | None = None,
        context: str | None = None,
        problems: Sequence[BlockDSLError] | None = None,
    ) -> None:
        self.message = message
        # None: the error is about no text (a missing file, a Python value), so it has no
        # position to show; "" is the empty text, whose position 1:1 is meaningful.
        self.located = source is not None
        self.source = source or ""
        self.span = span if span is not None else Span.at(self.source, 0, len(self.source))
        self.hint = hint
        self.context = context
        self._problems = list(problems) if problems else None
        super().__init__(str(self))

    @property
    def line(self) -> int:
        return self.span.line

    @property
    def column(self) -> int:
        return self.span.column

    @property
    def problems(self) -> list[BlockDSLError]:
        return self._problems if self._problems else [self]

    def with_context(self, context: str) -> BlockDSLError:
        """Record where the source came from (added at the public boundary, einops-style)."""
        for problem in self.problems:
            if problem.context is None:
                problem.context = context
        if self.context is None:
            self.context = context
        self.args = (str(self),)
        return self

    def _render_one(self) -> str:
        position = f" at {self.line}:{self.column}" if self.located else ""
        where = f" in {self.context}" if self.context else ""
        out = [f"blockdsl: {self.message}{position}{where}"]
        if self.source:
            text, carets = render_caret(self.source, self.span)
            out += [f"  {text}", f"  {carets}"]
        if self.hint:
            out += [f"  {line}" for line in self.hint.split("\n")]
        return "\n".join(out)

    def __str__(self) -> str:
        if self._problems and len(self._problems) > 1:
            return "\n\n".join(p._render_one() for p in self._problems)
        if self._problems:
            return self._problems[0]._render_one()
        return self._render_one()

    @classmethod
    def collect(cls, problems: Sequence[BlockDSLError]) -> BlockDSLError:
        """One error standing for all ``problems`` (raised together, first one's position)."""
        if len(problems) == 1:
            return problems[0]
        first = problems[0]
        return cls(
            first.message,
            first.source if first.located else None,
            first.span,
            hint=first.hint,
            context=first.context,
            problems=problems,
        )


class BlockSyntaxError(BlockDSLError):
    """The text is not a block string."""


class BlockValidationError(BlockDSLError):
    """The text parses but does not describe a valid block (meaning, sizes, arguments)."""


class UnknownComponentError(BlockValidationError):
    """A call names no registered component."""


class ArgumentError(BlockValidationError):
    """An argument is unknown, missing, or of the wrong type."""


class ShapeError(BlockValidationError):
    """Feature sizes do not agree (at a ``+``, or at the block's output)."""


class RegistryError(BlockDSLError):
    """A component could not be registered (duplicate name, unusable signature)."""


class ConfigError(BlockDSLError):
    """A model configuration (TOML, dict or keyword arguments) is invalid."""


class InputError(BlockDSLError):
    """A model was called with inputs it cannot take (shape, dtype, length, token ids, a
    missing call-time input)."""


class BudgetError(BlockValidationError):
    """The model would exceed a configured parameter or memory budget."""
