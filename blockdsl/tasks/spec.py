"""``task:NAME[,key=value...]``: the text that names a task wherever ``--data`` is taken."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blockdsl.errors import BlockDSLError, Span, did_you_mean
from blockdsl.tasks.registry import TASKS, TaskDef

PREFIX = "task:"


class TaskError(BlockDSLError):
    """A task specification is invalid (unknown task or key, bad value, impossible sizes)."""


@dataclass(frozen=True)
class TaskSpec:
    """A parsed task: its definition, every parameter (defaults filled in) and the data seed
    (None: the training run's seed)."""

    definition: TaskDef
    params: dict[str, Any]
    seed: int | None = None

    @property
    def name(self) -> str:
        return self.definition.name

    def text(self) -> str:
        """The canonical text: every parameter that differs from its default."""
        defaults = self.definition.defaults()
        parts = [f"{k}={_show(v)}" for k, v in self.params.items() if defaults[k] != v]
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return PREFIX + ",".join([self.name, *parts])


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def is_task(data: Any) -> bool:
    """Whether a ``--data`` value names a task rather than a directory."""
    return isinstance(data, TaskSpec) or (isinstance(data, str) and data.startswith(PREFIX))


def parse_task(text: str) -> TaskSpec:
    """Parse ``task:NAME[,key=value...]``; a ``TaskError`` points at the part at fault."""
    if not text.startswith(PREFIX):
        raise TaskError(
            "a task is written 'task:NAME[,key=value...]'",
            text,
            Span.at(text, 0, len(text)),
            hint=f"tasks: {', '.join(TASKS)}",
        )
    offset = len(PREFIX)
    pieces = text[offset:].split(",")
    name = pieces[0].strip()
    name_span = Span.at(text, offset, offset + len(pieces[0]))
    if name not in TASKS:
        raise TaskError(
            f"unknown task '{name}'" if name else "the task name is missing",
            text,
            name_span,
            hint=did_you_mean(name, TASKS) or f"tasks: {', '.join(TASKS)}",
        )
    definition = TASKS[name]
    params = definition.defaults()
    types = {p.name: p.type for p in definition.params}
    seed: int | None = None
    seen: set[str] = set()
    position = offset + len(pieces[0]) + 1
    for piece in pieces[1:]:
        span = Span.at(text, position, position + len(piece))
        position += len(piece) + 1
        if "=" not in piece:
            raise TaskError(
                f"expected key=value, got '{piece.strip()}'",
                text,
                span,
                hint=f"keys of {name}: {', '.join([*types, 'seed'])}",
            )
        key, _, raw = piece.partition("=")
        key, raw = key.strip(), raw.strip()
        key_span = Span.at(text, span.start, span.start + len(piece.partition("=")[0]))
        value_span = Span.at(text, key_span.end + 1, span.end)
        if key in seen:
            raise TaskError(f"'{key}' is given twice", text, key_span)
        seen.add(key)
        if key == "seed":
            seed = _convert(raw, int, text, value_span, key)
            continue
        if key not in types:
            raise TaskError(
                f"unknown key '{key}' for task {name}",
                text,
                key_span,
                hint=did_you_mean(key, [*types, "seed"])
                or f"keys of {name}: {', '.join([*types, 'seed'])}",
            )
        params[key] = _convert(raw, types[key], text, value_span, key)
    for key in ("vocab", "seq", "train", "test"):
        if params[key] < 1:
            raise TaskError(f"{key} must be at least 1, got {params[key]}", text, name_span)
    problem = definition.check(params)
    if problem is not None:
        raise TaskError(problem, text, Span.at(text, 0, len(text)), context=f"task {name}")
    return TaskSpec(definition, params, seed)


def _convert(raw: str, kind: type, text: str, span: Span, key: str) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError(raw)
        if kind is int:
            value = float(raw.replace("_", "")) if ("e" in raw.lower()) else raw.replace("_", "")
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(raw)
                return int(value)
            return int(value)
        return float(raw)
    except ValueError:
        expected = {bool: "true or false", int: "an integer", float: "a number"}[kind]
        raise TaskError(f"{key} must be {expected}, got '{raw}'", text, span) from None
