"""Training: data preparation, the training loop, optimizers, checkpoints, memory budget.

``blockdsl.train(spec, data=..., out=..., **overrides)`` trains a model and returns a ``Run``;
``blockdsl.train.prepare(sources, out, tokenizer=...)`` prepares a data directory. Under
torchrun the same call trains with DDP or FSDP2 (``blockdsl.train.distributed``). The package
is imported on first use (``import blockdsl`` stays fast); the heavy optional pieces
(``tokenizers``, ``safetensors``, the profiler) are imported inside the functions that use them.

The package itself is callable, so ``blockdsl.train(...)`` works whether ``blockdsl.train``
names this package (once ``blockdsl.train.data`` or another submodule has been imported) or
the function.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from blockdsl.checkpoint import CheckpointError
from blockdsl.train.data import DataError, TokenData, prepare
from blockdsl.train.loop import WALL_CLOCK_FIELDS, Run, TrainingError, read_metrics
from blockdsl.train.loop import train as _train
from blockdsl.train.settings import OptimSettings, TrainSettings


def train(spec: Any = "tiny", **kwargs: Any) -> Run:
    return _train(spec, **kwargs)


train.__doc__ = _train.__doc__


class _CallableModule(types.ModuleType):
    def __call__(self, spec: Any = "tiny", **kwargs: Any) -> Run:
        return _train(spec, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "WALL_CLOCK_FIELDS",
    "CheckpointError",
    "DataError",
    "OptimSettings",
    "Run",
    "TokenData",
    "TrainSettings",
    "TrainingError",
    "prepare",
    "read_metrics",
    "train",
]
