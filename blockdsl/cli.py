"""The ``blockdsl`` command line: parser assembly, error handling and ``main``.

Each command is a module of ``blockdsl.commands`` (its arguments, examples and a ``run`` that
calls the library); see docs/cli.md. ``main(argv)`` returns the exit status: 0 on success, 2 on
any user error (the error's caret message on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

from blockdsl.commands import COMMANDS
from blockdsl.errors import BlockDSLError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as a return code (``main`` never exits the process)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise _UsageError(f"{self.prog}: error: {message}")


class _UsageError(Exception):
    pass


def examples_text(command: ModuleType) -> str:
    """A command's ``--help`` epilog: its examples, indented under ``examples:``."""
    lines = command.EXAMPLES.rstrip("\n").splitlines()
    return "examples:\n" + "".join(f"  {line}\n" for line in lines)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The ``blockdsl`` parser. Only the ``selected`` command's arguments are added (each
    command reads its options' types and defaults from the library, which is imported for it
    alone); None adds every command's, "" none."""
    from blockdsl._version import __version__

    parser = _Parser(
        prog="blockdsl",
        description="Compile block strings like 'Norm->Attn->+->Norm->MLP->+' to PyTorch.",
        epilog="run 'blockdsl COMMAND --help' for a command's options and examples",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"blockdsl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        sub = commands.add_parser(
            command.NAME,
            help=command.HELP,
            description=command.DESCRIPTION,
            epilog=examples_text(command),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if selected is None or selected == command.NAME:
            command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def _selected(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the first word that is one), if any."""
    names = {command.NAME for command in COMMANDS}
    return next((word for word in argv if word in names), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # torch warns at import when NumPy is absent; the command line uses no NumPy.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    # no command named: --version, the overview or a usage error, none needs a command's options
    parser = build_parser(_selected(argv) or "")
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stdout)
        return 0
    out_path = getattr(args, "output", None)
    try:
        if out_path:
            with open(out_path, "w", encoding="utf-8") as out:
                return args.run(args, out)
        return args.run(args, sys.stdout)
    except BlockDSLError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"blockdsl: {exc}", file=sys.stderr)
        return EXIT_USAGE


def run() -> None:
    """Console entry point that exits with ``main``'s status."""
    sys.exit(main())


__all__ = ["build_parser", "main", "run"]

if __name__ == "__main__":  # pragma: no cover
    run()
