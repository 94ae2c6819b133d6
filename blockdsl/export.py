"""``blockdsl.export``: exports of a model plan, kept importable under its old name. It lives in
``blockdsl.interop.export``."""

from blockdsl.interop.export import (  # noqa: F401
    DistinctBlock,
    distinct_blocks,
    to_dot,
    to_json,
    to_mermaid,
    to_python,
)
