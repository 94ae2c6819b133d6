"""``blockdsl search``: architecture discovery over block strings (docs/search.md).

Regularised evolution mutates block strings (``space``, ``evolution``); invalid or
over-budget candidates are rejected by validation and the estimates before anything is
allocated; the rest train under ``blockdsl compare``'s recipe with an early hurdle, and the
study (Optuna storage, SQLite by default) keeps every trial and the Pareto front of the task
metric against parameters and decoding state (``study``). ``--workers K`` runs K processes on
one storage; any number of machines can share a database URL (``workers``).

>>> from blockdsl.search import SearchSpace
>>> import random
>>> space = SearchSpace(["Norm", "MLP", "Conv", "Attn"], d_model=32)
>>> name, child = space.mutate("Norm->Conv->+->Norm->MLP->+", random.Random(1))
>>> space.check(child) is None or isinstance(space.check(child), str)
True
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blockdsl.plot as plot
from blockdsl.plot import ScatterPanel
from blockdsl.search.evolution import OBJECTIVES, Member, pareto_front
from blockdsl.search.space import MUTATIONS, SearchSpace, canonical
from blockdsl.search.study import SearchError, SearchSettings, Study, check_inputs
from blockdsl.search.workers import WorkerStats, run_worker, run_workers
from blockdsl.threads import cpu_threads


def default_storage(out: str | os.PathLike) -> str:
    """``sqlite:///OUT/study.db``: the study next to its runs."""
    return f"sqlite:///{Path(out) / 'study.db'}"


@dataclass
class SearchReport:
    """A study's state: its settings, completed candidates, the front, the ledger's counts."""

    study: Study
    members: list[Member]
    front: list[Member]
    seeds: list[Member]
    counts: dict[str, int]
    stats: WorkerStats | None = None
    seconds: float | None = None

    @property
    def settings(self) -> SearchSettings:
        return self.study.settings

    def best(self) -> Member | None:
        return self.front[0] if self.front else None

    def ranked(self) -> list[Member]:
        """Every trained candidate, best first: the front in its order, then the others by
        metric (so that the top N names N blocks whenever N were trained)."""
        on_front = {m.number for m in self.front}
        rest = [m for m in self.members if m.number not in on_front]
        return [*self.front, *sorted(rest, key=lambda m: -m.metric)]

    def table(self) -> Any:
        return front_table(self.front, self.settings.objectives, title=self._title())

    def _title(self) -> str:
        done = self.counts.get("complete", 0)
        pruned = self.counts.get("pruned", 0)
        rejected = self.counts.get("rejected", 0)
        return (
            f"study '{self.study.name}': Pareto front of {done} trained "
            f"(+{pruned} pruned, {rejected} rejected before training)"
        )

    def compare_command(self, top: int = 2, out: str = "runs/search-check") -> str:
        """The ``blockdsl compare`` command that retrains the ``top`` best front members and
        the seeds under the search's recipe (same base, overrides, budget, seed and lr)."""
        specs: list[tuple[str, str]] = [
            (f"best{i + 1}", m.block) for i, m in enumerate(self.ranked()[:top])
        ]
        shown = {b for _, b in specs}
        for i, block in enumerate(canonical(s) for s in self.settings.seeds):
            if block not in shown:
                specs.append((f"seed{i + 1}", block))
        return compare_command(self.settings, specs, out)


def front_table(members: Sequence[Member], objectives: Sequence[str], title: str = "") -> Any:
    """A rich table of candidates: trial, metric, parameters, state per token, block."""
    from rich.table import Table

    table = Table(title=title or None)
    table.add_column("trial", justify="right")
    table.add_column("metric ↑", justify="right")
    table.add_column("params" + (" ↓" if "params" in objectives else ""), justify="right")
    table.add_column("state/token" + (" ↓" if "state" in objectives else ""), justify="right")
    table.add_column("block")
    for m in members:
        seed = " (seed)" if m.extra.get("seed") else ""
        table.add_row(
            str(m.number), f"{m.metric:.4f}", f"{m.params:,}", f"{m.state:,.1f}", m.block + seed
        )
    return table


def compare_command(
    settings: SearchSettings, specs: Sequence[tuple[str, str]], out: str = "runs/search-check"
) -> str:
    """``blockdsl compare NAME='BLOCK' ... --data D --steps N ...`` for ``specs``."""
    parts = ["blockdsl", "compare"]
    parts += [shlex.quote(f"{name}={block}") for name, block in specs]
    parts += ["--data", shlex.quote(settings.data), "--steps", str(settings.steps)]
    if settings.lr is not None:
        parts += ["--lr", f"{settings.lr:g}"]
    if settings.seed:
        parts += ["--seeds", str(settings.seed)]
    if settings.base != "tiny":
        parts += ["--base", shlex.quote(settings.base)]
    for key, value in _flatten(settings.run_overrides()):
        parts += ["--set", shlex.quote(f"{key}={_toml(value)}")]
    parts += ["--out", shlex.quote(out)]
    return " ".join(parts)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # a bare word reads back as the string; anything else is quoted as a TOML string
        return value if value.isidentifier() else json.dumps(value)
    return json.dumps(value)


def report(
    study: Study, stats: WorkerStats | None = None, seconds: float | None = None
) -> SearchReport:
    members = study.members()
    seeds = {canonical(s) for s in study.settings.seeds}
    return SearchReport(
        study,
        members,
        pareto_front(members, study.settings.objectives),
        [m for m in members if m.block in seeds],
        study.ledger.counts(study.name),
        stats,
        seconds,
    )


def search(
    *,
    data: str,
    components: Sequence[str],
    seeds: Sequence[str],
    steps: int,
    trials: int,
    out: str | os.PathLike = "runs/search",
    storage: str | None = None,
    study: str = "search",
    workers: int = 1,
    force_workers: bool = False,
    base: str = "tiny",
    lr: float | None = None,
    seed: int = 0,
    hurdle: int | None = None,
    max_params: int | None = None,
    max_memory: str | None = None,
    objectives: Sequence[str] = ("metric", "params", "state"),
    population: int = 16,
    tournament: int = 4,
    progress: bool | None = None,
    plot: bool = True,
    rng_seed: int | None = None,
    threads: int | None = None,
    **overrides: Any,
) -> SearchReport:
    """Run (or resume) a search until the study holds ``trials`` trained candidates; returns
    its ``SearchReport``. ``overrides`` set config keys of every candidate as in
    ``blockdsl.compare`` (``d_model=64``, ``layers="block*2"``, ``train={...}``).
    ``threads``: torch's CPU threads of each worker (default: torch's choice in this
    process, one in each of several worker processes)."""
    out = Path(out)
    storage = storage or default_storage(out)
    settings = SearchSettings(
        data=str(data),
        components=tuple(components),
        seeds=tuple(canonical(s) for s in seeds),
        steps=steps,
        base=base,
        overrides=overrides,
        lr=lr,
        seed=seed,
        hurdle=hurdle,
        max_params=max_params,
        max_memory=max_memory,
        objectives=tuple(objectives),
        population=population,
        tournament=tournament,
    )
    from blockdsl.search.workers import search_space

    workers = check_workers(workers, force_workers)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise SearchError(f"--trials must be a positive integer, got {trials!r}")
    space = search_space(settings)  # bad component names fail here, before any worker starts
    for block in settings.seeds:
        problem = space.check(block)
        if problem is not None:
            raise SearchError(f"seed '{block}' is not a valid block: {problem}")
    check_inputs(settings)  # the data, the task and the recipe: once, before any proposal
    out.mkdir(parents=True, exist_ok=True)
    opened = Study(settings, storage=storage, name=study)
    started = time.perf_counter()
    with _Live(progress, opened) as live, cpu_threads(threads):
        if workers <= 1:
            stats = run_worker(
                settings,
                storage=storage,
                study_name=study,
                out=out,
                trials=trials,
                rng_seed=rng_seed,
                on_event=live.event,
            )
        else:
            stats = run_workers(
                settings,
                workers=workers,
                storage=storage,
                study_name=study,
                out=out,
                trials=trials,
                on_event=live.event,
                poll=live.poll,
                threads=threads,
            )
    result = report(opened, stats, time.perf_counter() - started)
    if not result.front:
        raise SearchError(
            f"study '{study}' has no trained candidate: {_empty_front_reason(opened, stats)}",
            hint="see the reasons above; 'blockdsl search show' lists the study",
        )
    if plot:
        plot_front(result, out / "front.png")
    return result


def check_workers(workers: int, force: bool = False) -> int:
    """``workers`` if this machine can run that many worker processes: at most one per core
    unless ``force`` (a worker trains on every core it gets; more only contend)."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise SearchError(f"--workers must be a positive integer, got {workers!r}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if workers > cores and not force:
        raise SearchError(
            f"--workers {workers} is more than the {cores} cores this process may use",
            hint=f"--workers {cores} at most, or --force-workers to run {workers} anyway; more "
            "machines can share the study with --storage",
        )
    return workers


def _empty_front_reason(study: Study, stats: WorkerStats | None) -> str:
    """Why nothing was trained: the ledger's most frequent rejection or failure reason."""
    reasons: dict[str, int] = {}
    for row in study.ledger.rows(study.name):
        if row["status"] != "complete" and row["reason"]:
            reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
    counts = ""
    if stats is not None:
        counts = (
            f"{stats.proposed} proposed, {stats.invalid} invalid, {stats.over_budget} over "
            f"budget, {stats.duplicates} already known, {stats.trained} trained"
        )
    if not reasons:
        return counts or "nothing was proposed"
    reason, times = max(reasons.items(), key=lambda item: item[1])
    return f"{counts}; most often ({times}x): {reason}" if counts else reason


def show(*, storage: str, study: str = "search") -> SearchReport:
    """The report of a stored study."""
    return report(Study.open(storage=storage, name=study))


class _Live:
    """The front as a live rich table on a terminal; one line per trial otherwise."""

    def __init__(self, progress: bool | None, study: Study) -> None:
        self.study = study
        self.mode = (
            "live"
            if progress is True or (progress is None and sys.stdout.isatty())
            else ("quiet" if progress is False else "lines")
        )
        self.last = 0.0

    def __enter__(self) -> _Live:
        if self.mode == "live":
            from rich.live import Live

            self.live = Live(report(self.study).table(), refresh_per_second=1)
            self.live.__enter__()
        return self

    def event(self, message: str) -> None:
        if self.mode == "lines":
            print(message, flush=True)
        self.poll(force=True)

    def poll(self, force: bool = False) -> None:
        if self.mode != "live" or (not force and time.monotonic() - self.last < 5):
            return
        self.last = time.monotonic()
        self.live.update(report(self.study).table())

    def __exit__(self, *exc: Any) -> None:
        if self.mode == "live":
            self.live.update(report(self.study).table())
            self.live.__exit__(*exc)


def plot_front(result: SearchReport, path: Path) -> bool:
    """``front.png``: every trained candidate's metric against its parameters (and state per
    token), the front joined and the seeds marked. False without matplotlib (the plot extra)."""
    if not result.members:
        return False
    front = {m.number for m in result.front}
    panels = []
    for attr, label in (("params", "parameters"), ("state", "state/token")):

        def points(members: Sequence[Member], attr: str = attr) -> list[tuple[float, float]]:
            return [(getattr(m, attr), m.metric) for m in members]

        # the two-objective front of this panel (metric against this axis) as a staircase
        plane = sorted(pareto_front(result.members, ("metric", attr)), key=lambda m: m.score(attr))
        others = [m for m in result.members if m.number not in front]
        panels.append(
            ScatterPanel(
                label, points(others), points(plane), points(result.front), points(result.seeds)
            )
        )
    return plot.plot_front(panels, path, title=result.settings.data)


__all__ = [
    "MUTATIONS",
    "OBJECTIVES",
    "Member",
    "SearchError",
    "SearchReport",
    "SearchSettings",
    "SearchSpace",
    "Study",
    "WorkerStats",
    "check_workers",
    "compare_command",
    "default_storage",
    "front_table",
    "plot_front",
    "report",
    "search",
    "show",
]
