"""The syntax tree of a block string: immutable dataclasses, one per construct.

Every node carries its source ``span``. Spans do not take part in equality or hashing, so
``parse(unparse(parse(s))) == parse(s)`` compares structure only.

    block    Block(chains)                  chain ("|" chain)*   (len > 1: parallel branches)
    chain    Chain(steps)                   step ("->" step)*
    step     Residual() | Call | Group | Repeat
    term     Call(name, label, args, children) | Group(block)
    repeat   Repeat(body, count)            term "*" INT
    arg      Arg(name | None, value)
    value    Value(kind, value)             kind: int float bool name string list
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from blockdsl.errors import Span

NO_SPAN = Span(0, 0, 0, 0)

ValueKind = Literal["int", "float", "bool", "name", "string", "list"]


@dataclass(frozen=True)
class Node:
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Value(Node):
    """An argument value. ``value`` is an int, float, bool or str; for ``kind == "list"`` a
    tuple of ``Value``. ``name`` (bare identifier, ``act=gelu``) and ``string`` (quoted,
    ``act="gelu"``) both mean the same str to components; the kind is kept so that the
    printer reproduces what was written."""

    kind: ValueKind
    value: Any

    def to_python(self) -> Any:
        """The plain Python value: lists become lists of plain values."""
        if self.kind == "list":
            return [item.to_python() for item in self.value]
        return self.value


@dataclass(frozen=True)
class Arg(Node):
    """``name=value`` (keyword) or ``value`` (positional, ``name is None``)."""

    name: str | None
    value: Value


@dataclass(frozen=True)
class Residual(Node):
    """``+``: add the current value to the tap, and move the tap there."""


@dataclass(frozen=True)
class Call(Node):
    """``Name#label(args)[child, ...]``. ``name_span`` covers just the name. ``global_label``:
    the label was written ``##label`` (one module in the whole model) rather than ``#label``
    (one module per instance of the block)."""

    name: str
    label: str | None = None
    args: tuple[Arg, ...] = ()
    children: tuple[Block, ...] = ()
    global_label: bool = field(default=False, kw_only=True)
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Group(Node):
    """``( block )``: a sub-block with its own taps."""

    block: Block


@dataclass(frozen=True)
class Repeat(Node):
    """``term * count``: the term applied ``count`` times in sequence."""

    body: Call | Group
    count: int
    count_span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


Step = Residual | Call | Group | Repeat


@dataclass(frozen=True)
class Chain(Node):
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Block(Node):
    """One or more chains; more than one are parallel branches over the same input."""

    chains: tuple[Chain, ...]

    @property
    def is_parallel(self) -> bool:
        return len(self.chains) > 1


def walk(node: Node):
    """Every node below ``node`` (itself included), depth first, in source order."""
    yield node
    if isinstance(node, Block):
        for chain in node.chains:
            yield from walk(chain)
    elif isinstance(node, Chain):
        for step in node.steps:
            yield from walk(step)
    elif isinstance(node, Group):
        yield from walk(node.block)
    elif isinstance(node, Repeat):
        yield from walk(node.body)
    elif isinstance(node, Call):
        for arg in node.args:
            yield from walk(arg)
        for child in node.children:
            yield from walk(child)
    elif isinstance(node, Arg):
        yield from walk(node.value)
    elif isinstance(node, Value) and node.kind == "list":
        for item in node.value:
            yield from walk(item)
