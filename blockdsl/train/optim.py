"""Optimizers and learning-rate schedules: torch's own, configured from ``[optim]``.

* ``adamw``: ``torch.optim.AdamW``; weight decay on matrices (``ndim >= 2``: linear weights
  and embeddings), none on norms' gains and biases (nanoGPT's rule).
* ``muon``: ``torch.optim.Muon`` for the hidden matrices (2-D weights inside the layers) and
  AdamW for everything else (embedding, head, norms, biases), as the Muon authors recommend.
  Muon's learning rate is scaled to match AdamW's update RMS (``adjust_lr_fn=
  "match_rms_adamw"``) so one ``lr`` serves both.

Each optimizer gets a schedule from ``torch.optim.lr_scheduler``: linear warmup (``LinearLR``)
then ``CosineAnnealingLR`` down to ``min_lr``, or warmup-stable-decay (``ConstantLR`` then a
linear decay over the last ``decay`` fraction of the steps), or constant; joined with
``SequentialLR``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from blockdsl.initialisation import lr_multipliers
from blockdsl.model import LanguageModel
from blockdsl.train.settings import OptimSettings


def param_groups(model: nn.Module, settings: OptimSettings) -> dict[str, list[dict[str, Any]]]:
    """The parameters of each optimizer: ``{"adamw": [decay group, no-decay group, ...]}``,
    plus ``"muon"`` (the hidden matrices) for ``name = "muon"``. A model whose ``[init]``
    scheme scales learning rates per parameter (``mup``: ``blockdsl.initialisation.
    lr_multipliers``) gets one more group per multiplier, with ``lr`` set to ``settings.lr``
    times it (the schedule scales every group alike); the multiplier-1 groups come first."""
    language_model = next((m for m in model.modules() if isinstance(m, LanguageModel)), None)
    hidden: set[int] = set()
    if settings.name == "muon" and language_model is not None:
        for layer in language_model.layers:
            hidden.update(id(p) for p in layer.parameters() if p.ndim == 2)
    multipliers = lr_multipliers(language_model, hidden) if language_model is not None else {}
    split: dict[tuple[str, bool, float], list[nn.Parameter]] = {}
    for param in model.parameters():  # distinct parameters: tied weights appear once
        if not param.requires_grad:
            continue
        kind = "muon" if id(param) in hidden else "adamw"
        decays = kind == "muon" or param.ndim >= 2
        split.setdefault((kind, decays, multipliers.get(id(param), 1.0)), [])
        split[(kind, decays, multipliers.get(id(param), 1.0))].append(param)
    groups: dict[str, list[dict[str, Any]]] = {
        "adamw": [
            {"params": split.pop(("adamw", True, 1.0), []), "weight_decay": settings.weight_decay},
            {"params": split.pop(("adamw", False, 1.0), []), "weight_decay": 0.0},
        ]
    }
    if ("muon", True, 1.0) in split:
        groups["muon"] = [
            {"params": split.pop(("muon", True, 1.0)), "weight_decay": settings.weight_decay}
        ]
    for (kind, decays, multiplier), params in split.items():
        groups.setdefault(kind, []).append(
            {
                "params": params,
                "weight_decay": settings.weight_decay if decays else 0.0,
                "lr": settings.lr * multiplier,
            }
        )
    return groups


def build_optimizers(
    model: nn.Module, settings: OptimSettings, fused: bool | None = None
) -> list[torch.optim.Optimizer]:
    """AdamW (and Muon) over ``model``'s parameters."""
    groups = param_groups(model, settings)
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(groups["adamw"], lr=settings.lr, betas=settings.betas, fused=fused)
    ]
    if "muon" in groups:
        optimizers.append(
            torch.optim.Muon(
                groups["muon"],
                lr=settings.lr,
                momentum=settings.momentum,
                adjust_lr_fn="match_rms_adamw",
            )
        )
    return optimizers


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: OptimSettings, total_steps: int | None
) -> lr_scheduler.LRScheduler:
    """Warmup, then cosine / warmup-stable-decay / constant, over ``total_steps``."""
    warmup = min(settings.warmup, total_steps) if total_steps else settings.warmup
    floor = settings.min_lr / settings.lr if settings.lr > 0 else 0.0
    phases: list[lr_scheduler.LRScheduler] = []
    if warmup:
        phases.append(
            lr_scheduler.LinearLR(
                optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup
            )
        )
    after = max(1, (total_steps or 0) - warmup)
    if settings.schedule == "cosine":
        phases.append(
            lr_scheduler.CosineAnnealingLR(optimizer, T_max=after, eta_min=settings.min_lr)
        )
    elif settings.schedule == "wsd":
        decay = max(1, round(after * settings.decay))
        phases.append(lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=after - decay))
        phases.append(
            lr_scheduler.LinearLR(
                optimizer, start_factor=1.0, end_factor=max(floor, 0.0), total_iters=decay
            )
        )
    else:
        phases.append(lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0))
    if len(phases) == 1:
        return phases[0]
    milestones, at = [], 0
    for phase in phases[:-1]:
        at += phase.total_iters if hasattr(phase, "total_iters") else 0
        milestones.append(at)
    return lr_scheduler.SequentialLR(optimizer, phases, milestones=milestones)


def optimizer_state_bytes(model: nn.Module, settings: OptimSettings) -> int:
    """Bytes of optimizer state once every parameter has some (for the memory estimate):
    AdamW keeps two moments per element, Muon one momentum buffer."""
    groups = param_groups(model, settings)
    total = 0
    for group in groups["adamw"]:
        total += sum(2 * p.numel() * 4 + 4 for p in group["params"])
    for group in groups.get("muon", []):
        total += sum(p.numel() * 4 for p in group["params"])
    return total


__all__ = ["build_optimizers", "build_scheduler", "optimizer_state_bytes", "param_groups"]
