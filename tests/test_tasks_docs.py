"""The Python examples of docs/tasks.md and docs/compare.md run as written."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

import blockdsl.tasks

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / name).read_text(), re.S)


@pytest.mark.parametrize("name", ["tasks.md", "compare.md"])
def test_doc_examples_run(name, tmp_path):
    blocks = _python_blocks(name)
    assert blocks
    for block in blocks:
        exec(compile(block, f"docs/{name}", "exec"), {"tmp_dir": tmp_path / "cmp"})


def test_package_docstring_example():
    assert doctest.testmod(blockdsl.tasks).failed == 0
