"""Starting a run from trained weights (``[train] init = SOURCE``, ``--init SOURCE``).

SOURCE is a blockdsl model file, a checkpoint directory, a run directory (its newest
checkpoint), or ``hf:DIR``, a Hugging Face checkpoint folder read through the importer. The
source's tensors are copied into the freshly built model by module path and shape; what the
new model has and the source lacks keeps the model's own initialisation, and what the source
has and the new model lacks is dropped. A path present in both with different shapes is an
error naming both shapes, unless ``[train] init_strict = false`` (then that tensor keeps its
fresh initialisation and the report lists it as mismatched).

``initialize`` returns an ``InitReport``, the table the run prints and saves as ``init.json``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import blockdsl.checkpoint as runs

HF_PREFIX = "hf:"
INIT_REPORT = "init.json"  # in the run directory: what the init copied, left new and dropped


class InitError(runs.CheckpointError):
    """An init source that cannot be read, or whose weights do not fit the new model."""


@dataclass
class InitReport:
    """What ``initialize`` did: ``copied`` (name -> shape), ``new`` (the model's own init),
    ``dropped`` (the source's tensors the model has no place for) and ``mismatched`` (same
    path, other shape; only with ``strict=False``: name -> [source shape, model shape])."""

    source: str
    copied: dict[str, list[int]] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    mismatched: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def same_parameters(self) -> bool:
        """Whether every tensor was copied and none dropped: the same parameters."""
        return not (self.new or self.dropped or self.mismatched)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The table printed at the start of the run."""
        out = [
            f"init from {self.source}: {len(self.copied)} tensors copied, {len(self.new)} new, "
            f"{len(self.dropped)} dropped, {len(self.mismatched)} of another shape"
        ]
        for title, names in (
            ("new (the model's own init)", self.new),
            ("dropped", self.dropped),
            ("other shape (the model's own init)", list(self.mismatched)),
        ):
            if names:
                out.append(f"  {title}: {', '.join(names)}")
        return out


def source_state(
    source: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], runs.Checkpoint | None]:
    """The tensors SOURCE stands for, and the run checkpoint they come from (None for a model
    file of its own or a Hugging Face folder)."""
    text = os.fspath(source)
    if text.startswith(HF_PREFIX):
        return hf_model(text[len(HF_PREFIX) :]).state_dict(), None
    try:
        located = runs.locate(text)
    except runs.CheckpointError as exc:
        raise InitError(
            f"init source {text!r}: {exc.message}",
            hint="give a model file, a checkpoint directory, a training run directory or "
            "hf:DIR (a Hugging Face checkpoint folder)",
        ) from None
    model = runs.load(located.weights)
    step_dir = located.weights.parent
    checkpoint = None
    if located.run_dir is not None and (step_dir / runs.STATE).is_file():
        checkpoint = runs.Checkpoint(step_dir, int(step_dir.name.removeprefix("step_")))
    return model.state_dict(), checkpoint


def source_model(source: str | os.PathLike) -> nn.Module:
    """The model SOURCE stands for (a distillation teacher), in eval mode."""
    text = os.fspath(source)
    if text.startswith(HF_PREFIX):
        return hf_model(text[len(HF_PREFIX) :]).eval()
    try:
        return runs.load(runs.locate(text).weights)
    except runs.CheckpointError as exc:
        if isinstance(exc, InitError):
            raise
        raise InitError(
            f"model source {text!r}: {exc.message}",
            hint="give a model file, a checkpoint directory, a training run directory or "
            "hf:DIR (a Hugging Face checkpoint folder)",
        ) from None


def hf_model(path: str | os.PathLike) -> nn.Module:
    """The blockdsl model of a Hugging Face checkpoint folder, weights included: the one
    place training reaches the importer."""
    from blockdsl.interop.hf import from_pretrained_dir

    if not Path(path).is_dir():
        raise InitError(
            f"init source hf:{os.fspath(path)}: no such folder",
            hint="hf:DIR names a Hugging Face checkpoint folder (config.json, *.safetensors)",
        )
    return from_pretrained_dir(path)


def initialize(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    *,
    strict: bool = True,
) -> InitReport:
    """Copy the tensors of ``state`` into ``model`` by name and shape (see the module's
    docstring); the report of what was copied, left new, dropped or mismatched."""
    report = InitReport(str(source))
    target = model.state_dict()
    wrong = []
    for name, tensor in target.items():
        given = state.get(name)
        if given is None:
            report.new.append(name)
        elif tuple(given.shape) != tuple(tensor.shape):
            report.mismatched[name] = [list(given.shape), list(tensor.shape)]
            wrong.append(f"{name} (source {list(given.shape)}, model {list(tensor.shape)})")
        else:
            report.copied[name] = list(tensor.shape)
    report.dropped = sorted(set(state) - set(target))
    if wrong and strict:
        raise InitError(
            f"init from {source}: {len(wrong)} tensor(s) have another shape in the new model: "
            + "; ".join(wrong[:8]),
            hint="set [train] init_strict = false (--init-allow-mismatch) to keep those "
            "tensors' fresh initialisation",
        )
    with torch.no_grad():
        for name in report.copied:
            target[name].copy_(state[name])
    return report


__all__ = [
    "HF_PREFIX",
    "INIT_REPORT",
    "InitError",
    "InitReport",
    "hf_model",
    "initialize",
    "source_model",
    "source_state",
]
