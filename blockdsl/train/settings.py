"""The ``[train]`` and ``[optim]`` tables: every key, its type, default and meaning.

They live in the same TOML as the model (``ModelConfig.train`` / ``ModelConfig.optim`` hold the
raw tables); ``resolve(config)`` validates them, fills in the defaults and returns
``(TrainSettings, OptimSettings)``. Unknown keys are errors that list the valid ones, like the
model's tables. ``docs/training.md`` documents every key (the test suite checks it does).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from blockdsl.config import ModelConfig, _valid_hint
from blockdsl.errors import ConfigError
from blockdsl.threads import MAX_THREADS

PRECISIONS = ("float32", "bfloat16")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd", "constant")
DEVICES = ("auto", "cpu", "cuda")
STRATEGIES = ("auto", "ddp", "fsdp")
LOGGERS = ("jsonl", "tensorboard", "wandb")


@dataclass
class TrainSettings:
    """``[train]``: the run's budget, batch shape, evaluation, checkpoints and execution."""

    steps: int | None = None  # optimizer steps (a budget; at least one of steps/tokens/time)
    tokens: int | None = None  # training tokens (a budget: steps = ceil(tokens / step tokens))
    time: float | None = None  # wall-clock seconds (a budget; stops after the step it passes)
    batch_size: int = 8  # micro-batch: sequences per forward/backward
    global_batch_size: int | None = None  # sequences per optimizer step (default: batch_size)
    seq_len: int | None = None  # tokens per sequence (default: the model's context)
    eval_every: int = 100  # steps between validation losses (0: only at the end)
    eval_batches: int = 8  # micro-batches of the fixed validation set
    save_every: int = 500  # steps between checkpoints (0: only at the end)
    keep: int = 2  # checkpoints kept (the newest ones)
    seed: int = 0  # model init and the (seed, step) -> batch map
    precision: str = "float32"  # float32 | bfloat16 (autocast)
    compile: bool | str = False  # false | true | "auto" (compile when it pays back)
    max_memory: int | str | None = None  # bytes or "8GiB"; default: the memory available
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    log_every: int = 10  # steps between log lines when not on a terminal
    target_accuracy: float | None = None  # --data task:...: stop once the test score reaches it
    strategy: str = "auto"  # under torchrun: auto | ddp | fsdp (docs/distributed.md)
    collective_timeout: float = 600.0  # under torchrun: seconds a collective may wait for a rank
    init: str | None = None  # start from these weights: model file, step dir, run dir, hf:DIR
    init_strict: bool = True  # false: a tensor of another shape keeps its fresh init
    init_optimizer: bool = False  # init from a run with the same parameters: keep its optimizer
    teacher: str | None = None  # distil from this model ([distill] weighs the loss's terms)
    threads: int | None = None  # CPU threads for torch (default: torch's choice, one per core)
    log: tuple[str, ...] = ("jsonl",)  # where metrics go: jsonl (always), tensorboard, wandb
    plot: bool = True  # write curves.png at each evaluation (needs matplotlib)

    @property
    def accumulation(self) -> int:
        return (self.global_batch_size or self.batch_size) // self.batch_size


@dataclass
class OptimSettings:
    """``[optim]``: the optimizer, learning-rate schedule and gradient clipping."""

    name: str = "adamw"  # adamw | muon (hidden matrices; AdamW for the rest)
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 0.0  # learning rate at the end of cosine / wsd decay
    warmup: int = 0  # linear warmup steps
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay) | constant
    decay: float = 0.2  # wsd: fraction of the steps spent decaying
    weight_decay: float = 0.1  # applied to matrices only
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    momentum: float = 0.95  # Muon momentum
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)


_POSITIVE_INT = (
    "batch_size",
    "global_batch_size",
    "seq_len",
    "eval_batches",
    "keep",
    "log_every",
    "steps",
    "tokens",
)
_NONNEG_INT = ("eval_every", "save_every", "seed", "warmup")
#: the largest seed every generator a run seeds accepts (torch's and Python's)
MAX_SEED = 2**63 - 1
_NONNEG_FLOAT = ("lr", "min_lr", "weight_decay", "grad_clip", "time", "momentum", "target_accuracy")
_POSITIVE_FLOAT = ("collective_timeout",)


def resolve(config: ModelConfig) -> tuple[TrainSettings, OptimSettings]:
    """Validated ``[train]`` and ``[optim]`` settings of ``config``, defaults filled in."""
    train = _fill(TrainSettings(), config.train, "train", config)
    optim = _fill(OptimSettings(), config.optim, "optim", config)
    _check(train, optim, config)
    return train, optim


def to_tables(train: TrainSettings, optim: OptimSettings) -> tuple[dict, dict]:
    """Both tables with every key (None values left out: TOML has no null)."""

    def table(settings: Any) -> dict:
        out = {}
        for key, value in asdict(settings).items():
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    return table(train), table(optim)


def _fill(settings: Any, values: dict[str, Any], table: str, config: ModelConfig) -> Any:
    valid = {f.name: f for f in fields(settings)}
    for key, value in values.items():
        if key not in valid:
            raise config.error(
                f"unknown [{table}] key '{key}'",
                key,
                hint=_valid_hint(key, valid, "valid keys"),
            )
        setattr(settings, key, _coerce(table, key, value, getattr(settings, key), config))
    return settings


def _coerce(table: str, key: str, value: Any, default: Any, config: ModelConfig) -> Any:
    where = f"[{table}] {key}"

    def bad(what: str) -> ConfigError:
        return config.error(f"{where} must be {what}, got {value!r}", key)

    if key in _POSITIVE_INT or key in _NONNEG_INT:
        if isinstance(value, float) and value.is_integer() and key in ("tokens", "steps"):
            value = int(value)  # tokens = 1e6
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
        if value < (1 if key in _POSITIVE_INT else 0):
            raise bad("positive" if key in _POSITIVE_INT else "zero or more")
        if key == "seed" and value > MAX_SEED:
            raise bad(f"at most {MAX_SEED}")
        return value
    if key in _NONNEG_FLOAT or key == "decay":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad("a number")
        if not math.isfinite(value) or value < 0 or (key == "decay" and value > 1):
            raise bad("between 0 and 1" if key == "decay" else "a finite number ≥ 0")
        return float(value)
    if key in _POSITIVE_FLOAT:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad("a number")
        if not math.isfinite(value) or value <= 0:
            raise bad("a finite number > 0")
        return float(value)
    if key == "betas":
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in value)
        )
        if not ok:
            raise bad("two numbers in [0, 1)")
        return (float(value[0]), float(value[1]))
    if key == "compile":
        if isinstance(value, bool) or value == "auto":
            return value
        raise bad('true, false or "auto"')
    if key in ("init", "teacher"):
        if not isinstance(value, str) or not value.strip():
            raise bad("a path or hf:DIR")
        return value
    if key == "threads":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
            raise bad(f"a whole number of threads from 1 to {MAX_THREADS}")
        return value
    if key == "log":
        return _loggers(value, where, config)
    if key in ("init_strict", "init_optimizer", "plot"):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if key == "max_memory":
        if value is None:
            return None
        parse_bytes(value, where, config)
        return value
    choices = {
        "precision": PRECISIONS,
        "name": OPTIMIZERS,
        "schedule": SCHEDULES,
        "device": DEVICES,
        "strategy": STRATEGIES,
    }[key]
    if value not in choices:
        raise config.error(
            f"{where} must be one of {', '.join(choices)}, got {value!r}",
            key,
            hint=_valid_hint(str(value), choices, "valid values"),
        )
    return value


def _loggers(value: Any, where: str, config: ModelConfig) -> tuple[str, ...]:
    """``[train] log``: a list of loggers, "jsonl" among them (metrics.jsonl is the run's own
    record: resume, plots and compare read it)."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise config.error(f"{where} must be a list of loggers, got {value!r}", "log")
    for name in names:
        if name not in LOGGERS:
            raise config.error(
                f"{where}: unknown logger {name!r}",
                "log",
                hint=_valid_hint(name, LOGGERS, "loggers"),
            )
    if "jsonl" not in names:
        raise config.error(
            f'{where} must keep "jsonl": metrics.jsonl is the run\'s record (resume, plots, '
            "compare and eval read it)",
            "log",
            hint=f"log = {json.dumps(['jsonl', *names])}",
        )
    return tuple(dict.fromkeys(names))


#: the largest memory budget accepted: 1 EiB, far above any machine
MAX_BYTES = 2**60
_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_UNITS.update({"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12})
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_bytes(value: Any, where: str = "--max-memory", config: ModelConfig | None = None) -> int:
    """``8GiB``, ``500MB``, ``1.5e9`` or an integer: a number of bytes (at least 1, at most
    ``MAX_BYTES``)."""
    size: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        size = value
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
        if match and match.group(2).lower() in _UNITS:
            size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if size is not None and 1 <= size <= MAX_BYTES:  # False for NaN; inf is over the bound
        return int(size)
    message = (
        f"{where} must be a size like 8GiB, 500MB or a number of bytes (1 B to 1 EiB), "
        f"got {value!r}"
    )
    if config is not None:
        raise config.error(message, "max_memory")
    raise ConfigError(message)


def _check(train: TrainSettings, optim: OptimSettings, config: ModelConfig) -> None:
    if train.steps is None and train.tokens is None and train.time is None:
        raise config.error(
            "a run needs a budget: [train] steps, tokens or time",
            "train",
            hint="e.g. --set train.steps=200",
        )
    if train.seq_len is None:
        train.seq_len = config.context
    if train.seq_len > config.context:
        raise config.error(
            f"[train] seq_len {train.seq_len} is longer than the model's context {config.context}",
            "seq_len",
        )
    if train.global_batch_size is None:
        train.global_batch_size = train.batch_size
    if train.global_batch_size % train.batch_size:
        raise config.error(
            f"[train] global_batch_size {train.global_batch_size} is not a multiple of "
            f"batch_size {train.batch_size}",
            "global_batch_size",
        )
    if train.steps is None and train.tokens is None and optim.schedule != "constant":
        raise config.error(
            f"a '{optim.schedule}' schedule needs the run's length: set [train] steps or "
            'tokens (time stops the run early), or use schedule = "constant"',
            "time",
        )
    if train.init_optimizer and train.init is None:
        raise config.error(
            "[train] init_optimizer keeps the optimizer state of the run named by [train] init, "
            "but no init is set",
            "init_optimizer",
            hint="e.g. --init runs/previous --init-optimizer",
        )
    if config.distill and train.teacher is None:
        raise config.error(
            "[distill] weighs a distillation loss, but no [train] teacher is set",
            "distill",
            hint="e.g. --set train.teacher=runs/teacher",
        )
    if optim.min_lr > optim.lr:
        raise config.error(f"[optim] min_lr {optim.min_lr} is above lr {optim.lr}", "min_lr")


def total_steps(train: TrainSettings) -> int | None:
    """Optimizer steps the schedule spans: ``steps``, else ``tokens`` over the tokens of one
    step; None for a time budget alone."""
    candidates = []
    if train.steps is not None:
        candidates.append(train.steps)
    if train.tokens is not None:
        per_step = train.global_batch_size * train.seq_len
        candidates.append(math.ceil(train.tokens / per_step))
    return min(candidates) if candidates else None


__all__ = [
    "LOGGERS",
    "OptimSettings",
    "TrainSettings",
    "parse_bytes",
    "resolve",
    "to_tables",
    "total_steps",
]
