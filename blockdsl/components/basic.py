"""Small building blocks: dropout, linear maps, learned scales and gates, token shift and
causal depthwise convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from blockdsl.components._util import Problem, accepts_any, init_linear_, raise_problem, same_size
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


_SHIFT_HELP: dict[str, str] = {"init": "initial mix (0: the token itself, 1: the previous token)"}


@register(
    "Shift",
    out_features=same_size,
    mixes_positions=True,
    check=accepts_any,
    params=lambda d_in, **_: d_in,
    flops=lambda d_in, seq, **_: 3 * d_in * seq,
    state_size=lambda d_in, **_: d_in,
    arg_help=_SHIFT_HELP,
    decodes=True,
)
class Shift(nn.Module):
    """RWKV token shift: ``x + mix * (x_prev - x)``, a learned per-channel lerp to token t-1.

    ``x_prev`` is the stream shifted one step right (zeros at t = 0), so the output at t
    depends on tokens t and t-1 only (causal). Parameter: ``mix [D]``, filled with ``init``
    (0 = identity, 1 = the previous token). Decoding state: ``x`` (B, 1, D), the last input.
    """

    def __init__(self, d_model: int, init: float = 0.5) -> None:
        super().__init__()
        self.init = init
        self.mix = nn.Parameter(torch.empty(d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.mix, self.init)

    def init_state(self, batch_size: int, max_len: int) -> dict[str, torch.Tensor]:
        """The last input seen (zeros before the first token, like the full path's padding)."""
        return {"x": self.mix.new_zeros(batch_size, 1, self.mix.shape[0])}

    def forward(
        self, x: torch.Tensor, state: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if state is None:
            x_prev = F.pad(x, (0, 0, 1, -1))  # (B, T, D): x_prev[:, t] = x[:, t-1], zero at t=0
        else:
            x_prev = torch.cat((state["x"].to(x.dtype), x[:, :-1]), dim=1)
            state["x"].copy_(x[:, -1:])
        return x + self.mix * (x_prev - x)


# --------------------------------------------------------------------------- Conv


def _conv_params(d_in: int, kernel: int, bias: bool, **_) -> int:
    return d_in * kernel + (d_in if bias else 0)


def _conv_flops(d_in: int, seq: int, kernel: int, bias: bool, **_) -> int:
    return seq * d_in * (2 * kernel + int(bias))


def _check_conv(kernel: int = 4, **_) -> Problem:
    return None if kernel > 0 else f"Conv kernel must be positive, got {kernel}"


_CONV_HELP: dict[str, str] = {
    "kernel": "kernel size (tokens t-kernel+1 ... t)",
    "bias": "learn a bias",
}


@register(
    "Conv",
    out_features=same_size,
    mixes_positions=True,
    params=_conv_params,
    flops=_conv_flops,
    check=_check_conv,
    state_size=lambda d_in, kernel, **_: d_in * (kernel - 1),
    arg_help=_CONV_HELP,
    decodes=True,
)
class Conv(nn.Module):
    """Causal depthwise 1-d convolution over time (Mamba/H3 style): kernel ``kernel``, left padding.

    Output at t mixes inputs t-kernel+1 ... t of the same channel. Parameters: ``weight
    [D, 1, kernel]`` (``F.conv1d`` depthwise layout, ``nn.Conv1d``'s init) and ``bias [D]``.
    Decoding state: ``x`` (B, kernel-1, D), the last ``kernel-1`` inputs.
    """

    def __init__(self, d_model: int, kernel: int = 4, bias: bool = True) -> None:
        super().__init__()
        raise_problem(_check_conv(kernel))
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(d_model, 1, kernel))
        self.bias = nn.Parameter(torch.empty(d_model)) if bias else None
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
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if state is None:
            x = rearrange(x, "b t d -> b d t")
            x = F.pad(x, (self.kernel - 1, 0))  # (B, D, kernel-1 + T)
        else:
            seen = torch.cat((state["x"].to(x.dtype), x), dim=1)  # (B, kernel-1 + T, D)
            if self.kernel > 1:
                state["x"].copy_(seen[:, -(self.kernel - 1) :])
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
