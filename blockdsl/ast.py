"""The syntax tree of a block string: immutable dataclasses, one per construct.

Every node carries its source ``span``. Spans do not take part in equality or hashing, so
``parse(unparse(parse(s))) == parse(s)`` compares structure only.

    block    Block(chains)                  chain ("|" chain)*   (len > 1: parallel branches)
    chain    Chain(steps)                   step ("->" step)*
    step     Residual(args) | Call | Group | Repeat
    term     Call(name, label, args, children, slots) | Group(block)
    child    Block (a combinator's child) | SlotFill(name, block) (``name=block``, v3)
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
    """``+``: add the current value to the tap, and move the tap there. ``+(args)`` is a
    parameterised residual (the ``Residual`` component's arguments, e.g. ``+(lerp)``)."""

    args: tuple[Arg, ...] = ()


@dataclass(frozen=True)
class SlotFill(Node):
    """``name=block`` inside ``[...]``: the block is applied at the component's slot ``name``
    (language v3). ``name_span`` covers just the slot name."""

    name: str
    block: Block
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Call(Node):
    """``Name#label(args)[child, ..., slot=block, ...]``. ``name_span`` covers just the name.
    ``global_label``: the label was written ``##label`` (one module in the whole model) rather
    than ``#label`` (one module per instance of the block). ``children`` are the unnamed
    children (a combinator's blocks), ``slots`` the named ones, each in source order; unnamed
    children come first."""

    name: str
    label: str | None = None
    args: tuple[Arg, ...] = ()
    children: tuple[Block, ...] = ()
    slots: tuple[SlotFill, ...] = ()
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
        for slot in node.slots:
            yield from walk(slot)
    elif isinstance(node, SlotFill):
        yield from walk(node.block)
    elif isinstance(node, Residual):
        for arg in node.args:
            yield from walk(arg)
    elif isinstance(node, Arg):
        yield from walk(node.value)
    elif isinstance(node, Value) and node.kind == "list":
        for item in node.value:
            yield from walk(item)
