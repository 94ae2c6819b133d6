"""The parallel strategy a ``Trainer`` is handed: one process, DDP or FSDP2. Each answers
the same questions (where to build the model, how to wrap it, when gradients are reduced,
what a checkpoint holds and how a checkpoint is read back), so the loop has no branch on
which one it runs. The collective pieces live in ``blockdsl.train.distributed``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import torch
from torch import nn

from blockdsl.checkpoint import Checkpoint, load_weights
from blockdsl.train import distributed
from blockdsl.train.optim import build_optimizers
from blockdsl.train.settings import OptimSettings

Optimizers = Sequence[torch.optim.Optimizer]


class SingleProcess:
    """One process: the model as built, whole checkpoints with the optimizer state."""

    name: str | None = None

    def __init__(self, group: distributed.Group, precision: str) -> None:
        self.group, self.precision = group, precision
        self._pending_optimizer_state: dict[str, Any] | None = None

    def build_device(self, device: torch.device) -> torch.device:
        return device

    @property
    def mixes_precision(self) -> bool:
        """Whether the strategy casts to bfloat16 itself (else the loop's autocast does)."""
        return False

    def wrap(self, module: nn.Module) -> nn.Module:
        return module

    def gradient_sync(self, model: nn.Module, sync: bool) -> AbstractContextManager:
        return nullcontext()

    def load_whole(
        self, module: nn.Module, checkpoint: Checkpoint, saved: dict[str, Any], optim: Any
    ) -> None:
        """Before wrapping: the whole weights of a single-process checkpoint."""
        if not saved.get("sharded"):
            load_weights(checkpoint.weights, module)

    def restore(
        self, model: nn.Module, optimizers: Optimizers, checkpoint: Checkpoint, saved: dict
    ) -> None:
        """After wrapping: the optimizer state."""
        if saved.get("sharded"):
            distributed.load_sharded(checkpoint.path / saved["sharded"], model, optimizers)
            return
        for optimizer, state in zip(optimizers, saved["optimizers"]):
            optimizer.load_state_dict(state)

    def whole_weights(self, model: nn.Module, module: nn.Module) -> nn.Module | None:
        """The module whose weights rank 0 writes to ``model.safetensors`` (None elsewhere)."""
        return module if self.group.main else None

    def optimizer_state(self, optimizers: Optimizers) -> list[dict[str, Any]] | None:
        return [o.state_dict() for o in optimizers]

    def shard_writer(self, model: nn.Module, optimizers: Optimizers) -> Callable | None:
        return None

    @property
    def save_group(self) -> distributed.Group | None:
        return None


class DataParallel(SingleProcess):
    """DDP: every rank holds the whole model; the optimizer state is saved sharded."""

    name = "ddp"

    def wrap(self, module: nn.Module) -> nn.Module:
        return distributed.parallelize(module, self.name, self.group, self.precision)

    def gradient_sync(self, model: nn.Module, sync: bool) -> AbstractContextManager:
        return distributed.gradient_sync(model, self.name, sync)

    def load_whole(
        self, module: nn.Module, checkpoint: Checkpoint, saved: dict[str, Any], optim: Any
    ) -> None:
        """A single-process checkpoint: its weights, and its optimizer state by parameter
        name (the optimizers of the wrapped model number their parameters otherwise)."""
        if saved.get("sharded"):
            return
        load_weights(checkpoint.weights, module)
        previous = build_optimizers(module, optim)
        for optimizer, state in zip(previous, saved["optimizers"]):
            optimizer.load_state_dict(state)
        self._pending_optimizer_state = distributed.full_optimizer_state(module, previous)

    def restore(
        self, model: nn.Module, optimizers: Optimizers, checkpoint: Checkpoint, saved: dict
    ) -> None:
        if saved.get("sharded"):
            distributed.load_sharded(checkpoint.path / saved["sharded"], model, optimizers)
        elif self._pending_optimizer_state is not None:
            distributed.load_full_optimizer_state(model, optimizers, self._pending_optimizer_state)
            self._pending_optimizer_state = None

    def optimizer_state(self, optimizers: Optimizers) -> list[dict[str, Any]] | None:
        return None  # in the sharded directory

    def shard_writer(self, model: nn.Module, optimizers: Optimizers) -> Callable | None:
        return partial(distributed.save_sharded, model=model, optimizers=optimizers)

    @property
    def save_group(self) -> distributed.Group | None:
        return self.group


class FullySharded(DataParallel):
    """FSDP2: each rank holds a shard; rank 0 gathers the whole weights for
    ``model.safetensors`` into a plain copy of the model it builds once."""

    name = "fsdp"

    def __init__(
        self, group: distributed.Group, precision: str, build_plain: Callable[[], nn.Module]
    ) -> None:
        super().__init__(group, precision)
        self.build_plain = build_plain
        self._plain: nn.Module | None = None

    def build_device(self, device: torch.device) -> torch.device:
        # FSDP moves each block to the device as it shards it: the whole model never is on one
        return torch.device("cpu")

    @property
    def mixes_precision(self) -> bool:
        return self.group.device.type == "cuda"

    def whole_weights(self, model: nn.Module, module: nn.Module) -> nn.Module | None:
        gathered = distributed.full_weights(model, self.group)  # collective
        if gathered is None:
            return None
        if self._plain is None:
            self._plain = self.build_plain()
        self._plain.load_state_dict(gathered)
        return self._plain


def make_strategy(
    name: str | None,
    group: distributed.Group,
    precision: str,
    build_plain: Callable[[], nn.Module],
) -> SingleProcess:
    """The strategy object of ``name`` (None: one process)."""
    if name is None:
        return SingleProcess(group, precision)
    if name == "ddp":
        return DataParallel(group, precision)
    return FullySharded(group, precision, build_plain)


def check_muon(name: str | None, optim: OptimSettings, config: Any) -> None:
    """Muon orthogonalises whole matrices: it cannot run on FSDP's shards."""
    if name == "fsdp" and optim.name == "muon":
        raise config.error(
            "Muon orthogonalises whole matrices, which FSDP shards across ranks",
            "strategy" if "strategy" in config.train else "name",
            hint='use [train] strategy = "ddp" with Muon, or [optim] name = "adamw"',
        )


__all__ = [
    "DataParallel",
    "FullySharded",
    "SingleProcess",
    "check_muon",
    "make_strategy",
]
