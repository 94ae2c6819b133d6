"""``blockdsl components [NAME]``: the registered components with their arguments and a
description (never cut mid-sentence), or one component's arguments in detail."""

from __future__ import annotations

import argparse
from typing import TextIO

from blockdsl.commands.common import console, plain_table

NAME = "components"
HELP = "list the registered components and their arguments"
DESCRIPTION = "List components with their arguments, types, defaults and description."
EXAMPLES = """\
blockdsl components
blockdsl components Attn
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="show one component")


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
            grid.add_row(component.name, component.signature_text(), component.description)
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
    screen.print(f"{component.name}: {component.description}")
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
