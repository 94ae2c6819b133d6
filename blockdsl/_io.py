"""Small shared pieces of the wings (training, data, compare, search): atomic writes, the
append-only JSONL files and the progress reporter (figures are ``blockdsl.plot``'s). One copy
each, so that a fix (a permission, a warning, a terminal quirk) lands everywhere at once."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "JsonlWriter",
    "Progress",
    "read_jsonl",
    "scan_jsonl",
    "write_atomic",
]


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file renamed into place: a reader sees
    the old file or the new one, never half of one (a kill during the write leaves the old)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ==================================================================== JSONL
def scan_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
    """``(start, end, record)`` for each line of a JSONL file, with the byte offsets that
    delimit it; ``record`` is None for a line that is not a JSON object (damaged, or cut short
    by a kill). A missing file has no lines."""
    path = Path(path)
    if not path.is_file():
        return
    offset = 0
    with open(path, "rb") as handle:
        for raw in handle:
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            yield start, offset, record if isinstance(record, dict) else None


def read_jsonl(path: str | os.PathLike, *, report: Any = None) -> list[dict[str, Any]]:
    """The records of a JSONL file. A damaged line is kept in the file but skipped here, and
    reported: through ``report(message)`` when given, else as a ``UserWarning``. A last line
    without its newline (a write cut short) is skipped silently: the next append replaces it."""
    path = Path(path)
    records, damaged = [], []
    size = path.stat().st_size if path.is_file() else 0
    for number, (_, end, record) in enumerate(scan_jsonl(path), start=1):
        if record is not None:
            records.append(record)
        elif end < size or _ends_with_newline(path):
            damaged.append(number)
    if damaged:
        shown = ", ".join(map(str, damaged[:5])) + (" ..." if len(damaged) > 5 else "")
        message = f"{path}: skipped {len(damaged)} damaged line(s) ({shown}); kept in the file"
        if report is not None:
            report(message)
        else:
            warnings.warn(message, stacklevel=2)
    return records


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


class JsonlWriter:
    """Appends records to a JSONL file, one flushed line each; never rewrites earlier lines.
    ``offset`` is the file's size after the last record: what a checkpoint records, so that a
    resume cuts only what was written after it (``truncate``)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled
        self.handle: IO[str] | None = None

    def __enter__(self) -> JsonlWriter:
        if self.enabled:
            self.handle = open(self.path, "a", encoding="utf-8")  # closed in __exit__
            if self.handle.tell() and not _ends_with_newline(self.path):
                self.handle.write("\n")  # a line cut short stays a line of its own
        return self

    def write(self, record: dict[str, Any]) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()

    @property
    def offset(self) -> int:
        return self.handle.tell() if self.handle is not None else 0

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    @staticmethod
    def truncate(path: str | os.PathLike, offset: int) -> None:
        """Cut ``path`` back to its first ``offset`` bytes (what was written after a
        checkpoint); earlier lines, damaged ones included, stay as they are."""
        with open(path, "r+b") as handle:
            handle.truncate(offset)


# ==================================================================== progress
class Progress:
    """What a long operation shows: a rich progress bar on a terminal (``mode="bar"``), plain
    log lines elsewhere (``"lines"``), or nothing (``"quiet"``). ``enabled``: True a bar,
    False quiet, None (default) a bar when ``stream`` is a terminal, else ``fallback``.

    ``columns``: ``"count"`` (label, n/total, bar, info, time left) or ``"bytes"`` (label,
    bar, bytes read, speed, time left)."""

    def __init__(
        self,
        enabled: bool | None = None,
        *,
        columns: str = "count",
        fallback: str = "lines",
        stream: IO[str] | None = None,
    ) -> None:
        stream = stream if stream is not None else sys.stdout
        if enabled is None:
            self.mode = "bar" if stream.isatty() else fallback
        else:
            self.mode = "bar" if enabled else "quiet"
        self.columns = columns
        self.task: Any = None
        self.total: int | None = None
        self.done = 0  # items counted by ``item`` (or added by the caller: skipped ones)

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from rich import progress as rp

            if self.columns == "bytes":
                parts: list[Any] = [
                    rp.TextColumn("{task.description}"),
                    rp.BarColumn(),
                    rp.DownloadColumn(),
                    rp.TransferSpeedColumn(),
                    rp.TimeRemainingColumn(),
                ]
            else:
                parts = [
                    rp.TextColumn("{task.description}"),
                    rp.MofNCompleteColumn(),
                    rp.BarColumn(),
                    rp.TextColumn("{task.fields[info]}"),
                    rp.TimeRemainingColumn(),
                ]
            self.bar = rp.Progress(*parts)
            self.bar.__enter__()
        return self

    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        """A new bar (the previous one is shown complete)."""
        self.total, self.done = total, 0
        if self.mode != "bar":
            return
        if self.task is not None:
            done = self.bar.tasks[-1].total
            self.bar.update(self.task, completed=done if done is not None else completed)
        self.task = self.bar.add_task(label, total=total, completed=completed, info="")

    def item(self, what: str) -> None:
        """One more of ``total`` items begins: ``what`` beside the bar, or a line
        ``[n/total] what``."""
        if self.mode == "bar" and self.task is not None:
            self.bar.update(self.task, completed=self.done, info=what)
        elif self.mode == "lines":
            print(f"[{self.done + 1}/{self.total}] {what}", flush=True)
        self.done += 1

    def update(self, completed: int | None = None, advance: int = 0, info: str = "") -> None:
        if self.mode == "bar" and self.task is not None:
            self.bar.update(self.task, completed=completed, advance=advance or None, info=info)

    def line(self, text: str) -> None:
        """A progress line where there is no bar (``"lines"`` mode only)."""
        if self.mode == "lines":
            print(text, flush=True)

    def log(self, message: str) -> None:
        """A message in every mode but quiet (above the bar when there is one)."""
        if self.mode == "bar":
            self.bar.console.print(message)
        elif self.mode == "lines":
            print(message, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self.mode == "bar":
            if self.task is not None and self.done:
                self.bar.update(self.task, completed=self.done)
            self.bar.__exit__(*exc)
