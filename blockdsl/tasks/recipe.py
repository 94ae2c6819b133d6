"""A task's default training recipe: the batch, learning rate, schedule and steps under which
the architectures the task is meant to separate are separated (docs/tasks.md, "Recipes").

blockdsl's generic defaults (``[train] batch_size = 8``, ``[optim] lr = 1e-3``, cosine decay,
no warmup) suit language modelling; on MQAR they leave attention on the plateau where it knows
which values are in the sequence but not which belongs to the query, and a newcomer would read
that as attention failing at recall. ``train`` and ``compare`` therefore fill a task's recipe in
wherever the run's config leaves a key unset: a key the user sets (in the TOML, ``--set`` or a
keyword) always wins, and the recipe's ``steps`` is only the budget when none is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: the ``[train]`` keys that are a run's budget: a recipe's steps apply only when none is set
BUDGET_KEYS = ("steps", "tokens", "time")


@dataclass(frozen=True)
class Recipe:
    """The ``[train]`` and ``[optim]`` values a task trains with unless told otherwise."""

    batch_size: int  # sequences per optimizer step
    lr: float  # peak learning rate (compare sweeps lr/3, lr and 3·lr around it)
    steps: int  # optimizer steps: the budget when the run gives none
    schedule: str = "cosine"  # cosine | wsd | constant
    warmup: int = 0  # linear warmup steps
    weight_decay: float = 0.1  # AdamW's, on matrices

    def tables(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The recipe as ``([train], [optim])`` entries."""
        train = {"batch_size": self.batch_size, "steps": self.steps}
        optim = {
            "lr": self.lr,
            "schedule": self.schedule,
            "warmup": self.warmup,
            "weight_decay": self.weight_decay,
        }
        return train, optim

    def describe(self) -> str:
        """One line: ``batch 64, lr 0.003 (cosine, 100 warmup steps, weight decay 0.1),
        1,500 steps``."""
        warmup = f", {self.warmup} warmup steps" if self.warmup else ""
        return (
            f"batch {self.batch_size}, lr {self.lr:g} ({self.schedule}{warmup}, weight decay "
            f"{self.weight_decay:g}), {self.steps:,} steps"
        )


def unset_entries(
    recipe: Recipe, train: dict[str, Any], optim: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The recipe's entries that ``train`` and ``optim`` (a config's raw tables) leave unset:
    ``steps`` only when no budget key is set, ``batch_size`` only when ``global_batch_size`` is
    unset too (a global batch the user chose must stay a multiple of the micro-batch)."""
    recipe_train, recipe_optim = recipe.tables()
    fill_train = {k: v for k, v in recipe_train.items() if k not in train}
    if any(k in train for k in BUDGET_KEYS):
        fill_train.pop("steps", None)
    if "global_batch_size" in train:
        fill_train.pop("batch_size", None)
    fill_optim = {k: v for k, v in recipe_optim.items() if k not in optim}
    return fill_train, fill_optim


def with_recipe(config: Any, recipe: Recipe | None) -> Any:
    """``config`` (a ``ModelConfig``) with ``recipe``'s entries where its ``[train]`` and
    ``[optim]`` tables set nothing; ``config`` itself when there is no recipe or nothing to
    fill."""
    if recipe is None:
        return config
    fill_train, fill_optim = unset_entries(recipe, config.train, config.optim)
    if not fill_train and not fill_optim:
        return config
    from blockdsl.config import load_config

    return load_config(
        config, train={**config.train, **fill_train}, optim={**config.optim, **fill_optim}
    )


__all__ = ["BUDGET_KEYS", "Recipe", "unset_entries", "with_recipe"]
