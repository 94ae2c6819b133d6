"""Checkpoints: ``RUN/checkpoints/step_NNNNNNN/`` with two files.

* ``model.safetensors``: the weights, written by ``blockdsl.save`` (self-describing: the
  model's config is in the header, so ``blockdsl.load(path)`` rebuilds the trained model;
  tied weights once);
* ``state.pt``: optimizer and scheduler state, step, tokens, elapsed time, RNG states; plain
  tensors and containers, loaded with ``torch.load(weights_only=True)``.

A distributed run (``blockdsl.train.distributed``) writes the same two files from rank 0,
``model.safetensors`` with the whole weights gathered and ``state.pt`` without the optimizer
state, plus ``sharded/``: the model and optimizer state as every rank's shards, written by
``torch.distributed.checkpoint`` (``state.pt`` says so under ``sharded``). Either kind resumes
with any number of ranks and either strategy.

A checkpoint is written into a temporary directory beside the others and renamed into place
with ``os.replace``: a kill during a write leaves the previous checkpoints intact, and a
directory named ``step_*`` is always complete. The newest ``keep`` are kept.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockdsl.checkpoint import CheckpointError
from blockdsl.checkpoint import save as save_weights
from blockdsl.untrusted import writing

STATE_FORMAT = "blockdsl-train-state"
SHARDED_DIR = "sharded"  # a distributed run's torch.distributed.checkpoint directory
_STEP_DIR = re.compile(r"step_(\d+)")


@dataclass
class Checkpoint:
    path: Path
    step: int

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def state(self) -> Path:
        return self.path / "state.pt"


def checkpoints(run_dir: Path) -> list[Checkpoint]:
    """The run's complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.fullmatch(child.name)
        if match and child.is_dir():
            found.append(Checkpoint(child, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def save(
    run_dir: Path,
    step: int,
    model: nn.Module | None,
    state: dict[str, Any],
    keep: int,
    group: Any = None,
    write_shards: Callable[[Path], None] | None = None,
) -> Checkpoint:
    """Write the checkpoint of ``step`` atomically, then drop all but the newest ``keep``.

    In a distributed run every rank calls it with its ``group``: ``write_shards(directory)``
    (collective) writes the sharded state into the temporary directory, rank 0 alone writes
    ``model`` (its whole-weights copy; None elsewhere) and ``state``, renames and prunes."""
    main = group is None or group.main
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}"
    if group is not None:
        # one temporary directory for all ranks, and one answer to "saved already?"
        tmp, done = group.on_main(lambda: (tmp, final.is_dir()))
    else:
        done = final.is_dir()
    if done:  # already saved at this step (the end of a run that saved at save_every)
        return Checkpoint(final, step)
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    if write_shards is not None:
        group.barrier()  # the directory exists before any rank writes into it
        write_shards(tmp / SHARDED_DIR)  # collective: returns once every rank's shards are in
    if main:
        assert model is not None
        save_weights(model, tmp / "model.safetensors", metadata={"step": str(step)})
        payload = {"format": STATE_FORMAT, "version": 1, "step": step, **state}
        if write_shards is not None:
            payload["sharded"] = SHARDED_DIR
        with writing(tmp / "state.pt", "training state"):  # a full disk: a BlockDSLError
            torch.save(payload, tmp / "state.pt")
        for name in ("model.safetensors", "state.pt"):
            _fsync(tmp / name)
        os.replace(tmp, final)
        _fsync(root)
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old.path, ignore_errors=True)
        for stale in root.glob(".tmp-step_*"):  # left by a run killed while writing
            if stale != tmp:
                shutil.rmtree(stale, ignore_errors=True)
    if group is not None:
        group.barrier()  # no rank goes on (or reads checkpoints) before the rename
    return Checkpoint(final, step)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(checkpoint: Checkpoint, model: nn.Module) -> dict[str, Any]:
    """Load the weights into ``model`` and return the training state (``weights_only``)."""
    load_weights(checkpoint.weights, model)
    return load_state(checkpoint)


def load_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """The training state of ``checkpoint`` (``state.pt``, read with ``weights_only``);
    ``state["sharded"]`` names the directory of a distributed run's sharded state."""
    try:
        state = torch.load(checkpoint.state, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint.state} is missing") from None
    except Exception as exc:  # truncated or foreign pickles fail in many ways
        raise CheckpointError(
            f"{checkpoint.state} is not a readable training state (truncated or foreign): "
            f"{_first_line(exc)}",
            hint=_older_hint(checkpoint),
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"{checkpoint.state} is not a blockdsl training state", hint=_older_hint(checkpoint)
        )
    sharded = state.get("sharded")
    if sharded is not None and not (checkpoint.path / sharded / ".metadata").is_file():
        raise CheckpointError(
            f"{checkpoint.path / sharded} is missing or incomplete (no .metadata)",
            hint=_older_hint(checkpoint),
        )
    return state


def load_weights(path: Path, model: nn.Module) -> None:
    """Load a ``model.safetensors`` into ``model`` (every tensor, with matching shapes)."""
    from safetensors.torch import load_model

    if not Path(path).is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as exc:  # SafetensorError, RuntimeError on shape mismatch, OSError
        raise CheckpointError(
            f"{path} cannot be loaded into this model (truncated, foreign or another "
            f"architecture): {_first_line(exc)}"
        ) from None
    if missing or unexpected:
        listed = ", ".join([*missing, *unexpected][:5])
        raise CheckpointError(
            f"{path} does not match this model: {len(missing)} missing and "
            f"{len(unexpected)} unexpected tensors ({listed}...)"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n")[0]
    return text[:200] or type(exc).__name__


def _older_hint(checkpoint: Checkpoint) -> str | None:
    older = [c for c in checkpoints(checkpoint.path.parent.parent) if c.step < checkpoint.step]
    if older:
        return f"move it away to resume from the previous checkpoint ({older[-1].path.name})"
    return None


def rng_state(devices: Sequence[torch.device] = ()) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if any(d.type == "cuda" for d in devices):
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "checkpoints",
    "load",
    "load_state",
    "load_weights",
    "rng_state",
    "save",
    "set_rng_state",
]
