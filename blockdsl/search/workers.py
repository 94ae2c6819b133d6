"""Workers: the propose → check → claim → train → tell loop, run in this process or in
``--workers K`` local processes on the same storage (any number of machines can run more
with the same ``--storage`` and ``--study``)."""

from __future__ import annotations

import multiprocessing
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockdsl.errors import BlockDSLError
from blockdsl.search.evolution import aged, tournament
from blockdsl.search.space import SearchSpace, canonical
from blockdsl.search.study import (
    GRACE_S,
    HEARTBEAT_S,
    Heartbeat,
    SearchError,
    SearchSettings,
    Study,
    block_key,
    owner_id,
    precheck,
    train_candidate,
)

#: proposals in a row that yield nothing new before a worker concludes the space is exhausted
MAX_BARREN = 200


@dataclass
class WorkerStats:
    """What one worker did: candidates proposed, rejected before training (invalid, over
    budget), already known (duplicates), trained (complete, pruned, failed), and the time."""

    proposed: int = 0
    duplicates: int = 0
    invalid: int = 0
    over_budget: int = 0
    trained: int = 0
    pruned: int = 0
    failed: int = 0
    resumed: int = 0
    seconds: float = 0.0
    check_seconds: float = 0.0
    events: list[str] = field(default_factory=list)

    def add(self, other: WorkerStats) -> None:
        for name in (
            "proposed",
            "duplicates",
            "invalid",
            "over_budget",
            "trained",
            "pruned",
            "failed",
            "resumed",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds = max(self.seconds, other.seconds)
        self.check_seconds += other.check_seconds
        self.events += other.events


def search_space(settings: SearchSettings) -> SearchSpace:
    from blockdsl.compare import parse_variants

    [variant] = parse_variants([("seed", settings.seeds[0])], settings.base, settings.overrides)
    return SearchSpace(
        settings.components, d_model=variant.config.d_model, defaults=variant.config.defaults
    )


def run_worker(
    settings: SearchSettings,
    *,
    storage: str,
    study_name: str,
    out: str | Path,
    trials: int,
    worker: int = 0,
    rng_seed: int | None = None,
    heartbeat: float = HEARTBEAT_S,
    grace: float = GRACE_S,
    on_event: Callable[[str], None] | None = None,
) -> WorkerStats:
    """One worker: until the study holds ``trials`` trained candidates, propose a candidate
    (the seeds first, then a mutation of a tournament winner), reject it if it is known,
    invalid or over budget, else claim it, train it and record it."""
    started = time.perf_counter()
    study = Study(settings, storage=storage, name=study_name)
    space = search_space(settings)
    me = owner_id()
    rng = random.Random(rng_seed)  # None: seeded from the OS, so workers differ
    stats = WorkerStats()
    seeds = [canonical(s) for s in settings.seeds]
    seen: set[str] = set()
    barren = 0

    def log(message: str) -> None:
        stats.events.append(message)
        if on_event is not None:
            on_event(message)

    while barren < MAX_BARREN:
        if study.recover(me, grace):
            log("took stale claims back: their trials marked failed, to be resumed")
        orphan = study.ledger.take_orphan(study_name, me)
        if orphan is not None:
            stats.resumed += 1
            _evaluate(
                study,
                orphan["block"],
                me,
                out,
                stats,
                log,
                heartbeat,
                parent=None,
                mutation="resumed",
                is_seed=orphan["block"] in seeds,
            )
            continue
        fresh = [s for s in seeds if s not in seen and study.ledger.status(study_name, s) is None]
        if fresh:
            block, parent, mutation = fresh[0], None, "seed"
        else:
            population = aged(study.members(), settings.population)
            if population:
                parent = tournament(population, settings.tournament, rng).block
            else:
                parent = rng.choice(seeds)
            mutation, block = space.mutate(parent, rng)
        stats.proposed += 1  # every proposal ends as one of: duplicate, invalid, over budget,
        # trained (a claim refused because the study is full is taken back below)
        if block in seen or study.ledger.status(study_name, block) is not None:
            stats.duplicates += 1
            seen.add(block)
            barren += 1
            if _finished(study, trials):
                break
            continue
        seen.add(block)
        tick = time.perf_counter()
        estimate, reason, kind = precheck(settings, block)
        stats.check_seconds += time.perf_counter() - tick
        if estimate is None:
            study.ledger.reject(study_name, block, f"{kind}: {reason}")
            if kind == "budget":
                stats.over_budget += 1
            else:
                stats.invalid += 1
            barren += 1
            continue
        verdict = study.ledger.claim(study_name, block, me, trials)
        if verdict == "full":
            stats.proposed -= 1  # never considered: the study was complete
            break
        if verdict == "taken":
            stats.duplicates += 1
            barren += 1
            continue
        barren = 0
        _evaluate(
            study,
            block,
            me,
            out,
            stats,
            log,
            heartbeat,
            parent,
            mutation,
            is_seed=mutation == "seed",
            state=estimate.state,
        )
    stats.seconds = time.perf_counter() - started
    return stats


def _finished(study: Study, trials: int) -> bool:
    counts = study.ledger.counts(study.name)
    return sum(v for k, v in counts.items() if k != "rejected") >= trials


def _evaluate(
    study: Study,
    block: str,
    me: str,
    out: str | Path,
    stats: WorkerStats,
    log: Callable[[str], None],
    heartbeat: float,
    parent: str | None,
    mutation: str,
    is_seed: bool,
    state: float | None = None,
) -> None:
    """Train a claimed candidate as a new trial, and record the outcome in both tables."""
    from blockdsl.compare import state_per_token
    from blockdsl.search.study import candidate_config

    settings, name = study.settings, study.name
    trial = study.study.ask()
    run_dir = Path(out) / "runs" / block_key(block)[:16]
    attrs = {"block": block, "mutation": mutation, "seed": is_seed, "run": str(run_dir)}
    if parent is not None:
        attrs["parent"] = parent
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study.ledger.update(name, block, me, trial=trial.number, heartbeat=time.time())
    if state is None:
        state = state_per_token(candidate_config(settings, block))
    with Heartbeat(study.ledger, name, block, me, heartbeat):
        outcome = train_candidate(settings, block, run_dir, study.hurdle_median, exempt=is_seed)
    trial.set_user_attr("hurdle", outcome.hurdle)
    TrialState = study.optuna.trial.TrialState
    if outcome.status == "complete":
        scores = {"metric": outcome.metric, "params": outcome.params, "state": state}
        for key, value in scores.items():
            trial.set_user_attr(key, value)
        study.study.tell(trial, [scores[o] for o in settings.objectives])
        stats.trained += 1
        log(f"trial {trial.number}: {block}  {outcome.metric:.4f}")
    elif outcome.status == "pruned":
        trial.set_user_attr("reason", outcome.reason)
        study.study.tell(trial, state=TrialState.PRUNED)
        stats.trained += 1
        stats.pruned += 1
        log(f"trial {trial.number}: {block}  pruned ({outcome.reason})")
    else:
        trial.set_user_attr("reason", outcome.reason)
        study.study.tell(trial, state=TrialState.FAIL)
        stats.trained += 1
        stats.failed += 1
        log(f"trial {trial.number}: {block}  failed ({outcome.reason})")
    study.ledger.update(name, block, me, status=outcome.status, reason=outcome.reason or None)


def _worker_main(payload: dict[str, Any], queue: Any) -> None:
    """Entry point of a worker process (``spawn``: a fresh interpreter)."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    threads = payload.pop("threads", None)
    if threads is not None:  # --threads: this worker's torch threads
        import torch

        torch.set_num_threads(threads)
    settings = SearchSettings.from_dict(payload.pop("settings"))
    try:
        stats: WorkerStats | str = run_worker(settings, on_event=queue.put, **payload)
    except BlockDSLError as exc:
        stats = str(exc)  # the main process raises it (an exception may not pickle)
    queue.put((os.getpid(), stats))


def run_workers(
    settings: SearchSettings,
    *,
    workers: int,
    storage: str,
    study_name: str,
    out: str | Path,
    trials: int,
    on_event: Callable[[str], None] | None = None,
    poll: Callable[[], None] | None = None,
    **options: Any,
) -> WorkerStats:
    """``workers`` worker processes on one storage; this process relays their events and
    calls ``poll`` (the live table) until all have finished."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = []
    for index in range(workers):
        payload = dict(
            settings=settings.to_dict(),
            storage=storage,
            study_name=study_name,
            out=str(out),
            trials=trials,
            worker=index,
            **options,
        )
        process = context.Process(target=_worker_main, args=(payload, queue), daemon=False)
        process.start()
        processes.append(process)
    total = WorkerStats()
    reported: set[int] = set()  # pids of the workers that sent their stats
    dead: dict[int, int] = {}  # index -> exit code of a worker that ended without reporting
    errors: list[str] = []  # what workers that stopped on a BlockDSLError said
    import queue as queue_module

    def note_deaths() -> None:
        for index, process in enumerate(processes):
            if index in dead or process.is_alive() or process.pid in reported:
                continue
            # the stats of a worker that exited cleanly may still be on their way
            if process.exitcode == 0 and not queue.empty():
                continue
            dead[index] = process.exitcode
            if on_event is not None:
                on_event(f"worker {index} (pid {process.pid}) died: {_exit_text(process.exitcode)}")

    while len(reported) + len(dead) < workers:
        try:
            item = queue.get(timeout=2.0)
        except queue_module.Empty:
            note_deaths()
            if poll is not None:
                poll()
            continue
        if isinstance(item, tuple):  # (pid, stats or the worker's error)
            reported.add(item[0])
            if isinstance(item[1], WorkerStats):
                total.add(item[1])
            else:
                errors.append(item[1])
        elif on_event is not None:
            on_event(item)
        if poll is not None:
            poll()
    for process in processes:
        process.join()
    if errors:
        raise SearchError(errors[0].removeprefix("blockdsl: "))
    if dead:
        # a dead worker's claim names its pid, which no process holds now: mark its trial
        # failed (the next run resumes the candidate) instead of leaving it RUNNING
        Study(settings, storage=storage, name=study_name).recover(owner_id(), GRACE_S)
        shown = ", ".join(f"worker {i}: {_exit_text(code)}" for i, code in sorted(dead.items()))
        raise SearchError(
            f"{len(dead)} of {workers} search workers died ({shown}); their trials are "
            "marked failed",
            hint="rerun the same command to resume the study",
        )
    return total


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


__all__ = ["MAX_BARREN", "WorkerStats", "run_worker", "run_workers", "search_space"]
