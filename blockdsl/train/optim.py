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

from blockdsl.train.settings import OptimSettings


def param_groups(model: nn.Module, settings: OptimSettings) -> dict[str, list[dict[str, Any]]]:
    """The parameters of each optimizer: ``{"adamw": [decay group, no-decay group]}``, plus
    ``"muon"`` (the hidden matrices) for ``name = "muon"``."""
    hidden: set[int] = set()
    if settings.name == "muon":
        for layer in getattr(model, "layers", []):
            hidden.update(id(p) for p in layer.parameters() if p.ndim == 2)
    muon, decay, no_decay = [], [], []
    for param in model.parameters():  # distinct parameters: tied weights appear once
        if not param.requires_grad:
            continue
        if id(param) in hidden:
            muon.append(param)
        elif param.ndim >= 2:
            decay.append(param)
        else:
            no_decay.append(param)
    groups = {
        "adamw": [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    }
    if muon:
        groups["muon"] = [{"params": muon, "weight_decay": settings.weight_decay}]
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
