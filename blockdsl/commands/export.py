"""``blockdsl export``: write a run or checkpoint as a Hugging Face transformers folder
(``blockdsl.export_hf``)."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from blockdsl.commands.options import Option, add_options, options_from

NAME = "export"
HELP = "write a run or checkpoint as a Hugging Face transformers folder"
DESCRIPTION = (
    "Write config.json, model.safetensors, generation_config.json and the tokenizer files of a "
    "blockdsl model (a run directory: its newest checkpoint and its tokenizer.json; a "
    "checkpoint directory or file) so that transformers' AutoModelForCausalLM and "
    "AutoTokenizer load them. The architecture is found by running the Hugging Face importer "
    "backwards; a model with no transformers equivalent is refused with the block and step "
    "that has no counterpart. The written folder is loaded back and its logits compared. See "
    "docs/interop.md."
)
EXAMPLES = """\
blockdsl export runs/tiny --to hf hf/tiny              a run: newest checkpoint + tokenizer
blockdsl export runs/tiny/checkpoints/step_0000200 --to hf hf/tiny --force
blockdsl export model.safetensors --to hf hf/model --tokenizer data/tokenizer.json
"""

EXPORT = "blockdsl.hf.exporter:export_hf"
OPTIONS = (
    Option("--force", "replace a non-empty DIR", EXPORT),
    Option("--tokenizer", "a tokenizer.json (default: the run's, if any)", EXPORT, metavar="FILE"),
    Option("--no-verify", "skip loading the result back to compare", EXPORT),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN|CHECKPOINT")
    parser.add_argument("--to", required=True, choices=["hf"], help="the format (hf)")
    parser.add_argument("out", metavar="DIR", help="the folder to write")
    add_options(parser, OPTIONS)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.hf.exporter import export_hf

    folder = export_hf(args.source, args.out, **options_from(args, OPTIONS))
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    files = ", ".join(sorted(p.name for p in folder.iterdir()))
    checked = "" if args.no_verify else "; logits checked against transformers"
    out.write(f"{folder}: {', '.join(config.get('architectures', []))} ({files}){checked}\n")
    return 0
