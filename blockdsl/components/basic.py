"""Small building blocks: dropout, linear maps, learned scales and gates, token shift and
causal depthwise convolution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from blockdsl.components._util import (
    ACTIVATIONS,
    Problem,
    accepts_any,
    init_linear_,
    raise_problem,
    same_size,
    softcap,
)
from blockdsl.registry import register


def _check_dropout(p: float = 0.1, **_) -> Problem:
    return None if 0.0 <= p < 1.0 else f"dropout probability must be in [0, 1), got {p}"


_DROPOUT_HELP: dict[str, str] = {"p": "probability of zeroing each feature"}


@register(
    "Dropout",
    out_features=same_size,
    params=lambda **_: 0,
    flops=lambda **_: 0,
    check=_check_dropout,
    arg_help=_DROPOUT_HELP,
)
class Dropout(nn.Dropout):
    """Dropout: zero each feature with probability ``p`` in training (scaled by 1/(1-p))."""

    def __init__(self, d_model: int, p: float = 0.1) -> None:
        raise_problem(_check_dropout(p))
        super().__init__(p)


# --------------------------------------------------------------------------- Linear


def _linear_out(d_in: int, out: int | None, **_) -> int:
    return d_in if out is None else out


def _linear_params(d_in: int, out: int | None, bias: bool, **_) -> int:
    n = _linear_out(d_in, out)
    return n * d_in + (n if bias else 0)


def _linear_flops(d_in: int, seq: int, out: int | None, bias: bool, **_) -> int:
    return seq * _linear_out(d_in, out) * (2 * d_in + int(bias))


def _check_linear(d_in: int, out: int | None = None, **_) -> Problem:
    n = d_in if out is None else out
    return None if n > 0 else f"Linear out must be positive, got {n}"


_LINEAR_HELP: dict[str, str] = {
    "out": "output features; none: = d_model",
    "bias": "learn a bias",
}


@register(
    "Linear",
    out_features=_linear_out,
    params=_linear_params,
    flops=_linear_flops,
    check=_check_linear,
    arg_help=_LINEAR_HELP,
    init_roles={"weight": "hidden", "bias": "hidden"},
)
class Linear(nn.Linear):
    """Linear map of the features to ``out`` features (default: unchanged), ``x @ weight.T + bias``.

    Parameters: ``weight [out, D]``, ``bias [out]`` (with ``bias``); ``nn.Linear``'s init.
    """

    def __init__(self, d_model: int, out: int | None = None, bias: bool = False) -> None:
        raise_problem(_check_linear(d_model, out))
        n = d_model if out is None else out
        super().__init__(d_model, n, bias=bias)


# --------------------------------------------------------------------------- Scale


def _scale_params(d_in: int, per_channel: bool, by: float | None = None, **_) -> int:
    if by is not None:
        return 0
    return d_in if per_channel else 1


_SCALE_HELP: dict[str, str] = {
    "init": "initial value (LayerScale: small, e.g. 1e-5; ReZero: 0)",
    "per_channel": "one scale per feature (LayerScale), else one scalar (ReZero)",
    "by": "a fixed multiplier instead of a learned one (no parameter); none: learned",
}


@register(
    "Scale",
    out_features=same_size,
    params=_scale_params,
    flops=lambda d_in, seq, **_: d_in * seq,
    check=accepts_any,
    arg_help=_SCALE_HELP,
)
class Scale(nn.Module):
    """Learned scale ``x * weight``: per-channel LayerScale (CaiT), or a scalar (ReZero: init=0);
    or, with ``by``, a fixed multiplier ``x * by`` that is no parameter (Granite's residual
    multiplier: ``Norm->Attn->Scale(by=0.22)->+``).

    Parameter: ``weight`` of shape ``[D]`` (``per_channel``) or ``[1]``, filled with ``init``;
    none with ``by``.
    """

    def __init__(
        self, d_model: int, init: float = 1e-5, per_channel: bool = True, by: float | None = None
    ) -> None:
        super().__init__()
        self.init, self.by = init, by
        self.weight = (
            nn.Parameter(torch.empty(d_model if per_channel else 1)) if by is None else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.constant_(self.weight, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return x * (self.by if self.weight is None else self.weight)

    def extra_repr(self) -> str:
        return f"by={self.by}" if self.by is not None else f"init={self.init}"


# --------------------------------------------------------------------------- Residual


def _residual_params(d_in: int, per_channel: bool, **_) -> int:
    return d_in if per_channel else 1


_RESIDUAL_HELP: dict[str, str] = {
    "mix": "lerp: the stream moves a learned fraction of the way to the sublayer's output "
    "(x + alpha * (h - x)); scale: the sublayer's output is added scaled (x + alpha * h)",
    "init": "initial alpha (lerp 1: the stream becomes h; scale 1: a plain '+')",
    "per_channel": "one alpha per feature, else one scalar",
}


@register(
    "Residual",
    out_features=same_size,
    params=_residual_params,
    flops=lambda d_in, seq, mix, **_: (2 if mix == "lerp" else 1) * d_in * seq,
    check=accepts_any,
    arg_help=_RESIDUAL_HELP,
    residual=True,
)
class Residual(nn.Module):
    """A residual step with a learned ratio, written ``+(args)``: ``Norm->Attn->+(lerp)``.

    ``forward(tap, h)`` gets the stream at the last ``+`` (``tap``) and the sublayer's output
    ``h`` and returns the *update* the chain adds to ``tap``: ``alpha * (h - tap)`` (``lerp``,
    GPT Alpha's residual mixing) or ``alpha * h`` (``scale``). Returning the update, not the new
    stream, keeps parallel branches exact: their updates are summed into the input. Parameter:
    ``alpha`` of shape ``[D]`` (``per_channel``) or ``[1]``, filled with ``init``.
    """

    def __init__(
        self,
        d_model: int,
        mix: Literal["lerp", "scale"] = "lerp",
        init: float = 0.5,
        per_channel: bool = True,
    ) -> None:
        super().__init__()
        self.mix, self.init = mix, init
        self.alpha = nn.Parameter(torch.empty(d_model if per_channel else 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.alpha, self.init)

    def forward(self, tap: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # (B, T, D) x2
        return self.alpha * (h - tap) if self.mix == "lerp" else self.alpha * h

    def extra_repr(self) -> str:
        return f"mix={self.mix}, init={self.init}"


# --------------------------------------------------------------------------- Gate


def _gate_params(d_in: int, per_token: bool, bias: bool, **_) -> int:
    return d_in * d_in + (d_in if bias else 0) if per_token else d_in


def _gate_flops(d_in: int, seq: int, per_token: bool, bias: bool, **_) -> int:
    return seq * d_in * ((2 * d_in + int(bias) + 1) if per_token else 1)


_GATE_HELP: dict[str, str] = {
    "per_token": "gate computed from x per token (`sigmoid(proj(x))`), else a static gate",
    "bias": "learn the gate's bias (per_token only)",
    "init": "initial gate logit: the gate starts at sigmoid(init)",
}


@register(
    "Gate",
    out_features=same_size,
    params=_gate_params,
    flops=_gate_flops,
    check=accepts_any,
    arg_help=_GATE_HELP,
)
class Gate(nn.Module):
    """Learned sigmoid gate on the branch output: ``x * sigmoid(proj(x))`` (or a static gate).

    Design: the gate only sees the value it gates (it sits in a chain, e.g.
    ``Norm->Attn->Gate->+``). With ``per_token`` (default) the gate is computed from ``x``
    itself, per token and channel, ``x * sigmoid(x @ proj.weight.T + proj.bias)``; ``proj`` is
    initialised to zero weight and bias ``init`` so the block starts as a constant scale
    ``sigmoid(init)`` (0.5 by default) and learns what to let through. With
    ``per_token=false`` it is a static per-channel gate ``x * sigmoid(weight)``, ``weight``
    filled with ``init``. Parameters: ``proj`` (``nn.Linear(D, D)``) or ``weight [D]``.
    """

    def __init__(
        self, d_model: int, per_token: bool = True, bias: bool = True, init: float = 0.0
    ) -> None:
        super().__init__()
        self.init = init
        if per_token:
            self.proj = nn.Linear(d_model, d_model, bias=bias)
            self.weight = None
        else:
            self.proj = None
            self.weight = nn.Parameter(torch.empty(d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)
            if self.proj.bias is not None:
                nn.init.constant_(self.proj.bias, self.init)
        else:
            nn.init.constant_(self.weight, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        logits = self.proj(x) if self.proj is not None else self.weight
        return x * torch.sigmoid(logits)


# --------------------------------------------------------------------------- Shift


_SHIFT_HELP: dict[str, str] = {
    "init": "initial mix (0: the token itself, 1: the previous token)",
    "heads": "in a per-head slot: its heads (set by the slot), each with its own mix",
}


@register(
    "Shift",
    out_features=same_size,
    mixes_positions=True,
    check=accepts_any,
    params=lambda d_in, heads=None, **_: d_in * (heads or 1),
    flops=lambda d_in, seq, heads=None, **_: 3 * d_in * seq * (heads or 1),
    state_size=lambda d_in, heads=None, **_: d_in * (heads or 1),
    arg_help=_SHIFT_HELP,
    decodes=True,
    per_head=True,
)
class Shift(nn.Module):
    """RWKV token shift: ``x + mix * (x_prev - x)``, a learned per-channel lerp to token t-1.

    ``x_prev`` is the stream shifted one step right (zeros at t = 0), so the output at t
    depends on tokens t and t-1 only (causal). Parameter: ``mix [D]``, filled with ``init``
    (0 = identity, 1 = the previous token). Decoding state: ``x`` (B, 1, D), the last input.
    """

    def __init__(self, d_model: int, init: float = 0.5, heads: int | None = None) -> None:
        super().__init__()
        self.init = init
        self.mix = nn.Parameter(torch.empty(d_model * (heads or 1)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.mix, self.init)

    def init_state(self, batch_size: int, max_len: int) -> dict[str, torch.Tensor]:
        """The last input seen (zeros before the first token, like the full path's padding)."""
        return {"x": self.mix.new_zeros(batch_size, 1, self.mix.shape[0])}

    def forward(
        self, x: torch.Tensor, state: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D); in a per-head slot (B, T, H, D)
        shape = x.shape
        x = x.flatten(2)  # per-head inputs: every head's features are channels
        if state is None:
            x_prev = F.pad(x, (0, 0, 1, -1))  # (B, T, D): x_prev[:, t] = x[:, t-1], zero at t=0
        else:
            x_prev = torch.cat((state["x"].to(x.dtype), x[:, :-1]), dim=1)
            state["x"].copy_(x[:, -1:])
        return (x + self.mix * (x_prev - x)).view(shape)


# --------------------------------------------------------------------------- Conv


def _conv_params(d_in: int, kernel: int, bias: bool, heads: int | None = None, **_) -> int:
    channels = d_in * (heads or 1)
    return channels * kernel + (channels if bias else 0)


def _conv_flops(d_in: int, seq: int, kernel: int, bias: bool, heads: int | None = None, **_) -> int:
    return seq * d_in * (heads or 1) * (2 * kernel + int(bias))


def _check_conv(kernel: int = 4, **_) -> Problem:
    return None if kernel > 0 else f"Conv kernel must be positive, got {kernel}"


_CONV_HELP: dict[str, str] = {
    "kernel": "kernel size (tokens t-kernel+1 ... t)",
    "bias": "learn a bias",
    "heads": "in a per-head slot: its heads (set by the slot), each with its own kernels",
}


@register(
    "Conv",
    out_features=same_size,
    mixes_positions=True,
    params=_conv_params,
    flops=_conv_flops,
    check=_check_conv,
    state_size=lambda d_in, kernel, heads=None, **_: d_in * (heads or 1) * (kernel - 1),
    arg_help=_CONV_HELP,
    decodes=True,
    per_head=True,
)
class Conv(nn.Module):
    """Causal depthwise 1-d convolution over time (Mamba/H3 style): kernel ``kernel``, left padding.

    Output at t mixes inputs t-kernel+1 ... t of the same channel. Parameters: ``weight
    [D, 1, kernel]`` (``F.conv1d`` depthwise layout, ``nn.Conv1d``'s init) and ``bias [D]``.
    Decoding state: ``x`` (B, kernel-1, D), the last ``kernel-1`` inputs. In an attention's
    per-head slot (``Attn[v=Conv(kernel=3)]``) the input is ``(B, T, heads, D)`` and every
    head's features are channels of their own (``weight [heads * D, 1, kernel]``), as Primer's
    depthwise convolutions of the q, k and v projections.
    """

    def __init__(
        self, d_model: int, kernel: int = 4, bias: bool = True, heads: int | None = None
    ) -> None:
        super().__init__()
        raise_problem(_check_conv(kernel))
        self.kernel = kernel
        channels = d_model * (heads or 1)
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_linear_(self.weight, self.kernel)
        if self.bias is not None:
            init_linear_(self.bias, self.kernel)

    def init_state(self, batch_size: int, max_len: int) -> dict[str, torch.Tensor]:
        """The last ``kernel-1`` inputs (zeros before the first token: the full path's padding)."""
        return {"x": self.weight.new_zeros(batch_size, self.kernel - 1, self.weight.shape[0])}

    def forward(
        self, x: torch.Tensor, state: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D); in a per-head slot (B, T, H, D)
        if x.dim() > 3:  # per-head inputs: every head's features are channels
            return self.forward(x.flatten(2), state).view(x.shape)
        if state is None:
            x = rearrange(x, "b t d -> b d t")
            x = F.pad(x, (self.kernel - 1, 0))  # (B, D, kernel-1 + T)
        else:
            seen = torch.cat((state["x"].to(x.dtype), x), dim=1)  # (B, kernel-1 + T, D)
            if self.kernel > 1:
                state["x"].copy_(seen[:, -(self.kernel - 1) :])
            if x.shape[1] == 1:  # a decode step: one dot product per channel beats conv1d's setup
                y = (seen * self.weight[:, 0].T).sum(1, keepdim=True)  # (B, 1, D)
                return y if self.bias is None else y + self.bias
            x = rearrange(seen, "b t d -> b d t")
        y = F.conv1d(x, self.weight, self.bias, groups=x.shape[1])  # (B, D, T)
        return rearrange(y, "b d t -> b t d")

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


# --------------------------------------------------------------------------- Bias


_BIAS_HELP: dict[str, str] = {"init": "initial value"}


@register(
    "Bias",
    out_features=same_size,
    params=lambda d_in, **_: d_in,
    flops=lambda d_in, seq, **_: d_in * seq,
    check=accepts_any,
    arg_help=_BIAS_HELP,
)
class Bias(nn.Module):
    """Learned additive bias ``x + bias``, e.g. the output bias of a projection whose other
    biases are off (RecurrentGemma's attention: ``Attn->Bias``). Parameter: ``bias [D]``,
    filled with ``init``."""

    def __init__(self, d_model: int, init: float = 0.0) -> None:
        super().__init__()
        self.init = init
        self.bias = nn.Parameter(torch.empty(d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.bias, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return x + self.bias


# --------------------------------------------------------------------------- Act, Clip, Softcap
Pointwise = Literal["sigmoid", "tanh", "relu", "gelu", "gelu_tanh", "silu", "relu2"]

_POINTWISE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    **ACTIVATIONS,
}


@register(
    "Act",
    out_features=same_size,
    params=lambda **_: 0,
    flops=lambda d_in, seq, **_: d_in * seq,
    check=accepts_any,
    arg_help={"fn": "sigmoid, tanh, relu, gelu, gelu_tanh, silu or relu2 (squared ReLU)"},
)
class Act(nn.Module):
    """An elementwise function of the features: ``Act(sigmoid)`` makes a gate of the block
    before it (``Attn[gate=Linear->Act(sigmoid)]``). No parameters."""

    def __init__(self, d_model: int, fn: Pointwise = "sigmoid") -> None:
        super().__init__()
        self.fn = fn
        self.apply_fn = _POINTWISE[fn]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        return self.apply_fn(x)

    def extra_repr(self) -> str:
        return self.fn


def _check_positive(name: str) -> Callable[..., Problem]:
    def check(**args: Any) -> Problem:
        value = args.get(name)
        return None if value is not None and value > 0 else f"{name} must be positive, got {value}"

    return check


@register(
    "Clip",
    out_features=same_size,
    params=lambda **_: 0,
    flops=lambda d_in, seq, **_: d_in * seq,
    check=_check_positive("limit"),
    arg_help={"limit": "clamp every feature to [-limit, limit]"},
)
class Clip(nn.Module):
    """Clamp the features to ``[-limit, limit]`` (OLMo's and MPT's ``clip_qkv``:
    ``Attn[q=Clip(limit=8), k=Clip(limit=8), v=Clip(limit=8)]``). No parameters."""

    def __init__(self, d_model: int, limit: float = 8.0) -> None:
        super().__init__()
        raise_problem(_check_positive("limit")(limit=limit))
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        return x.clamp(-self.limit, self.limit)

    def extra_repr(self) -> str:
        return f"limit={self.limit}"


@register(
    "Softcap",
    out_features=same_size,
    params=lambda **_: 0,
    flops=lambda d_in, seq, **_: 3 * d_in * seq,
    check=_check_positive("cap"),
    arg_help={"cap": "the largest magnitude: `cap * tanh(x / cap)`"},
)
class Softcap(nn.Module):
    """Soft-capping ``cap * tanh(x / cap)`` (Gemma 2): in an attention's scores slot,
    ``Attn[scores=Softcap(cap=50)]``; no parameters."""

    def __init__(self, d_model: int, cap: float = 30.0) -> None:
        super().__init__()
        raise_problem(_check_positive("cap")(cap=cap))
        self.cap = cap

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        return softcap(x, self.cap)

    def extra_repr(self) -> str:
        return f"cap={self.cap}"


# --------------------------------------------------------------------------- Sink
def _check_sink(heads: int = 1, **_) -> Problem:
    return None if heads >= 1 else f"Sink heads must be positive, got {heads}"


@register(
    "Sink",
    out_features=lambda d_in, **_: d_in + 1,
    params=lambda heads=1, **_: heads,
    flops=lambda **_: 0,
    check=_check_sink,
    arg_help={
        "heads": "one sink logit per head (set by the scores slot)",
        "init": "initial sink logit",
    },
)
class Sink(nn.Module):
    """A learned sink logit per head (gpt-oss, StreamingLLM's attention sink): appends one
    column to the attention's scores, ``(B, heads, T, S) -> (B, heads, T, S + 1)``, so that it
    takes part in the softmax's denominator; the attention drops it after the softmax (it has
    no value). ``Attn[scores=Sink]``. Parameter: ``sinks [heads]`` filled with ``init``."""

    def __init__(self, d_model: int, heads: int = 1, init: float = 0.0) -> None:
        super().__init__()
        raise_problem(_check_sink(heads))
        self.init = init
        self.sinks = nn.Parameter(torch.empty(heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.sinks, self.init)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:  # (B, H, T, S) -> (B, H, T, S+1)
        sink = self.sinks.to(scores.dtype).view(-1, 1, 1).expand(*scores.shape[:-1], 1)
        return torch.cat((scores, sink), dim=-1)
