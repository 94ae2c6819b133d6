"""Recorded bench results: each bench script writes one JSON record (its command, the machine,
its tables), and ``bench/report.py`` assembles ``docs/performance.md`` from them, so the page
is never edited by hand.

    record = Record("step_shapes", "Training step of every preset shape, compiled / eager")
    record.table(["shape", "eager ms", ...], rows)
    record.note("...")
    record.write()                      # bench/results/step_shapes.json
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    import torch

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


@dataclass
class Record:
    name: str
    title: str
    command: str = field(
        default_factory=lambda: (
            "PYTHONPATH=. python " + shlex.join(["bench/" + Path(sys.argv[0]).name, *sys.argv[1:]])
        )
    )
    environment: dict = field(default_factory=environment)
    tables: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, columns: list[str], rows: list[list], caption: str = "") -> None:
        self.tables.append({"caption": caption, "columns": columns, "rows": rows})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def write(self, directory: Path = RESULTS) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        tmp.replace(path)  # atomic: a reader never sees half a record
        return path
