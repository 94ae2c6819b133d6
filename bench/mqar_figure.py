"""The figures of docs/experiments.md, from the ``summary.csv`` of ``blockdsl compare`` runs
on MQAR: accuracy against sequence length, one line per variant (one comparison per length);
or, with ``--by width``, Zoology's Figure 2 layout: one panel per sequence length, accuracy
against the model width, one line per variant (one comparison per length and width). The
length comes from each comparison's task, the width from its runs' ``config.toml``.

    PYTHONPATH=. python bench/mqar_figure.py runs/mqar-seq16 runs/mqar-seq32 runs/mqar-seq48 \\
        --out docs/img/mqar_seq.png
    PYTHONPATH=. python bench/mqar_figure.py runs/zoology-*/ --by width \\
        --out docs/img/mqar_width.png --markdown
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from blockdsl.config import tomllib


def read(directory: Path) -> tuple[int, int | None, dict[str, float]]:
    """A comparison's sequence length, model width and each ``ok`` variant's accuracy."""
    data = json.loads((directory / "compare.json").read_text())["data"]
    seq = int(dict(p.split("=") for p in data.split(",")[1:])["seq"])
    width = None
    for config in sorted((directory / "runs").glob("*/config.toml")):
        width = int(tomllib.loads(config.read_text())["model"]["d_model"])
        break
    with open(directory / "summary.csv") as f:
        scores = {
            r["name"]: float(r["metric_mean"]) for r in csv.DictReader(f) if r["status"] == "ok"
        }
    return seq, width, scores


def markdown(points: dict[str, dict[tuple[int, int], float]]) -> str:
    """Accuracy table: a row per (length, width), a column per variant."""
    names = list(points)
    keys = sorted({key for by in points.values() for key in by})
    lines = [
        "| sequence length | width | " + " | ".join(names) + " |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    for seq, width in keys:
        cells = [
            f"{points[n][(seq, width)]:.3f}" if (seq, width) in points[n] else "—" for n in names
        ]
        lines.append(f"| {seq} | {width} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="compare --out directories")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument(
        "--by", choices=("seq", "width"), default="seq", help="x axis (width: a panel per length)"
    )
    parser.add_argument("--markdown", action="store_true", help="also print the table")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points: dict[str, dict[tuple[int, int], float]] = {}
    for directory in args.dirs:
        seq, width, scores = read(directory)
        for name, accuracy in scores.items():
            points.setdefault(name, {})[(seq, width or 0)] = accuracy
    if args.markdown:
        print(markdown(points))

    if args.by == "seq":
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for name, by in points.items():
            xs = sorted(by)
            ax.plot([s for s, _ in xs], [by[k] for k in xs], marker="o", label=name)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("MQAR accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    else:
        lengths = sorted({seq for by in points.values() for seq, _ in by})
        fig, axes = plt.subplots(1, len(lengths), figsize=(3.3 * len(lengths), 3.4), sharey=True)
        axes = axes if len(lengths) > 1 else [axes]
        for ax, seq in zip(axes, lengths):
            for name, by in points.items():
                widths = sorted(w for s, w in by if s == seq)
                ax.plot(widths, [by[(seq, w)] for w in widths], marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({w for by in points.values() for s, w in by if s == seq}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_title(f"sequence length {seq}")
            ax.set_xlabel("model width (d_model)")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("MQAR accuracy")
        axes[-1].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
