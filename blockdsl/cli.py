"""The ``blockdsl`` command line: argument parsing and printing only.

The work is done by the library (``blockdsl.model.ModelPlan``, ``blockdsl.shapes``,
``blockdsl.export``); see docs/cli.md. ``main(argv)`` returns the exit status: 0 on success,
2 on any user error (the error's caret message on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import sys
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

from blockdsl.errors import BlockDSLError, ConfigError, Span
from blockdsl.printer import format_int as _fmt_int
from blockdsl.printer import human

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXIT_USAGE = 2

COMPILE_EXAMPLES = """\
examples:
  blockdsl compile                                   the tiny preset: a summary
  blockdsl compile "Norm->Attn->+->Norm->MLP->+" --show-shapes --batch 8 --seq 256
  blockdsl compile "Norm->Attn->+->Norm->MLP->+" "Norm->MoE->+" --show-shapes --depth 2
  blockdsl compile llama --set d_model=8192 --set layers='block*80' \\
      --set defaults.Attn.heads=64 --set defaults.Attn.kv_heads=8 --show-shapes
  blockdsl compile gpt2 --emit mermaid -o gpt2.mmd
  blockdsl compile tiny --trace --batch 2 --seq 16       one real forward, value statistics
"""
CHECK_EXAMPLES = """\
examples:
  blockdsl check "Norm->Attn->+->Norm->MLP->+"
  blockdsl check examples/llama.toml --set d_model=512
"""
COMPONENTS_EXAMPLES = """\
examples:
  blockdsl components
  blockdsl components Attn
"""
PRESETS_EXAMPLES = """\
examples:
  blockdsl presets
"""
GENERATE_EXAMPLES = """\
examples:
  blockdsl generate runs/tiny --prompt "Once upon a time"
  blockdsl generate runs/tiny/checkpoints/step_0001000 --prompt "def " --greedy
  blockdsl generate runs/tiny --prompt "The" --temperature 0.8 --top-k 50 --top-p 0.95 --seed 0
  blockdsl generate --from-hf ./SmolLM-135M --prompt "The capital of France is"
"""
FUZZ_EXAMPLES = """\
examples:
  blockdsl fuzz --examples 200
  blockdsl fuzz --component Norm --component MyMixer --plugin my_package.components
  blockdsl fuzz --component Leak --plugin tests/plugins/leaky.py --seed 0
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as a return code (``main`` never exits the process)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise _UsageError(f"{self.prog}: error: {message}")


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="blockdsl",
        description="Compile block strings like 'Norm->Attn->+->Norm->MLP->+' to PyTorch.",
        epilog="run 'blockdsl COMMAND --help' for a command's options and examples",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from blockdsl import __version__

    parser.add_argument("--version", action="version", version=f"blockdsl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    spec_help = (
        "a block string, several strings or one JSON/Python list of strings (parallel "
        "branches), a .toml path or a preset name (default: tiny)"
    )

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("spec", nargs="*", metavar="SPEC", help=spec_help)
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key (d_model=512, layers='block*8', "
            "defaults.Attn.heads=4); values are TOML literals, else strings",
        )
        p.add_argument(
            "--from-hf",
            metavar="DIR",
            help="start from a Hugging Face checkpoint folder: its config.json only, no "
            "weights are read (needs transformers)",
        )

    compile_ = commands.add_parser(
        "compile",
        help="validate a model and show its shapes or generated code",
        description="Validate a model and print a summary, its shape table or an export.",
        epilog=COMPILE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model_args(compile_)
    compile_.add_argument(
        "--show-shapes", action="store_true", help="print every node's shape, params, FLOPs"
    )
    compile_.add_argument(
        "--trace",
        action="store_true",
        help="build the model (seeded), run one forward on random tokens and print each "
        "node's actual shape, dtype, mean/std, flagging NaN/inf and exploding values "
        "(exit 1 when a node is flagged)",
    )
    compile_.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of --trace (weights, tokens)"
    )
    compile_.add_argument(
        "--depth",
        type=int,
        default=1,
        metavar="N",
        help="0: one row per block; 1: per node (default); 2: also steps inside components",
    )
    compile_.add_argument("--batch", "-B", type=int, default=1, metavar="B", help="batch size")
    compile_.add_argument(
        "--seq",
        "-T",
        type=int,
        default=None,
        metavar="T",
        help="sequence length (default: context)",
    )
    compile_.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16", "float64"],
        help="element type for the activation memory estimate",
    )
    compile_.add_argument(
        "--all-args", action="store_true", help="show every resolved argument of each component"
    )
    compile_.add_argument(
        "--emit", choices=["python", "dot", "mermaid", "json"], help="print an export instead"
    )
    compile_.add_argument("-o", "--output", metavar="FILE", help="write the output to FILE")

    check = commands.add_parser(
        "check",
        help="validate a model: errors (exit 2) or a one-line summary",
        description="Validate a model (building it on the meta device, no memory) and print "
        "the errors (exit status 2) or a one-line summary.",
        epilog=CHECK_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model_args(check)

    components = commands.add_parser(
        "components",
        help="list the registered components and their arguments",
        description="List components with their arguments, types, defaults and description.",
        epilog=COMPONENTS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    components.add_argument("name", nargs="?", metavar="NAME", help="show one component")

    commands.add_parser(
        "presets",
        help="list the preset models",
        description="List preset models: name, description, parameters at the default size.",
        epilog=PRESETS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    gen = commands.add_parser(
        "generate",
        help="continue a prompt with a trained model, streaming the tokens",
        description="Continue a prompt with a training run's model (its newest checkpoint, or "
        "the one given) and tokenizer, or with a Hugging Face checkpoint folder (--from-hf), "
        "printing the tokens as they come. See docs/generation.md.",
        epilog=GENERATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument(
        "path", nargs="?", metavar="RUN|CHECKPOINT", help="a run directory or a checkpoint"
    )
    gen.add_argument("--from-hf", metavar="DIR", help="a Hugging Face folder with tokenizer.json")
    gen.add_argument("--prompt", required=True, metavar="TEXT", help="the text to continue")
    gen.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        metavar="N",
        help="tokens to generate (default: 128, or what the context leaves)",
    )
    gen.add_argument("--temperature", type=float, default=1.0, metavar="T", help="default 1.0")
    gen.add_argument(
        "--top-k", type=int, default=None, metavar="K", help="sample from the K most likely"
    )
    gen.add_argument(
        "--top-p", type=float, default=None, metavar="P", help="nucleus: the top tokens of mass P"
    )
    gen.add_argument("--seed", type=int, default=None, metavar="S", help="seed the sampling")
    gen.add_argument("--greedy", action="store_true", help="always take the most likely token")
    gen.add_argument("--no-cache", action="store_true", help="recompute the prefix every step")
    gen.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")

    fuzz = commands.add_parser(
        "fuzz",
        help="fuzz architectures built from components; shrink a failure to a minimal block",
        description="Generate valid blocks from the chosen components (default: all), compile "
        "each and check its invariants (shape, finiteness, causality, gradients, eval-mode "
        "determinism, state_dict round trip). On a failure print the minimal block string, the "
        "violated invariant and the seed (exit 1); else a summary (exit 0). See docs/fuzzing.md.",
        epilog=FUZZ_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fuzz.add_argument("--examples", type=int, default=100, metavar="N", help="default 100")
    fuzz.add_argument("--seed", type=int, default=None, metavar="S", help="default: random")
    fuzz.add_argument(
        "--component",
        action="append",
        default=[],
        metavar="NAME",
        help="draw from this component (repeatable; default: every usable one)",
    )
    fuzz.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module (dotted path or .py file) that registers components (repeatable)",
    )
    _train_parsers(commands, model_args)
    _compare_parser(commands)
    _search_parser(commands)
    _export_parser(commands)
    return parser


TRAIN_EXAMPLES = """\
examples:
  blockdsl data prepare stdlib --out data/stdlib
  blockdsl train tiny --data data/stdlib --out runs/tiny --set vocab=256 --set train.steps=200
  blockdsl train runs/tiny/config.toml --data data/stdlib --out runs/tiny --resume
  blockdsl train "Norm->Attn->+->Norm->MoE->+" --data data/stdlib --out runs/moe \\
      --set vocab=256 --set train.steps=200 --set optim.name=muon
"""
DATA_EXAMPLES = """\
examples:
  blockdsl data prepare stdlib --out data/stdlib                   (offline: Python's own source)
  blockdsl data prepare notes/ --glob '*.md' --tokenizer bpe:4096 --out data/notes
  blockdsl data prepare corpus.jsonl --tokenizer char --out data/corpus
  blockdsl data prepare hf:roneneldan/TinyStories:train --tokenizer bpe:8192 --out data/ts
"""


def _train_parsers(commands: Any, model_args: Any) -> None:
    train = commands.add_parser(
        "train",
        help="train a model on prepared data (metrics, checkpoints, exact resume)",
        description="Train SPEC on a prepared data directory, writing the run to --out: "
        "config.toml, metrics.jsonl, checkpoints, summary.json. Settings come from the "
        "[train] and [optim] tables (--set train.steps=200 --set optim.lr=1e-3). SIGINT or "
        "SIGTERM saves a checkpoint and stops (exit 128+signal); --resume continues exactly. "
        "Under torchrun (torchrun --nproc_per_node=N -m blockdsl train ...) it trains with DDP "
        "or FSDP2 ([train] strategy). See docs/training.md and docs/distributed.md.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model_args(train)
    train.add_argument("--data", required=True, metavar="DIR", help="a prepared data directory")
    train.add_argument("--out", required=True, metavar="RUN", help="the run's directory")
    train.add_argument("--resume", action="store_true", help="continue the run in RUN")
    train.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="refuse to start above this estimated peak (8GiB, 500MB; default: available)",
    )
    train.add_argument(
        "--quiet", action="store_true", help="no progress bar or log lines (metrics still kept)"
    )

    data = commands.add_parser(
        "data",
        help="prepare token data for training",
        description="Prepare token data: 'blockdsl data prepare SOURCE... --out DIR'.",
        epilog=DATA_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = data.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    prepare = actions.add_parser(
        "prepare",
        help="tokenize sources into train.bin, val.bin, tokenizer.json and meta.json",
        description="Tokenize SOURCEs (files, directories, .jsonl with a 'text' field, "
        "hf:NAME[:split] with the datasets extra, or 'stdlib': the Python standard library's "
        "source, available offline) into DIR.",
        epilog=DATA_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_argument("sources", nargs="+", metavar="SOURCE")
    prepare.add_argument("--out", required=True, metavar="DIR")
    prepare.add_argument(
        "--tokenizer",
        default="byte",
        metavar="T",
        help="byte (256 ids, default), char, bpe:N, or a tokenizer.json path",
    )
    prepare.add_argument("--val-fraction", type=float, default=0.05, metavar="F")
    prepare.add_argument("--seed", type=int, default=0, metavar="S")
    prepare.add_argument(
        "--glob", default="*", metavar="PATTERN", help="files to take from directories"
    )
    prepare.add_argument("--force", action="store_true", help="replace prepared data in DIR")


EXPORT_EXAMPLES = """\
examples:
  blockdsl export runs/tiny --to hf hf/tiny              a run: newest checkpoint + tokenizer
  blockdsl export runs/tiny/checkpoints/step_0000200 --to hf hf/tiny --force
  blockdsl export model.safetensors --to hf hf/model --tokenizer data/tokenizer.json
"""


def _export_parser(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="write a run or checkpoint as a Hugging Face transformers folder",
        description="Write config.json, model.safetensors, generation_config.json and the "
        "tokenizer files of a blockdsl model (a run directory: its newest checkpoint and its "
        "tokenizer.json; a checkpoint directory or file) so that transformers' "
        "AutoModelForCausalLM and AutoTokenizer load them. The architecture is found by "
        "running the Hugging Face importer backwards; a model with no transformers "
        "equivalent is refused with the block and step that has no counterpart. The written "
        "folder is loaded back and its logits compared. See docs/interop.md.",
        epilog=EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("source", metavar="RUN|CHECKPOINT")
    export.add_argument("--to", required=True, choices=["hf"], help="the format (hf)")
    export.add_argument("out", metavar="DIR", help="the folder to write")
    export.add_argument("--force", action="store_true", help="replace a non-empty DIR")
    export.add_argument(
        "--tokenizer", metavar="FILE", help="a tokenizer.json (default: the run's, if any)"
    )
    export.add_argument(
        "--no-verify", action="store_true", help="skip loading the result back to compare"
    )


# ==================================================================== helpers
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


def load_plan(args: argparse.Namespace) -> Any:
    """The validated ``ModelPlan`` of the command's SPEC, ``--from-hf`` and ``--set``."""
    from blockdsl.config import load_config
    from blockdsl.model import ModelPlan

    overrides = overrides_from(args.set)
    if args.from_hf:
        if args.spec:
            raise ConfigError("give either SPEC or --from-hf, not both")
        spec = _from_hf(args.from_hf)
    else:
        spec = spec_from(args.spec)
    return ModelPlan(load_config(spec, **overrides))


def _from_hf(path: str) -> dict:
    """The config of a Hugging Face checkpoint folder (config.json only: no weights are read).
    ``blockdsl.hf`` imports the optional transformers itself and says how to install it."""
    from blockdsl import hf

    return hf.config_from_dir(path)


def _console(file: TextIO) -> Any:
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


# ==================================================================== commands
def cmd_compile(args: argparse.Namespace, out: TextIO) -> int:
    plan = load_plan(args)
    if args.batch < 1 or (args.seq is not None and args.seq < 1):
        raise ConfigError("--batch and --seq must be positive")
    context = plan.config.context
    if args.seq is not None and args.seq > context:
        raise ConfigError(
            f"--seq {args.seq} is longer than the model's context ({context})",
            hint=f"use --seq {context} or less, or raise the context: --set context={args.seq}",
        )
    if args.emit:
        from blockdsl.export import to_dot, to_json, to_mermaid, to_python

        if args.emit == "json":
            text = to_json(plan, args.seq)
        else:
            text = {"python": to_python, "dot": to_dot, "mermaid": to_mermaid}[args.emit](plan)
        out.write(text)
        return 0
    console = _console(out)
    if args.trace:
        return _trace(args, plan, console)
    if args.show_shapes:
        from blockdsl.shapes import shape_table

        table = shape_table(
            plan,
            batch=args.batch,
            seq=args.seq,
            depth=args.depth,
            dtype=args.dtype,
            full_args=args.all_args,
        )
        _print_shapes(console, table)
        return 0
    _print_summary(console, plan)
    return 0


def _trace(args: argparse.Namespace, plan: Any, console: Any) -> int:
    import torch

    from blockdsl.model import build_model
    from blockdsl.tracing import trace

    torch.manual_seed(args.seed)
    model = build_model(plan.config, dtype=getattr(torch, args.dtype))
    result = trace(
        model,
        batch=args.batch,
        seq=args.seq,
        depth=args.depth,
        seed=args.seed,
        full_args=args.all_args,
    )
    result.grid().print(console)
    return 1 if result.first_problem is not None else 0


def _print_summary(console: Any, plan: Any) -> None:
    from blockdsl.export import distinct_blocks

    config = plan.config
    seq = config.context
    console.print(
        f"{len(plan.layers)} layers, d_model={config.d_model}, vocab={config.vocab}, "
        f"context={config.context}: {_fmt_int(plan.params())} parameters, "
        f"{human(plan.flops(seq) / seq, 'FLOP')} per token at T={seq}"
    )
    for block in distinct_blocks(plan):
        console.print(f"  {block.where} ({block.name}): {' '.join(block.graph.source.split())}")
        console.print(f"    = {block.graph.expression()}")


def _print_shapes(console: Any, table: Any) -> None:
    from blockdsl.shapes import shape_grid

    shape_grid(table).print(console)


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    plan = load_plan(args)
    # Building on the meta device also runs the components' constructors (their own checks)
    # without allocating parameter memory.
    import torch

    from blockdsl.model import build_model

    build_model(plan.config, device=torch.device("meta"))
    config = plan.config
    out.write(
        f"ok: {len(plan.layers)} layers, d_model={config.d_model}, vocab={config.vocab}, "
        f"{_fmt_int(plan.params())} parameters\n"
    )
    for label, paths in plan.shared_labels().items():
        out.write(f"shared across layers: {label} in {_runs(paths)} (one module)\n")
    return 0


def _runs(paths: list[str]) -> str:
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


def cmd_components(args: argparse.Namespace, out: TextIO) -> int:
    from rich.table import Table

    from blockdsl.errors import UnknownComponentError, did_you_mean
    from blockdsl.registry import REGISTRY

    console = _console(out)
    aliases = REGISTRY.aliases()
    if args.name is None:
        grid = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        grid.add_column("name", no_wrap=True)
        grid.add_column("arguments", overflow="fold")
        grid.add_column("description", overflow="fold")
        for component in REGISTRY.components():
            grid.add_row(component.name, component.signature_text(), component.description)
        for alias in aliases.values():
            bound = ", ".join(f"{k}={v}" for k, v in alias.args.items())
            grid.add_row(alias.name, f"= {alias.target}({bound})", f"alias of {alias.target}")
        console.print(grid)
        return 0
    if args.name not in REGISTRY:
        raise UnknownComponentError(
            f"unknown component '{args.name}'",
            args.name,
            hint=did_you_mean(args.name, REGISTRY.names()),
        )
    component, bound = REGISTRY.resolve(args.name)
    if args.name in aliases:
        console.print(f"{args.name}: alias of {component.name}({bound})")
    console.print(f"{component.name}: {component.description}")
    helps = component.arg_help
    grid = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    grid.add_column("argument", no_wrap=True)
    grid.add_column("type", overflow="fold")
    grid.add_column("default", no_wrap=True)
    grid.add_column("description", overflow="fold")
    for param in component.user_params.values():
        describe = param.describe()
        default = "(required)" if param.required else describe.split(" = ", 1)[-1]
        grid.add_row(param.name, param.type_name, default, helps.get(param.name, ""))
    console.print(grid)
    if component.input_size:
        console.print(f"input size: '{component.input_size}' (set by the compiler)")
    if component.takes_children:
        console.print("combinator: takes [child, ...] blocks")
    return 0


def cmd_presets(args: argparse.Namespace, out: TextIO) -> int:
    from rich.table import Table

    from blockdsl.config import list_presets, load_config
    from blockdsl.model import ModelPlan

    grid = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    grid.add_column("preset", no_wrap=True)
    grid.add_column("params", justify="right", no_wrap=True)
    grid.add_column("description", overflow="fold")
    for name in list_presets():
        config = load_config(name)
        grid.add_row(name, human(ModelPlan(config).params(), count=True), config.description)
    _console(out).print(grid)
    return 0


def cmd_generate(args: argparse.Namespace, out: TextIO) -> int:
    import torch

    from blockdsl.generate import GenerationError, eos_ids, load_generator, stream_text

    if bool(args.path) == bool(args.from_hf):
        raise GenerationError("give a run or checkpoint, or --from-hf DIR (one of them)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_generator(
        args.from_hf or args.path, from_hf=bool(args.from_hf), device=device
    )
    steps = args.max_new_tokens
    if steps is None:
        steps = max(0, min(128, model.config.context - len(tokenizer.encode(args.prompt).ids)))
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    pieces = stream_text(
        model,
        tokenizer,
        args.prompt,
        steps,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        generator=generator,
        use_cache=not args.no_cache,
        stop=eos_ids(args.from_hf) if args.from_hf else None,
    )
    first = next(pieces, "")  # bad prompts and options are reported before any output
    out.write(args.prompt + first)
    out.flush()
    for piece in pieces:
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0


def cmd_fuzz(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.fuzz import main as fuzz_main

    return fuzz_main(args.examples, args.seed, args.component, args.plugin, out=out)


def cmd_train(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.train.distributed import detect_launch

    if not detect_launch().distributed:
        return _train_command(args, out)
    # under torchrun, an exception leaving a rank is written where torchrun's summary shows it
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_train_command)(args, out)


def _train_command(args: argparse.Namespace, out: TextIO) -> int:
    import blockdsl.train as training
    from blockdsl.config import load_config
    from blockdsl.train.distributed import detect_launch

    if args.from_hf:
        spec = load_plan(args).config
        overrides: dict[str, Any] = {}
    else:
        spec = spec_from(args.spec)
        overrides = overrides_from(args.set)
        load_config(spec, **overrides)  # configuration errors before anything else
    try:
        run = training.train(
            spec,
            data=args.data,
            out=args.out,
            resume=args.resume,
            max_memory=args.max_memory,
            progress=False if args.quiet else None,
            **overrides,
        )
    except BlockDSLError as exc:
        if getattr(exc, "raised_on_rank0", False):  # rank 0 prints it, once for all
            return EXIT_USAGE
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


def cmd_data(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.train.data import prepare

    if args.action != "prepare":
        raise ConfigError("blockdsl data: give an action", hint="blockdsl data prepare --help")
    meta = prepare(
        args.sources,
        args.out,
        tokenizer=args.tokenizer,
        val_fraction=args.val_fraction,
        seed=args.seed,
        glob=args.glob,
        overwrite=args.force,
    )
    out.write(
        f"{args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
        f"vocab {meta['vocab']:,} ({meta['tokenizer']}, {meta['dtype']})\n"
    )
    return 0


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.hf.exporter import export_hf

    folder = export_hf(
        args.source,
        args.out,
        tokenizer=args.tokenizer,
        force=args.force,
        verify=not args.no_verify,
    )
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    files = ", ".join(sorted(p.name for p in folder.iterdir()))
    checked = "" if args.no_verify else "; logits checked against transformers"
    out.write(f"{folder}: {', '.join(config.get('architectures', []))} ({files}){checked}\n")
    return 0


COMPARE_EXAMPLES = """\
examples:
  blockdsl compare attn="Norm->Attn->+->Norm->MLP->+" conv="Norm->BaseConv->+->Norm->MLP->+" \\
      --data task:mqar,vocab=256,seq=64,pairs=4,train=20000 --steps 400 --lr 1e-3,3e-3 \\
      --set d_model=64 --set layers='block*2' --out runs/mqar
  blockdsl compare tiny examples/llama.toml --data data/stdlib --tokens 2e6 --seeds 0,1,2
"""


def _compare_parser(commands: Any) -> None:
    compare = commands.add_parser(
        "compare",
        help="train variants on the same batches and budget; tabulate and plot",
        description="Train every SPEC (anything compile takes, or NAME=SPEC; a block string "
        "goes into the --base model) on the same batches under one budget, for each seed and "
        "learning rate, and report each variant at its best learning rate: a table, "
        "summary.csv, summary.md and curves.png in --out. Finished runs in --out are reused. "
        "See docs/compare.md.",
        epilog=COMPARE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("spec", nargs="+", metavar="SPEC", help="a variant: SPEC or NAME=SPEC")
    compare.add_argument(
        "--data", required=True, metavar="D", help="a prepared data directory or task:NAME,..."
    )
    budget = compare.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, metavar="N", help="optimizer steps per run")
    budget.add_argument("--tokens", type=float, metavar="N", help="training tokens per run")
    budget.add_argument("--time", type=float, metavar="S", help="wall-clock seconds per run")
    compare.add_argument(
        "--seeds", default="0", metavar="0,1,2", help="seeds (model init and data order)"
    )
    compare.add_argument(
        "--lr", default=None, metavar="3e-4,1e-3", help="learning rates; each variant's best wins"
    )
    compare.add_argument("--max-memory", metavar="M", help="skip variants estimated above M")
    compare.add_argument("--base", default="tiny", metavar="SPEC", help="model for block strings")
    compare.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key of every variant (d_model=64, train.batch_size=32)",
    )
    compare.add_argument("--out", default="runs/compare", metavar="DIR", help="runs and results")
    compare.add_argument("--no-plot", action="store_true", help="do not write curves.png")
    compare.add_argument("--quiet", action="store_true", help="print only the table")


def _number_list(text: str | None, kind: type, flag: str) -> list[Any] | None:
    if text is None:
        return None
    try:
        return [kind(float(x)) if kind is int else kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated numbers, got '{text}'") from None


def cmd_compare(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.compare import compare

    comparison = compare(
        args.spec,
        data=args.data,
        out=args.out,
        base=args.base,
        steps=args.steps,
        tokens=int(args.tokens) if args.tokens else None,
        time=args.time,
        seeds=_number_list(args.seeds, int, "--seeds") or [0],
        lrs=_number_list(args.lr, float, "--lr"),
        max_memory=args.max_memory,
        progress=False if args.quiet else None,
        plot=not args.no_plot,
        **overrides_from(args.set),
    )
    _console(out).print(comparison.table())
    if not args.quiet:
        out.write(f"results in {comparison.out}: summary.csv, summary.md, curves.png\n")
    return 0


SEARCH_EXAMPLES = """\
examples:
  blockdsl search --data task:mqar,vocab=64,seq=32,pairs=4,train=4000,test=256 \\
      --components Norm,MLP,Conv,Attn --seed-spec 'Norm->Conv->+->Norm->MLP->+' \\
      --steps 400 --trials 24 --set d_model=64 --set layers='block*2' --out runs/search
  blockdsl search show --out runs/search
  blockdsl search ... --workers 2                       (two processes, one study)
  blockdsl search ... --storage postgresql://host/db    (workers on many machines)
"""


def _search_parser(commands: Any) -> None:
    search = commands.add_parser(
        "search",
        help="evolve block strings on a task; keep the Pareto front (needs blockdsl[search])",
        description="Regularised evolution over block strings: mutate the seeds, reject "
        "invalid or over-budget candidates before any allocation, train the rest with the "
        "compare recipe and an early hurdle, and keep the Pareto front of the metric against "
        "parameters and decoding state in an Optuna study (SQLite in --out by default). "
        "Rerunning resumes the study. 'blockdsl search show' prints a stored study's front "
        "and the compare command that reproduces it. See docs/search.md.",
        epilog=SEARCH_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search.add_argument(
        "action", nargs="?", choices=["show"], help="show: print a stored study instead"
    )
    search.add_argument("--data", metavar="D", help="a task (task:NAME,...) to score on")
    search.add_argument("--components", metavar="A,B,...", help="components the mutations may use")
    search.add_argument(
        "--seed-spec",
        action="append",
        default=[],
        metavar="SPEC",
        help="a block string to start from (repeatable)",
    )
    search.add_argument("--steps", type=int, metavar="N", help="training steps per candidate")
    search.add_argument(
        "--trials", type=int, default=20, metavar="N", help="candidates to train in all"
    )
    search.add_argument(
        "--hurdle",
        type=int,
        metavar="N",
        help="early checkpoint (steps): a candidate below the running median there stops "
        "(default: steps/4; 0: none)",
    )
    search.add_argument("--max-params", type=float, metavar="N", help="reject larger candidates")
    search.add_argument(
        "--max-memory", metavar="M", help="reject candidates whose training estimate exceeds M"
    )
    search.add_argument(
        "--objectives",
        default="metric,params,state",
        metavar="LIST",
        help="metric,params,state (metric first)",
    )
    search.add_argument("--lr", type=float, metavar="LR", help="learning rate of every run")
    search.add_argument("--seed", type=int, default=0, metavar="S", help="training seed")
    search.add_argument("--base", default="tiny", metavar="SPEC", help="model for block strings")
    search.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key of every candidate (d_model=64, layers='block*2')",
    )
    search.add_argument("--population", type=int, default=16, metavar="N", help="ageing window")
    search.add_argument("--tournament", type=int, default=4, metavar="N", help="tournament size")
    search.add_argument("--workers", type=int, default=1, metavar="K", help="local processes")
    search.add_argument("--out", default="runs/search", metavar="DIR", help="runs and front.png")
    search.add_argument("--storage", metavar="URL", help="Optuna storage (default: DIR/study.db)")
    search.add_argument("--study", default="search", metavar="NAME", help="the study's name")
    search.add_argument("--top", type=int, default=2, metavar="N", help="best blocks to reproduce")
    search.add_argument("--no-plot", action="store_true", help="do not write front.png")
    search.add_argument("--quiet", action="store_true", help="print only the front")


def cmd_search(args: argparse.Namespace, out: TextIO) -> int:
    try:
        return _search(args, out)
    except KeyboardInterrupt:
        # the candidate in training saved a checkpoint; its claim is taken back on rerun
        print("blockdsl search: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _search(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl import search as search_module

    storage = args.storage or search_module.default_storage(args.out)
    if args.action == "show":
        result = search_module.show(storage=storage, study=args.study)
        out_dir = pathlib.Path(args.out)
        if not args.no_plot and out_dir.is_dir():
            search_module.plot_front(result, out_dir / "front.png")
    else:
        missing = [
            flag
            for flag, value in (
                ("--data", args.data),
                ("--components", args.components),
                ("--seed-spec", args.seed_spec),
                ("--steps", args.steps),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                f"blockdsl search needs {', '.join(missing)}",
                hint="see 'blockdsl search --help' for an example",
            )
        result = search_module.search(
            data=args.data,
            components=[c.strip() for c in args.components.split(",") if c.strip()],
            seeds=args.seed_spec,
            steps=args.steps,
            trials=args.trials,
            out=args.out,
            storage=storage,
            study=args.study,
            workers=args.workers,
            base=args.base,
            lr=args.lr,
            seed=args.seed,
            hurdle=args.hurdle,
            max_params=int(args.max_params) if args.max_params else None,
            max_memory=args.max_memory,
            objectives=[o.strip() for o in args.objectives.split(",") if o.strip()],
            population=args.population,
            tournament=args.tournament,
            progress=False if args.quiet else None,
            plot=not args.no_plot,
            **overrides_from(args.set),
        )
    console = _console(out)
    console.print(result.table())
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
        out.write(result.compare_command(top=args.top) + "\n")
    return 0


COMMANDS = {
    "compile": cmd_compile,
    "check": cmd_check,
    "components": cmd_components,
    "presets": cmd_presets,
    "fuzz": cmd_fuzz,
    "train": cmd_train,
    "data": cmd_data,
    "generate": cmd_generate,
    "compare": cmd_compare,
    "search": cmd_search,
    "export": cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # torch warns at import when NumPy is absent; the command line uses no NumPy.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stdout)
        return 0
    out_path = getattr(args, "output", None)
    try:
        if out_path:
            with open(out_path, "w", encoding="utf-8") as out:
                return COMMANDS[args.command](args, out)
        return COMMANDS[args.command](args, sys.stdout)
    except BlockDSLError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"blockdsl: {exc}", file=sys.stderr)
        return EXIT_USAGE


def run() -> None:
    """Console entry point that exits with ``main``'s status."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
