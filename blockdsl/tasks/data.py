"""A task as the training loop's data source (the interface of ``blockdsl.train.data.TokenData``):
``batch(seed, step, rows, seq_len, split)`` a pure function of its arguments, ``vocab``, and
what a task adds: ``seq_len`` (fixed by the task), ``evaluate`` (the source's score on the test
set) and ``wrap_model`` (the model the task trains)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockdsl.errors import ConfigError
from blockdsl.tasks.spec import TaskSpec, parse_task
from blockdsl.tasks.task import Task


class TaskData:
    """``--data task:NAME[,key=value...]``. The data seed is the run's ``[train] seed``
    unless the text sets ``seed=``. Training batches come from the training set in a fresh
    order each epoch; validation batches are consecutive slices of the test set."""

    path = None  # no directory: nothing to copy into the run

    def __init__(self, spec: str | TaskSpec, seed: int = 0) -> None:
        self.spec = parse_task(spec) if isinstance(spec, str) else spec
        self.task = Task(self.spec, seed=seed)
        self.text = self.spec.text()

    @property
    def vocab(self) -> int:
        return self.task.vocab

    @property
    def seq_len(self) -> int:
        return self.task.seq_len

    @property
    def meta(self) -> dict[str, Any]:
        return {
            "task": self.text,
            "source": self.spec.definition.source,
            "params": self.task.params,
            "seed": self.task.seed,
            "metric": self.task.metric,
            "seq_len": self.seq_len,
        }

    def configure(self, config: Any, settings: Any) -> None:
        """Fit the run to the task: ``[train] seq_len`` defaults to the task's length, which
        the model's context must hold."""
        if "seq_len" not in config.train:
            settings.seq_len = self.seq_len
        if self.seq_len > config.context:
            raise ConfigError(
                f"the task's sequences are {self.seq_len} tokens, longer than the model's "
                f"context {config.context} ({self.text})",
                hint=f"--set context={self.seq_len}",
            )

    def check_length(self, seq_len: int, splits: Any = None) -> None:
        if seq_len != self.seq_len:
            raise ConfigError(
                f"[train] seq_len {seq_len} differs from the task's sequence length "
                f"{self.seq_len} ({self.text})",
                hint="leave [train] seq_len unset for a task (it takes the task's), "
                "or set the task's seq=",
            )

    def batch(
        self, seed: int, step: int, rows: int, seq_len: int, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            return self.task.batch(step, rows)
        inputs, targets = self.task.test_set
        index = torch.arange(step * rows, (step + 1) * rows) % len(inputs)
        return inputs[index], targets[index]

    def evaluate(self, model: nn.Module, device: torch.device | None = None) -> float:
        """The task's score (higher is better) of ``model`` on the whole test set."""
        return self.task.evaluate(model, device=device)["accuracy"]

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return self.task.wrap_model(model)


def open_task(data: Any, seed: int) -> TaskData | None:
    """``TaskData`` when ``data`` names a task, else None (a data directory)."""
    from blockdsl.tasks.spec import is_task

    return TaskData(data, seed) if is_task(data) else None
