"""Training's public entry: ``train(spec, data=..., out=...)`` and the ``Run`` it returns.

``train`` resolves the configuration once (``[model]`` ... ``[train]``, ``[optim]``), opens
the data source and checks the model takes it, before anything is allocated or written; then
a ``Trainer`` (``blockdsl.train.trainer``) does the run: setup, steps, evaluations,
checkpoints, summary. ``Run`` reads a run directory back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import blockdsl.checkpoint as runs
from blockdsl.config import ModelConfig, load_config
from blockdsl.errors import ConfigError
from blockdsl.tasks.data import task_recipe
from blockdsl.tasks.recipe import with_recipe
from blockdsl.threads import cpu_threads
from blockdsl.train import distributed
from blockdsl.train.distill import resolve_distill
from blockdsl.train.loggers import check_available
from blockdsl.train.settings import TrainSettings, resolve
from blockdsl.train.sources import open_source
from blockdsl.train.trainer import Trainer, TrainingError, read_metrics
from blockdsl.untrusted import read_json_object

WALL_CLOCK_FIELDS = ("tokens_per_s", "elapsed")  # the metrics that differ between equal runs


@dataclass
class Run:
    """A training run's directory and what it recorded. ``metrics``: one dict per step (the
    lines of ``metrics.jsonl``); ``summary``: ``summary.json``; ``model``: the trained model
    (None for ``Run.load``; see ``load_model``); ``interrupted``: the signal that stopped it."""

    dir: Path
    config: ModelConfig
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    interrupted: int | None = None

    @property
    def final_loss(self) -> float | None:
        return self.metrics[-1]["loss"] if self.metrics else None

    @property
    def val_loss(self) -> float | None:
        """The last validation loss."""
        values = [m["val_loss"] for m in self.metrics if "val_loss" in m]
        return values[-1] if values else None

    @property
    def steps(self) -> int:
        return self.metrics[-1]["step"] if self.metrics else 0

    @classmethod
    def load(cls, path: str | os.PathLike) -> Run:
        """A finished (or stopped) run read back from its directory."""
        path = Path(path)
        if not runs.is_run(path):
            raise TrainingError(f"{path} is not a training run (no {runs.CONFIG})")
        config = load_config(path / runs.CONFIG)
        metrics = read_metrics(path / runs.METRICS)
        summary_path = path / runs.SUMMARY
        summary = read_json_object(summary_path, "run summary") if summary_path.exists() else {}
        return cls(path, config, metrics, summary)

    def load_model(self, step: int | None = None) -> nn.Module:
        """The model with the weights of the newest checkpoint (or of ``step``), in training
        mode, loaded by ``blockdsl.load``."""
        found = runs.latest(self.dir, step)
        if found is None:
            at = f" at step {step}" if step is not None else ""
            raise runs.CheckpointError(f"{self.dir} has no checkpoint{at}")
        return runs.load(found.path).train()


def train(
    spec: Any = "tiny",
    *,
    data: str | os.PathLike,
    out: str | os.PathLike,
    resume: bool = False,
    max_memory: int | str | None = None,
    progress: bool | None = None,
    registry: Any = None,
    init: str | os.PathLike | Mapping[str, Any] | None = None,
    init_strict: bool | None = None,
    init_optimizer: bool | None = None,
    teacher: str | os.PathLike | None = None,
    threads: int | None = None,
    plot: bool | None = None,
    **overrides: Any,
) -> Run:
    """Train ``spec`` (anything ``build_model`` takes) on the prepared ``data`` directory,
    writing the run to ``out``. ``overrides`` set config keys as in ``build_model``, with
    ``train={...}`` and ``optim={...}`` for the run's tables (``train={"steps": 60}``).
    ``progress``: True a rich bar, False silent, None (default) a bar on a terminal and log
    lines otherwise. Returns the ``Run``. Under torchrun every rank calls it and trains its
    share (docs/distributed.md); rank 0 alone prints and writes. The run directory has one
    owner: a second process training into it gets an error naming the first one's pid.
    ``init`` (a model file, a checkpoint or run directory, or ``hf:DIR``) starts from those
    weights, ``init_strict`` and ``init_optimizer`` as in ``[train]`` (docs/training.md,
    "Starting from trained weights"); ``teacher`` (the same kinds of source) distils it into
    the model, weighted by ``distill={...}`` (``[distill]``); ``threads`` (torch's CPU
    threads during the run, restored after it) and ``plot`` (``curves.png`` at each
    evaluation) likewise; given here they override the config's ``[train]``. ``init`` given
    as a mapping is the model's ``[init]`` table (its
    initialisation scheme, as for ``build_model``), not weights to start from."""
    if isinstance(init, Mapping):
        overrides["init"], init = init, None
    starting = {
        "init": init,
        "init_strict": init_strict,
        "init_optimizer": init_optimizer,
        "teacher": teacher,
        "threads": threads,
        "plot": plot,
    }
    starting = {
        k: os.fspath(v) if k in ("init", "teacher") else v
        for k, v in starting.items()
        if v is not None
    }
    if starting:
        overrides["train"] = {**overrides.get("train", {}), **starting}
    # A task's recipe fills in what the config leaves unset (blockdsl.tasks.recipe): the
    # generic defaults suit language modelling and under-train the tasks.
    config = with_recipe(load_config(spec, **overrides), task_recipe(data))
    settings, optim = resolve(config)
    resolve_distill(config)  # [distill]'s keys checked before anything starts
    check_available(settings.log)
    source = open_source(data, settings.seed)  # --data task:NAME (blockdsl.tasks)
    source.fit(config, settings)
    launch = distributed.detect_launch()
    if launch.distributed:
        _check_distributed(config, settings, launch.world_size)
    device = _device(settings.device, launch)
    with (
        cpu_threads(settings.threads, "[train] threads"),
        distributed.Group(launch, device, settings.collective_timeout) as group,
    ):
        trainer = Trainer(
            config,
            settings,
            optim,
            source,
            group,
            Path(out),
            resume=resume,
            max_memory=max_memory,
            progress=progress,
            registry=registry,
        )
        try:
            trainer.setup()
            summary = trainer.run()
        finally:
            trainer.close()
    interrupted = trainer.stop[0] if trainer.stop else None
    return Run(Path(out), config, trainer.history, summary, trainer.module, interrupted)


def _device(name: str, launch: distributed.Launch) -> torch.device:
    """The run's device; under torchrun on CUDA, this rank's GPU (``cuda:LOCAL_RANK``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError('[train] device = "cuda" but torch sees no CUDA device')
    if name == "cuda" and launch.distributed:
        if launch.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {launch.local_rank} has no GPU: torch sees "
                f"{torch.cuda.device_count()} on this node",
                hint="start at most one process per GPU (torchrun --nproc_per_node)",
            )
        return torch.device("cuda", launch.local_rank)
    return torch.device(name)


def _check_distributed(config: ModelConfig, settings: TrainSettings, world: int) -> None:
    """The global batch splits evenly into the ranks' micro-batches."""
    if settings.global_batch_size % (settings.batch_size * world):
        raise config.error(
            f"[train] global_batch_size {settings.global_batch_size} does not split into "
            f"micro-batches of {settings.batch_size} on {world} ranks",
            "global_batch_size",
            hint=f"make global_batch_size a multiple of batch_size × ranks = "
            f"{settings.batch_size * world}",
        )


__all__ = ["WALL_CLOCK_FIELDS", "Run", "TrainingError", "read_metrics", "train"]
