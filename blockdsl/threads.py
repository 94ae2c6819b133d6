"""How many CPU threads torch uses (``[train] threads``, ``--threads``).

torch starts as many intra-op threads as the machine has cores. On a machine shared with other
work those threads wait on each other, and a small model runs faster on fewer (docs/training.md,
"Threads"). ``cpu_threads(n)`` sets the count for a block of work and puts torch's back after
it, so that a library call leaves the process as it found it; None leaves torch's choice."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from blockdsl.errors import ConfigError

__all__ = ["MAX_THREADS", "check_threads", "cpu_threads"]

#: far above any machine's cores: a larger count is a typo, not a setting
MAX_THREADS = 4096


def check_threads(value: Any, where: str = "--threads") -> int | None:
    """``value`` as a thread count (None: torch's choice); anything but a whole number from 1
    to ``MAX_THREADS`` is a ``ConfigError`` naming ``where``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        raise ConfigError(
            f"{where} must be a whole number of threads from 1 to {MAX_THREADS}, got {value!r}",
            hint=f"leave it out for torch's choice ({torch.get_num_threads()} on this machine)",
        )
    return value


@contextmanager
def cpu_threads(count: int | None, where: str = "--threads") -> Iterator[int]:
    """torch's intra-op threads set to ``count`` inside the block (None: unchanged), restored
    after it; yields the count in use."""
    count = check_threads(count, where)
    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
