"""``blockdsl eval``: score trained models side by side on the same batches (loss, perplexity,
bits per byte, top-k accuracy; ``blockdsl.evaluate``)."""

from __future__ import annotations

import argparse
from typing import TextIO

from blockdsl.commands.common import console
from blockdsl.commands.options import Option, add_options, options_from

NAME = "eval"
HELP = "score models side by side: loss, perplexity, bits per byte, top-k accuracy"
DESCRIPTION = (
    "Score every MODEL (a run directory, a checkpoint directory or a model file; NAME=PATH "
    "names one) on the same batches of --data's split: loss, perplexity, bits per byte (from "
    "the tokenizer's bytes per token, so byte, char and BPE runs compare), top-1 and top-k "
    "teacher-forcing accuracy, and a task's own score. Prints a table; with --out also writes "
    "eval.csv and eval.md. A model trained with another tokenizer than the data's is refused. "
    "See docs/evaluate.md."
)
EXAMPLES = """\
blockdsl data prepare stdlib --out data/stdlib
blockdsl train tiny --data data/stdlib --out runs/tiny --set vocab=256 --set train.steps=10 \\
    --set train.seq_len=64 --set train.save_every=5
blockdsl eval runs/tiny --data data/stdlib
blockdsl eval early=runs/tiny/checkpoints/step_0000005 runs/tiny --data data/stdlib \\
    --seq-len 64 --split train --batches 4 --top-k 10 --threads 1 --out runs/eval
"""

EVALUATE = "blockdsl.evaluate:evaluate"
OPTIONS = (
    Option("--data", "a prepared data directory, or task:NAME,...", EVALUATE, metavar="DIR",
           required=True),
    Option("--split", "the split to score", EVALUATE, choices=("val", "train")),
    Option("--batches", "batches to score", EVALUATE, metavar="N"),
    Option("--batch-size", "sequences per batch", EVALUATE, metavar="B"),
    Option("--seq-len", "tokens per sequence (default: the shortest the models trained at)",
           EVALUATE, metavar="T"),
    Option("--top-k", "the k of top-k accuracy", EVALUATE, metavar="K"),
    Option("--seed", "draws the batches (as a run's [train] seed draws its own)", EVALUATE,
           metavar="S"),
    Option("--device", "cpu, cuda, ... (default: cuda if present)", EVALUATE),
    Option("--threads", "torch's CPU threads (default: torch's choice)", EVALUATE, metavar="N"),
    Option("--out", "write eval.csv and eval.md here", EVALUATE, metavar="DIR"),
    Option("--force", "replace eval.csv and eval.md in --out", EVALUATE, param="overwrite",
           switch=True),
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models", nargs="+", metavar="MODEL", help="a run, checkpoint or model file (NAME=PATH)"
    )
    add_options(parser, OPTIONS)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.evaluate import evaluate

    evaluation = evaluate(args.models, **options_from(args, OPTIONS))
    console(out).print(evaluation.table())
    if evaluation.out is not None:
        out.write(f"written to {evaluation.out}: {', '.join(evaluation.files)}\n")
    return 0
