"""``blockdsl fuzz``: generate valid blocks from components, check each one's invariants and
shrink a failure to a minimal block string (``blockdsl.fuzz``)."""

from __future__ import annotations

import argparse
from typing import TextIO

from blockdsl.commands.options import Option, add_options, options_from

NAME = "fuzz"
HELP = "fuzz architectures built from components; shrink a failure to a minimal block"
DESCRIPTION = (
    "Generate valid blocks from the chosen components (default: all), compile each and check "
    "its invariants (shape, finiteness, causality, gradients, eval-mode determinism, "
    "state_dict round trip). On a failure print the minimal block string, the violated "
    "invariant and the seed (exit 1); else a summary (exit 0). See docs/fuzzing.md."
)
EXAMPLES = """\
blockdsl fuzz --examples 200
blockdsl fuzz --component Norm --component Attn --component MLP --examples 50 --seed 1
blockdsl fuzz --component Leak --plugin tests/plugins/leaky.py --seed 0
"""

FUZZ = "blockdsl.fuzz:main"
OPTIONS = (
    Option("--examples", "architectures to check", FUZZ, metavar="N"),
    Option("--seed", "the draw's seed (default: random)", FUZZ, metavar="S"),
    Option(
        "--component",
        "draw from this component (repeatable; default: every usable one)",
        FUZZ,
        param="components",
        metavar="NAME",
        repeat=True,
        parse=str,
    ),
    Option(
        "--plugin",
        "import a module (dotted path or .py file) that registers components (repeatable)",
        FUZZ,
        param="plugins",
        metavar="MODULE",
        repeat=True,
        parse=str,
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, OPTIONS)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.fuzz import main as fuzz_main

    return fuzz_main(**options_from(args, OPTIONS), out=out)
