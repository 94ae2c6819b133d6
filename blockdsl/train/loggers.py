"""Where a run's step records go besides ``metrics.jsonl`` (``[train] log``): TensorBoard, through
torch's own ``SummaryWriter`` (the ``tensorboard`` extra), and Weights & Biases (the ``wandb``
extra, offline unless ``WANDB_MODE`` says otherwise). Each gets the same scalars as
``metrics.jsonl``, at the same steps, and the run's configuration as hyperparameters; only
rank 0 logs.

A resumed run continues the same curves: ``metrics.jsonl`` is cut back to the checkpoint and
the steps after it are trained again, so TensorBoard is opened with ``purge_step`` (the events
the stopped process wrote past the checkpoint are dropped by every reader) and W&B with the
run's id (``resume="allow"``): each process writes its own offline directory of that run, the
resumed one from the step after the checkpoint."""

from __future__ import annotations

import os
import secrets
import warnings
from pathlib import Path
from typing import Any

from blockdsl._io import write_atomic
from blockdsl.errors import ConfigError

__all__ = ["TENSORBOARD_DIR", "WANDB_ID", "Loggers", "check_available", "flat_config"]

TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard: the event files (tensorboard --logdir RUN)
WANDB_ID = "wandb_id.txt"  # RUN/wandb_id.txt: the W&B run id a resume continues
_EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_available(loggers: tuple[str, ...]) -> None:
    """Refuse, before a run starts, a logger whose package is not installed."""
    for name in loggers:
        if name == "jsonl":
            continue
        try:
            _import(name)
        except ImportError:
            raise ConfigError(
                f"[train] log names {name!r} but the {_EXTRAS[name]} package is not installed",
                hint=f"pip install 'blockdsl[{_EXTRAS[name]}]', or drop {name!r} from log",
            ) from None


def _import(name: str) -> Any:
    with warnings.catch_warnings():  # their import-time deprecations are not the user's
        warnings.simplefilter("ignore")
        if name == "tensorboard":
            from torch.utils import tensorboard

            return tensorboard
        import wandb

        return wandb


def flat_config(tables: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config's tables as one level of ``table.key`` names to numbers, strings and
    booleans (lists written out as text): what hyperparameter panels show."""
    flat: dict[str, Any] = {}
    for key, value in tables.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class Loggers:
    """The run's loggers other than ``metrics.jsonl`` (which the trainer writes itself).

    ``resumed_at``: the checkpoint's step when resuming (None for a new run). ``write`` takes
    a step record (the line of metrics.jsonl); ``close`` flushes and closes."""

    def __init__(
        self,
        loggers: tuple[str, ...],
        run_dir: Path,
        config: dict[str, Any],
        *,
        resumed_at: int | None,
        enabled: bool = True,
    ) -> None:
        self.tensorboard: Any = None
        self.wandb: Any = None
        if not enabled:
            return
        if "tensorboard" in loggers:
            self.tensorboard = _open_tensorboard(run_dir, config, resumed_at)
        if "wandb" in loggers:
            self.wandb = _open_wandb(run_dir, config, resumed_at)

    def write(self, line: dict[str, Any]) -> None:
        step = line["step"]
        scalars = {k: v for k, v in line.items() if k != "step" and _is_number(v)}
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, global_step=step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def flush(self) -> None:
        """Make what was logged readable now (an evaluation, a checkpoint)."""
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _open_tensorboard(run_dir: Path, config: dict[str, Any], resumed_at: int | None) -> Any:
    tensorboard = _import("tensorboard")
    log_dir = run_dir / TENSORBOARD_DIR
    # a resume re-logs the steps after its checkpoint: readers drop what the stopped process
    # wrote from there on
    purge = None if resumed_at is None else resumed_at + 1
    writer = tensorboard.SummaryWriter(log_dir=str(log_dir), purge_step=purge)
    if resumed_at is None:
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(flat_config(config), {}):
            writer.file_writer.add_summary(summary)
    return writer


def _open_wandb(run_dir: Path, config: dict[str, Any], resumed_at: int | None) -> Any:
    wandb = _import("wandb")
    id_file = run_dir / WANDB_ID
    if resumed_at is not None and id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = secrets.token_hex(6)  # W&B ids: lowercase letters and digits
        write_atomic(id_file, run_id + "\n")
    os.environ.setdefault("WANDB_SILENT", "true")  # the tool's own lines only on the terminal
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "blockdsl"),
        name=run_dir.name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=flat_config(config),
        mode=os.environ.get("WANDB_MODE", "offline"),
        # no console capture, no system-metrics sampler, no code or environment snapshot: the
        # sampler alone slowed a small model's steps tenfold on a shared CPU
        settings=wandb.Settings(
            console="off",
            silent=True,
            save_code=False,
            x_disable_stats=True,
            x_disable_meta=True,
            x_disable_machine_info=True,
        ),
    )
