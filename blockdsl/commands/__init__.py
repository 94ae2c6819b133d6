"""The ``blockdsl`` commands, one module each. A command module declares ``NAME``, ``HELP``,
``DESCRIPTION``, ``EXAMPLES`` (command lines that run as printed; tests/test_cli_examples.py
runs them), ``add_arguments(parser)`` and ``run(args, out) -> int``, and calls into the
library; ``blockdsl.cli`` assembles the parser and reports errors. Options that pass straight
to a library function are declared once, as ``blockdsl.commands.options.Option``s."""

from __future__ import annotations

from blockdsl.commands import (
    check,
    compare,
    components,
    data,
    export,
    fuzz,
    generate,
    plot,
    presets,
    search,
    train,
)
from blockdsl.commands import compile as compile_
from blockdsl.commands import eval as eval_

# in the order `blockdsl --help` lists them
COMMANDS = (
    compile_,
    check,
    components,
    presets,
    generate,
    fuzz,
    train,
    eval_,
    plot,
    data,
    compare,
    search,
    export,
)

__all__ = ["COMMANDS"]
