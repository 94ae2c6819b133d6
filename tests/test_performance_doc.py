"""docs/performance.md is generated from bench records (bench/report.py), never edited."""

from __future__ import annotations

import importlib.util
import json
import re

from tests.docs_harness import ROOT


def _report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_performance_page_is_what_the_records_render():
    assert (ROOT / "docs/performance.md").read_text() == _report().render(), (
        "docs/performance.md is stale: run python bench/report.py"
    )


def test_a_record_renders_with_its_command_and_machine(tmp_path):
    (tmp_path / "in.md").write_text("# P\n\n<!-- bench: demo -->\n\n<!-- bench: absent x.py -->\n")
    record = {
        "name": "demo",
        "title": "t",
        "command": "PYTHONPATH=. python bench/demo.py --json",
        "environment": {
            "date": "2026-01-01 00:00 UTC",
            "cpu": "Some CPU",
            "cores": 2,
            "torch_threads": 1,
            "load_average": [3.0, 2.0, 1.0],
            "python": "3.11.7",
            "torch": "2.13.0+cpu",
        },
        "tables": [{"caption": "", "columns": ["model", "ratio"], "rows": [["a", 0.98765]]}],
        "notes": ["a note"],
    }
    (tmp_path / "demo.json").write_text(json.dumps(record))
    text = _report().render(tmp_path / "in.md", tmp_path)
    assert "$ PYTHONPATH=. python bench/demo.py --json" in text
    assert "Some CPU (2 cores, 1 torch threads, load average 3.0 2.0 1.0" in text
    assert "shared with other developers" in text
    assert "| a | 0.988 |" in text and "a note" in text
    assert "Not recorded yet: run `x.py`." in text
    assert '<!-- skip: next "a benchmark' in text  # the page's commands are not run as tests


# Figures a reader would take for measurements: decimals and scientific numbers, numbers with a
# unit of time, memory, speed or a ratio, and load averages. Such a figure on the page must come
# from a record; the template (the prose) may hold none but the ones below.
FIGURE = re.compile(
    r"(?<![\w.])\d[\d,]*\.\d+(?:e-?\d+)?"  # 0.957, 1.5e-8
    r"|\d[\d,.]*(?:×|\s?(?:%|ms\b|µs\b|s\b|minutes?\b|seconds?\b|GiB\b|MiB\b|MB\b|tok/s\b))"
    r"|load(?: average)?(?: of| about)? \d[\d.]*"
)
#: Figures the prose may state because they are not measurements: the goals of the task
#: benchmark (0.99 accuracy within 60 s), and the thresholds bench/mixers.py times with.
NOT_MEASURED = {"0.99", "60 s", "5 s"}


def _prose() -> str:
    """The template without its record placeholders (the lines bench/report.py replaces)."""
    template = (ROOT / "bench" / "performance.in.md").read_text()
    return _report().PLACEHOLDER.sub("", template)


def test_every_figure_on_the_performance_page_comes_from_a_record():
    """Issue 33: docs/performance.md stated ratios (0.957, 1.586×), a decode table and ATen call
    counts that no record in bench/results/ held. The page is the template with each record
    rendered in (the test above), so its figures come from records exactly when the template
    states none."""
    stray = sorted({m.group(0) for m in FIGURE.finditer(_prose())} - NOT_MEASURED)
    assert not stray, f"figures in bench/performance.in.md with no record behind them: {stray}"


def test_the_figure_check_catches_a_hand_typed_figure():
    for text in ("measured 0.957 then", "2.2× slower", "took 16.6 s", "load average of 10",
                 "within 1.5e-8", "30,592 ATen calls at 0.6 %", "105.1 MB"):  # fmt: skip
        assert FIGURE.search(text), text
    for text in ("vocab 4096, d_model 256, 4 layers", "batch 8 × 256", "Llama-2-7B", "T = 4096"):
        assert not FIGURE.search(text), text


def test_placeholders_name_the_bench_that_makes_their_record():
    """A record not there yet renders as the command that makes it: the command must be a
    bench script of this repository that can write that record."""
    for match in _report().PLACEHOLDER.finditer((ROOT / "bench/performance.in.md").read_text()):
        command = match.group("command") or ""
        script = re.search(r"bench/(\w+)\.py", command)
        assert script and (ROOT / "bench" / f"{script.group(1)}.py").is_file(), match.group(0)
        assert "--json" in command, match.group(0)
