"""README.md and every docs/*.md page run as written (tests/docs_harness.py states the rules of
a runnable block), and the harness fails on a page whose examples are broken."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs_harness import ROOT, documents, output_matches, run_document

BROKEN = Path(__file__).parent / "fixtures" / "docs" / "broken.md"


@pytest.mark.slow
@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_documentation_runs_as_written(path):
    outcome = run_document(path)
    assert not outcome.failures, "\n\n".join(outcome.failures)


def test_every_docs_page_is_collected(tmp_path):
    (tmp_path / "docs").mkdir()
    for name in ("b.md", "a.md", "notes.txt"):
        (tmp_path / "docs" / name).write_text("# page\n")
    (tmp_path / "README.md").write_text("# readme\n")
    found = [p.relative_to(tmp_path).as_posix() for p in documents(tmp_path)]
    assert found == ["README.md", "docs/a.md", "docs/b.md"]


@pytest.mark.slow  # three blockdsl subprocesses
def test_harness_fails_on_a_broken_page():
    outcome = run_document(BROKEN)
    lines = BROKEN.read_text().splitlines()
    failed = {lines[int(f.split(":")[1]) - 1]: f for f in outcome.failures}
    # a wrong shown output, an exception, a console mismatch, a failing bash command: and only
    # those (the first output, the TOML file and the command reading it are right)
    assert sorted(failed) == ["```bash", "```console", "```output", "```python"], failed
    assert "--- shown in the docs\n3\n--- actual\n2" in failed["```output"]
    assert "unknown component 'Atn'" in failed["```python"]
    assert "d_model=64" in failed["```console"] and "d_model=32," in failed["```console"]
    assert "exited 2" in failed["```bash"]
    assert [s.split(": ", 1)[1] for s in outcome.skipped] == [
        "shows that a skipped block does not run"
    ]
    assert outcome.ran == 9  # every block but the skipped one


@pytest.mark.parametrize(
    ("expected", "actual", "matches"),
    [
        ("a\nb", "a  \nb\n\n", True),
        ("took ... s", "took 1.25 s", True),
        ("first\n...\nlast", "first\nx\ny\nlast", True),
        ("first\n...\nlast", "first\nlast", True),
        ("a\nb", "a\nc", False),
        ("a", "a\nextra", False),
    ],
)
def test_output_comparison(expected, actual, matches):
    assert output_matches(expected, actual) is matches
