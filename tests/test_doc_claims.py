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
    hf = pytest.importorskip("blockdsl.interop.hf")
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
