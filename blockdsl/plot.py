"""Every figure the tool draws, in one module: training curves of one or many runs (``blockdsl
plot``, ``curves.png`` of ``blockdsl train`` and ``blockdsl compare``) and the search front
(``front.png``). matplotlib is the optional ``plot`` extra: ``pyplot()`` is None without it, and
every function here then draws nothing and says so by returning False.

Curves read the step records of ``metrics.jsonl`` (``blockdsl.train.trainer.read_metrics``).
A row of the figure is a metric, a column an x axis; a metric recorded at every step is a
line, one recorded only at evaluations (``val_loss``, a task's ``accuracy``) a line with
markers, so that a single evaluation still shows."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockdsl.errors import BlockDSLError

__all__ = [
    "AXES",
    "METRICS",
    "Curve",
    "PlotError",
    "ScatterPanel",
    "plot_curves",
    "plot_front",
    "plot_runs",
    "pyplot",
    "save_figure",
    "step_records",
]

#: the x axes of a curve: a metrics.jsonl field -> its axis label
AXES = {"step": "steps", "tokens": "tokens", "elapsed": "wall time (s)"}
#: the metrics ``blockdsl plot`` draws by default: field -> axis label ("loss" is the training
#: loss with the validation loss beside it)
METRICS = {
    "loss": "loss (train: line, val: dots)",
    "lr": "learning rate",
    "tokens_per_s": "tokens/s",
}


class PlotError(BlockDSLError):
    """A figure cannot be drawn (no matplotlib, nothing to draw, a file in the way)."""


@dataclass(frozen=True)
class Curve:
    """One run's records (``metrics.jsonl`` lines) and the label its lines get."""

    label: str
    metrics: list[dict[str, Any]]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed), or None when matplotlib
    is not installed (the ``plot`` extra)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    # a fresh installation's first import says it builds its font cache: not the tool's line
    fonts = logging.getLogger("matplotlib.font_manager")
    level = fonts.level
    fonts.setLevel(logging.ERROR)
    try:
        import matplotlib.pyplot as plt
    finally:
        fonts.setLevel(level)
    return plt


def save_figure(figure: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib ``figure`` atomically (a temporary file renamed into place) and close
    it, so that pyplot keeps no reference to it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        figure.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        if tmp.exists():
            tmp.unlink()
    return path


def plot_curves(
    curves: Sequence[Curve],
    path: str | os.PathLike,
    *,
    metrics: Sequence[str] = tuple(METRICS),
    axes: Sequence[str] = tuple(AXES),
    title: str = "",
    dpi: int = 110,
) -> bool:
    """Draw ``metrics`` (rows) against ``axes`` (columns) for every curve, one colour per
    curve, and save the PNG at ``path`` (``dpi`` dots per inch). False (nothing written)
    without matplotlib or when no curve has a record."""
    plt = pyplot()
    drawn = [c for c in curves if c.metrics]
    if plt is None or not drawn:
        return False
    from matplotlib.ticker import EngFormatter

    figure, grid = plt.subplots(
        len(metrics), len(axes), figsize=(4.2 * len(axes), 2.9 * len(metrics)), squeeze=False
    )
    for index, curve in enumerate(drawn):
        colour = f"C{index % 10}"
        for row, metric in enumerate(metrics):
            for column, axis in enumerate(axes):
                _draw(grid[row][column], curve, metric, axis, colour)
    for row, metric in enumerate(metrics):
        for column, axis in enumerate(axes):
            ax = grid[row][column]
            ax.set_xlabel(AXES.get(axis, axis))
            if axis == "tokens":  # 600k, not 600000 running into its neighbour
                ax.xaxis.set_major_formatter(EngFormatter())
            ax.set_ylabel(METRICS.get(metric, metric))
            ax.grid(alpha=0.3)
            if metric == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    grid[0][0].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path, dpi=dpi)
    return True


def _draw(ax: Any, curve: Curve, metric: str, axis: str, colour: str) -> None:
    """One curve's ``metric`` against ``axis`` on ``ax`` (the validation loss beside the
    training loss on the "loss" row)."""
    records = [m for m in curve.metrics if axis in m]
    every_step = [m for m in records if metric in m]
    if metric == "loss":
        ax.plot(
            [m[axis] for m in every_step],
            [m["loss"] for m in every_step],
            color=colour,
            linewidth=1,
            label=curve.label,
        )
        evaluated = [m for m in records if "val_loss" in m]
        ax.plot(
            [m[axis] for m in evaluated],
            [m["val_loss"] for m in evaluated],
            color=colour,
            marker="o",
            markersize=4,
            markerfacecolor="white",
            linestyle=":",
            linewidth=1.2,
            zorder=3,  # above the noisier training loss
        )
        return
    sparse = len(every_step) < len(records)
    ax.plot(
        [m[axis] for m in every_step],
        [m[metric] for m in every_step],
        color=colour,
        linewidth=1,
        marker="o" if sparse else None,
        markersize=3,
        label=curve.label,
    )


def plot_runs(
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    metrics: Sequence[str] = tuple(METRICS),
    overwrite: bool = False,
) -> Path:
    """``blockdsl plot``: the training curves of the run directories ``runs`` in one PNG at
    ``out`` (training and validation loss, learning rate and tokens/s against steps, tokens
    and wall time; one colour per run). ``labels`` name the runs (default: their paths). An
    existing ``out`` is replaced only with ``overwrite``. Returns ``out``."""
    from blockdsl._io import read_jsonl
    from blockdsl.checkpoint import METRICS as METRICS_FILE
    from blockdsl.checkpoint import is_run

    if not runs:
        raise PlotError("give at least one run directory to plot")
    if labels is not None and len(labels) != len(runs):
        raise PlotError(f"{len(labels)} label(s) for {len(runs)} run(s)")
    out = Path(out)
    if out.exists() and not overwrite:
        raise PlotError(f"{out} already exists; nothing was overwritten", hint="pass --force")
    if out.suffix.lower() != ".png":
        raise PlotError(f"the plot is a PNG: --out must end in .png, got '{out}'")
    curves = []
    for index, run in enumerate(runs):
        run = Path(run)
        if not is_run(run):
            raise PlotError(
                f"'{run}' is not a training run directory (no config.toml)",
                hint="give the --out directory of a blockdsl train run",
            )
        records = step_records(read_jsonl(run / METRICS_FILE))
        if not records:
            raise PlotError(f"the run '{run}' has no metrics yet (its metrics.jsonl is empty)")
        curves.append(Curve(labels[index] if labels else str(run), records))
    if pyplot() is None:
        raise PlotError(
            "blockdsl plot needs matplotlib, which is not installed",
            hint="pip install 'blockdsl[plot]'",
        )
    unknown = [m for m in metrics if not any(m in r for c in curves for r in c.metrics)]
    if unknown:
        recorded = sorted({k for c in curves for r in c.metrics for k in r} - set(AXES))
        raise PlotError(
            f"no run recorded {', '.join(unknown)}",
            hint=f"the runs recorded: {', '.join(recorded)}",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    title = str(runs[0]) if len(runs) == 1 else f"{len(runs)} runs"
    plot_curves(curves, out, metrics=metrics, title=title)
    return out


@dataclass(frozen=True)
class ScatterPanel:
    """One panel of the search front: every point (grey), the staircase of its two-objective
    front, the front of all objectives (large) and the seeds (squares); (x, y) pairs each."""

    x_label: str
    others: list[tuple[float, float]]
    staircase: list[tuple[float, float]]
    front: list[tuple[float, float]]
    seeds: list[tuple[float, float]]


def plot_front(panels: Sequence[ScatterPanel], path: str | os.PathLike, title: str = "") -> bool:
    """``front.png`` of ``blockdsl search``: one panel per x axis, the metric on y. False
    without matplotlib or with nothing to draw."""
    plt = pyplot()
    if plt is None or not panels:
        return False
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        ax.scatter(*_xy(panel.others), s=14, color="0.6", label="trained")
        ax.step(
            *_xy(panel.staircase),
            where="post",
            color="C0",
            linewidth=1,
            label=f"front (metric, {panel.x_label})",
        )
        ax.scatter(*_xy(panel.front), s=36, color="C0", label="front (all objectives)", zorder=3)
        ax.scatter(*_xy(panel.seeds), marker="s", s=50, color="C3", label="seeds", zorder=4)
        ax.set_xlabel(panel.x_label)
        ax.set_ylabel("metric")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path)
    return True


def step_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` that are step records (an integer ``step``)."""
    return [m for m in records if isinstance(m.get("step"), int)]


def _xy(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]
