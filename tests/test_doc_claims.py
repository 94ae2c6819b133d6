"""Claims of the documentation that would go stale silently, checked against what they describe
(issue 33): counts and lists generated from the registries, the documentation list, the CLI
synopsis and the skipped examples."""

from __future__ import annotations

import re

import pytest

from tests.docs_harness import ROOT, documents, skipped_blocks

README = (ROOT / "README.md").read_text()


def test_readme_says_how_many_examples_do_not_run():
    skipped = [block for page in documents() for block in skipped_blocks(page)]
    stated = re.search(r"runs in the test suite .*?except (\d+) blocks", README, re.S)
    assert stated, "README.md no longer says how many examples are skipped"
    assert int(stated.group(1)) == len(skipped), "\n".join(skipped)


def test_readme_lists_every_docs_page():
    listed = set(re.findall(r"^- \[docs/([\w.-]+\.md)\]", README, re.M))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages == listed, (pages - listed, listed - pages)


def test_every_hf_architecture_is_documented():
    hf = pytest.importorskip("blockdsl.hf")
    text = (ROOT / "docs/huggingface.md").read_text() + (ROOT / "docs/hybrids.md").read_text()
    missing = sorted(cls for cls in hf.SUPPORTED.values() if f"`{cls}`" not in text)
    assert not missing, missing
    stated = re.search(
        r"docs/huggingface.md\): load transformers models of (\d+) architectures", README
    )
    assert stated and int(stated.group(1)) == len(hf.SUPPORTED)


def test_cli_synopsis_shows_every_command(capsys):
    from blockdsl.cli import main

    assert main(["--help"]) == 0
    commands = re.findall(r"^    (\w+)\b", capsys.readouterr().out, re.M)
    assert {"compile", "train", "generate", "compare", "search", "fuzz"} <= set(commands)
    synopsis = (ROOT / "docs/cli.md").read_text().split("```")[1]
    missing = [c for c in commands if f"blockdsl {c}" not in synopsis]
    assert not missing, missing


def test_training_page_figures_are_the_recorded_runs():
    """docs/training.md's stdlib run (issue 33: its split and losses were from before the split
    changed) is checked against the run recorded in docs/records/stdlib-tiny/."""
    import json

    record = ROOT / "docs" / "records" / "stdlib-tiny"
    text = (ROOT / "docs/training.md").read_text()
    metrics = {
        m["step"]: m for m in map(json.loads, (record / "metrics.jsonl").read_text().splitlines())
    }
    rows = re.findall(
        r"^\| (\d+) \| ([\d,]+) \| ([\d.]+) \|\s*([\d.]*)\s*\| ([\d.e-]+) \|$", text, re.M
    )
    assert len(rows) == 8
    for step, tokens, loss, val, lr in rows:
        m = metrics[int(step)]
        assert (tokens, loss, lr) == (f"{m['tokens']:,}", f"{m['loss']:.4f}", f"{m['lr']:.2e}")
        assert val == (f"{m['val_loss']:.4f}" if "val_loss" in m else ""), step
    meta = json.loads((record / "data-meta.json").read_text())
    assert f"{meta['train_tokens']:,} training and {meta['val_tokens']:,}" in text
    summary = json.loads((record / "summary.json").read_text())
    assert f"has {summary['params']:,} parameters" in text
    memory = summary["memory"]
    assert f"start, {memory['estimate']['total'] / 1e6:.1f} MB" in text
    assert f"peak, {memory['measured_peak'] / 1e6:.1f} MB" in text
    assert f"in {summary['elapsed']:.1f} s; loss {summary['final_loss']:.4f}" in text
