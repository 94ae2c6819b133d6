"""Reading files a user (or an adversary) hands over: every opener goes through here.

A path may name a FIFO or a device (opening it blocks forever, or reads without end), a
directory, or a file whose JSON is damaged or of another shape. These helpers refuse each
with a ``BlockDSLError`` naming the file, before anything is opened or parsed further.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from blockdsl.errors import BlockDSLError


class UntrustedFileError(BlockDSLError):
    """A file given to blockdsl cannot be used: missing, not a regular file, or damaged."""


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def require_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a ``Path`` if it names a regular file (symbolic links followed); else an
    ``UntrustedFileError`` saying what it is. Checked with ``stat`` before any ``open``: opening
    a FIFO blocks until a writer appears, and a device reads without end."""
    if not isinstance(path, (str, os.PathLike)):
        raise UntrustedFileError(f"the {what} must be a path, got {type(path).__name__}")
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UntrustedFileError(f"no {what} '{path}'") from None
    except OSError as exc:
        raise UntrustedFileError(f"cannot read the {what} '{path}': {exc.strerror}") from None
    if stat.S_ISREG(mode):
        return path
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise UntrustedFileError(
        f"the {what} '{path}' is {kind}, not a regular file",
        hint="give a regular file; blockdsl does not read from pipes or devices",
    )


def read_json_object(path: str | os.PathLike, what: str = "JSON file") -> dict[str, Any]:
    """The JSON object in the regular file ``path``; an ``UntrustedFileError`` naming the file
    when it is not a regular file, not UTF-8, not JSON, or JSON of another shape."""
    path = require_regular_file(path, what)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UntrustedFileError(f"the {what} '{path}' is not UTF-8 text") from None
    except ValueError as exc:
        raise UntrustedFileError(
            f"the {what} '{path}' is not valid JSON ({exc})",
            hint="the file is damaged or truncated",
        ) from None
    if not isinstance(value, dict):
        raise UntrustedFileError(
            f"the {what} '{path}' holds a JSON {type(value).__name__}, not an object",
            hint="the file is damaged or was replaced",
        )
    return value


class WriteError(BlockDSLError):
    """A file could not be written (the disk is full, a quota, a read-only directory)."""


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "file") -> Iterator[None]:
    """Report a failed write of ``path`` as a ``WriteError`` naming it and the cause. The
    writers' own exceptions (``OSError``; torch's ``RuntimeError`` "unexpected pos" and
    safetensors' ``SafetensorError`` when the disk fills) say nothing about which file."""
    try:
        yield
    except OSError as exc:
        raise WriteError(
            f"cannot write the {what} '{path}': {exc.strerror or exc}",
            hint="free some disk space (or check the directory's permissions) and rerun",
        ) from None
    except Exception as exc:
        if type(exc).__name__ not in _WRITER_ERRORS:
            raise
        raise WriteError(
            f"cannot write the {what} '{path}': {str(exc).strip().splitlines()[0]}",
            hint="the disk may be full: free some space and rerun",
        ) from None


#: what torch.save and safetensors raise when a write fails part-way
_WRITER_ERRORS = ("RuntimeError", "SafetensorError")


__all__ = [
    "UntrustedFileError",
    "WriteError",
    "read_json_object",
    "require_regular_file",
    "writing",
]
