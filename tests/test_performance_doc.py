"""docs/performance.md is generated from bench records (bench/report.py), never edited."""

from __future__ import annotations

import importlib.util
import json

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
