"""``blockdsl data prepare``: tokenize sources into a data directory
(``blockdsl.train.data.prepare``)."""

from __future__ import annotations

import argparse
from typing import TextIO

from blockdsl.commands.options import Option, add_options, options_from
from blockdsl.errors import ConfigError

NAME = "data"
HELP = "prepare token data for training"
DESCRIPTION = "Prepare token data: 'blockdsl data prepare SOURCE... --out DIR'."
EXAMPLES = """\
blockdsl data prepare stdlib --out data/stdlib                   (offline: Python's own source)
blockdsl data prepare notes/ --glob '*.md' --tokenizer bpe:4096 --out data/notes
blockdsl data prepare corpus.jsonl --tokenizer char --out data/corpus
blockdsl data prepare hf:roneneldan/TinyStories:train --tokenizer bpe:8192 --out data/ts
"""

PREPARE = "blockdsl.train.data:prepare"
OPTIONS = (
    Option("--out", "the data directory to write", PREPARE, metavar="DIR", required=True),
    Option(
        "--tokenizer",
        "byte (256 ids), char, bpe:N, or a tokenizer.json path",
        PREPARE,
        metavar="T",
    ),
    Option("--val-fraction", "the share of text held out for validation", PREPARE, metavar="F"),
    Option("--seed", "seed of the train/validation split", PREPARE, metavar="S"),
    Option("--glob", "files to take from directories", PREPARE, metavar="PATTERN"),
    Option("--force", "replace prepared data in DIR", PREPARE, param="overwrite"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    prepare = actions.add_parser(
        "prepare",
        help="tokenize sources into train.bin, val.bin, tokenizer.json and meta.json",
        description="Tokenize SOURCEs (files, directories, .jsonl with a 'text' field, "
        "hf:NAME[:split] with the datasets extra, or 'stdlib': the Python standard library's "
        "source, available offline) into DIR.",
        epilog=parser.epilog,
        formatter_class=parser.formatter_class,
    )
    prepare.add_argument("sources", nargs="+", metavar="SOURCE")
    add_options(prepare, OPTIONS)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.train.data import prepare

    if args.action != "prepare":
        raise ConfigError("blockdsl data: give an action", hint="blockdsl data prepare --help")
    meta = prepare(args.sources, **options_from(args, OPTIONS))
    out.write(
        f"{args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
        f"vocab {meta['vocab']:,} ({meta['tokenizer']}, {meta['dtype']})\n"
    )
    return 0
