"""AST → canonical text (``unparse``), the inverse of :func:`blockdsl.parse` up to spelling.

The canonical form is decided once, here:

* ``->`` between steps with no spaces, `` | `` between parallel chains;
* ``Name#label(a, k=v)[child, child]`` with ``, `` after every comma; ``Norm()`` is ``Norm``;
* ``Attn*2`` and ``(Norm->Attn->+)*2``; parentheses exactly where the AST has a ``Group``;
* values: ``true``/``false``, bare names, double-quoted strings with ``\\``-escapes, floats
  via ``repr`` (so that they reparse to the same float; infinity is ``1e999``), lists
  ``[1, 2]``.

For every valid ``s``: ``parse(unparse(parse(s))) == parse(s)``, and ``unparse(parse(s))`` is
a fixed point of ``unparse ∘ parse``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from blockdsl.ast import Arg, Block, Call, Chain, Group, Node, Repeat, Residual, Value

__all__ = ["format_int", "format_value", "human", "human_bytes", "unparse"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_NAMES = {"true", "false", "True", "False"}  # would reparse as booleans
_STRING_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def format_value(value: Any, quote: bool = False) -> str:
    """A resolved Python argument value as a block string writes it (``true``, ``none``,
    ``[1, 2]``), for tables and messages; strings are quoted only with ``quote``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, str):
        return f'"{value}"' if quote else value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v, quote) for v in value) + "]"
    return repr(value)


def format_int(n: int) -> str:
    """``1,234,567``."""
    return f"{n:,}"


def human(n: float, unit: str = "", *, count: bool = False) -> str:
    """``6.74 G``, ``1.79 M``: three significant digits with an SI-style suffix (``B`` for
    billions with ``count``, as parameter counts are usually written)."""
    giga = "B" if count else "G"
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, giga), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {suffix}{unit}"
    return f"{n:.3g} {unit}".rstrip()


def human_bytes(n: int) -> str:
    """``176.00 KiB``."""
    for scale, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n} B"


def unparse(node: Node) -> str:
    """The canonical text of any AST node: a Block, Chain, step, Arg or Value."""
    if isinstance(node, Block):
        return " | ".join(unparse(chain) for chain in node.chains)
    if isinstance(node, Chain):
        return "->".join(unparse(step) for step in node.steps)
    if isinstance(node, Residual):
        return "+(" + ", ".join(unparse(arg) for arg in node.args) + ")" if node.args else "+"
    if isinstance(node, Group):
        return f"({unparse(node.block)})"
    if isinstance(node, Repeat):
        return f"{unparse(node.body)}*{node.count}"
    if isinstance(node, Call):
        return _call(node)
    if isinstance(node, Arg):
        value = unparse(node.value)
        return value if node.name is None else f"{node.name}={value}"
    if isinstance(node, Value):
        return _value(node)
    raise TypeError(f"not a blockdsl AST node: {node!r}")


def _call(call: Call) -> str:
    out = call.name
    if call.label is not None:
        out += f"{'##' if call.global_label else '#'}{call.label}"
    if call.args:
        out += "(" + ", ".join(unparse(arg) for arg in call.args) + ")"
    children = [unparse(child) for child in call.children]
    children += [f"{slot.name}={unparse(slot.block)}" for slot in call.slots]
    if children:
        out += "[" + ", ".join(children) + "]"
    return out


def _value(value: Value) -> str:
    kind, v = value.kind, value.value
    if kind == "bool":
        return "true" if v else "false"
    if kind == "int":
        return str(v)
    if kind == "float":
        if math.isinf(v):
            return "1e999" if v > 0 else "-1e999"  # what Python's float() makes infinity of
        return repr(float(v))
    if kind == "list":
        return "[" + ", ".join(_value(item) for item in v) + "]"
    if kind == "name" and _NAME.fullmatch(v) and v not in _RESERVED_NAMES:
        return v
    # A string, or a name that would not read back as one (only from hand-built ASTs).
    return '"' + "".join(_STRING_ESCAPES.get(ch, ch) for ch in str(v)) + '"'
