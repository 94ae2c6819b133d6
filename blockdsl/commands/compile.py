"""``blockdsl compile``: validate a model and print a summary, its shape table, a trace of one
real forward or an export (``blockdsl.shapes``, ``blockdsl.tracing``, ``blockdsl.export``)."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from blockdsl.commands.common import add_model_arguments, console, load_plan
from blockdsl.commands.options import Option, add_options, options_from, with_defaults
from blockdsl.errors import ConfigError
from blockdsl.printer import format_int, human

NAME = "compile"
HELP = "validate a model and show its shapes or generated code"
DESCRIPTION = "Validate a model and print a summary, its shape table or an export."
EXAMPLES = """\
blockdsl compile                                   the tiny preset: a summary
blockdsl compile "Norm->Attn->+->Norm->MLP->+" --show-shapes --batch 8 --seq 256
blockdsl compile "Norm->Attn->+->Norm->MLP->+" "Norm->MoE->+" --show-shapes --depth 2
blockdsl compile llama --set d_model=8192 --set layers='block*80' \\
    --set defaults.Attn.heads=64 --set defaults.Attn.kv_heads=8 --show-shapes
blockdsl compile gpt2 --emit mermaid -o gpt2.mmd
blockdsl compile tiny --trace --batch 2 --seq 16       one real forward, value statistics
"""

SHAPES = "blockdsl.shapes:shape_table"
TRACE = "blockdsl.tracing:trace"
# the table's options, shared by --show-shapes and --trace (which takes all but dtype)
TABLE_OPTIONS = (
    Option(
        "--depth",
        "0: one row per block; 1: per node; 2: also steps inside components",
        SHAPES,
        metavar="N",
    ),
    Option("--batch", "batch size", SHAPES, metavar="B", aliases=("-B",)),
    Option("--seq", "sequence length (default: context)", SHAPES, metavar="T", aliases=("-T",)),
    Option(
        "--dtype",
        "element type for the activation memory estimate (and of --trace's weights)",
        SHAPES,
        choices=("float32", "bfloat16", "float16", "float64"),
    ),
    Option(
        "--all-args",
        "show every resolved argument of each component",
        SHAPES,
        param="full_args",
    ),
)
SEED = Option("--seed", "seed of --trace (weights, tokens)", TRACE, metavar="S")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--show-shapes", action="store_true", help="print every node's shape, params, FLOPs"
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="build the model (seeded), run one forward on random tokens and print each "
        "node's actual shape, dtype, mean/std, flagging NaN/inf and exploding values "
        "(exit 1 when a node is flagged)",
    )
    add_options(parser, [SEED, *TABLE_OPTIONS])
    parser.add_argument(
        "--emit", choices=["python", "dot", "mermaid", "json"], help="print an export instead"
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write the output to FILE")


def run(args: argparse.Namespace, out: TextIO) -> int:
    plan = load_plan(args)
    table = with_defaults(SHAPES, options_from(args, TABLE_OPTIONS))
    batch, seq = table["batch"], table["seq"]
    if batch < 1 or (seq is not None and seq < 1):
        raise ConfigError("--batch and --seq must be positive")
    context = plan.config.context
    if seq is not None and seq > context:
        raise ConfigError(
            f"--seq {seq} is longer than the model's context ({context})",
            hint=f"use --seq {context} or less, or raise the context: --set context={seq}",
        )
    if args.emit:
        from blockdsl.export import to_dot, to_json, to_mermaid, to_python

        if args.emit == "json":
            text = to_json(plan, seq)
        else:
            text = {"python": to_python, "dot": to_dot, "mermaid": to_mermaid}[args.emit](plan)
        out.write(text)
        return 0
    screen = console(out)
    if args.trace:
        return _trace(plan, table, options_from(args, [SEED]), screen)
    if args.show_shapes:
        from blockdsl.shapes import shape_grid, shape_table

        shape_grid(shape_table(plan, **table)).print(screen)
        return 0
    _print_summary(screen, plan)
    return 0


def _trace(plan: Any, table: dict[str, Any], seeding: dict[str, Any], screen: Any) -> int:
    import torch

    from blockdsl.model import build_model
    from blockdsl.tracing import trace

    options = with_defaults(TRACE, {**seeding, **table})
    torch.manual_seed(options["seed"])
    model = build_model(plan.config, dtype=getattr(torch, options.pop("dtype")))
    keep = ("batch", "seq", "depth", "seed", "full_args")
    result = trace(model, **{k: options[k] for k in keep})
    result.grid().print(screen)
    return 1 if result.first_problem is not None else 0


def _print_summary(screen: Any, plan: Any) -> None:
    from blockdsl.export import distinct_blocks

    config = plan.config
    seq = config.context
    screen.print(
        f"{len(plan.layers)} layers, d_model={config.d_model}, vocab={config.vocab}, "
        f"context={config.context}: {format_int(plan.params())} parameters, "
        f"{human(plan.flops(seq) / seq, 'FLOP')} per token at T={seq}"
    )
    for block in distinct_blocks(plan):
        screen.print(f"  {block.where} ({block.name}): {' '.join(block.graph.source.split())}")
        screen.print(f"    = {block.graph.expression()}")
