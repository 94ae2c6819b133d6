"""``blockdsl plot``: the training curves of one or many runs in one PNG (``blockdsl.plot``)."""

from __future__ import annotations

import argparse
from typing import TextIO

from blockdsl.commands.options import Option, add_options, comma_list, options_from

NAME = "plot"
HELP = "plot the loss, learning rate and tokens/s of runs (PNG; the plot extra)"
DESCRIPTION = (
    "Draw the training and validation loss, learning rate and tokens/s of every RUN against "
    "steps, tokens and wall time, one colour per run, into one PNG (needs matplotlib: pip "
    "install 'blockdsl[plot]'). blockdsl train already keeps RUN/curves.png up to date; this "
    "puts several runs side by side. See docs/training.md."
)
EXAMPLES = """\
blockdsl data prepare stdlib --out data/stdlib
blockdsl train tiny --data data/stdlib --out runs/tiny --set vocab=256 --set train.steps=10 \\
    --set train.seq_len=64
blockdsl train tiny --data data/stdlib --out runs/tiny-1t --set vocab=256 --set train.steps=10 \\
    --set train.seq_len=64 --threads 1
blockdsl plot runs/tiny runs/tiny-1t --labels default,one-thread --out curves.png
"""

PLOT = "blockdsl.plot:plot_runs"
OPTIONS = (
    Option("--out", "the PNG to write", PLOT, metavar="FILE.png", default="curves.png"),
    Option(
        "--labels",
        "the runs' names in the legend (default: their paths)",
        PLOT,
        metavar="A,B",
        parse=comma_list(str, "--labels"),
    ),
    Option(
        "--metrics",
        "the rows: metrics.jsonl fields (loss shows val_loss beside it)",
        PLOT,
        metavar="loss,lr",
        parse=comma_list(str, "--metrics"),
    ),
    Option("--force", "replace --out if it exists", PLOT, param="overwrite", switch=True),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="a training run directory")
    add_options(parser, OPTIONS)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.plot import plot_runs

    written = plot_runs(args.runs, **options_from(args, OPTIONS))
    out.write(f"wrote {written}\n")
    return 0
