"""The study: Optuna storage (ask-and-tell), the candidate ledger that makes every canonical
candidate evaluated once across workers, the cheap checks and the training of a candidate.

Storage. An Optuna study holds one trial per trained candidate: user attributes ``block``
(the canonical block string), ``metric``, ``params``, ``state``, ``hurdle`` (the metric at
the early checkpoint), ``parent``, ``mutation``, ``run``; its values are the chosen
objectives. The study's own user attribute ``blockdsl`` holds the search settings, so that a
rerun resumes the same search (and refuses different settings).

Ledger. A table ``blockdsl_search_candidates`` in the same database holds every canonical
candidate ever proposed, keyed by (study, hash of the block): rejected ones with the reason,
the others with their status. A worker *claims* a candidate by inserting its row; the
database's primary key makes the claim unique, so two workers (on one machine or many) can
never both train the same candidate, and the same single statement refuses the claim once the
study holds ``--trials`` candidates. A claim records its owner (``host:pid``) and a heartbeat;
a claim whose owner is gone (a dead process on this host, or no heartbeat for the grace
period) is stale: its trial is marked failed, and the next worker takes the candidate over and
resumes its training run from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockdsl.errors import BlockDSLError, BudgetError
from blockdsl.search.evolution import OBJECTIVES, Member

LEDGER_TABLE = "blockdsl_search_candidates"
#: seconds between heartbeats of a claim, and silence after which another host's claim is stale
HEARTBEAT_S = 30.0
GRACE_S = 300.0
#: hurdle scores needed before the running median prunes anyone
MIN_HURDLE_SCORES = 3
#: largest seed every random generator the training run seeds accepts
MAX_SEED = 2**63 - 1
#: tries at opening a storage whose schema another process is creating
SCHEMA_ATTEMPTS = 5


class SearchError(BlockDSLError):
    """The search cannot run as asked (a missing extra, settings that contradict the study)."""


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise SearchError(
            "blockdsl search stores its study with Optuna, which is not installed",
            hint="pip install 'blockdsl[search]'",
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# ==================================================================== settings
@dataclass
class SearchSettings:
    """What a search is: the task, the search space, the training recipe and the budgets.
    Everything here is fixed when the study is created (``trials``, ``workers`` are not)."""

    data: str
    components: tuple[str, ...]
    seeds: tuple[str, ...]
    steps: int
    base: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None
    seed: int = 0
    hurdle: int | None = None  # steps of the early checkpoint; None: steps // 4; 0: no hurdle
    max_params: int | None = None
    max_memory: str | None = None
    objectives: tuple[str, ...] = ("metric", "params", "state")
    population: int = 16
    tournament: int = 4

    def __post_init__(self) -> None:
        self.components = tuple(self.components)
        self.seeds = tuple(self.seeds)
        self.objectives = tuple(self.objectives)
        _check_recipe(self)
        if self.hurdle is None:
            self.hurdle = self.steps // 4
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown or not self.objectives or self.objectives[0] != "metric":
            raise SearchError(
                f"--objectives must start with metric and name only {', '.join(OBJECTIVES)}; "
                f"got {','.join(self.objectives)}",
                hint="e.g. --objectives metric,params,state",
            )
        for name in ("steps", "population", "tournament"):
            if getattr(self, name) < 1:
                raise SearchError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not self.seeds:
            raise SearchError(
                "a search starts from at least one --seed-spec",
                hint="e.g. --seed-spec 'Norm->Conv->+->Norm->MLP->+'",
            )
        if self.hurdle and not 0 < self.hurdle < self.steps:
            raise SearchError(f"--hurdle must be between 1 and --steps - 1, got {self.hurdle}")
        schedule = (self.overrides.get("optim") or {}).get("schedule", "constant")
        if self.hurdle and schedule != "constant":
            raise SearchError(
                f"hurdles need a learning-rate schedule that does not depend on the budget "
                f"(optim.schedule=constant), not {schedule!r}",
                hint="drop --set optim.schedule, or pass --hurdle 0",
            )

    @property
    def fixed(self) -> dict[str, Any]:
        """The settings a resumed study must match."""
        data = dataclasses.asdict(self)
        for free in ("population", "tournament"):
            data.pop(free)
        return json.loads(json.dumps(data))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSettings:
        return cls(**dict(data))

    def run_overrides(self) -> dict[str, Any]:
        """Config overrides of every candidate: the given ones, with a constant learning rate
        when hurdles are on (an early checkpoint is then the start of the full run)."""
        overrides = json.loads(json.dumps(self.overrides))
        if self.hurdle:
            overrides.setdefault("optim", {})["schedule"] = "constant"
        return overrides


def _check_recipe(settings: SearchSettings) -> None:
    """Types and ranges of the numbers every candidate shares (the learning rate, the seed, the
    budgets), so that a bad value fails once, up front, and never reaches a study."""
    from blockdsl.train.settings import parse_bytes

    for name in ("steps", "population", "tournament"):
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise SearchError(f"--{name} must be an integer, got {value!r}")
    if settings.hurdle is not None and (
        not isinstance(settings.hurdle, int) or isinstance(settings.hurdle, bool)
    ):
        raise SearchError(f"--hurdle must be an integer, got {settings.hurdle!r}")
    lr = settings.lr
    if lr is not None and (
        not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0
    ):
        raise SearchError(f"--lr must be a finite number > 0, got {lr!r}", hint="e.g. --lr 1e-3")
    seed = settings.seed
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise SearchError(f"--seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    cap = settings.max_params
    if isinstance(cap, float) and math.isfinite(cap) and cap.is_integer():
        cap = settings.max_params = int(cap)  # --max-params 2e6
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise SearchError(f"--max-params must be a positive integer, got {cap!r}")
    if settings.max_memory is not None:
        parse_bytes(settings.max_memory, "--max-memory")


def check_inputs(settings: SearchSettings) -> None:
    """Everything global to a search, checked once before anything is proposed: the data (a
    task spec is parsed and built, a data directory opened) and every seed's full training
    config (base model, overrides, recipe). A problem here is the run's, never a candidate's:
    it raises instead of being recorded against every candidate."""
    from blockdsl.model import ModelPlan
    from blockdsl.tasks.data import open_task
    from blockdsl.train.data import TokenData
    from blockdsl.train.settings import resolve

    task = open_task(settings.data, settings.seed)
    data_vocab = task.vocab if task is not None else TokenData(settings.data).vocab
    for block in settings.seeds:
        try:
            config = candidate_config(settings, block)
            ModelPlan(config)
            resolve(config)
        except BlockDSLError as exc:
            raise SearchError(
                f"seed '{block}' cannot be trained as configured: {exc.message}",
                hint=exc.hint or "check --base, --set and the recipe options",
            ) from None
        if data_vocab > config.vocab:
            raise SearchError(
                f"the data has {data_vocab:,} tokens but the candidates' vocab is {config.vocab:,}",
                hint=f"--set vocab={data_vocab}",
            )


# ==================================================================== candidates
def candidate_config(settings: SearchSettings, block: str) -> Any:
    """The training config of a candidate: exactly what ``blockdsl compare`` trains for the
    block string under the same options (base model, task adjustments, budget, seed, lr)."""
    from blockdsl.compare import parse_variants
    from blockdsl.config import load_config
    from blockdsl.tasks.data import open_task

    overrides = settings.run_overrides()
    task = open_task(settings.data, 0)
    if task is not None:
        overrides.setdefault("vocab", task.vocab)
    [variant] = parse_variants([("candidate", block)], settings.base, overrides)
    config = variant.config
    if task is not None:
        if "context" not in overrides and config.context < task.seq_len:
            config = load_config(config, context=task.seq_len)
        if "seq_len" not in config.train:
            config = load_config(config, train={**config.train, "seq_len": task.seq_len})
    train = {**config.train, "steps": settings.steps, "seed": settings.seed}
    optim = dict(config.optim)
    if settings.lr is not None:
        optim["lr"] = settings.lr
    return load_config(config, train=train, optim=optim)


@dataclass
class Estimate:
    """What the cheap checks know of a candidate before any allocation."""

    params: int
    memory: int
    state: float


def precheck(settings: SearchSettings, block: str) -> tuple[Estimate | None, str | None, str]:
    """``(estimate, None, "")`` for a candidate that may be trained, else
    ``(None, reason, kind)`` with kind ``invalid`` (validation) or ``budget`` (estimates).
    Validation and estimates only: the model is built on the meta device at most."""
    from blockdsl.compare import state_per_token
    from blockdsl.model import ModelPlan
    from blockdsl.train import memory
    from blockdsl.train.settings import parse_bytes, resolve

    try:
        config = candidate_config(settings, block)
        plan = ModelPlan(config)
        train, optim = resolve(config)
    except BlockDSLError as exc:
        return None, exc.message, "invalid"
    params = plan.params()
    if settings.max_params is not None and params > settings.max_params:
        return None, f"{params:,} parameters over --max-params {settings.max_params:,}", "budget"
    estimate = memory.estimate(plan, train.batch_size, train.seq_len, train.precision, optim)
    if settings.max_memory is not None:
        limit = parse_bytes(settings.max_memory)
        if estimate.total > limit:
            return (
                None,
                f"memory estimate {estimate.total:,} B over --max-memory {limit:,} B",
                "budget",
            )
    return Estimate(params, estimate.total, state_per_token(config)), None, ""


def block_key(block: str) -> str:
    return hashlib.sha256(block.encode()).hexdigest()[:32]


# ==================================================================== the ledger
class Ledger:
    """Every candidate of every study in one database table (see the module docstring)."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.sa = sa
        connect = {"timeout": 120} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=connect)
        metadata = sa.MetaData()
        self.table = sa.Table(
            LEDGER_TABLE,
            metadata,
            sa.Column("study", sa.String(255), primary_key=True),
            sa.Column("key", sa.String(32), primary_key=True),
            sa.Column("block", sa.Text, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("reason", sa.Text),
            sa.Column("trial", sa.Integer),
            sa.Column("owner", sa.String(255)),
            sa.Column("heartbeat", sa.Float),
        )
        metadata.create_all(self.engine, checkfirst=True)

    def status(self, study: str, block: str) -> str | None:
        t = self.table
        with self.engine.connect() as conn:
            row = conn.execute(
                self.sa.select(t.c.status).where(t.c.study == study, t.c.key == block_key(block))
            ).first()
        return None if row is None else row[0]

    def reject(self, study: str, block: str, reason: str) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    self.table.insert().values(
                        study=study,
                        key=block_key(block),
                        block=block,
                        status="rejected",
                        reason=reason,
                    )
                )
        except self.sa.exc.IntegrityError:
            pass  # another worker rejected (or claimed) it first

    def claim(self, study: str, block: str, owner: str, limit: int) -> str:
        """``claimed``: this worker now owns the candidate; ``taken``: some worker proposed it
        before; ``full``: the study holds ``limit`` candidates. One statement, so that the
        key's uniqueness and the count are decided by the database, not by the workers."""
        statement = self.sa.text(
            f"INSERT INTO {LEDGER_TABLE} (study, key, block, status, owner, heartbeat) "
            "SELECT :study, :key, :block, 'running', :owner, :now "
            f"WHERE (SELECT COUNT(*) FROM {LEDGER_TABLE} "
            "WHERE study = :study AND status != 'rejected') < :limit"
        )
        values = dict(study=study, key=block_key(block), block=block, owner=owner, now=time.time())
        try:
            with self.engine.begin() as conn:
                inserted = conn.execute(statement, {**values, "limit": limit}).rowcount
        except self.sa.exc.IntegrityError:
            return "taken"
        return "claimed" if inserted == 1 else "full"

    def update(self, study: str, block: str, owner: str, **values: Any) -> bool:
        """Set columns of a candidate this ``owner`` holds; False if it holds it no more."""
        t = self.table
        with self.engine.begin() as conn:
            done = conn.execute(
                t.update()
                .where(t.c.study == study, t.c.key == block_key(block), t.c.owner == owner)
                .values(**values)
            ).rowcount
        return done == 1

    def rows(self, study: str, status: str | None = None) -> list[dict[str, Any]]:
        t = self.table
        query = self.sa.select(t).where(t.c.study == study)
        if status is not None:
            query = query.where(t.c.status == status)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def counts(self, study: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows(study):
            out[row["status"]] = out.get(row["status"], 0) + 1
        return out

    def orphan(self, row: Mapping[str, Any]) -> bool:
        """Mark a stale claim as orphaned (only if still held by the same owner)."""
        t = self.table
        with self.engine.begin() as conn:
            done = conn.execute(
                t.update()
                .where(
                    t.c.study == row["study"],
                    t.c.key == row["key"],
                    t.c.status == "running",
                    t.c.owner == row["owner"],
                )
                .values(status="orphan")
            ).rowcount
        return done == 1

    def take_orphan(self, study: str, owner: str) -> dict[str, Any] | None:
        """Take over an orphaned candidate, if any (one worker wins each)."""
        t = self.table
        for row in self.rows(study, "orphan"):
            with self.engine.begin() as conn:
                done = conn.execute(
                    t.update()
                    .where(t.c.study == study, t.c.key == row["key"], t.c.status == "orphan")
                    .values(status="running", owner=owner, heartbeat=time.time())
                ).rowcount
            if done == 1:
                return {**row, "owner": owner, "status": "running"}
        return None


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _stale(row: Mapping[str, Any], me: str, grace: float) -> bool:
    host, _, pid = str(row["owner"]).rpartition(":")
    if row["owner"] == me:
        # recover() runs between candidates: a claim in this process's name is a dead
        # process's whose pid was reused
        return True
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return time.time() - float(row["heartbeat"] or 0) > grace


# ==================================================================== the study
class Study:
    """An Optuna study and its ledger, opened (or created) with the search settings."""

    def __init__(
        self,
        settings: SearchSettings,
        *,
        storage: str,
        name: str,
        create: bool = True,
    ) -> None:
        optuna = require_optuna()
        self.optuna = optuna
        self.url, self.name = storage, name
        directions = ["maximize" if OBJECTIVES[o] else "minimize" for o in settings.objectives]
        # Creating the schema, the study and its settings is check-then-write in Optuna and
        # SQLAlchemy: processes opening one fresh study at once take turns.
        with _creation_lock(storage):
            self.storage = _rdb(optuna, storage)
            if create:
                self.study = optuna.create_study(
                    storage=self.storage,
                    study_name=name,
                    directions=directions,
                    load_if_exists=True,
                )
            else:
                self.study = optuna.load_study(storage=self.storage, study_name=name)
            stored = self.study.user_attrs.get("blockdsl")
            if stored is None:
                self.study.set_user_attr("blockdsl", settings.to_dict())
            else:
                _check_same(SearchSettings.from_dict(stored).fixed, settings.fixed, name)
            self.settings = settings
            self.ledger = Ledger(storage)

    @classmethod
    def open(cls, *, storage: str, name: str) -> Study:
        """An existing study, with the settings it was created with."""
        optuna = require_optuna()
        missing = SearchError(
            f"no study '{name}' in {storage}",
            hint="run 'blockdsl search ...' first, or give --out, --storage and --study",
        )
        if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///") :]).is_file():
            raise missing
        try:
            study = optuna.load_study(storage=_rdb(optuna, storage), study_name=name)
        except KeyError:
            raise missing from None
        stored = study.user_attrs.get("blockdsl")
        if stored is None:
            raise SearchError(f"study '{name}' in {storage} was not made by blockdsl search")
        return cls(SearchSettings.from_dict(stored), storage=storage, name=name, create=False)

    # ---------------------------------------------------------------- reading
    def trials(self, states: Sequence[str] = ("COMPLETE",)) -> list[Any]:
        wanted = tuple(getattr(self.optuna.trial.TrialState, s) for s in states)
        return self.study.get_trials(deepcopy=False, states=wanted)

    def members(self) -> list[Member]:
        """Every completed candidate."""
        out = []
        for trial in self.trials():
            attrs = trial.user_attrs
            out.append(
                Member(
                    attrs["block"],
                    float(attrs["metric"]),
                    int(attrs["params"]),
                    float(attrs["state"]),
                    trial.number,
                    {"seed": attrs.get("seed", False), "run": attrs.get("run")},
                )
            )
        return out

    def hurdle_median(self) -> float | None:
        scores = [
            t.user_attrs["hurdle"]
            for t in self.trials(("COMPLETE", "PRUNED"))
            if t.user_attrs.get("hurdle") is not None
        ]
        return statistics.median(scores) if len(scores) >= MIN_HURDLE_SCORES else None

    # ---------------------------------------------------------------- recovery
    def recover(self, me: str, grace: float = GRACE_S) -> int:
        """Mark stale claims orphaned and their trials failed; returns how many."""
        found = 0
        for row in self.ledger.rows(self.name, "running"):
            if not _stale(row, me, grace) or not self.ledger.orphan(row):
                continue
            found += 1
            if row["trial"] is not None:
                self.study.tell(
                    int(row["trial"]),
                    state=self.optuna.trial.TrialState.FAIL,
                    skip_if_finished=True,
                )
        return found


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """An exclusive OS lock on ``.NAME.lock`` beside an SQLite study file (released when the
    process dies); other databases serialise schema creation themselves, and ``_rdb`` retries
    the schema race there."""
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        yield
        return
    path = Path(url[len("sqlite:///") :])
    if not path.parent.is_dir():
        yield  # the database cannot be created there: _rdb reports it
        return
    lock = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # closing releases the lock


def _rdb(optuna: Any, url: str) -> Any:
    """Optuna's storage for a database URL; a URL it cannot open is a ``SearchError``."""
    import sqlalchemy

    connect = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=connect)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as exc:
            # another process creating the same fresh schema (on a server database, where no
            # file lock serialises it): its tables exist a moment later, so try again
            racing = isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in str(exc)
            if not racing or attempt == SCHEMA_ATTEMPTS - 1:
                failure: Exception = exc
                break
            time.sleep(0.2 * (attempt + 1))
        except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError) as exc:
            failure = exc
            break
    raise SearchError(
        f"cannot open the study storage {url}: {str(failure).splitlines()[0]}",
        hint="--storage takes a database URL Optuna accepts, e.g. sqlite:///runs/study.db",
    )


def _check_same(stored: dict[str, Any], given: dict[str, Any], name: str) -> None:
    # compared as JSON (how the study stores them), so that equal settings compare equal
    differ = [k for k in stored if json.dumps(stored.get(k)) != json.dumps(given.get(k))]
    if differ:
        shown = "; ".join(f"{k}: study {stored[k]!r}, now {given.get(k)!r}" for k in differ)
        raise SearchError(
            f"study '{name}' was made with other settings ({shown})",
            hint="rerun with the study's settings to resume it, or give a new --study",
        )


# ==================================================================== training a candidate
@dataclass
class Outcome:
    status: str  # complete | pruned | failed
    metric: float | None = None
    hurdle: float | None = None
    params: int | None = None
    reason: str = ""


def train_candidate(
    settings: SearchSettings,
    block: str,
    run_dir: Path,
    hurdle_median: Callable[[], float | None],
    exempt: bool = False,
) -> Outcome:
    """Train one candidate in ``run_dir`` (resuming what is there). With a hurdle, the run
    first trains to the early checkpoint; below the running median of the study's scores
    there it stops (pruned), else it continues to the full budget from that checkpoint
    (the schedule is constant, so the run is the one ``blockdsl compare`` makes)."""
    from blockdsl.config import load_config
    from blockdsl.train import TrainingError, read_metrics, train
    from blockdsl.train.data import DataError

    config = candidate_config(settings, block)
    data = settings.data
    try:
        hurdle_score = None
        if settings.hurdle:
            hurdle_score = _accuracy_at(read_metrics(run_dir / "metrics.jsonl"), settings.hurdle)
            if hurdle_score is None:
                early = load_config(config, train={**config.train, "steps": settings.hurdle})
                run = train(
                    early,
                    data=data,
                    out=run_dir,
                    resume=run_dir.is_dir(),
                    progress=False,
                    plot=False,  # a candidate's curves would cost more than they tell
                )
                if run.interrupted:
                    raise KeyboardInterrupt
                hurdle_score = _accuracy_at(run.metrics, settings.hurdle)
            median = None if exempt else hurdle_median()
            if hurdle_score is not None and median is not None and hurdle_score < median:
                return Outcome(
                    "pruned",
                    hurdle=hurdle_score,
                    reason=f"{hurdle_score:.4f} below the median {median:.4f} at step "
                    f"{settings.hurdle}",
                )
        run = train(
            config, data=data, out=run_dir, resume=run_dir.is_dir(), progress=False, plot=False
        )
        if run.interrupted:
            raise KeyboardInterrupt
    except DataError:
        raise  # the data is every candidate's: a problem there is the run's, not this one's
    except (TrainingError, BudgetError, BlockDSLError) as exc:
        # a non-finite loss, a measured memory limit, a config the estimates let through
        return Outcome("failed", reason=exc.message)
    metric = run.summary.get("final_accuracy")
    if metric is None or not math.isfinite(metric):
        return Outcome("failed", reason="no finite metric")
    return Outcome("complete", float(metric), hurdle_score, int(run.summary["params"]))


def _accuracy_at(metrics: Sequence[Mapping[str, Any]], step: int) -> float | None:
    for line in metrics:
        if line.get("step") == step and "accuracy" in line:
            return float(line["accuracy"])
    return None


class Heartbeat:
    """Refreshes a claim's heartbeat from a thread while its candidate trains."""

    def __init__(self, ledger: Ledger, study: str, block: str, owner: str, every: float) -> None:
        self.args = (ledger, study, block, owner)
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        ledger, study, block, owner = self.args
        while not self.stop.wait(self.every):
            ledger.update(study, block, owner, heartbeat=time.time())

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


__all__ = [
    "GRACE_S",
    "HEARTBEAT_S",
    "LEDGER_TABLE",
    "Estimate",
    "Heartbeat",
    "Ledger",
    "Outcome",
    "SearchError",
    "SearchSettings",
    "Study",
    "block_key",
    "candidate_config",
    "check_inputs",
    "owner_id",
    "precheck",
    "require_optuna",
    "train_candidate",
]
