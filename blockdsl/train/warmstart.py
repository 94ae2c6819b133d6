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
    mapped: dict[str, str] = field(default_factory=dict)  # new mixer <- the one it replaced
    unmapped: dict[str, str] = field(default_factory=dict)  # a mixer pair whose shapes differ

    @property
    def same_parameters(self) -> bool:
        """Whether every tensor was copied and none dropped: the same parameters."""
        return not (self.new or self.dropped or self.mismatched or self.mapped)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The table printed at the start of the run."""
        out = [
            f"init from {self.source}: {len(self.copied)} tensors copied, {len(self.mapped)} "
            f"mapped, {len(self.new)} new, {len(self.dropped)} dropped, "
            f"{len(self.mismatched)} of another shape"
        ]
        out += [f"  mapped {name} <- {origin}" for name, origin in self.mapped.items()]
        out += [f"  not mapped {name} ({why})" for name, why in self.unmapped.items()]
        for title, names in (
            ("new (the model's own init)", self.new),
            ("dropped", self.dropped),
            ("other shape (the model's own init)", list(self.mismatched)),
        ):
            if names:
                out.append(f"  {title}: {', '.join(names)}")
        return out


def source_state(source: str | os.PathLike) -> tuple[nn.Module, runs.Checkpoint | None]:
    """The model SOURCE stands for, and the run checkpoint it comes from (None for a model
    file of its own or a Hugging Face folder)."""
    text = os.fspath(source)
    if text.startswith(HF_PREFIX):
        return hf_model(text[len(HF_PREFIX) :]), None
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
    return model, checkpoint


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
    from blockdsl.hf import from_pretrained_dir

    if not Path(path).is_dir():
        raise InitError(
            f"init source hf:{os.fspath(path)}: no such folder",
            hint="hf:DIR names a Hugging Face checkpoint folder (config.json, *.safetensors)",
        )
    return from_pretrained_dir(path)


def initialize(
    model: nn.Module,
    source_model: nn.Module,
    source: str,
    *,
    strict: bool = True,
) -> InitReport:
    """Copy the tensors of ``source_model`` into ``model`` by name and shape, then map the
    mixers that replaced another in the same layer (``MIXER_MAPS``); see the module's
    docstring. The report of what was copied, mapped, left new, dropped or mismatched."""
    state = source_model.state_dict()
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
        _map_mixers(model, source_model, report)
    return report


# ==================================================================== mixer from mixer
def _attention_to_gated_deltanet(attn: nn.Module, gdn: nn.Module) -> dict[str, Any]:
    """Gated DeltaNet's q, k, v and output projections from attention's (as LoLCATs and
    Mamba-in-the-Llama start a linear mixer), where the heads line up: as many key and value
    heads as attention's query heads, of attention's head size. Grouped kv heads are repeated
    to every query head of their group (as attention shares them). The short conv starts as
    the identity so q, k, v pass through it unchanged; the gates, decay and output norm keep
    their own initialisation. Returns ``{parameter: (tensor, what it came from)}``, or a
    ``str``: why the shapes do not allow it."""
    heads, kv_heads, dim = attn.heads, attn.kv_heads, attn.head_dim
    fits = (
        gdn.heads == heads
        and gdn.v_heads == heads
        and gdn.head_dim == dim
        and gdn.v_head_dim == dim
        and attn.v_head_dim == dim
        and attn.q.in_features == gdn.q_proj.in_features
        and attn.k.in_features == attn.q.in_features
        and attn.o.out_features == gdn.out_proj.out_features
    )
    if not fits:
        return (
            f"GatedDeltaNet(heads={gdn.heads}, v_heads={gdn.v_heads}, head_dim={gdn.head_dim}, "
            f"v_head_dim={gdn.v_head_dim}) does not line up with Attn(heads={heads}, "
            f"head_dim={dim}): it needs heads = v_heads = {heads} and head sizes {dim}"
        )
    group = heads // kv_heads

    def repeated(weight: torch.Tensor) -> torch.Tensor:  # kv heads to their query heads
        weight = weight.detach()
        return weight.view(kv_heads, dim, -1).repeat_interleave(group, dim=0).flatten(0, 1)

    repeat = f" (each of {kv_heads} kv heads repeated to its {group} query heads)" * (group > 1)
    mapped: dict[str, Any] = {
        "q_proj.weight": (attn.q.weight, "attention's q"),
        "k_proj.weight": (repeated(attn.k.weight), f"attention's k{repeat}"),
        "v_proj.weight": (repeated(attn.v.weight), f"attention's v{repeat}"),
        "out_proj.weight": (attn.o.weight, "attention's o"),
    }
    for name in "qkv":  # the default short convs (a slot the user filled otherwise: as it is)
        conv = f"slots.{name}.conv.weight"
        if conv in dict(gdn.named_parameters()):
            identity = torch.zeros_like(gdn.get_parameter(conv))
            identity[:, 0, -1] = 1.0  # causal conv: the last tap is the current position
            mapped[conv] = (identity, f"identity ({name} passes through the short conv)")
    return mapped


# (source component, target component) -> (the mapping, the source parameters it reads);
# declared per pair
MIXER_MAPS: dict[tuple[str, str], tuple[Any, tuple[str, ...]]] = {
    ("Attn", "GatedDeltaNet"): (
        _attention_to_gated_deltanet,
        ("q.weight", "k.weight", "v.weight", "o.weight"),
    ),
}


def _map_mixers(model: nn.Module, source_model: nn.Module, report: InitReport) -> None:
    """For each new module of a target kind in ``MIXER_MAPS``, the source module of the
    matching kind in the same layer (one the new model lacks) gives it its weights."""
    targets = dict(model.named_modules())
    sources = dict(source_model.named_modules())
    new = set(report.new)
    for name, module in targets.items():
        layer = name.rpartition(".")[0]
        kinds = {src for (src, dst) in MIXER_MAPS if dst == type(module).__name__}
        if not kinds or not any(n.startswith(f"{name}.") for n in new):
            continue
        candidates = [
            (source_name, source)
            for source_name, source in sources.items()
            if type(source).__name__ in kinds
            and source_name.rpartition(".")[0] == layer
            and source_name not in targets
        ]
        if len(candidates) != 1:
            continue
        source_name, source = candidates[0]
        mapping, reads = MIXER_MAPS[(type(source).__name__, type(module).__name__)]
        mapped = mapping(source, module)
        if isinstance(mapped, str):
            report.unmapped[name] = f"from {source_name}: {mapped}"
            continue
        for param, (tensor, origin) in mapped.items():
            full = f"{name}.{param}"
            module.get_parameter(param).copy_(tensor)
            report.mapped[full] = f"{source_name}: {origin}"
            report.new.remove(full)
        used = {f"{source_name}.{n}" for n in reads}
        report.dropped = [n for n in report.dropped if n not in used]


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
