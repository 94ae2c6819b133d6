"""``python -m blockdsl``: the command line (see blockdsl.cli)."""

from blockdsl.cli import run

run()
