"""Rotary position embedding frequencies, plain and scaled for longer contexts.

The scalings follow transformers' ``modeling_rope_utils`` arithmetic exactly, so that an
imported model's rotary angles are the reference's:

* ``linear``: every frequency divided by ``factor`` (position interpolation);
* ``dynamic``: NTK-aware base ``theta * (factor * L / original - (factor - 1)) ** (n / (n - 2))``
  for a call whose furthest position is ``L - 1 >= original`` (unscaled below);
* ``llama3``: low frequencies divided by ``factor``, high ones kept, a smooth ramp between
  (``low_freq_factor``, ``high_freq_factor`` over the ``original`` context);
* ``yarn``: interpolation and extrapolation blended by a linear ramp over the dims whose
  rotations within ``original`` lie between ``beta_slow`` and ``beta_fast``; cos/sin multiplied
  by an attention factor (default ``0.1 ln(factor) + 1``);
* ``longrope``: per-frequency divisors, ``short_factor`` for calls within ``original``
  positions and ``long_factor`` beyond; cos/sin multiplied by an attention factor (default
  ``sqrt(1 + ln(factor) / ln(original))``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from blockdsl.components._util import Problem

RopeScaling = Literal["none", "linear", "dynamic", "llama3", "yarn", "longrope"]

#: Scalings whose frequencies depend on how far the positions of a call reach.
PER_CALL = ("dynamic", "longrope")


def check_rope_scaling(
    head_dim: int,
    rotary_size: int,
    rope_scaling: str = "none",
    rope_factor: float = 1.0,
    rope_original_context: int | None = None,
    rope_low_freq: float = 1.0,
    rope_high_freq: float = 4.0,
    rope_short_factor: Sequence[float] | None = None,
    rope_long_factor: Sequence[float] | None = None,
    **_,
) -> Problem:
    """What is wrong with a rotary scaling's arguments, or None."""
    if rope_scaling == "none":
        return None
    if rope_factor <= 0:
        return f"rope_factor must be positive, got {rope_factor}"
    needs_original = rope_scaling in ("llama3", "yarn", "longrope", "dynamic")
    if needs_original and (rope_original_context is None or rope_original_context <= 0):
        return (
            f"rope_scaling={rope_scaling} needs rope_original_context (the context it was "
            "trained with)",
            "set rope_original_context to a positive number of positions",
        )
    if rope_scaling == "llama3" and rope_high_freq <= rope_low_freq:
        return f"rope_high_freq ({rope_high_freq}) must exceed rope_low_freq ({rope_low_freq})"
    if rope_scaling == "dynamic" and rotary_size <= 2:
        return f"rope_scaling=dynamic needs more than 2 rotary dims, got {rotary_size}"
    if rope_scaling == "longrope":
        pairs = (rotary_size + 1) // 2
        for name, factors in (
            ("rope_short_factor", rope_short_factor),
            ("rope_long_factor", rope_long_factor),
        ):
            if factors is None or len(factors) != pairs:
                got = "none" if factors is None else f"{len(factors)} values"
                return (
                    f"rope_scaling=longrope needs {name} with one value per rotary pair "
                    f"({pairs}), got {got}"
                )
    return None


def default_attention_factor(kind: str, factor: float, original: int | None) -> float:
    """The cos/sin multiplier a scaling applies when none is given (1 for most)."""
    if kind == "yarn":
        return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0
    if kind == "longrope":
        if factor <= 1.0 or original is None:
            return 1.0
        return math.sqrt(1 + math.log(factor) / math.log(original))
    return 1.0


def _exponents(n: int, device=None) -> torch.Tensor:
    """``2i / n`` for the ``ceil(n / 2)`` rotary pairs (float32)."""
    return torch.arange(0, n, 2, dtype=torch.int64, device=device).float() / n


def inv_freq(
    n: int,
    theta: float,
    kind: str = "none",
    *,
    factor: float = 1.0,
    original: int | None = None,
    low_freq: float = 1.0,
    high_freq: float = 4.0,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
    factors: Sequence[float] | None = None,
    device=None,
) -> torch.Tensor:
    """The ``ceil(n / 2)`` inverse frequencies of a rotary of size ``n`` (float32). For
    ``dynamic`` these are the unscaled ones (see ``dynamic_inv_freq``); for ``longrope``
    ``factors`` is the short or the long list."""
    base = 1.0 / theta ** _exponents(n, device)
    if kind in ("none", "dynamic"):
        return base
    if kind == "linear":
        return base / factor
    if kind == "llama3":
        low_wavelen, high_wavelen = original / low_freq, original / high_freq
        wavelen = 2 * math.pi / base
        scaled = torch.where(wavelen > low_wavelen, base / factor, base)
        smooth = (original / wavelen - low_freq) / (high_freq - low_freq)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    if kind == "yarn":

        def correction_dim(rotations: float) -> float:
            return (n * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, n - 1)
        if low == high:
            high += 0.001  # no singular ramp
        ramp = (torch.arange(n // 2, dtype=torch.float32, device=device) - low) / (high - low)
        extrapolation = 1 - ramp.clamp(0, 1)
        pos_freqs = theta ** (torch.arange(0, n, 2, device=device).float() / n)
        return (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (
            1.0 / pos_freqs
        ) * extrapolation
    if kind == "longrope":
        ext = torch.tensor(list(factors), dtype=torch.float32, device=device)
        return 1.0 / (ext * theta ** _exponents(n, device))
    raise ValueError(f"unknown rope scaling '{kind}'")


def dynamic_inv_freq(
    n: int, theta: float, factor: float, original: int, length: torch.Tensor
) -> torch.Tensor:
    """Dynamic NTK frequencies for a call reaching ``length`` positions (a 0-d tensor, so
    that the computation stays in the graph): unscaled up to ``original``."""
    length = torch.clamp(length.float(), min=float(original))
    base = theta * ((factor * length / original) - (factor - 1)) ** (n / (n - 2))
    return 1.0 / base ** _exponents(n, length.device)
