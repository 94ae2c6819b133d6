"""What several commands share: the model arguments (SPEC, ``--set``, ``--from-hf``) and how
they become a config, and the console every table is printed on."""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from blockdsl.errors import ConfigError, Span

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SPEC_HELP = (
    "a block string, several strings or one JSON/Python list of strings (parallel "
    "branches), a .toml path or a preset name (default: tiny)"
)


def add_set_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE`` (repeatable), read by ``overrides_from``."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """SPEC..., ``--set`` and ``--from-hf``: the model of compile, check and train."""
    parser.add_argument("spec", nargs="*", metavar="SPEC", help=SPEC_HELP)
    add_set_option(
        parser,
        "override a config key (d_model=512, layers='block*8', defaults.Attn.heads=4); "
        "values are TOML literals, else strings",
    )
    parser.add_argument(
        "--from-hf",
        metavar="DIR",
        help="start from a Hugging Face checkpoint folder: its config.json (compile and "
        "check read no weights; train loads them too, as --init hf:DIR; needs transformers)",
    )


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML literal (``512``, ``1e-5``, ``true``, ``"rms"``, ``[1, 2]``),
    else JSON, else a Python list of strings (parallel branches, as users write them: ``["a",
    'b']``), else the text itself as a string (``rms``, ``block*80``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return json.loads(text)
    except ValueError:
        pass
    listed = block_list(text)
    return text if listed is None else listed


def block_list(text: str) -> list[str] | None:
    """Parallel branches written as ONE argument, a JSON or Python list of block strings
    (``'["Norm->Attn->+->Norm->MLP->+", "Norm->MoE->+"]'``); None when ``text`` is not a list
    (a block string never starts with '['). A list that does not read is a ``ConfigError``."""
    stripped = text.strip()
    if not stripped.startswith("["):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        try:  # literals only: nothing is executed
            value = ast.literal_eval(stripped)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    start = text.index("[")
    raise ConfigError(
        "a list of block strings must be a JSON or Python list of quoted strings",
        text,
        Span.at(text, start, len(text.rstrip())),
        hint='e.g. \'["Norm->Attn->+->Norm->MLP->+", "Norm->MoE->+"]\' (one argument, quoted '
        "for the shell), or each branch as its own argument",
    )


def spec_from(specs: Sequence[str]) -> Any:
    """The model spec of the SPEC arguments: a preset, path or block string; several strings,
    or one JSON/Python list of strings, are parallel branches."""
    if not specs:
        return "tiny"
    if len(specs) == 1:
        listed = block_list(specs[0])
        return specs[0] if listed is None else listed
    return list(specs)


def overrides_from(settings: Sequence[str]) -> dict[str, Any]:
    """The config overrides of ``--set KEY=VALUE`` arguments, as nested keyword arguments."""
    from blockdsl.config import set_path

    overrides: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--set expects KEY=VALUE, got '{setting}'",
                setting,
                hint="e.g. --set d_model=512 or --set defaults.Attn.heads=4",
            )
        set_path(overrides, key, parse_value(value.strip()))
    return overrides


def model_spec(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The spec and overrides of SPEC, ``--from-hf`` and ``--set``: a Hugging Face folder's
    config (config.json only, no weights read) or the SPEC arguments."""
    overrides = overrides_from(args.set)
    if not args.from_hf:
        return spec_from(args.spec), overrides
    if args.spec:
        raise ConfigError("give either SPEC or --from-hf, not both")
    # blockdsl.hf imports the optional transformers itself and says how to install it
    from blockdsl.hf import config_from_dir

    return config_from_dir(args.from_hf), overrides


def load_plan(args: argparse.Namespace) -> Any:
    """The validated ``ModelPlan`` of the command's SPEC, ``--from-hf`` and ``--set``."""
    from blockdsl.config import load_config
    from blockdsl.model import ModelPlan

    spec, overrides = model_spec(args)
    return ModelPlan(load_config(spec, **overrides))


def console(file: TextIO) -> Any:
    """A rich console on ``file``: the terminal's width and colour on a terminal, else plain
    text at ``$COLUMNS`` (default 120) columns."""
    from rich.console import Console

    width = os.environ.get("COLUMNS")
    terminal = file.isatty() if hasattr(file, "isatty") else False
    return Console(
        file=file,
        width=int(width) if width and width.isdigit() else (None if terminal else 120),
        no_color=not terminal or "NO_COLOR" in os.environ,
        force_terminal=terminal,
        highlight=False,
        markup=False,  # component descriptions contain brackets: print them as written
        emoji=False,
        soft_wrap=False,
    )


def plain_table(*columns: tuple[str, dict[str, Any]]) -> Any:
    """A borderless rich table with a bold header: ``(name, column options)`` per column."""
    from rich.table import Table

    grid = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    for name, options in columns:
        grid.add_column(name, **options)
    return grid
