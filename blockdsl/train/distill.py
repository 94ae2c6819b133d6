"""Distillation: ``[train] teacher = SOURCE`` and the ``[distill]`` table.

The teacher (a model file, a checkpoint or run directory, or ``hf:DIR``, as for ``init``)
runs in eval mode without gradients on every training batch. The student's loss is

    ce * next-token loss  +  kl * T² · KL(softmax(teacher / T) ‖ softmax(student / T))
        +  hidden_weight * mean over the named pairs of MSE(student layer, teacher layer)

(plus the student's auxiliary losses, as always). The KL is averaged over the predicted
positions and scaled by T² so that its gradients keep their size across temperatures (Hinton
et al.); ``hidden`` names ``[student module, teacher module]`` pairs (``["layers.1",
"layers.3"]``) whose outputs are matched. Each term is a column of ``metrics.jsonl``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockdsl.config import ModelConfig, _valid_hint
from blockdsl.errors import ConfigError


@dataclass
class DistillSettings:
    """``[distill]``: the weights of the distillation loss's terms."""

    kl: float = 1.0  # weight of the KL divergence to the teacher's softened distribution
    ce: float = 0.0  # weight of the plain next-token loss on the data
    temperature: float = 1.0  # softens both distributions in the KL term
    hidden: list[list[str]] = field(default_factory=list)  # [[student module, teacher module]]
    hidden_weight: float = 1.0  # weight of the hidden-state MSE (with pairs in hidden)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_distill(config: ModelConfig) -> DistillSettings:
    """The validated ``[distill]`` table of ``config`` (defaults filled in)."""
    settings = DistillSettings()
    valid = {f.name for f in fields(settings)}
    for key, value in config.distill.items():
        if key not in valid:
            raise config.error(
                f"unknown [distill] key '{key}'", key, hint=_valid_hint(key, valid, "valid keys")
            )
        if key == "hidden":
            pairs = value if isinstance(value, list) else None
            if pairs is None or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p)
                for p in pairs
            ):
                raise config.error(
                    f"[distill] hidden must be a list of [student module, teacher module] "
                    f"pairs, got {value!r}",
                    key,
                    hint='e.g. hidden = [["layers.1", "layers.3"]]',
                )
            settings.hidden = [list(p) for p in pairs]
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise config.error(f"[distill] {key} must be a number, got {value!r}", key)
        if not math.isfinite(value) or value < 0 or (key == "temperature" and value == 0):
            what = "> 0" if key == "temperature" else "≥ 0"
            raise config.error(f"[distill] {key} must be a finite number {what}, got {value}", key)
        setattr(settings, key, float(value))
    return settings


def distill_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    student_hidden: list[torch.Tensor] = (),  # type: ignore[assignment]
    teacher_hidden: list[torch.Tensor] = (),  # type: ignore[assignment]
) -> dict[str, torch.Tensor]:
    """The KL term (``T² · KL(teacher ‖ student)`` at temperature ``T``, mean over positions)
    and, with hidden states, the mean of their MSEs."""
    vocab = student_logits.shape[-1]
    student = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2
    terms = {"kl": kl}
    if student_hidden:
        mse = [F.mse_loss(s.float(), t.float()) for s, t in zip(student_hidden, teacher_hidden)]
        terms["hidden"] = torch.stack(mse).mean()
    return terms


class Distiller:
    """The teacher and the hooks that catch the named layers' outputs of both models."""

    def __init__(self, teacher: nn.Module, student: nn.Module, settings: DistillSettings) -> None:
        self.teacher, self.settings = teacher.eval().requires_grad_(False), settings
        self.caught: dict[str, list[torch.Tensor | None]] = {"student": [], "teacher": []}
        self._hooks = []
        for i, (student_name, teacher_name) in enumerate(settings.hidden):
            for side, model, name in (
                ("student", student, student_name),
                ("teacher", teacher, teacher_name),
            ):
                module = _submodule(model, name, side)
                self.caught[side].append(None)
                self._hooks.append(module.register_forward_hook(self._catch(side, i)))

    def _catch(self, side: str, index: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            self.caught[side][index] = tensor

        return hook

    @torch.no_grad()
    def teacher_logits(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The teacher's logits at the positions the student predicts (the same labels)."""
        return self.teacher(inputs, targets).logits

    def loss(
        self, logits: torch.Tensor, loss: torch.Tensor, aux: torch.Tensor, teacher: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The distillation loss of a micro-batch the student and the teacher have both just
        run; the terms (detached) for the metrics."""
        settings = self.settings
        if teacher.shape != logits.shape:
            raise ConfigError(
                f"the teacher's logits {list(teacher.shape)} do not match the student's "
                f"{list(logits.shape)}",
                hint="teacher and student need the same vocab",
            )
        hidden_pairs = list(zip(self.caught["student"], self.caught["teacher"]))
        for (s, t), names in zip(hidden_pairs, settings.hidden):
            if s is None or t is None or s.shape != t.shape:
                shapes = [None if x is None else list(x.shape) for x in (s, t)]
                raise ConfigError(
                    f"[distill] hidden pair {names}: the outputs have shapes {shapes[0]} "
                    f"(student) and {shapes[1]} (teacher); they must be equal"
                )
        terms = distill_terms(
            logits,
            teacher,
            settings.temperature,
            [s for s, _ in hidden_pairs],  # type: ignore[misc]
            [t for _, t in hidden_pairs],  # type: ignore[misc]
        )
        ce = loss - aux
        total = settings.ce * ce + settings.kl * terms["kl"] + aux
        if "hidden" in terms:
            total = total + settings.hidden_weight * terms["hidden"]
        terms["ce"] = ce
        for key in self.caught:
            self.caught[key] = [None] * len(self.caught[key])
        return total, {k: v.detach().float() for k, v in terms.items()}

    def term_names(self) -> list[str]:
        return ["kl", "ce", *(["hidden"] if self.settings.hidden else [])]


def _submodule(model: nn.Module, name: str, side: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        layers = getattr(model, "layers", None)
        if layers is not None:
            names += [f"layers.{i}" for i in range(len(layers))]
        raise ConfigError(
            f"[distill] hidden: the {side} has no module '{name}'",
            hint=_valid_hint(name, names, "modules include"),
        ) from None


__all__ = ["DistillSettings", "Distiller", "distill_terms", "resolve_distill"]
