"""``blockdsl components [NAME]``: the registered components with their arguments and a
description (never cut mid-sentence), or one component's arguments in detail."""

from __future__ import annotations

import argparse
import inspect
import re
from typing import Any, TextIO

from blockdsl.commands.common import console, plain_table

NAME = "components"
HELP = "list the registered components and their arguments"
DESCRIPTION = "List components with their arguments, types, defaults and description."
EXAMPLES = """\
blockdsl components
blockdsl components Attn
"""

# a sentence ends at . ! or ? before a capital, a backtick or the end ("e.g. the" goes on)
SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z`]|\s*$)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="show one component")


def first_sentence(component: Any) -> str:
    """The component's description as one whole sentence. The registry keeps the first line of
    the docstring, which may stop mid-sentence; the docstring says how the sentence goes on."""
    description = " ".join(component.description.split())
    doc = " ".join((inspect.getdoc(component.cls) or "").split())
    if description.endswith((".", "!", "?")) or not doc.startswith(description):
        return description  # whole already, or given to register() explicitly: as written
    end = SENTENCE_END.search(doc, len(description) - 1)
    return doc if end is None else doc[: end.end()]


def run(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.errors import UnknownComponentError, did_you_mean
    from blockdsl.registry import REGISTRY

    screen = console(out)
    aliases = REGISTRY.aliases()
    if args.name is None:
        grid = plain_table(
            ("name", {"no_wrap": True}),
            ("arguments", {"overflow": "fold"}),
            ("description", {"overflow": "fold"}),
        )
        for component in REGISTRY.components():
            grid.add_row(component.name, component.signature_text(), first_sentence(component))
        for alias in aliases.values():
            bound = ", ".join(f"{k}={v}" for k, v in alias.args.items())
            grid.add_row(alias.name, f"= {alias.target}({bound})", f"alias of {alias.target}")
        screen.print(grid)
        return 0
    if args.name not in REGISTRY:
        raise UnknownComponentError(
            f"unknown component '{args.name}'",
            args.name,
            hint=did_you_mean(args.name, REGISTRY.names()),
        )
    component, bound = REGISTRY.resolve(args.name)
    if args.name in aliases:
        screen.print(f"{args.name}: alias of {component.name}({bound})")
    screen.print(f"{component.name}: {first_sentence(component)}")
    helps = component.arg_help
    grid = plain_table(
        ("argument", {"no_wrap": True}),
        ("type", {"overflow": "fold"}),
        ("default", {"no_wrap": True}),
        ("description", {"overflow": "fold"}),
    )
    for param in component.user_params.values():
        describe = param.describe()
        default = "(required)" if param.required else describe.split(" = ", 1)[-1]
        grid.add_row(param.name, param.type_name, default, helps.get(param.name, ""))
    screen.print(grid)
    if component.input_size:
        screen.print(f"input size: '{component.input_size}' (set by the compiler)")
    if component.takes_children:
        screen.print("combinator: takes [child, ...] blocks")
    return 0
