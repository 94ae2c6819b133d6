"""Convolutional token mixers: Hyena (implicit long filters), Zoology's BaseConv and LFM2's gated
short convolution.

Long convolutions run as FFT convolutions, ``O(T log T)``: the filter of position lag ``j`` is
``h[:, j]`` for ``j < context`` (the filter is generated for the model's whole context; a
sequence uses its first ``T`` taps). Decoding keeps the inputs seen so far (``context`` of
them, allocated up front) and computes each new output as a direct dot product with the
filter, ``O(T)`` per token; short convolutions keep their last ``kernel - 1`` inputs.

Shapes in comments: ``B`` batch, ``T`` tokens, ``D`` model width, ``L`` filter length.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from blockdsl.components._util import Problem, flops_from_steps, raise_problem, same_size
from blockdsl.components.linear_attention import causal_conv
from blockdsl.components.ssm import _tracing
from blockdsl.errors import ShapeError
from blockdsl.registry import register

Steps = list[tuple[str, tuple[str, ...], tuple[int, ...], int]]


#: Up to this length the long convolution is computed directly (``O(T^2)``, exactly causal).
DIRECT_MAX_LEN = 64


def fft_conv(u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Causal convolution ``y[t] = sum_{j <= t} h[j] u[t - j]`` per channel of ``u`` (B, D, T)
    with ``h`` (D, T): through zero-padded real FFTs of size ``2T`` (no wrap-around), or, up to
    ``DIRECT_MAX_LEN`` tokens, as a direct depthwise convolution.

    An FFT spreads its rounding error over every position: later inputs reach earlier outputs
    at ~1e-7 of the sequence's largest values, which deep stacks of gated convolutions (whose
    values grow polynomially along the sequence) amplify into a visible leak; short sequences,
    where that dominates and the direct sum is cheap, are computed with no path from the
    future at all."""
    T = u.shape[-1]
    if T <= DIRECT_MAX_LEN:
        weight = h.flip(-1)[:, None, :].to(u.dtype)  # (D, 1, T): correlation with h reversed
        return F.conv1d(F.pad(u, (T - 1, 0)), weight, groups=u.shape[1])
    n = 2 * T
    y = torch.fft.irfft(torch.fft.rfft(u.float(), n=n) * torch.fft.rfft(h.float(), n=n), n=n)
    return y[..., :T].to(u.dtype)


def _fft_flops(T: int, channels: int) -> int:
    """Three real FFTs of size ``2T`` (input, filter, inverse), ``~2.5 N log2 N`` each, and
    the complex product."""
    n = 2 * T
    return channels * (3 * int(2.5 * n * math.log2(n)) + 3 * n)


class LongConvState:
    """Decoding for a long convolution: the inputs seen so far in ``hist`` (B, D, context) and
    their count per row in ``seen`` (B,), both parts of the component's state dict."""

    @staticmethod
    def init(
        like: torch.Tensor, batch: int, channels: int, max_len: int
    ) -> dict[str, torch.Tensor]:
        return {
            "hist": like.new_zeros(batch, channels, max_len),
            "seen": torch.zeros(batch, dtype=torch.long, device=like.device),
        }

    @staticmethod
    def conv(
        u: torch.Tensor,
        filter_taps: Callable[[int], torch.Tensor],
        context: int,
        state: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """The causal convolution at the new inputs ``u`` (B, D, T_new), which follow the
        ``seen`` inputs of each row; ``filter_taps(n)`` gives the filter's first ``n`` taps
        (D, n), defined up to ``context``. Updates ``state`` in place."""
        hist, seen = state["hist"], state["seen"]
        B, D, T = u.shape
        where = seen[:, None] + torch.arange(T, device=u.device)  # (B, T) positions of u
        end = int(where.max()) + 1
        if end > min(hist.shape[-1], context):
            raise ShapeError(
                f"long convolution state holds {min(hist.shape[-1], context)} positions, "
                f"got position {end - 1}",
                hint="the filter and the decoding state cover at most the model's context",
            )
        hist.scatter_(2, where[:, None, :].expand(B, D, T), u.to(hist.dtype))
        seen.add_(T)
        h = filter_taps(end)  # (D, end)
        if T == 1:  # one dot product per row with the reversed filter
            lags = where - torch.arange(end, device=u.device)  # (B, end): p - s
            taps = h[:, lags.clamp(min=0)].permute(1, 0, 2)  # (B, D, end): h[p - s]
            taps = taps * (lags >= 0)[:, None, :]
            return (hist[..., :end] * taps).sum(-1, keepdim=True).to(u.dtype)  # (B, D, 1)
        y = fft_conv(hist[..., :end], h)  # (B, D, end)
        return y.gather(2, where[:, None, :].expand(B, D, T)).to(u.dtype)


# --------------------------------------------------------------------------- implicit filter


class ImplicitFilter(nn.Module):
    """Hyena's implicit long filter (safari/Zoology ``HyenaFilter``): ``h = MLP(z_t) *
    exp(-t |delta|)``.

    ``z_t = [t, cos(f_b w_t), -sin(f_b w_t)]`` (``t`` in [0, 1] over ``context`` positions,
    ``w_t = 2 pi i / context``, ``(emb_dim - 1) / 2`` bands ``f``), the MLP is ``Linear(emb_dim,
    order)`` then ``inner`` ``Linear(order, order)``, each followed by ``sin(freq * .)`` with one
    shared learned ``freq [1, order]`` (init 1), and a last ``Linear(order, D, bias=False)``;
    the exponential modulation decays channel ``d`` at rate ``|delta_d|``, spaced between
    ``log(0.01) / 1.5`` and ``log(0.01) / 0.3``. ``z``, ``t`` and ``delta`` are fixed
    non-persistent buffers (Zoology does not train them either)."""

    def __init__(
        self, d_model: int, context: int, order: int = 64, emb_dim: int = 3, inner: int = 2
    ) -> None:
        super().__init__()
        self.d_model, self.context, self.emb_dim = d_model, context, emb_dim
        layers = [nn.Linear(emb_dim, order)] + [nn.Linear(order, order) for _ in range(inner)]
        self.mlp = nn.ModuleList(layers)
        self.freq = nn.Parameter(torch.empty(1, order))
        self.out = nn.Linear(order, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.freq)
        device = self.freq.device
        L, bands = self.context, (self.emb_dim - 1) // 2
        t = torch.linspace(0, 1, L, device=device)[:, None]  # (L, 1)
        w = 2 * math.pi * torch.arange(L, device=device, dtype=torch.float32)[:, None] / L
        f = torch.linspace(1e-4, bands - 1, bands, device=device)[None]  # (1, bands)
        z = torch.cat((t, torch.cos(f * w), -torch.sin(f * w)), dim=-1)  # (L, emb_dim)
        self.register_buffer("z", z, persistent=False)
        self.register_buffer("t", t, persistent=False)
        target = math.log(1e-2)
        deltas = torch.linspace(target / 1.5, target / 0.3, self.d_model, device=device)
        self.register_buffer("deltas", deltas, persistent=False)

    def taps(self, length: int) -> torch.Tensor:
        """``self(length)``, from a cache of the whole filter when no gradient is wanted
        (decoding asks for the filter at every step; it changes only with the weights, whose
        storage and version counters key the cache)."""
        if torch.is_grad_enabled():
            return self(length)
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        key += (self.z.data_ptr(), self.z.dtype)
        if getattr(self, "_cache_key", None) != key:
            self._cache, self._cache_key = self(self.context), key
        return self._cache[:, :length]

    def forward(self, length: int) -> torch.Tensor:
        """The filter's first ``length`` taps, (D, length)."""
        h = self.z[:length]
        for layer in self.mlp:
            h = torch.sin(self.freq * layer(h))
        h = self.out(h) * torch.exp(-self.t[:length] * self.deltas.abs())  # (length, D)
        return h.transpose(0, 1)


def _filter_params(d_in: int, order: int, emb_dim: int = 3, inner: int = 2) -> int:
    return (emb_dim + 1) * order + inner * (order + 1) * order + order + order * d_in


def _filter_flops(d_in: int, seq: int, order: int, emb_dim: int = 3, inner: int = 2) -> int:
    per_tap = 2 * emb_dim * order + inner * 2 * order * order + 2 * order * d_in + 2 * d_in
    return seq * per_tap


def _check_context(seq: int, context: int) -> None:
    if seq > context:
        raise ShapeError(
            f"sequence of {seq} tokens is longer than the long filter ({context} taps)",
            hint="the filter covers the model's context; raise context",
        )


# --------------------------------------------------------------------------- Hyena


def _check_hyena(d_in: int, filter_order: int = 64, kernel: int = 3, context: int = 2048, **_):
    if filter_order <= 0:
        return f"filter_order must be positive, got {filter_order}"
    if kernel <= 0:
        return f"kernel must be positive, got {kernel}"
    if context <= 0:
        return f"context must be positive, got {context}"
    return None


def _hyena_params(d_in: int, filter_order: int, kernel: int, **_) -> int:
    in_proj = d_in * 3 * d_in + 3 * d_in
    short = 3 * d_in * (kernel + 1)
    out_proj = d_in * d_in + d_in
    return in_proj + short + _filter_params(d_in, filter_order) + d_in + out_proj  # + skip bias


def _hyena_steps(d_in: int, seq: int, batch: int, filter_order: int, kernel: int, **_) -> Steps:
    n = batch * seq
    btd = ("B", "T", "D")
    return [
        ("in_proj", ("B", "T", "3D"), (batch, seq, 3 * d_in), 2 * n * d_in * 3 * d_in),
        ("short conv", ("B", "T", "3D"), (batch, seq, 3 * d_in), 2 * n * 3 * d_in * kernel),
        ("filter", ("D", "T"), (d_in, seq), _filter_flops(d_in, seq, filter_order)),
        ("v*x1", btd, (batch, seq, d_in), n * d_in),
        ("long conv", btd, (batch, seq, d_in), batch * _fft_flops(seq, d_in) + 2 * n * d_in),
        ("*x2", btd, (batch, seq, d_in), n * d_in),
        ("out_proj", btd, (batch, seq, d_in), 2 * n * d_in * d_in),
    ]


def _hyena_state_size(d_in: int, kernel: int = 3, context: int = 2048, **_) -> int:
    return 3 * d_in * (kernel - 1) + d_in * context + 1  # window, inputs, count


_HYENA_HELP: dict[str, str] = {
    "filter_order": "width of the MLP that generates the long filter",
    "kernel": "width of the short causal conv on the projections",
    "context": "maximum sequence length: the long filter's length (set by the model)",
}


@register(
    "Hyena",
    out_features=same_size,
    mixes_positions=True,
    params=_hyena_params,
    flops=flops_from_steps(_hyena_steps),
    check=_check_hyena,
    state_size=_hyena_state_size,
    arg_help=_HYENA_HELP,
    shape_steps=_hyena_steps,
    decodes=True,
)
class Hyena(nn.Module):
    """Hyena operator of order 2 (Zoology's ``Hyena``): gated implicit long convolution.

    ``x1, x2, v = short_conv(in_proj(x))`` (a causal depthwise conv of width ``kernel`` over
    the three projections); ``y = (h * (v x1) + bias (v x1)) x2`` where ``h * .`` is the causal
    long convolution with the implicit filter (``filter_order`` wide MLP, see
    ``ImplicitFilter``), computed by FFT in ``O(T log T)``, and ``bias`` a learned per-channel
    skip; then ``out_proj``. Sequences may be at most ``context`` tokens long (the filter's
    length). Parameters: ``in_proj``, ``short_filter`` (``nn.Conv1d`` weight ``[3D, 1, kernel]``
    and bias), ``filter.*``, ``bias [D]``, ``out_proj`` (linears with biases).
    """

    def __init__(
        self, d_model: int, filter_order: int = 64, kernel: int = 3, context: int = 2048
    ) -> None:
        super().__init__()
        raise_problem(_check_hyena(d_model, filter_order, kernel, context))
        self.d_model, self.kernel, self.context = d_model, kernel, context
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.short_filter = nn.Conv1d(
            3 * d_model, 3 * d_model, kernel, groups=3 * d_model, padding=kernel - 1
        )  # the padding only matters to nn.Conv1d's own forward (as safari/Zoology's)
        self.filter = ImplicitFilter(d_model, context, order=filter_order)
        self.bias = nn.Parameter(torch.empty(d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.bias)  # safari/Zoology: randn

    def init_state(self, batch_size: int, max_len: int) -> dict[str, torch.Tensor]:
        """The short-conv window and every input of the long convolution (``max_len`` of them)."""
        w = self.out_proj.weight
        return {
            "conv": w.new_zeros(batch_size, 3 * self.d_model, self.kernel - 1),
            **LongConvState.init(w, batch_size, self.d_model, min(max_len, self.context)),
        }

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        T = x.shape[1]
        u = rearrange(self.in_proj(x), "b t c -> b c t")  # (B, 3D, T)
        window = None if state is None else state["conv"]
        u = causal_conv(u, self.short_filter.weight, self.short_filter.bias, window)
        x1, x2, v = u.split(self.d_model, dim=1)  # (B, D, T) each
        v = v * x1
        if state is None:
            _check_context(T, self.context)
            y = fft_conv(v, self.filter(T))
        else:
            y = LongConvState.conv(v, self.filter.taps, self.context, state)
        y = (y + v * self.bias[:, None]) * x2
        return self.out_proj(rearrange(y, "b d t -> b t d"))

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, context={self.context}"


# --------------------------------------------------------------------------- BaseConv


def _check_baseconv(
    d_in: int, kernel: int | None = None, filter_order: int = 64, context: int = 2048, **_
) -> Problem:
    if kernel is not None and kernel <= 0:
        return f"kernel must be positive (or none for a long convolution), got {kernel}"
    if filter_order <= 0:
        return f"filter_order must be positive, got {filter_order}"
    if context <= 0:
        return f"context must be positive, got {context}"
    return None


def _baseconv_params(d_in: int, kernel: int | None, filter_order: int, **_) -> int:
    conv = _filter_params(d_in, filter_order) if kernel is None else d_in * (kernel + 1)
    return d_in * d_in + d_in + conv


def _baseconv_steps(
    d_in: int, seq: int, batch: int, kernel: int | None, filter_order: int, **_
) -> Steps:
    n, btd = batch * seq, ("B", "T", "D")
    if kernel is None:
        conv = [
            ("filter", ("D", "T"), (d_in, seq), _filter_flops(d_in, seq, filter_order)),
            ("long conv", btd, (batch, seq, d_in), batch * _fft_flops(seq, d_in) + n * d_in),
        ]
    else:
        conv = [("short conv", btd, (batch, seq, d_in), 2 * n * d_in * kernel)]
    return [
        *conv,
        ("projection", btd, (batch, seq, d_in), 2 * n * d_in * d_in),
        ("conv*proj+x", btd, (batch, seq, d_in), 2 * n * d_in),
    ]


def _baseconv_state_size(d_in: int, kernel: int | None = None, context: int = 2048, **_) -> int:
    return d_in * context + 1 if kernel is None else d_in * (kernel - 1)


_BASE_CONV_HELP: dict[str, str] = {
    "kernel": "short conv width; none: implicit long convolution over the context",
    "filter_order": "width of the MLP that generates the long filter (kernel=none)",
    "act": "SiLU on both the convolution and the projection",
    "context": "maximum sequence length: the long filter's length (set by the model)",
}


@register(
    "BaseConv",
    out_features=same_size,
    mixes_positions=True,
    params=_baseconv_params,
    flops=flops_from_steps(_baseconv_steps),
    check=_check_baseconv,
    state_size=_baseconv_state_size,
    arg_help=_BASE_CONV_HELP,
    shape_steps=_baseconv_steps,
    decodes=True,
)
class BaseConv(nn.Module):
    """Zoology's BaseConv: a convolution gated by a linear projection, ``conv(x) * proj(x) + x``.

    With ``kernel=none`` (default) the convolution is the implicit long one of Hyena, with its
    identity skip (``h * x + x``; Zoology's ``ImplicitLongConvolution``, FFT, ``O(T log T)``,
    at most ``context`` tokens); with an integer ``kernel`` a causal depthwise short conv of
    that width (with bias). ``act`` applies SiLU to both factors. The trailing ``+ x`` is
    Zoology's: the mixer carries its own residual. Parameters: ``projection`` (``nn.Linear``
    with bias), ``conv.*`` (``filter.*`` for the long conv, else ``conv.weight [D, 1, kernel]``
    and ``conv.bias``).
    """

    def __init__(
        self,
        d_model: int,
        kernel: int | None = None,
        filter_order: int = 64,
        act: bool = False,
        context: int = 2048,
    ) -> None:
        super().__init__()
        raise_problem(_check_baseconv(d_model, kernel, filter_order, context))
        self.d_model, self.kernel, self.act, self.context = d_model, kernel, act, context
        self.projection = nn.Linear(d_model, d_model)
        if kernel is None:
            self.filter = ImplicitFilter(d_model, context, order=filter_order)
            self.conv = None
        else:
            self.filter = None
            self.conv = nn.Conv1d(d_model, d_model, kernel, groups=d_model, padding=kernel - 1)

    def init_state(self, batch_size: int, max_len: int) -> dict[str, torch.Tensor]:
        w = self.projection.weight
        if self.conv is not None:
            return {"conv": w.new_zeros(batch_size, self.d_model, self.kernel - 1)}
        return LongConvState.init(w, batch_size, self.d_model, min(max_len, self.context))

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        u = rearrange(x, "b t d -> b d t")
        if self.conv is not None:
            window = None if state is None else state["conv"]
            conv = causal_conv(u, self.conv.weight, self.conv.bias, window)
        elif state is None:
            _check_context(u.shape[-1], self.context)
            conv = fft_conv(u, self.filter(u.shape[-1])) + u
        else:
            conv = LongConvState.conv(u, self.filter.taps, self.context, state) + u
        conv = rearrange(conv, "b d t -> b t d")
        proj = self.projection(x)
        if self.act:
            conv, proj = F.silu(conv), F.silu(proj)
        return conv * proj + x

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, act={self.act}, context={self.context}"


# --------------------------------------------------------------------------- ShortConv (LFM2)


def _check_shortconv(d_in: int, kernel: int = 3, **_) -> Problem:
    return None if kernel > 0 else f"kernel must be positive, got {kernel}"


def _shortconv_params(d_in: int, kernel: int, bias: bool, **_) -> int:
    return 4 * d_in * d_in + d_in * kernel + bias * (3 * d_in + d_in + d_in)


def _shortconv_steps(d_in: int, seq: int, batch: int, kernel: int, **_) -> Steps:
    n, btd = batch * seq, ("B", "T", "D")
    return [
        ("in_proj", ("B", "T", "3D"), (batch, seq, 3 * d_in), 2 * n * d_in * 3 * d_in),
        ("b*x", btd, (batch, seq, d_in), n * d_in),
        ("conv", btd, (batch, seq, d_in), 2 * n * d_in * kernel),
        ("c*conv", btd, (batch, seq, d_in), n * d_in),
        ("out_proj", btd, (batch, seq, d_in), 2 * n * d_in * d_in),
    ]


def _shift_conv(u: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Depthwise causal convolution in the (B, T, D) layout: ``y_t = Σ_k taps[:, k] ⊙
    u_{t-K+1+k} (+ bias)``, one multiply-add pass over contiguous rows per tap."""
    K, T = taps.shape[-1], u.shape[1]
    y = u * taps[:, K - 1] if bias is None else torch.addcmul(bias, u, taps[:, K - 1])
    for k in range(max(0, K - 1 - T + 1), K - 1):
        s = K - 1 - k  # how far back tap k reads
        y[:, s:].addcmul_(u[:, : T - s], taps[:, k])
    return y


class _GatedShortConv(torch.autograd.Function):
    """LFM2's gated short convolution between the projections, ``c ⊙ conv(b ⊙ h)`` with
    ``b, c, h`` the thirds of ``bch`` (B, T, 3D), computed in the projections' (B, T, ·)
    layout with its gradient written into one (B, T, 3D) tensor.

    The straightforward form (``Lfm2ShortConv``'s) transposes to (B, 3D, T) for ``conv1d``:
    its products then run on strided views, its output needs a contiguous copy for
    ``out_proj``, and the backward concatenates the thirds' gradients. Here a short kernel
    is ``K`` shifted multiply-adds over contiguous rows and nothing is copied."""

    @staticmethod
    def forward(ctx, bch: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None):
        b, c, h = bch.chunk(3, dim=-1)
        u = b * h
        conv = _shift_conv(u, taps, bias)
        ctx.save_for_backward(bch, taps, u, conv)
        ctx.has_bias = bias is not None
        return c * conv

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        bch, taps, u, conv = ctx.saved_tensors
        b, c, h = bch.chunk(3, dim=-1)
        K, T = taps.shape[-1], u.shape[1]
        gbch = torch.empty_like(bch)
        gb, gc, gh = gbch.chunk(3, dim=-1)
        torch.mul(gy, conv, out=gc)
        gconv = gy * c
        gu = gconv * taps[:, K - 1]
        gtaps = torch.empty_like(taps)
        gtaps[:, K - 1] = (gconv * u).sum((0, 1))
        for k in range(K - 1):
            s = K - 1 - k
            if s >= T:
                gtaps[:, k] = 0
                continue
            gu[:, : T - s].addcmul_(gconv[:, s:], taps[:, k])
            gtaps[:, k] = (gconv[:, s:] * u[:, : T - s]).sum((0, 1))
        torch.mul(gu, h, out=gb)
        torch.mul(gu, b, out=gh)
        gbias = gconv.sum((0, 1)) if ctx.has_bias else None
        return gbch, gtaps, gbias


#: Kernels up to this width run as shifted multiply-adds (``_GatedShortConv``); wider ones
#: through ``conv1d``, whose cost does not grow with the width the same way.
SHIFT_CONV_MAX_KERNEL = 8


_SHORT_CONV_HELP: dict[str, str] = {
    "kernel": "conv width (LFM2's conv_L_cache)",
    "bias": "biases on the projections and the conv (LFM2's conv_bias)",
}


@register(
    "ShortConv",
    out_features=same_size,
    mixes_positions=True,
    params=_shortconv_params,
    flops=flops_from_steps(_shortconv_steps),
    check=_check_shortconv,
    state_size=lambda d_in, kernel=3, **_: d_in * (kernel - 1),
    arg_help=_SHORT_CONV_HELP,
    shape_steps=_shortconv_steps,
    decodes=True,
)
class ShortConv(nn.Module):
    """LFM2's gated short convolution: ``out_proj(c * conv(b * x))`` with ``b, c, x`` the
    three thirds of ``in_proj(x)`` and ``conv`` causal and depthwise of width ``kernel``.

    Parameters as HF ``Lfm2ShortConv`` (its weights load by name): ``in_proj [3D, D]``,
    ``conv.weight [D, 1, kernel]``, ``out_proj [D, D]``, and their biases with ``bias``.
    """

    def __init__(self, d_model: int, kernel: int = 3, bias: bool = False) -> None:
        super().__init__()
        raise_problem(_check_shortconv(d_model, kernel))
        self.d_model, self.kernel = d_model, kernel
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.conv = nn.Conv1d(
            d_model, d_model, kernel, groups=d_model, bias=bias, padding=kernel - 1
        )
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def init_state(self, batch_size: int, max_len: int) -> dict[str, torch.Tensor]:
        return {"conv": self.out_proj.weight.new_zeros(batch_size, self.d_model, self.kernel - 1)}

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if state is None and self.kernel <= SHIFT_CONV_MAX_KERNEL and not _tracing():
            taps = self.conv.weight[:, 0]  # (D, K)
            return self.out_proj(_GatedShortConv.apply(self.in_proj(x), taps, self.conv.bias))
        b, c, h = rearrange(self.in_proj(x), "b t c -> b c t").chunk(3, dim=1)  # (B, D, T)
        window = None if state is None else state["conv"]
        y = c * causal_conv(b * h, self.conv.weight, self.conv.bias, window)
        return self.out_proj(rearrange(y, "b d t -> b t d").contiguous())

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"
