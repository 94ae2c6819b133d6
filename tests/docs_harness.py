"""Executable documentation: every fenced code block of README.md and docs/*.md that is meant to
run is run, and shown outputs are compared. Built on Sybil (parsing Markdown into ordered
examples that share one namespace per document, and its ``<!-- skip: ... -->`` directive);
the evaluators below say what each kind of block means. The rules, for anyone writing docs:

* ```` ```python ````: executed; the blocks of one page share a namespace, in order. Printed
  output is captured; a following block whose info string contains ``output`` (```` ```output
  ```` or ```` ```python output ````) must equal it.
* ```` ```console ````: a shell session. Each ``$ command`` (``\\`` continues a line; ``$?``
  is the previous command's status) runs in bash in the page's temporary directory with the
  ``blockdsl`` console script on ``PATH``; the lines up to the next ``$`` are its expected
  output (stdout and stderr together). With no lines shown, the command must exit 0.
* ```` ```bash ```` / ```` ```sh ````: commands run the same way, each must exit 0; output is
  not compared.
* ```` ```toml ````: parsed; a model config (only ``[model]``, ``[blocks]``, ``[defaults]``) is
  built on the meta device. ```` ```toml file=NAME ```` also writes it to ``NAME`` in the page's
  directory, for the commands and code that follow.
* any other block with ``file=NAME`` in its info string (```` ```python file=pkg/mod.py ````)
  is written to ``NAME`` in the page's directory, not run: a module the next examples import.
* anything else (```` ```text ````, no language, indented blocks) is shown, not run.
* ``<!-- skip: next "reason" -->`` before a block does not run it (a dataset, a GPU, minutes of
  compute); ``<!-- skip: start "reason" -->`` ... ``<!-- skip: end -->`` for several.

Compared output may contain ``...``: within a line it matches any text, alone on a line any
number of lines; use it for what varies between runs (timings, paths, load).
After an intended change of output, ``python -m tests.docs_harness docs/PAGE.md`` rewrites the
shown outputs of a page's console sessions from a fresh run (review the diff).
Python blocks and commands run in a fresh temporary directory per page, with OMP_NUM_THREADS=1;
``examples/``, ``bench/`` and ``tests/`` of the repository are linked into it, and it is on
``sys.path`` while a page's Python runs (as the current directory is for ``python -m``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from sybil import Example, Region, Sybil
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer
from sybil.parsers.markdown.skip import SkipParser

import blockdsl

ROOT = Path(__file__).resolve().parent.parent
MODEL_TABLES = {"model", "blocks", "defaults"}
COMMAND_TIMEOUT = 300  # seconds for one shell command


def documents(root: Path = ROOT) -> list[Path]:
    """Every page the suite runs: README.md and docs/*.md (new pages are picked up)."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


# --------------------------------------------------------------------------- comparison


def _line_pattern(line: str) -> str:
    return ".*".join(re.escape(part) for part in line.split("..."))


def output_matches(expected: str, actual: str) -> bool:
    """``actual`` against ``expected`` line by line, trailing spaces and blank edge lines
    ignored; ``...`` matches any text within a line, or any number of lines on its own."""
    exp = expected.rstrip().splitlines()
    act = [line.rstrip() for line in actual.rstrip().splitlines()]
    while act and not act[0]:
        act.pop(0)
    pattern = "".join(
        r"(?:[^\n]*\n)*?" if line.strip() == "..." else _line_pattern(line.rstrip()) + r"\n"
        for line in exp
    )
    return re.fullmatch(pattern, "\n".join(act) + "\n" if act else "") is not None


def _mismatch(what: str, expected: str, actual: str) -> str:
    return f"{what}\n--- shown in the docs\n{expected.rstrip()}\n--- actual\n{actual.rstrip()}"


# --------------------------------------------------------------------------- running


@dataclass
class Page:
    """Per-document state kept in Sybil's namespace."""

    workdir: Path
    last_stdout: str | None = None


def _page(example: Example) -> Page:
    page = example.namespace.get("__page__")
    if page is None:
        workdir = Path(tempfile.mkdtemp(prefix="blockdsl-docs-"))
        for name in ("examples", "bench", "tests"):
            if (ROOT / name).exists():
                (workdir / name).symlink_to(ROOT / name)
        page = example.namespace["__page__"] = Page(workdir)
    return page


@contextlib.contextmanager
def _in(directory: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


def run_shell(command: str, workdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env.pop("COLUMNS", None)  # the documented default width (120), whatever the terminal
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )  # `PYTHONPATH=. python bench/...` still finds the repository through the link
    return subprocess.run(
        ["bash", "-c", command],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def evaluate_python(example: Example) -> str | None:
    page = _page(example)
    source = example.parsed
    code = compile(source, f"{example.path}:{example.line}", "exec")
    buffer = io.StringIO()
    sys.path.insert(0, str(page.workdir))
    try:
        with _in(page.workdir), contextlib.redirect_stdout(buffer):
            exec(code, example.namespace)
    finally:
        sys.path.remove(str(page.workdir))
    page.last_stdout = buffer.getvalue()
    return None


def evaluate_output(example: Example) -> str | None:
    page = _page(example)
    if page.last_stdout is None:
        return "an output block must follow a python block"
    actual, page.last_stdout = page.last_stdout, None
    if not output_matches(example.parsed, actual):
        return _mismatch("printed output differs", example.parsed, actual)
    return None


def session_commands(text: str) -> list[tuple[str, str]]:
    """``$ command`` lines (with ``\\`` continuations) and the output shown after each."""
    commands: list[tuple[str, str]] = []
    command: list[str] | None = None
    output: list[str] = []
    continued = False
    for line in text.splitlines():
        if continued and command is not None:
            command.append(line)
            continued = line.rstrip().endswith("\\")
        elif line.startswith("$ "):
            if command is not None:
                commands.append(("\n".join(command), "\n".join(output)))
            command, output = [line[2:]], []
            continued = line.rstrip().endswith("\\")
        elif command is not None:
            output.append(line)
    if command is not None:
        commands.append(("\n".join(command), "\n".join(output)))
    return commands


def evaluate_console(example: Example) -> str | None:
    page = _page(example)
    commands = session_commands(example.parsed)
    if not commands:
        return "a console block needs at least one `$ command` line"
    status = 0
    for command, expected in commands:
        result = run_shell(f"(exit {status}); {command}", page.workdir)  # `$?` as in a shell
        status = result.returncode
        if expected.strip():
            if not output_matches(expected, result.stdout):
                what = f"$ {command}  (exit {result.returncode})"
                return _mismatch(what, expected, result.stdout)
        elif result.returncode != 0:
            return f"$ {command}\nexited {result.returncode}:\n{result.stdout}"
    return None


def evaluate_bash(example: Example) -> str | None:
    page = _page(example)
    result = run_shell(example.parsed, page.workdir)
    if result.returncode != 0:
        return f"exited {result.returncode}:\n{example.parsed}\n---\n{result.stdout}"
    return None


def evaluate_file(example: Example) -> str | None:
    source, name = example.parsed
    target = _page(example).workdir / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source)
    return None


def evaluate_toml(example: Example) -> str | None:
    page = _page(example)
    source, attrs = example.parsed
    data = tomllib.loads(source)
    name = attrs.get("file")
    if name:
        (page.workdir / name).write_text(source)
    if data and set(data) <= MODEL_TABLES:
        import blockdsl

        blockdsl.build_model(dict(data), device="meta")
    return None


# --------------------------------------------------------------------------- parsing

INFO = re.compile(r"(?P<info>[^\n]*)$\n", re.MULTILINE)


def _attributes(words: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) if "=" in w else (w, "") for w in words)


class FencedBlockParser:
    """Fenced blocks, dispatched on the info string (see the module doc)."""

    def __init__(self) -> None:
        self.lexer = RawFencedCodeBlockLexer(info_pattern=INFO)

    def __call__(self, document) -> Iterator[Region]:
        for region in self.lexer(document):
            words = region.lexemes["info"].split()
            language = words[0].lower() if words else ""
            attrs = _attributes(words[1:])
            source = str(region.lexemes["source"])
            if attrs.get("file") and language != "toml":
                yield Region(region.start, region.end, (source, attrs["file"]), evaluate_file)
            elif "output" in attrs or language == "output":
                yield Region(region.start, region.end, source, evaluate_output)
            elif language in ("python", "py"):
                yield Region(region.start, region.end, source, evaluate_python)
            elif language == "console":
                yield Region(region.start, region.end, source, evaluate_console)
            elif language in ("bash", "sh", "shell"):
                yield Region(region.start, region.end, source, evaluate_bash)
            elif language == "toml":
                yield Region(region.start, region.end, (source, attrs), evaluate_toml)


SYBIL = Sybil(parsers=[SkipParser(), FencedBlockParser()], path=str(ROOT))


@dataclass
class Outcome:
    ran: int
    skipped: list[str]
    failures: list[str]


EVALUATORS = {
    evaluate_python,
    evaluate_output,
    evaluate_console,
    evaluate_bash,
    evaluate_toml,
    evaluate_file,
}


def run_document(path: Path) -> Outcome:
    """Run every example of one page in order; a failure is reported with its line, and the
    page goes on (later examples may then fail too: the first failure is the cause)."""
    document = SYBIL.parse(path)
    ran, skipped, failures = 0, [], []
    # A page may register components (``@blockdsl.register``) into the global registry; they
    # belong to that page, not to the tests that run after it in the same process.
    registry_before = blockdsl.REGISTRY.copy()
    try:
        for example in document:
            where = f"{path.name}:{example.line}"
            try:
                example.evaluate()
            except unittest.SkipTest as exc:
                skipped.append(f"{where}: {exc}")
                continue
            except Exception as exc:  # a failing doc example, reported with its place
                failures.append(f"{where}: {type(exc).__name__}: {exc}")
            ran += example.region.evaluator in EVALUATORS
    finally:
        blockdsl.REGISTRY._components = registry_before._components
        blockdsl.REGISTRY._aliases = registry_before._aliases
        page = document.namespace.get("__page__")
        if page is not None:
            shutil.rmtree(page.workdir, ignore_errors=True)
    return Outcome(ran, skipped, failures)


def skipped_blocks(path: Path) -> list[str]:
    """The runnable blocks of one page that a ``<!-- skip -->`` directive keeps from running,
    as ``page:line: reason``, found without running anything."""
    document = SYBIL.parse(path)
    skipped = []
    for example in document:
        if example.region.evaluator in EVALUATORS:
            example.region.evaluator = lambda example: None  # this pass runs no block
        try:
            example.evaluate()
        except unittest.SkipTest as exc:
            skipped.append(f"{path.name}:{example.line}: {exc}")
    return skipped


def regenerate(path: Path) -> int:
    """Rewrite the shown output of every console command of a page from a fresh run (after an
    intended change of output; review the diff). Outputs holding ``...`` and commands shown
    without output are left alone. Returns the number of outputs changed."""
    text = path.read_text()
    workdir = Path(tempfile.mkdtemp(prefix="blockdsl-docs-"))
    for name in ("examples", "bench", "tests"):
        (workdir / name).symlink_to(ROOT / name)
    changed = 0
    pieces, index = [], 0
    try:
        for match in re.finditer(r"(?ms)^```console\n(.*?)^```$", text):
            body = match.group(1)
            new, status = [], 0
            for command, expected in session_commands(body):
                result = run_shell(f"(exit {status}); {command}", workdir)
                status = result.returncode
                shown = "$ " + command
                if expected.strip() and "..." not in expected:
                    actual = "\n".join(line.rstrip() for line in result.stdout.rstrip().split("\n"))
                    changed += actual != expected.rstrip()
                    expected = actual
                new.append(shown + ("\n" + expected.rstrip("\n") if expected.strip() else ""))
            pieces += [text[index : match.start(1)], "\n".join(new) + "\n"]
            index = match.end(1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    path.write_text("".join(pieces) + text[index:])
    return changed


if __name__ == "__main__":  # python -m tests.docs_harness docs/cli.md ...: regenerate outputs
    for arg in sys.argv[1:]:
        print(f"{arg}: {regenerate(Path(arg))} outputs rewritten")
