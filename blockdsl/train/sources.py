"""The data source a ``Trainer`` is handed: a prepared text directory (``TextSource``) or a
synthetic task (``TaskSource``, ``--data task:NAME``). Both answer the same questions, so the
loop never asks which one it has:

* ``batch(seed, step, rows, seq_len, split)``: a pure function of its arguments;
* ``fit(config, settings)``: adapt the run's settings and check the model takes the data;
* ``wrap_model(model)``: the module that trains (a task may wrap the language model);
* ``observe`` / ``may_have_reached`` / ``score``: what a step or an evaluation adds to the
  metrics (a task's accuracy; nothing for text);
* ``state_dict`` / ``load_state_dict``: what a checkpoint keeps for an exact resume;
* ``fingerprint()``: what identifies the data, checked when a run resumes;
* ``summary(history, settings)``: the source's lines of ``summary.json``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockdsl.config import ModelConfig
from blockdsl.errors import ConfigError
from blockdsl.tasks.data import TaskData, open_task
from blockdsl.train.data import TokenData
from blockdsl.train.settings import TrainSettings


class TextSource:
    """A prepared data directory (``blockdsl data prepare``)."""

    def __init__(self, data: TokenData) -> None:
        self.data = data
        self.path: Path | None = data.path
        self.vocab: int = data.vocab
        self.meta: dict[str, Any] = data.meta
        self.text = str(data.path)

    def fit(self, config: ModelConfig, settings: TrainSettings) -> None:
        self.data.check_length(settings.seq_len)
        _check_vocab(self, config)

    def batch(
        self, seed: int, step: int, rows: int, seq_len: int, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.batch(seed, step, rows, seq_len, split=split)

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model

    def observe(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Nothing to learn from a text batch beyond its loss."""

    def may_have_reached(self, target: float | None) -> bool:
        return False

    def score(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A text source keeps no state between steps."""

    def fingerprint(self) -> dict[str, str]:
        """The data by its ``meta.json`` (token counts, sources, split) and the tokenizer by
        its file: a data directory re-prepared differently or a swapped tokenizer differ."""
        assert self.path is not None
        return {
            "data": _file_hash(self.path / "meta.json"),
            "tokenizer": _file_hash(self.path / "tokenizer.json"),
        }

    def summary(self, history: list[dict[str, Any]], settings: TrainSettings) -> dict[str, Any]:
        return {}


class TaskSource:
    """A synthetic task (``blockdsl.tasks``): its accuracy is scored at every evaluation, and
    once the training batches suggest the target accuracy is reached, in between."""

    def __init__(self, task: TaskData) -> None:
        self.task = task
        self.path: Path | None = None  # no directory: nothing to copy into the run
        self.vocab: int = task.vocab
        self.meta: dict[str, Any] = task.meta
        self.text: str = task.text

    def fit(self, config: ModelConfig, settings: TrainSettings) -> None:
        self.task.configure(config, settings)
        self.task.check_length(settings.seq_len)
        _check_vocab(self, config)

    def batch(
        self, seed: int, step: int, rows: int, seq_len: int, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.task.batch(seed, step, rows, seq_len, split=split)

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return self.task.wrap_model(model)

    def observe(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.task.observe(logits, targets)

    def may_have_reached(self, target: float | None) -> bool:
        return target is not None and self.task.may_have_reached(target)

    def score(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {"accuracy": self.task.evaluate(model, device)}

    def state_dict(self) -> dict[str, Any]:
        return {"task_recent": list(self.task.recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.task.recent.extend(state.get("task_recent", []))

    def fingerprint(self) -> dict[str, str]:
        return {"data": self.text}

    def summary(self, history: list[dict[str, Any]], settings: TrainSettings) -> dict[str, Any]:
        accuracies = [m["accuracy"] for m in history if "accuracy" in m]
        target = settings.target_accuracy
        return {
            "final_accuracy": accuracies[-1] if accuracies else None,
            "reached_target": bool(accuracies and target is not None and accuracies[-1] >= target),
        }


DataSource = TextSource | TaskSource


def open_source(data: str | os.PathLike, seed: int) -> DataSource:
    """The source ``data`` names: ``task:NAME[,key=value...]`` a task, else a data directory."""
    task = open_task(data, seed)
    if task is None and not isinstance(data, (str, os.PathLike)):
        raise ConfigError(
            "train's data must be a prepared data directory or task:NAME, got "
            f"{type(data).__name__}"
        )
    return TaskSource(task) if task is not None else TextSource(TokenData(data))


def _check_vocab(source: DataSource, config: ModelConfig) -> None:
    if source.vocab > config.vocab:
        where = str(source.path / "meta.json") if source.path is not None else source.text
        raise ConfigError(
            f"the data's tokenizer has {source.vocab:,} tokens but the model's vocab is "
            f"{config.vocab:,}",
            hint=f"set the model's vocab to at least {source.vocab} (--set vocab={source.vocab})",
            context=where,
        )


def _file_hash(path: Path) -> str:
    if not path.is_file():
        return "none"
    return hashlib.sha256(path.read_bytes()).hexdigest()


__all__ = ["DataSource", "TaskSource", "TextSource", "open_source"]
