"""Every command's ``--help`` examples, read back out of the help text as a user reads them:
each parses with its command's options, the model commands' examples run as printed, and the
training commands' examples validate (their models build small) or run on a cut budget."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from blockdsl.cli import main
from blockdsl.commands import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
COMMAND_NAMES = [command.NAME for command in COMMANDS]
# A comment follows an example after a run of spaces ("... --seq 16       one real forward").
COMMENT = re.compile(r"\s{3,}\S.*$")
# Examples that need something this machine cannot have: they are parsed, not run.
NEEDS_DOWNLOAD = ("hf:roneneldan/TinyStories", "./SmolLM-135M")


def help_text(capsys: pytest.CaptureFixture, *command: str) -> str:
    assert main([*command, "--help"]) == 0
    return capsys.readouterr().out


def examples_in(help_output: str) -> list[list[str]]:
    """The command lines under ``examples:``, continuation lines joined, comments cut, split as
    the shell splits them."""
    _, found, tail = help_output.partition("\nexamples:\n")
    assert found, "the help shows no examples"
    lines: list[str] = []
    pending = ""
    for raw in tail.splitlines():
        line = raw.strip()
        if pending:
            line = pending + " " + line
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        if line:
            lines.append(COMMENT.sub("", line))
    assert not pending, "an example ends with a line continuation"
    examples = [shlex.split(line) for line in lines]
    assert examples and all(words[0] == "blockdsl" for words in examples), lines
    return [words[1:] for words in examples]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh directory with the repository's examples/ and tests/ (for plugins) linked in."""
    for name in ("examples", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "120")
    return tmp_path


def test_the_examples_parser_reads_continuations_and_cuts_comments():
    text = (
        "usage: ...\n\nexamples:\n"
        "  blockdsl compile                     the tiny preset\n"
        "  blockdsl compile llama --set d_model=8 \\\n"
        "      --set layers='block*2' --show-shapes\n"
    )
    assert examples_in(text) == [
        ["compile"],
        ["compile", "llama", "--set", "d_model=8", "--set", "layers=block*2", "--show-shapes"],
    ]
    with pytest.raises(AssertionError):
        examples_in("usage: blockdsl x\n")


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_every_help_example_parses(capsys, name):
    from blockdsl.cli import build_parser

    examples = examples_in(help_text(capsys, name))
    assert any(argv[0] == name for argv in examples)
    for argv in examples:  # train's examples start by preparing the data
        assert argv[0] in COMMAND_NAMES, argv
        build_parser(argv[0]).parse_args(argv)  # a usage error raises


def test_data_prepare_help_shows_the_examples(capsys):
    examples = examples_in(help_text(capsys, "data", "prepare"))
    assert all(argv[:2] == ["data", "prepare"] for argv in examples)


@pytest.mark.parametrize("name", ["compile", "check", "components", "presets"])
def test_model_command_examples_run_as_printed(capsys, workspace, name):
    for argv in examples_in(help_text(capsys, name)):
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 0, f"blockdsl {shlex.join(argv)}: exit {code}\n{captured.err}"
        assert captured.err == "", captured.err
    if name == "compile":
        assert (workspace / "gpt2.mmd").read_text().startswith("flowchart")


def test_train_examples_configure_valid_models(capsys, workspace):
    from blockdsl.commands.common import overrides_from, spec_from
    from blockdsl.config import load_config

    examples = examples_in(help_text(capsys, "train"))
    trained = [argv for argv in examples if argv[0] == "train"]
    assert trained and any("--resume" in argv for argv in trained)
    for argv in trained:
        if "--resume" in argv:  # its config.toml is what the first example writes
            assert argv[1] == f"{argv[argv.index('--out') + 1]}/config.toml"
            continue
        args = _parsed(argv)
        load_config(spec_from(args.spec), **overrides_from(args.set))


def test_data_examples_name_valid_tokenizers(capsys):
    from blockdsl.train.data import parse_tokenizer

    for argv in examples_in(help_text(capsys, "data")):
        args = _parsed(argv)
        parse_tokenizer(getattr(args, "tokenizer", None) or "byte")


def test_compare_examples_compare_laptop_sized_models(capsys):
    """Issue 33: an example compared tiny with a 6.7 B model, which compare skips. Every
    variant of every example now builds, at most a few million parameters."""
    from blockdsl.commands.common import overrides_from
    from blockdsl.compare import parse_variants
    from blockdsl.model import ModelPlan

    for argv in examples_in(help_text(capsys, "compare")):
        args = _parsed(argv)
        overrides = overrides_from(args.set)
        variants = parse_variants(args.spec, getattr(args, "base", None) or "tiny", overrides)
        assert len(variants) >= 2
        for variant in variants:
            assert ModelPlan(variant.config).params() < 5_000_000, variant.name


@pytest.mark.slow  # trains every variant, seed and learning rate of the examples
def test_compare_examples_run_on_a_cut_budget(capsys, workspace):
    for argv in examples_in(help_text(capsys, "compare")):
        argv = _with_budget(argv, ["--steps", "1"], drop=("--steps", "--tokens", "--time"))
        argv = [_small_task(word) for word in argv]
        code = main([*argv, "--out", str(workspace / "compare"), "--no-plot"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "skipped" not in captured.out


@pytest.mark.slow  # trains candidates
def test_search_examples_run_on_a_cut_budget(capsys, workspace):
    pytest.importorskip("optuna")
    for argv in examples_in(help_text(capsys, "search")):
        if argv[1:2] != ["show"]:
            argv = _with_budget(argv, ["--steps", "1", "--trials", "1", "--workers", "1"])
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 0, captured.err
    assert (workspace / "runs" / "search").is_dir()


@pytest.mark.slow
def test_fuzz_examples_run_with_few_examples(capsys, workspace):
    from blockdsl.registry import REGISTRY

    before = set(REGISTRY.names())
    try:
        for argv in examples_in(help_text(capsys, "fuzz")):
            code = main(_with_budget(argv, ["--examples", "3"], drop=("--examples",)))
            captured = capsys.readouterr()
            expected = 1 if "Leak" in argv else 0  # the leaky plugin is there to be caught
            assert code == expected, captured.out + captured.err
    finally:  # --plugin registers into the process's registry: leave it as it was
        for name in set(REGISTRY.names()) - before:
            REGISTRY.unregister(name)


def test_download_examples_are_the_only_ones_not_run(capsys):
    """Examples that are only parsed name a download; everything else above runs or builds."""
    shown = {name: examples_in(help_text(capsys, name)) for name in ("generate", "data", "export")}
    needing = [a for argvs in shown.values() for a in argvs if _needs_download(a)]
    assert len(needing) == len(NEEDS_DOWNLOAD)


def _needs_download(argv: list[str]) -> bool:
    return any(marker in word for word in argv for marker in NEEDS_DOWNLOAD)


def _parsed(argv: list[str]):
    from blockdsl.cli import build_parser

    return build_parser(argv[0]).parse_args(argv)


def _small_task(word: str) -> str:
    """A ``task:`` data spec with its train and test sets cut to a few hundred examples (the
    examples' own sizes take a minute to generate and score at every learning rate)."""
    if not word.startswith("task:"):
        return word
    kept = [item for item in word.split(",") if not item.startswith(("train=", "test="))]
    return ",".join([*kept, "train=512", "test=128"])


def _with_budget(argv: list[str], budget: list[str], drop: tuple[str, ...] = ()) -> list[str]:
    """``argv`` without the ``drop`` flags (and their values), ``budget`` appended (a later
    flag wins over an earlier one)."""
    kept: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in drop:
            skip = True
        else:
            kept.append(word)
    return [*kept, *budget]
