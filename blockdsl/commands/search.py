"""``blockdsl search``: regularised evolution over block strings, keeping the Pareto front in
an Optuna study (``blockdsl.search``); ``blockdsl search show`` prints a stored study."""

from __future__ import annotations

import argparse
import inspect
import pathlib
import sys
from typing import Any, TextIO

from blockdsl.commands.common import add_set_option, console, overrides_from
from blockdsl.commands.options import (
    UNSET,
    Option,
    add_options,
    comma_list,
    options_from,
    whole_number,
    with_defaults,
)
from blockdsl.errors import ConfigError

NAME = "search"
HELP = "evolve block strings on a task; keep the Pareto front (needs blockdsl[search])"
DESCRIPTION = (
    "Regularised evolution over block strings: mutate the seeds, reject invalid or "
    "over-budget candidates before any allocation, train the rest with the compare recipe and "
    "an early hurdle, and keep the Pareto front of the metric against parameters and decoding "
    "state in an Optuna study (SQLite in --out by default; --storage URL, e.g. "
    "postgresql://host/db, lets workers on many machines share it). Rerunning resumes the "
    "study. 'blockdsl search show' prints a stored study's front and the compare command that "
    "reproduces it. See docs/search.md."
)
EXAMPLES = """\
blockdsl search --data task:mqar,vocab=64,seq=32,pairs=4,train=4000,test=256 \\
    --components Norm,MLP,Conv,Attn --seed-spec 'Norm->Conv->+->Norm->MLP->+' \\
    --steps 400 --trials 24 --set d_model=64 --set layers='block*2' --out runs/search
blockdsl search show --out runs/search
blockdsl search --data task:mqar,vocab=64,seq=32,pairs=4,train=4000,test=256 \\
    --components Norm,MLP,Conv,Attn --seed-spec 'Norm->Conv->+->Norm->MLP->+' \\
    --steps 400 --trials 48 --set d_model=64 --set layers='block*2' --out runs/search \\
    --workers 2                                   (two processes grow the same study)
"""

SEARCH = "blockdsl.search:search"
SHOW = "blockdsl.search:show"
OPTIONS = (
    Option("--data", "a task (task:NAME,...) to score on", SEARCH, metavar="D"),
    Option(
        "--components",
        "components the mutations may use",
        SEARCH,
        metavar="A,B,...",
        parse=comma_list(str, "--components"),
    ),
    Option(
        "--seed-spec",
        "a block string to start from (repeatable)",
        SEARCH,
        param="seeds",
        metavar="SPEC",
        repeat=True,
        parse=str,
    ),
    Option("--steps", "training steps per candidate", SEARCH, metavar="N"),
    Option("--trials", "candidates to train in all", SEARCH, metavar="N", default=20),
    Option(
        "--hurdle",
        "early checkpoint (steps): a candidate below the running median there stops "
        "(default: steps/4; 0: none)",
        SEARCH,
        metavar="N",
    ),
    Option(
        "--max-params",
        "reject larger candidates",
        SEARCH,
        metavar="N",
        parse=whole_number("--max-params"),
    ),
    Option(
        "--max-memory", "reject candidates whose training estimate exceeds M", SEARCH, metavar="M"
    ),
    Option(
        "--objectives",
        "metric,params,state (metric first)",
        SEARCH,
        metavar="LIST",
        parse=comma_list(str, "--objectives"),
    ),
    Option("--lr", "learning rate of every run", SEARCH, metavar="LR"),
    Option("--seed", "training seed", SEARCH, metavar="S"),
    Option("--base", "model for block strings", SEARCH, metavar="SPEC"),
    Option("--population", "ageing window", SEARCH, metavar="N"),
    Option("--tournament", "tournament size", SEARCH, metavar="N"),
    Option("--workers", "local processes", SEARCH, metavar="K"),
    Option("--force-workers", "allow more --workers than cores", SEARCH),
    Option("--out", "runs and front.png", SEARCH, metavar="DIR"),
    Option("--storage", "Optuna storage (default: DIR/study.db)", SEARCH, metavar="URL"),
    Option("--study", "the study's name", SEARCH, metavar="NAME"),
    Option("--no-plot", "do not write front.png", SEARCH),
    Option(
        "--threads",
        "torch's CPU threads per worker (default: torch's choice; 1 with several --workers)",
        SEARCH,
        metavar="N",
    ),
    Option("--quiet", "print only the front", SEARCH, param="progress", switch=False),
)
TOP = Option(
    "--top", "best blocks to reproduce", "blockdsl.search:SearchReport.compare_command", metavar="N"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", nargs="?", choices=["show"], help="show: print a stored study instead"
    )
    add_options(parser, [*OPTIONS, TOP])
    add_set_option(
        parser, "override a config key of every candidate (d_model=64, layers='block*2')"
    )


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so that a stopped search exits 128+15, not 0."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def run(args: argparse.Namespace, out: TextIO) -> int:
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _search(args, out)
    except KeyboardInterrupt as stop:
        # the candidate in training saved a checkpoint; its claim is taken back on rerun
        print("blockdsl search: interrupted; rerun the same command to resume", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(stop, _Terminated) else signal.SIGINT)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _search(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl import search as search_module

    options = with_defaults(SEARCH, options_from(args, OPTIONS))
    storage = options["storage"] or search_module.default_storage(options["out"])
    if args.action == "show":
        result = search_module.show(storage=storage, study=options["study"])
        out_dir = pathlib.Path(options["out"])
        if options["plot"] and out_dir.is_dir():
            search_module.plot_front(result, out_dir / "front.png")
    else:
        missing = [o.flag for o in OPTIONS if _required(o) and not options.get(o.keyword)]
        if missing:
            raise ConfigError(
                f"blockdsl search needs {', '.join(missing)}",
                hint="see 'blockdsl search --help' for an example",
            )
        options["storage"] = storage
        result = search_module.search(**options, **overrides_from(args.set))
    console(out).print(result.table())
    if not args.quiet:
        stats = result.stats
        if stats is not None:
            out.write(
                f"this run: {stats.proposed} proposed, {stats.invalid} invalid and "
                f"{stats.over_budget} over budget (rejected before training), "
                f"{stats.duplicates} already known, {stats.trained} trained "
                f"({stats.pruned} pruned at the hurdle, {stats.resumed} resumed from a stopped "
                f"worker) in {result.seconds:.0f} s\n"
            )
        out.write("reproduce the best blocks and the seeds with:\n")
        out.write(result.compare_command(**options_from(args, [TOP])) + "\n")
    return 0


def _required(option: Option) -> bool:
    """An option the search needs (the library has no default for it, nor the command)."""
    return option.parameter().default is inspect.Parameter.empty and option.default is UNSET
