"""Regularised evolution (Real et al., "Regularized Evolution for Image Classifier
Architecture Search", 2019) over block strings, and the Pareto front of several objectives.

The population is the ``population`` most recently *finished* candidates of the study
(ageing: the oldest leave, however good, so the search keeps moving); a parent is the winner of
a tournament among ``tournament`` of them drawn at random, and its child is one mutation of it.
The tournament is won on the task metric (ties: fewer parameters, then smaller decoding state),
as the point of the search is a better block; parameters and state enter through the front.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: name -> whether larger is better
OBJECTIVES: dict[str, bool] = {"metric": True, "params": False, "state": False}


@dataclass(frozen=True)
class Member:
    """A finished candidate: its canonical block string and its scores."""

    block: str
    metric: float
    params: int
    state: float
    number: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def score(self, objective: str) -> float:
        return float(getattr(self, objective))


def fitness_key(member: Member) -> tuple[float, float, float]:
    """Larger is fitter: metric first, then fewer parameters, then less state."""
    return (member.metric, -member.params, -member.state)


def tournament(population: Sequence[Member], size: int, rng: random.Random) -> Member:
    """The fittest of ``size`` members drawn at random without replacement."""
    if not population:
        raise ValueError("tournament over an empty population")
    drawn = rng.sample(list(population), min(size, len(population)))
    return max(drawn, key=fitness_key)


def aged(members: Sequence[Member], population: int) -> list[Member]:
    """The ``population`` youngest members (highest trial numbers): ageing."""
    return sorted(members, key=lambda m: m.number)[-population:]


def dominates(a: Member, b: Member, objectives: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` on every objective and better on one."""
    better = False
    for name in objectives:
        x, y = a.score(name), b.score(name)
        if not OBJECTIVES[name]:
            x, y = -x, -y
        if x < y:
            return False
        if x > y:
            better = True
    return better


def pareto_front(members: Sequence[Member], objectives: Sequence[str]) -> list[Member]:
    """The members no other member dominates, best metric first."""
    front = [m for m in members if not any(dominates(o, m, objectives) for o in members)]
    return sorted(front, key=fitness_key, reverse=True)


__all__ = ["OBJECTIVES", "Member", "aged", "dominates", "fitness_key", "pareto_front", "tournament"]
