"""``blockdsl compare``: train variants on the same batches under one budget and tabulate them
(``blockdsl.compare``)."""

from __future__ import annotations

import argparse
from typing import TextIO

from blockdsl.commands.common import add_set_option, console, overrides_from
from blockdsl.commands.options import Option, add_options, comma_list, options_from, whole_number

NAME = "compare"
HELP = "train variants on the same batches and budget; tabulate and plot"
DESCRIPTION = (
    "Train every SPEC (anything compile takes, or NAME=SPEC; a block string goes into the "
    "--base model) on the same batches under one budget, for each seed and learning rate, and "
    "report each variant at its best learning rate: a table, summary.csv, summary.md and "
    "curves.png in --out. Without --lr each variant is trained at its default learning rate "
    "÷3, ×1 and ×3 (three runs per seed). On a task the task's recipe (batch, learning rate, "
    "schedule, steps; docs/tasks.md) fills in what --set leaves unset, its steps the budget "
    "when none is given. Finished runs in --out are reused. See docs/compare.md."
)
EXAMPLES = """\
blockdsl compare attn="Norm->Attn->+->Norm->MLP->+" conv="Norm->BaseConv->+->Norm->MLP->+" \\
    --data task:mqar,vocab=256,seq=64,pairs=4,train=20000 --steps 400 --lr 1e-3,3e-3 \\
    --set d_model=64 --set layers='block*2' --out runs/mqar
blockdsl compare tiny "Norm->Conv->+->Norm->MLP->+" --data task:mqar,vocab=64,seq=32,pairs=4 \\
    --tokens 2e5 --seeds 0,1,2 --lr 3e-3 --set d_model=64 --out runs/tiny-vs-conv
blockdsl compare attn="Norm->Attn->+->Norm->MLP->+" \\
    conv="Norm->BaseConv(kernel=4)->+->Norm->MLP->+" --data task:mqar,vocab=128,seq=64,pairs=4 \\
    --set d_model=64 --set layers='block*2' --out runs/mqar-recipe
"""

COMPARE = "blockdsl.compare:compare"
BUDGET = (
    Option("--steps", "optimizer steps per run", COMPARE, metavar="N"),
    Option(
        "--tokens", "training tokens per run", COMPARE, metavar="N", parse=whole_number("--tokens")
    ),
    Option("--time", "wall-clock seconds per run", COMPARE, metavar="S"),
)
OPTIONS = (
    Option(
        "--data", "a prepared data directory or task:NAME,...", COMPARE, metavar="D", required=True
    ),
    Option(
        "--seeds",
        "seeds (model init and data order)",
        COMPARE,
        metavar="0,1,2",
        parse=comma_list(int, "--seeds"),
    ),
    Option(
        "--lr",
        "learning rates; each variant's best wins (default: its lr ÷3, ×1, ×3)",
        COMPARE,
        param="lrs",
        metavar="3e-4,1e-3",
        parse=comma_list(float, "--lr"),
    ),
    Option("--max-memory", "skip variants estimated above M", COMPARE, metavar="M"),
    Option("--base", "model for block strings", COMPARE, metavar="SPEC"),
    Option("--out", "runs and results", COMPARE, metavar="DIR", default="runs/compare"),
    Option("--no-plot", "do not write curves.png", COMPARE),
    Option("--threads", "torch's CPU threads (default: torch's choice)", COMPARE, metavar="N"),
    Option("--quiet", "print only the table", COMPARE, param="progress", switch=False),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="+", metavar="SPEC", help="a variant: SPEC or NAME=SPEC")
    add_options(parser.add_mutually_exclusive_group(), BUDGET)
    add_options(parser, OPTIONS)
    add_set_option(
        parser, "override a config key of every variant (d_model=64, train.batch_size=32)"
    )


def run(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.compare import compare

    comparison = compare(
        args.spec,
        **options_from(args, BUDGET + OPTIONS),
        **overrides_from(args.set),
    )
    console(out).print(comparison.table())
    if not args.quiet:
        out.write(f"results in {comparison.out}: {', '.join(comparison.files)}\n")
    return 0
