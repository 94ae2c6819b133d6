"""The figure of docs/experiments.md: MQAR accuracy against sequence length, one line per
variant, from the ``summary.csv`` of one ``blockdsl compare`` per sequence length.

    PYTHONPATH=. python bench/mqar_figure.py runs/mqar-seq16 runs/mqar-seq32 runs/mqar-seq48 \
        --out docs/img/mqar_seq.png
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="compare --out directories")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[int, float]]] = {}
    for directory in args.dirs:
        data = json.loads((directory / "compare.json").read_text())["data"]
        seq = int(dict(p.split("=") for p in data.split(",")[1:])["seq"])
        with open(directory / "summary.csv") as f:
            for row in csv.DictReader(f):
                if row["status"] == "ok":
                    lines.setdefault(row["name"], []).append((seq, float(row["metric_mean"])))
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xlabel("sequence length")
    ax.set_ylabel("MQAR accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
