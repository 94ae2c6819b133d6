"""``blockdsl presets``: each preset with its parameter count at its default size (from the
plan, nothing allocated) and its description."""

from __future__ import annotations

import argparse
from typing import TextIO

from blockdsl.commands.common import console, plain_table
from blockdsl.printer import human

NAME = "presets"
HELP = "list the preset models"
DESCRIPTION = "List preset models: name, description, parameters at the default size."
EXAMPLES = """\
blockdsl presets
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: the command lists every preset."""


def run(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.config import list_presets, load_config
    from blockdsl.model import ModelPlan

    grid = plain_table(
        ("preset", {"no_wrap": True}),
        ("params", {"justify": "right", "no_wrap": True}),
        ("description", {"overflow": "fold"}),
    )
    for name in list_presets():
        config = load_config(name)
        grid.add_row(name, human(ModelPlan(config).params(), count=True), config.description)
    console(out).print(grid)
    return 0
