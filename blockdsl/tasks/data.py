"""A task as the training loop's data source (the interface of ``blockdsl.train.data.TokenData``):
``batch(seed, step, rows, seq_len, split)`` a pure function of its arguments, ``vocab``, and
what a task adds: ``seq_len`` (fixed by the task), ``evaluate`` (the source's score on the test
set) and ``wrap_model`` (the model the task trains)."""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import nn

from blockdsl.errors import ConfigError
from blockdsl.tasks.metrics import IGNORE_INDEX
from blockdsl.tasks.recipe import Recipe
from blockdsl.tasks.spec import TaskSpec, parse_task
from blockdsl.tasks.task import Task


class TaskData:
    """``--data task:NAME[,key=value...]``. The data seed is the run's ``[train] seed``
    unless the text sets ``seed=``. Training batches come from the training set in a fresh
    order each epoch; validation batches are consecutive slices of the test set."""

    path = None  # no directory: nothing to copy into the run
    #: training batches whose mean score decides whether the test set is worth scoring
    GATE_BATCHES = 8

    def __init__(self, spec: str | TaskSpec, seed: int = 0) -> None:
        self.spec = parse_task(spec) if isinstance(spec, str) else spec
        self.task = Task(self.spec, seed=seed)
        self.text = self.spec.text()
        self.recent: deque[float] = deque(maxlen=self.GATE_BATCHES)

    @property
    def vocab(self) -> int:
        return self.task.vocab

    @property
    def seq_len(self) -> int:
        return self.task.seq_len

    @property
    def recipe(self) -> Recipe:
        """How this task trains when the run's config does not say (``tasks.recipe``)."""
        return self.spec.definition.recipe

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

    def observe(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Score a training batch from the logits its forward already computed (``(B, K,
        vocab)`` at the labelled positions, or ``(B, T, vocab)``) against its ``(B, T)``
        targets: the running estimate behind ``may_have_reached``, at the cost of an argmax."""
        from blockdsl.model import labelled_positions

        if logits.shape[1] != targets.shape[1]:
            order = labelled_positions(targets)
            if order is None or order.shape[1] != logits.shape[1]:
                return
            targets = targets.gather(1, order)
        if bool((targets != IGNORE_INDEX).any()):
            self.recent.append(self.task.score(logits.argmax(-1).cpu(), targets.cpu()))

    def may_have_reached(self, target: float) -> bool:
        """Whether the last ``GATE_BATCHES`` training batches scored ``target`` on average,
        so that scoring the test set may stop the run. Scored before the model learned from
        them, first-epoch batches estimate the test score (a little behind the model, which
        has learned since); later, memorised batches overestimate it, and a false alarm
        costs one evaluation: the window starts afresh after every call that says yes."""
        if len(self.recent) < self.GATE_BATCHES or sum(self.recent) / len(self.recent) < target:
            return False
        self.recent.clear()
        return True

    def evaluate(self, model: nn.Module, device: torch.device | None = None) -> float:
        """The task's score (higher is better) of ``model`` on the whole test set."""
        return self.task.evaluate(model, device=device)["accuracy"]

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return self.task.wrap_model(model)


def task_recipe(data: Any) -> Recipe | None:
    """The default recipe of the task ``data`` names (None: ``data`` is a data directory)."""
    from blockdsl.tasks.spec import is_task

    if not is_task(data):
        return None
    spec = data if isinstance(data, TaskSpec) else parse_task(data)
    return spec.definition.recipe


def open_task(data: Any, seed: int) -> TaskData | None:
    """``TaskData`` when ``data`` names a task, else None (a data directory)."""
    from blockdsl.tasks.spec import is_task

    return TaskData(data, seed) if is_task(data) else None
