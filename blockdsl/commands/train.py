"""``blockdsl train``: train a model on prepared data or a task, writing the run's directory
(``blockdsl.train.train``); under torchrun every rank runs it."""

from __future__ import annotations

import argparse
from typing import TextIO

from blockdsl.commands.common import add_model_arguments, model_spec
from blockdsl.commands.options import Option, add_options, options_from
from blockdsl.errors import BlockDSLError, ConfigError

NAME = "train"
HELP = "train a model on prepared data (metrics, checkpoints, exact resume)"
DESCRIPTION = (
    "Train SPEC on a prepared data directory, writing the run to --out: config.toml, "
    "metrics.jsonl, curves.png (with matplotlib), checkpoints, summary.json. Settings come "
    "from the [train] and [optim] tables (--set train.steps=200 --set optim.lr=1e-3); on --data "
    "task:NAME the task's recipe (batch, learning rate, schedule, steps; docs/tasks.md) fills "
    "in the keys they leave unset. SIGINT or SIGTERM saves a checkpoint and stops (exit "
    "128+signal); --resume continues exactly. Under torchrun (torchrun --nproc_per_node=N -m "
    "blockdsl train ...) it trains with DDP or FSDP2 ([train] strategy). See docs/training.md "
    "and docs/distributed.md."
)
EXAMPLES = """\
blockdsl data prepare stdlib --out data/stdlib
blockdsl train tiny --data data/stdlib --out runs/tiny --set vocab=256 --set train.steps=200
blockdsl train runs/tiny/config.toml --data data/stdlib --out runs/tiny --resume
blockdsl train tiny --data data/stdlib --out runs/tiny-1t --set vocab=256 \\
    --set train.steps=200 --threads 1 --set 'train.log=["jsonl","tensorboard"]'
blockdsl train tiny --data data/stdlib --out runs/tiny-more --init runs/tiny \\
    --set vocab=256 --set train.steps=400
blockdsl train "Norm->Attn->+->Norm->MoE->+" --data data/stdlib --out runs/moe \\
    --set vocab=256 --set train.steps=200 --set optim.name=muon
"""

# blockdsl.train.train is a wrapper taking **kwargs: the signature is the loop's
TRAIN = "blockdsl.train.loop:train"
OPTIONS = (
    Option(
        "--data", "a prepared data directory, or task:NAME,...", TRAIN, metavar="DIR", required=True
    ),
    Option("--out", "the run's directory", TRAIN, metavar="RUN", required=True),
    Option("--resume", "continue the run in RUN", TRAIN),
    Option(
        "--max-memory",
        "refuse to start above this estimated peak (8GiB, 500MB; default: available)",
        TRAIN,
        metavar="SIZE",
    ),
    Option(
        "--init",
        "start from these weights: a model file, checkpoint or run directory, or hf:DIR "
        "(init.json in RUN says what was copied)",
        TRAIN,
        metavar="SOURCE",
    ),
    Option(
        "--init-allow-mismatch",
        "a tensor of another shape than --init's keeps its fresh init (default: an error)",
        TRAIN,
        param="init_strict",
        switch=False,
    ),
    Option(
        "--init-optimizer",
        "keep the optimizer state of the --init run (same parameters only)",
        TRAIN,
        param="init_optimizer",
        switch=True,
    ),
    Option(
        "--teacher",
        "distil this model (model file, checkpoint or run directory, hf:DIR) into the new "
        "one; [distill] weighs the terms",
        TRAIN,
        metavar="SOURCE",
    ),
    Option(
        "--threads",
        "torch's CPU threads (default: torch's choice, one per core; fewer can be faster on "
        "a shared machine, see docs/training.md)",
        TRAIN,
        metavar="N",
    ),
    Option("--no-plot", "do not write curves.png at each evaluation", TRAIN, switch=False),
    Option(
        "--quiet",
        "no progress bar or log lines (metrics still kept)",
        TRAIN,
        param="progress",
        switch=False,
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_options(parser, OPTIONS)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.train.distributed import detect_launch

    if not detect_launch().distributed:
        return _train(args, out)
    # under torchrun, an exception leaving a rank is written where torchrun's summary shows it
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_train)(args, out)


def _train(args: argparse.Namespace, out: TextIO) -> int:
    import blockdsl.train as training
    from blockdsl.config import load_config
    from blockdsl.train.distributed import detect_launch
    from blockdsl.train.warmstart import HF_PREFIX

    spec, overrides = model_spec(args)
    load_config(spec, **overrides)  # configuration errors before anything else
    if "init" in overrides:  # --set init.scheme=gpt2: the model's [init] table, not --init
        spec = load_config(spec, init=overrides.pop("init"))
    options = options_from(args, OPTIONS)
    if args.from_hf:  # the folder's weights, never a silent random init
        if options.get("init") is not None:
            raise ConfigError(
                "give --from-hf DIR or --init SOURCE, not both",
                hint="--from-hf DIR takes the folder's config and weights, as --init hf:DIR",
            )
        options["init"] = f"{HF_PREFIX}{args.from_hf}"
    try:
        run = training.train(spec, **options, **overrides)
    except BlockDSLError as exc:
        if getattr(exc, "raised_on_rank0", False):  # rank 0 prints it, once for all
            return 2
        raise
    if run.interrupted:
        return 128 + run.interrupted
    summary = run.summary
    if not args.quiet and detect_launch().rank == 0:
        out.write(
            f"done: {summary['steps']} steps, {summary['tokens']:,} tokens in "
            f"{summary['elapsed']:.1f} s; loss {summary['final_loss']:.4f}, val loss "
            f"{summary['final_val_loss']:.4f}; run in {run.dir}\n"
        )
        if summary.get("final_accuracy") is not None:  # --data task:...
            reached = " (target reached)" if summary.get("reached_target") else ""
            out.write(f"accuracy {summary['final_accuracy']:.4f}{reached}\n")
    return 0
