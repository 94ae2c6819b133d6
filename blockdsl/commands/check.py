"""``blockdsl check``: validate a model (the plan, then every module built on the meta device)
and print the errors (exit 2) or a one-line summary."""

from __future__ import annotations

import argparse
from typing import TextIO

from blockdsl.commands.common import add_model_arguments, load_plan
from blockdsl.printer import format_int

NAME = "check"
HELP = "validate a model: errors (exit 2) or a one-line summary"
DESCRIPTION = (
    "Validate a model (building it on the meta device, no memory) and print the errors (exit "
    "status 2) or a one-line summary."
)
EXAMPLES = """\
blockdsl check "Norm->Attn->+->Norm->MLP->+"
blockdsl check examples/llama.toml --set d_model=512
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)


def run(args: argparse.Namespace, out: TextIO) -> int:
    plan = load_plan(args)
    # Building on the meta device also runs the components' constructors (their own checks)
    # without allocating parameter memory.
    import torch

    from blockdsl.model import build_model

    build_model(plan.config, device=torch.device("meta"))
    config = plan.config
    out.write(
        f"ok: {len(plan.layers)} layers, d_model={config.d_model}, vocab={config.vocab}, "
        f"{format_int(plan.params())} parameters\n"
    )
    for label, paths in plan.shared_labels().items():
        out.write(f"shared across layers: {label} in {layer_runs(paths)} (one module)\n")
    return 0


def layer_runs(paths: list[str]) -> str:
    """``layers.0-11, head``: consecutive layers as one run."""
    out: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            out.append(f"layers.{run[0]}" if len(run) == 1 else f"layers.{run[0]}-{run[-1]}")
            run.clear()

    for path in paths:
        index = int(path.split(".")[1]) if path.startswith("layers.") else None
        if index is not None and (not run or index == run[-1] + 1):
            run.append(index)
            continue
        flush()
        if index is None:
            out.append(path)
        else:
            run.append(index)
    flush()
    return ", ".join(out)
