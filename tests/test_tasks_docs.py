"""The tasks package's docstring example runs (the pages docs/tasks.md and docs/compare.md run
in tests/test_docs.py with every other page)."""

from __future__ import annotations

import doctest

import blockdsl.tasks


def test_package_docstring_example():
    assert doctest.testmod(blockdsl.tasks).failed == 0
