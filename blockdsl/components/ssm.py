"""State-space and recurrent mixers: Mamba (selective SSM), Mamba2 (SSD) and Griffin's RG-LRU
recurrent block.

Each has two forms that compute the same function:

* the **training form** over a whole sequence: Mamba's selective scan runs as one fused
  multiply-add per step inside a no-grad kernel with a hand-written backward (the reverse
  scan), so autograd never sees the time loop; Mamba2 uses the chunked "state space duality"
  form (matmuls inside chunks, a recurrence over chunk states, ``O(T * chunk)``); RG-LRU uses
  the same linear scan as Mamba on its ``(B, T, width)`` recurrence;
* the **step form** with an explicit state for decoding (the decoding-state protocol, see
  ``docs/generation.md``): ``forward(x, state=init_state(batch, max_len))`` carries the
  short-convolution window and the recurrent state from call to call. A call with several
  tokens (a prefill) runs the training form from the state; a one-token call runs the
  recurrence once.

Parameter names and layouts follow transformers' ``MambaMixer``, ``Mamba2Mixer`` and
``RecurrentGemmaRecurrentBlock`` so that importing their weights is a renaming
(``blockdsl.hf``). Shapes in comments: ``B`` batch, ``T`` time, ``D`` model width, ``E``
inner width, ``N`` state size, ``H`` heads, ``P`` head size, ``G`` B/C groups, ``K`` conv
kernel, ``W`` recurrence width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from blockdsl.components._util import (
    ACTIVATIONS,
    Problem,
    activation,
    init_linear_,
    raise_problem,
    same_size,
)
from blockdsl.components.attention import _call_slot
from blockdsl.printer import format_value
from blockdsl.registry import Slot, head_slot, register, shorthand_slots

State = dict[str, torch.Tensor]

# --------------------------------------------------------------------------- shared kernels


@torch.no_grad()
def _scan_forward(a: torch.Tensor, u: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + u_t`` along dim 1, from ``h_{-1} = h0``; no autograd.

    One fused ``addcmul`` per step writing straight into the output: the per-step work is a
    single pass over the state, so the loop costs ``T`` kernel launches and nothing else."""
    h = torch.empty_like(u)
    prev = h0
    for t in range(u.shape[1]):
        torch.addcmul(u[:, t], a[:, t], prev, out=h[:, t])
        prev = h[:, t]
    return h


class _LinearScan(torch.autograd.Function):
    """The diagonal linear recurrence ``h_t = a_t * h_{t-1} + u_t`` with its exact gradient.

    Backward is the same recurrence run backwards: with ``G_t = dL/dh_t`` accumulated through
    the future, ``G_t = g_t + a_{t+1} * G_{t+1}``; then ``dL/du_t = G_t``,
    ``dL/da_t = G_t * h_{t-1}`` and ``dL/dh0 = a_0 * G_0``. Only ``a``, ``h`` and ``h0`` are
    saved (no per-step autograd graph)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, u: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        h = _scan_forward(a, u, h0)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, h, h0 = ctx.saved_tensors
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)
        G = _scan_forward(a_next.flip(1), g.contiguous().flip(1), torch.zeros_like(h0)).flip(1)
        h_prev = torch.cat([h0[:, None], h[:, :-1]], dim=1)
        return G * h_prev, G, a[:, 0] * G[:, 0]


def _parallel_scan(a: torch.Tensor, u: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """The same recurrence as ``_scan_forward`` in ``ceil(log2 T)`` whole-tensor steps
    (Hillis-Steele): used under ``torch.compile``/``torch.export``, where a Python loop over
    time would be unrolled into ``T`` graph nodes. Plain autograd differentiates it."""
    u = torch.cat([a[:, :1] * h0[:, None] + u[:, :1], u[:, 1:]], dim=1)
    k, T = 1, u.shape[1]
    while k < T:
        u = torch.cat([u[:, :k], u[:, k:] + a[:, k:] * u[:, :-k]], dim=1)
        a = torch.cat([a[:, :k], a[:, k:] * a[:, :-k]], dim=1)
        k *= 2
    return u


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def linear_scan(a: torch.Tensor, u: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """All states of ``h_t = a_t * h_{t-1} + u_t`` (elementwise; time is dim 1), ``h_{-1} = h0``
    (zeros when None). ``a`` and ``u`` are ``(B, T, *S)``, ``h0`` is ``(B, *S)``; the result is
    ``(B, T, *S)``, accumulated in float32 at least (float64 stays float64)."""
    dtype = torch.promote_types(u.dtype, torch.float32)
    a, u = a.to(dtype), u.to(dtype)
    if u.shape[1] == 0:
        return u
    h0 = torch.zeros_like(u[:, 0]) if h0 is None else h0.to(dtype)
    if _tracing():
        return _parallel_scan(a, u, h0)
    return _LinearScan.apply(a.contiguous(), u.contiguous(), h0.contiguous())


#: Steps of the selective scan processed together: their ``(B, L, E, N)`` tensors stay in cache.
SCAN_CHUNK = 32


def _reverse_scan(a: torch.Tensor, g: torch.Tensor, carry: torch.Tensor) -> torch.Tensor:
    """The adjoint of ``_scan_forward``: ``G_t = g_t + a_{t+1} G_{t+1}`` backwards along dim 1,
    with ``a_L G_L = carry`` (the gradient arriving from after the last step); no autograd."""
    G = torch.empty_like(g)
    n = g.shape[1]
    torch.add(g[:, n - 1], carry, out=G[:, n - 1])
    for t in range(n - 2, -1, -1):
        torch.addcmul(g[:, t], a[:, t + 1], G[:, t + 1], out=G[:, t])
    return G


@torch.no_grad()
def _selective_chunk(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, start: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of the selective recurrence from ``start`` (B, E, N): the decays ``a`` (B, L,
    E, N) and the states ``h`` (B, L+1, E, N) *including* the start state at index 0."""
    a = torch.exp(dt[..., None] * A)  # (B, L, E, N)
    u = (dt * x)[..., None] * B[:, :, None, :]  # (B, L, E, N)
    h = torch.empty(u.shape[0], u.shape[1] + 1, *u.shape[2:], dtype=u.dtype, device=u.device)
    h[:, 0] = start
    for t in range(u.shape[1]):
        torch.addcmul(u[:, t], a[:, t], h[:, t], out=h[:, t + 1])
    return a, h


class _SelectiveScan(torch.autograd.Function):
    """Mamba's selective scan ``h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t``, ``y_t = h_t C_t``,
    chunk by chunk, never holding more than one chunk of ``(B, L, E, N)`` states.

    Forward keeps only the state entering each chunk; backward recomputes a chunk's states
    from it and runs the reverse recurrence ``G_t = C_t dy_t + a_{t+1} G_{t+1}`` (``G =
    dL/dh``) through the chunk, then turns ``G`` into the gradients of x, Δ, A, B, C and
    ``h0`` with a few einsums: the recomputation strategy of the CUDA kernel, in PyTorch."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, chunk):
        T = x.shape[1]
        y = torch.empty_like(x)
        starts, h = [], h0
        for c0 in range(0, T, chunk):
            c = slice(c0, min(c0 + chunk, T))
            starts.append(h)
            _, hs = _selective_chunk(x[:, c], dt[:, c], A, B[:, c], h)
            y[:, c] = torch.einsum("blen,bln->ble", hs[:, 1:], C[:, c])
            h = hs[:, -1]
        ctx.chunk = chunk
        ctx.save_for_backward(x, dt, A, B, C, torch.stack(starts, dim=1))
        return y, h.clone()

    @staticmethod
    def backward(ctx, gy, gh):
        x, dt, A, B, C, starts = ctx.saved_tensors
        T, chunk = x.shape[1], ctx.chunk
        dx, ddt, dB, dC = (torch.empty_like(t) for t in (x, dt, B, C))
        dA = torch.zeros_like(A)
        carry = torch.zeros_like(starts[:, 0]) if gh is None else gh  # dL/dh after the chunk
        if gy is None:
            gy = torch.zeros_like(x)
        for i in reversed(range(starts.shape[1])):
            c = slice(i * chunk, min((i + 1) * chunk, T))
            xc, dtc, Bc, Cc, gyc = x[:, c], dt[:, c], B[:, c], C[:, c], gy[:, c]
            a, hs = _selective_chunk(xc, dtc, A, Bc, starts[:, i])
            g = gyc[..., None] * Cc[:, :, None, :]  # dL/dh_t through y_t: (B, L, E, N)
            G = _reverse_scan(a, g, carry)  # dL/dh_t through everything
            carry = a[:, 0] * G[:, 0]
            dC[:, c] = torch.einsum("blen,ble->bln", hs[:, 1:], gyc)
            dlog_a = G * hs[:, :-1] * a  # dL/d(Δ A)
            GB = torch.einsum("blen,bln->ble", G, Bc)
            ddt[:, c] = torch.einsum("blen,en->ble", dlog_a, A) + GB * xc
            dA += torch.einsum("blen,ble->en", dlog_a, dtc)
            dx[:, c] = GB * dtc
            dB[:, c] = torch.einsum("blen,ble->bln", G, dtc * xc)
        return dx, ddt, dA, dB, dC, carry, None


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor | None = None,
    chunk: int = SCAN_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba's selective scan: ``x``, ``dt`` (B, T, E), ``A`` (E, N), ``B``, ``C`` (B, T, N),
    ``h0`` (B, E, N) (zeros when None) -> ``y`` (B, T, E) and the final state (B, E, N), in
    float32 at least. Memory ``O(T E + T/chunk E N)``: the ``(B, T, E, N)`` states are never
    stored whole."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, dt, A, B, C = (t.to(dtype).contiguous() for t in (x, dt, A, B, C))
    if h0 is None:
        h0 = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    if x.shape[1] == 0:
        return torch.zeros_like(x), h0.to(dtype)
    if _tracing():  # whole-sequence tensors, a log-depth scan: a small static graph
        a = torch.exp(dt[..., None] * A)
        h = _parallel_scan(a, (dt * x)[..., None] * B[:, :, None, :], h0.to(dtype))
        return torch.einsum("blen,bln->ble", h, C), h[:, -1]
    return _SelectiveScan.apply(x, dt, A, B, C, h0.to(dtype).contiguous(), chunk)


def causal_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, window: torch.Tensor | None
) -> torch.Tensor:
    """Depthwise causal convolution of ``x`` (B, T, C) with ``weight`` (C, 1, K).

    ``window`` (B, K-1, C) holds the ``K-1`` inputs before ``x`` (zeros at the start of a
    sequence); when given it is updated in place to the last ``K-1`` inputs seen."""
    K = weight.shape[-1]
    if window is None:
        padded = F.pad(x, (0, 0, K - 1, 0))  # (B, K-1+T, C)
    else:
        padded = torch.cat([window.to(x.dtype), x], dim=1)
        if K > 1:
            window.copy_(padded[:, padded.shape[1] - (K - 1) :])
    y = F.conv1d(rearrange(padded, "b t c -> b c t"), weight, bias, groups=x.shape[-1])
    return rearrange(y, "b c t -> b t c")


def _check_state(state: State, keys: tuple[str, ...], owner: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(
            f"{owner}: the state has no {', '.join(missing)}; build it with init_state()"
        )


def _init_dt_bias(bias: torch.Tensor, dt_min: float, dt_max: float, floor: float) -> None:
    """Mamba's time-step init: ``dt ~ exp(U(log dt_min, log dt_max))`` clamped below at
    ``floor``, stored through the inverse softplus so that ``softplus(bias) = dt``."""
    with torch.no_grad():
        dt = torch.exp(
            torch.rand_like(bias, dtype=torch.float32) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=floor)
        bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def _check_dt(dt_min: float = 0.001, dt_max: float = 0.1, **_) -> Problem:
    if not 0.0 < dt_min <= dt_max:
        return f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}"
    return None


# --------------------------------------------------------------------------- Mamba


class _RMSNorm(nn.Module):
    """``weight * x / rms(x)`` in float32 (Jamba's inner norms, ``JambaRMSNorm``)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


@dataclass(frozen=True)
class MambaSizes:
    """Mamba's derived sizes, computed once from its arguments by ``mamba_sizes``: read by
    the constructor and by every hook (params, FLOPs, state size, shape steps, check)."""

    d_in: int
    inner: int  # E, the channels of the scan
    dt_rank: int  # R, the rank of the time-step projection
    state: int  # N per channel
    conv: int  # K, the causal conv's kernel

    @property
    def x_proj_out(self) -> int:
        """Δ's rank, then B and C: ``R + 2N``."""
        return self.dt_rank + 2 * self.state


def mamba_sizes(
    d_in: int,
    state: int = 16,
    expand: float = 2.0,
    inner: int | None = None,
    dt_rank: int | None = None,
    conv: int = 4,
    **_,
) -> MambaSizes:
    """``MambaSizes`` for these arguments at input size ``d_in`` (``E = int(expand * d_in)``
    unless ``inner`` is set, ``R = ceil(d_in / 16)`` unless ``dt_rank`` is)."""
    E = int(expand * d_in) if inner is None else inner
    R = math.ceil(d_in / 16) if dt_rank is None else dt_rank
    return MambaSizes(d_in, E, R, state, conv)


def _mamba_params(d_in: int, bias: bool, conv_bias: bool, inner_norms: bool = False, **args) -> int:
    s = mamba_sizes(d_in, **args)
    E, R, N = s.inner, s.dt_rank, s.state
    in_out = 3 * d_in * E + bias * (2 * E + d_in)  # in_proj (D -> 2E), out_proj (E -> D)
    norms = inner_norms * s.x_proj_out
    return in_out + E * s.conv + conv_bias * E + E * s.x_proj_out + R * E + E + E * N + E + norms


def _mamba_flops(d_in: int, seq: int, **args) -> int:
    s = mamba_sizes(d_in, **args)
    E, R, N = s.inner, s.dt_rank, s.state
    proj = 2 * d_in * 2 * E + 2 * E * s.x_proj_out + 2 * R * E + 2 * E * d_in
    # dt*A, dt*x*B (2), h = a*h + u (2), C.h (2) per state element; D skip and gate per channel
    scan = 7 * E * N + 3 * E
    return seq * (proj + 2 * E * s.conv + scan)


def _mamba_state_size(d_in: int, **args) -> int:
    s = mamba_sizes(d_in, **args)
    return s.inner * s.state + s.inner * (s.conv - 1)


def _check_mamba(d_in: int, **args) -> Problem:
    sizes = mamba_sizes(d_in, **args)
    E, R, state, conv = sizes.inner, sizes.dt_rank, sizes.state, sizes.conv
    if E <= 0:
        return f"Mamba inner width must be positive, got {E}", "set inner, or expand > 0"
    if state <= 0:
        return f"Mamba state size must be positive, got {state}"
    if R <= 0:
        return f"Mamba dt_rank must be positive, got {R}"
    if conv <= 0:
        return f"Mamba conv kernel must be positive, got {conv}"
    return _check_dt(**args)


def _mamba_steps(d_in: int, seq: int, batch: int, inner_norms: bool = False, **args) -> list[tuple]:
    """The steps inside, for ``blockdsl compile --show-shapes --depth 2``."""
    sizes = mamba_sizes(d_in, **args)
    E, R, state, conv = sizes.inner, sizes.dt_rank, sizes.state, sizes.conv
    n, L = batch * seq, min(SCAN_CHUNK, seq)
    # The last element of each step is what the float32 forward keeps for backward (the
    # training memory estimate): in_proj's output (z is a view of it); the conv's padded
    # input, its output, the SiLU and the contiguous copies x_proj and the scan take of
    # it; Δ before and after softplus; B and C as the scan saves them; the scan's state
    # entering each chunk of SCAN_CHUNK steps (the (B, T, E, N) states are never stored);
    # y + D x, silu(z) and the gated product fed to out_proj. The inner norms (Jamba) keep
    # their normalised values and their outputs.
    return [
        ("in_proj", ("B", "T", "2E"), (batch, seq, 2 * E), 2 * n * d_in * 2 * E, 1),
        ("conv+silu", ("B", "T", "E"), (batch, seq, E), 2 * n * E * conv, 5),
        (
            "x_proj",
            ("B", "T", "R+2N"),
            (batch, seq, sizes.x_proj_out),
            2 * n * E * sizes.x_proj_out,
            3 if inner_norms else 1,
        ),
        ("B, C", ("B", "T", "2N"), (batch, seq, 2 * state), 0, 1),
        ("dt_proj", ("B", "T", "E"), (batch, seq, E), 2 * n * R * E, 2),
        ("scan", ("B", "T", "E", "N"), (batch, seq, E, state), 5 * n * E * state, 0),
        (
            "scan chunk starts",
            ("B", "T/32", "E", "N"),
            (batch, -(-seq // SCAN_CHUNK), E, state),
            0,
            1,
        ),
        # backward recomputes one chunk at a time: its decays, states, dL/dy·C, dL/dh and
        # dL/d(ΔA) with the product before it, all (B, L, E, N)
        ("scan backward chunk", ("B", "L", "E", "N"), (batch, L, E, state), 0, 0, 6),
        ("C·h+Dx, gate", ("B", "T", "E"), (batch, seq, E), n * (2 * E * state + 3 * E), 3),
        ("out_proj", ("B", "T", "D"), (batch, seq, d_in), 2 * n * E * d_in),
    ]


_MAMBA_HELP: dict[str, str] = {
    "state": "SSM state size N per channel",
    "expand": "inner width E as a multiple of d_model",
    "inner": "inner width E; none: int(expand * d_model)",
    "dt_rank": "rank R of the time-step projection; none: ceil(d_model / 16)",
    "conv": "causal depthwise conv kernel K",
    "bias": "biases on in_proj and out_proj",
    "conv_bias": "bias on the conv",
    "dt_min": "smallest initial time step",
    "dt_max": "largest initial time step",
    "inner_norms": "RMSNorm on Δ, B and C after x_proj (Jamba)",
    "eps": "epsilon of the inner norms",
}


@register(
    "Mamba",
    out_features=same_size,
    mixes_positions=True,
    state_size=_mamba_state_size,
    params=_mamba_params,
    flops=_mamba_flops,
    check=_check_mamba,
    arg_help=_MAMBA_HELP,
    decodes=True,
    shape_steps=_mamba_steps,
)
class Mamba(nn.Module):
    """Mamba's selective state-space mixer (Mamba 1): input-dependent Δ, B, C; causal conv; gate.

    ``x, z = in_proj(u)``; ``x = silu(conv(x))``; ``Δ, B, C = x_proj(x)``; ``Δ =
    softplus(dt_proj(Δ))``; per channel e and state n, ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t
    x_t`` with ``A = -exp(A_log)``; ``y_t = C_t·h_t + D x_t``; out ``out_proj(y * silu(z))``.
    With ``inner_norms`` (Jamba), Δ, B and C pass through RMSNorms (``dt_layernorm``,
    ``b_layernorm``, ``c_layernorm``) before use. Parameters as transformers' ``MambaMixer``:
    ``in_proj [2E, D]``, ``conv1d`` (depthwise ``[E, 1, K]``), ``x_proj [R + 2N, E]``,
    ``dt_proj [E, R]`` (+ bias), ``A_log [E, N]``, ``D [E]``, ``out_proj [D, E]``. Decoding
    state: ``conv`` (B, K-1, E) and ``ssm`` (B, E, N), ``E * (N + K - 1)`` numbers per sequence
    whatever the context.
    """

    def __init__(
        self,
        d_model: int,
        state: int = 16,
        expand: float = 2.0,
        inner: int | None = None,
        dt_rank: int | None = None,
        conv: int = 4,
        bias: bool = False,
        conv_bias: bool = True,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        inner_norms: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        args = dict(state=state, expand=expand, inner=inner, dt_rank=dt_rank, conv=conv)
        raise_problem(_check_mamba(d_model, **args, dt_min=dt_min, dt_max=dt_max))
        sizes = mamba_sizes(d_model, **args)
        E, R = sizes.inner, sizes.dt_rank
        self.d_model, self.inner, self.dt_rank, self.state, self.kernel = d_model, E, R, state, conv
        self.dt_min, self.dt_max = dt_min, dt_max
        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)
        self.conv1d = nn.Conv1d(E, E, conv, groups=E, padding=conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(E, sizes.x_proj_out, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.empty(E, state))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        self.dt_layernorm = _RMSNorm(R, eps) if inner_norms else None
        self.b_layernorm = _RMSNorm(state, eps) if inner_norms else None
        self.c_layernorm = _RMSNorm(state, eps) if inner_norms else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mamba's init: ``A = -[1..N]`` per channel (S4D-real), ``D = 1``, ``dt_proj`` uniform
        in ``±R^-0.5`` with its bias giving time steps in ``[dt_min, dt_max]``."""
        with torch.no_grad():
            A = torch.arange(1, self.state + 1, dtype=torch.float32, device=self.A_log.device)
            self.A_log.copy_(torch.log(A).expand(self.inner, -1))
            self.D.fill_(1.0)
            nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        _init_dt_bias(self.dt_proj.bias, self.dt_min, self.dt_max, 1e-4)

    def init_state(self, batch_size: int, max_len: int) -> State:
        """Zero decoding state: the conv window and the SSM state (independent of max_len)."""
        w = self.A_log
        return {
            "conv": torch.zeros(
                batch_size, self.kernel - 1, self.inner, device=w.device, dtype=w.dtype
            ),
            "ssm": torch.zeros(batch_size, self.inner, self.state, device=w.device, dtype=w.dtype),
        }

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        if state is not None:
            _check_state(state, ("conv", "ssm"), "Mamba")
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, E) each
        window = None if state is None else state["conv"]
        xs = F.silu(causal_conv(xs, self.conv1d.weight, self.conv1d.bias, window))
        dt, B, C = self.x_proj(xs).split([self.dt_rank, self.state, self.state], dim=-1)
        if self.dt_layernorm is not None:
            dt, B, C = self.dt_layernorm(dt), self.b_layernorm(B), self.c_layernorm(C)
        dt = F.softplus(self.dt_proj(dt)).float()  # (B, T, E)
        A = -torch.exp(self.A_log.float())  # (E, N)
        h0 = None if state is None else state["ssm"]
        y, h = selective_scan(xs, dt, A, B, C, h0)  # (B, T, E), final (B, E, N)
        if state is not None:
            state["ssm"].copy_(h)
        y = y + self.D * xs
        return self.out_proj((y * F.silu(z.float())).to(x.dtype))

    def extra_repr(self) -> str:
        return f"inner={self.inner}, state={self.state}, dt_rank={self.dt_rank}, conv={self.kernel}"


# --------------------------------------------------------------------------- Mamba2


@dataclass(frozen=True)
class Mamba2Sizes:
    """Mamba2's derived sizes, computed once from its arguments by ``mamba2_sizes``: read by
    the constructor and by every hook (params, FLOPs, state size, shape steps, check)."""

    d_in: int
    inner: int  # E
    heads: int  # H = E / head_dim (0 when head_dim is not positive: the check says why)
    head_dim: int
    state: int  # N
    groups: int  # G, the B/C groups
    conv: int  # K
    chunk: int

    @property
    def conv_dim(self) -> int:
        """The conv's channels: x, B and C, ``E + 2GN``."""
        return self.inner + 2 * self.groups * self.state

    @property
    def in_proj_out(self) -> int:
        """x/B/C, then Δ per head: ``conv_dim + H`` (the gate's z is the gate slot's)."""
        return self.conv_dim + self.heads


def mamba2_sizes(
    d_in: int,
    state: int = 128,
    expand: float = 2.0,
    inner: int | None = None,
    head_dim: int = 64,
    groups: int = 1,
    conv: int = 4,
    chunk: int = 256,
    **_,
) -> Mamba2Sizes:
    """``Mamba2Sizes`` for these arguments at input size ``d_in``."""
    E = int(expand * d_in) if inner is None else inner
    H = E // head_dim if head_dim > 0 else 0
    return Mamba2Sizes(d_in, E, H, head_dim, state, groups, conv, chunk)


def _mamba2_params(d_in: int, bias: bool, **args) -> int:
    """The projections, Δ bias, A and D: the slots' blocks (short convs, the gate's z
    projection, the output norm) count as the blocks in them."""
    s = mamba2_sizes(d_in, **args)
    in_proj = d_in * s.in_proj_out + bias * s.in_proj_out
    out_proj = s.inner * d_in + bias * d_in
    return in_proj + 3 * s.heads + out_proj


def _mamba2_flops(d_in: int, seq: int, **args) -> int:
    s = mamba2_sizes(d_in, **args)
    E, G, N = s.inner, s.groups, s.state
    L = min(s.chunk, seq)
    proj = 2 * d_in * s.in_proj_out + 2 * E * d_in
    # intra-chunk C·B (per group) and (C·B)·x (per head), chunk states and their readout
    ssd = 2 * L * G * N + 2 * L * E + 4 * E * N
    return seq * (proj + ssd + 3 * E)  # + the skip D·x and the gate's product


def _mamba2_state_size(d_in: int, **args) -> int:
    s = mamba2_sizes(d_in, **args)
    return s.inner * s.state  # the SSM state (the slots' conv windows: their own)


def _check_mamba2(d_in: int, **args) -> Problem:
    sizes = mamba2_sizes(d_in, **args)
    E, head_dim, groups = sizes.inner, sizes.head_dim, sizes.groups
    state, conv, chunk = sizes.state, sizes.conv, sizes.chunk
    if E <= 0:
        return f"Mamba2 inner width must be positive, got {E}", "set inner, or expand > 0"
    if head_dim <= 0 or E % head_dim:
        return (
            f"Mamba2 inner width {E} is not a multiple of head_dim={head_dim}",
            "choose head_dim dividing expand * d_model (or inner)",
        )
    H = sizes.heads
    if groups <= 0 or H % groups:
        return f"Mamba2 heads={H} (inner / head_dim) is not a multiple of groups={groups}"
    if state <= 0:
        return f"Mamba2 state size must be positive, got {state}"
    if conv <= 0:
        return f"Mamba2 conv kernel must be positive, got {conv}"
    if chunk <= 0:
        return f"Mamba2 chunk must be positive, got {chunk}"
    return _check_dt(**args)


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """``out[..., i, j] = x[..., j+1] + ... + x[..., i]`` for ``j <= i`` and ``-inf`` above the
    diagonal (ssd_minimal's stable segment sum: masked cumsums, no differences of cumsums)."""
    L = x.shape[-1]
    x = x[..., None].expand(*x.shape, L)  # (..., L, L): x[..., i, j] = x_i
    strict = torch.ones(L, L, dtype=torch.bool, device=x.device).tril(-1)
    out = torch.cumsum(x.masked_fill(~strict, 0), dim=-2)
    return out.masked_fill(
        ~strict.logical_or(torch.eye(L, dtype=torch.bool, device=x.device)), -torch.inf
    )


def _decay_mask(a_cum: torch.Tensor) -> torch.Tensor:
    """``exp(a_cum[..., i] - a_cum[..., j])`` for ``j <= i``, 0 above the diagonal: the decay
    from position j to position i of a chunk, (..., L) -> (..., L, L). Differences of the
    cumulative sums (as mamba_ssm's kernels compute it) rather than ``_segsum``'s masked cumsum
    over the (L, L) square; within one chunk the cumulative sums stay small enough for float32
    (the chunk tests check the result against the step-by-step recurrence)."""
    L = a_cum.shape[-1]
    upper = torch.ones(L, L, dtype=torch.bool, device=a_cum.device).triu(1)
    diff = a_cum[..., :, None] - a_cum[..., None, :]
    return torch.exp_(diff.masked_fill_(upper, -torch.inf))


class _ChunkMix(torch.autograd.Function):
    """SSD's within-chunk product ``y = (scores ∘ decay) @ x``: ``scores`` (b, g, c, l, s) is
    C·Bᵀ of one group, shared by its ``r`` heads; ``decay = _decay_mask(a_cum)`` (b, g, r, c,
    l, s) is each head's; ``x`` (b, g, r, c, s, p).

    The (l, s) squares are the largest tensors of a Mamba2 step (``T * chunk`` numbers per
    head). Autograd would keep the decay and its product with the scores for backward and run
    about a dozen passes over them; this saves only the small operands, recomputes the decay
    in backward, and folds the backward's products into in-place passes:
    ``d(scores) = Σ_r dM ∘ decay`` and ``d(a_cum)`` from ``dM ∘ M`` (row sums minus column
    sums, since ``M_ls`` depends on ``a_cum_l - a_cum_s``)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, a_cum: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scores, a_cum, x)
        return _decay_mask(a_cum).mul_(scores[:, :, None]) @ x

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        scores, a_cum, x = ctx.saved_tensors
        decay = _decay_mask(a_cum)
        M = decay * scores[:, :, None]
        gx = M.transpose(-1, -2) @ gy
        gM = gy @ x.transpose(-1, -2)
        gM.mul_(decay)  # dL/d(scores) per head
        gscores = gM.sum(2)
        gM.mul_(scores[:, :, None])  # dL/d(a_cum_l - a_cum_s)
        ga = gM.sum(-1) - gM.sum(-2)
        return gscores, ga, gx


def _chunk_mix(scores: torch.Tensor, a_cum: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if _tracing():  # traced graphs take plain autograd
        return (scores[:, :, None] * _decay_mask(a_cum)) @ x
    return _ChunkMix.apply(scores, a_cum, x)


def ssd(
    x: torch.Tensor,
    a: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk: int,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba2's chunked state-space-duality scan (``ssd_minimal_discrete`` with grouped B/C).

    ``h_t = exp(a_t) h_{t-1} + x_t ⊗ B_t`` per head, ``y_t = h_t C_t``: ``x`` (B, T, H, P)
    (already scaled by Δ), ``a`` (B, T, H) (``Δ·A``, ≤ 0), ``B``/``C`` (B, T, G, N) shared by
    ``H/G`` consecutive heads, ``h0`` (B, H, P, N). Returns ``y`` (B, T, H, P) and the final
    state (B, H, P, N). Cost ``O(T * chunk)``: attention-like matmuls inside each chunk, a
    recurrence over the chunks' end states between them. A sequence that is not a multiple of
    ``chunk`` is padded with ``a = 0, x = 0`` steps, which leave the state unchanged.

    Every operand is laid out head-major once, ``(b, g, r, c, l, ·)`` (group, head in group,
    chunk, position), so each product below is a batched matmul on contiguous blocks: no
    einsum re-permutes its operands in the forward or the backward, and B·C is computed once
    per group, not per head."""
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    R = H // G
    L = max(1, min(chunk, T))
    pad = (-T) % L
    x, a, B, C = (t.float() for t in (x, a, B, C))
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        a = F.pad(a, (0, 0, 0, pad))
    c = (T + pad) // L
    xh = x.reshape(b, c, L, G, R, P).permute(0, 3, 4, 1, 2, 5).contiguous()  # (b, g, r, c, l, p)
    ah = a.reshape(b, c, L, G, R).permute(0, 3, 4, 1, 2)  # (b, g, r, c, l)
    Bh = B.reshape(b, c, L, G, N).permute(0, 3, 1, 2, 4).contiguous()  # (b, g, c, l, n)
    Ch = C.reshape(b, c, L, G, N).permute(0, 3, 1, 2, 4).contiguous()
    a_cum = torch.cumsum(ah, dim=-1)  # (b, g, r, c, l)

    # 1. within each chunk: y = (C B^T ∘ decay mask) x, like causal attention
    scores = Ch @ Bh.transpose(-1, -2)  # (b, g, c, l, s), once per group
    y = _chunk_mix(scores, a_cum, xh)  # (b, g, r, c, l, p)

    # 2. each chunk's end state from its own inputs: sum_l decay(l -> end) x_l ⊗ B_l
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, g, r, c, l)
    states = (xh * decay_to_end[..., None]).transpose(-1, -2) @ Bh[:, :, None]  # (b,g,r,c,p,n)

    # 3. the recurrence over chunks: the state entering each chunk
    start = (
        torch.zeros_like(states[:, :, :, :1])
        if h0 is None
        else h0.float().reshape(b, G, R, 1, P, N)
    )
    states = torch.cat([start, states], dim=3)  # (b, g, r, c+1, p, n)
    decay_chunks = torch.exp(_segsum(F.pad(a_cum[..., -1], (1, 0))))  # (b, g, r, c+1, c+1)
    states = (decay_chunks @ states.flatten(-2)).unflatten(-1, (P, N))
    entering, final = states[:, :, :, :-1], states[:, :, :, -1]

    # 4. what each position reads from the state that entered its chunk
    y = y + torch.exp(a_cum)[..., None] * (Ch[:, :, None] @ entering.transpose(-1, -2))
    y = y.permute(0, 3, 4, 1, 2, 5).reshape(b, c * L, H, P)[:, :T]
    return y, final.reshape(b, H, P, N)


def _mamba2_steps(d_in: int, seq: int, batch: int, **args) -> list[tuple]:
    """The steps inside, for ``blockdsl compile --show-shapes --depth 2``."""
    sizes = mamba2_sizes(d_in, **args)
    E, H, head_dim = sizes.inner, sizes.heads, sizes.head_dim
    cd, n, L = sizes.conv_dim, batch * seq, max(1, min(sizes.chunk, seq))
    c = -(-seq // L)  # chunks; the sequence is padded to c * L positions
    G, N = sizes.groups, sizes.state
    # The last element of each step is what the float32 forward keeps for backward (the
    # training memory estimate): in_proj's output; the einsums' operand copies (C and B three
    # times, x three times: within chunks, chunk states, state readout), C·B, two (l, s)
    # squares (the forward keeps none, but the within-chunk product's backward recomputes
    # the decay mask and its product with C·B while the other activations are still held),
    # B scaled by the decays, the chunk states before and after the recurrence, and the
    # output with the gate's product. Tensors of H or G numbers per token (Δ, cumulative
    # decays, norms' scales) are left out. The slots' blocks (short convs and their SiLU,
    # the gate's projection, the output norm) are counted as their own calls.
    return [
        (
            "in_proj",
            ("B", "T", "E+2GN+H"),
            (batch, seq, cd + H),
            2 * n * d_in * (cd + H),
            1,
        ),
        ("B, C", ("B", "T", "G", "N"), (batch, seq, G, N), 0, 3),
        ("C·B", ("B", "G", "T", "L"), (batch, G, c * L, L), 2 * n * L * G * N, 1),
        ("decay mask", ("B", "H", "T", "L"), (batch, H, c * L, L), 0, 2),
        ("ssd chunks", ("B", "T", "H", "P"), (batch, seq, H, head_dim), 2 * n * L * E, 3),
        ("B·decay", ("B", "T", "H", "N"), (batch, seq, H, N), 0, 1),
        (
            "ssd states",
            ("B", "T/L+1", "H", "P", "N"),
            (batch, c + 1, H, head_dim, N),
            4 * n * E * N,
            2,
        ),
        ("y*gate", ("B", "T", "E"), (batch, seq, E), 3 * n * E, 2),
        ("out_proj", ("B", "T", "D"), (batch, seq, d_in), 2 * n * E * d_in),
    ]


# The slots (language v3, docs/language.md "Slots"): Mamba2's short convolution, its gate's z
# branch and its grouped output norm are the slots' default contents. Mamba2's B and C play
# the parts of the key and the query (``y_t = Σ_s C_t·B_s … x_s``), x the part of the value.


def _mamba2_conv_default(d_in: int, conv: int = 4, conv_bias: bool = True, **_) -> str:
    """q (C), k (B), v (x): the causal depthwise conv and SiLU. One depthwise conv over the
    joint x/B/C channels (transformers' ``conv1d``) is one conv per channel, so three convs
    over its three parts are the same maths."""
    return f"Conv(kernel={conv}, bias={format_value(bool(conv_bias))})->Act(fn=silu)"


def _mamba2_o_default(d_in: int, norm: bool = True, eps: float = 1e-5, **_) -> str | None:
    """The RMSNorm over each group of ``inner / groups`` channels, a weight per channel."""
    return f"Norm(kind=rms, eps={format_value(float(eps))}, per_head=true)" if norm else None


def _mamba2_gate_default(d_in: int, bias: bool = False, **args) -> str:
    """transformers' ``z``: a linear map of the input, then SiLU."""
    inner = mamba2_sizes(d_in, **args).inner
    return f"Linear(out={inner}, bias={format_value(bool(bias))})->Act(fn=silu)"


def _norm_group(sizes: Mamba2Sizes) -> int:
    """Channels per group of the grouped output norm, ``inner / groups``."""
    return sizes.inner // max(1, sizes.groups)


MAMBA2_SLOTS: dict[str, Slot] = {
    "q": head_slot(
        "C, per group (B, T, groups, state), after in_proj; default: Conv(kernel=conv, "
        "bias=conv_bias)->Act(silu)",
        mamba2_sizes,
        "state",
        "groups",
        default=_mamba2_conv_default,
    ),
    "k": head_slot(
        "B, per group (B, T, groups, state), after in_proj; default: Conv(kernel=conv, "
        "bias=conv_bias)->Act(silu)",
        mamba2_sizes,
        "state",
        "groups",
        default=_mamba2_conv_default,
    ),
    "v": head_slot(
        "x, per head (B, T, heads, head_dim), after in_proj; default: Conv(kernel=conv, "
        "bias=conv_bias)->Act(silu)",
        mamba2_sizes,
        "head_dim",
        "heads",
        default=_mamba2_conv_default,
    ),
    "o": head_slot(
        "the scan's output per group (B, T, groups, inner / groups), after the gate "
        "(norm_before_gate: before it), before out_proj; default: Norm(kind=rms, eps=eps, "
        "per_head=true), none with norm=false",
        mamba2_sizes,
        _norm_group,
        "groups",
        default=_mamba2_o_default,
    ),
    "gate": Slot(
        "stream",
        "a block over the mixer's input (B, T, D) whose output, one value per head or per "
        "channel, multiplies the scan's output before o (norm_before_gate: after o); "
        "default: Linear(out=inner, bias=bias)->Act(silu) (transformers' z)",
        features=lambda d_in, **_: d_in,
        heads=lambda d_in, **a: mamba2_sizes(d_in, **a).heads,
        outputs=lambda d_in, **a: (mamba2_sizes(d_in, **a).inner, mamba2_sizes(d_in, **a).heads),
        default=_mamba2_gate_default,
    ),
}


def split_mamba2_in_proj(in_proj: torch.Tensor, inner: int) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``in_proj`` rows ``[z (E) | x, B, C | Δ]`` as the gate slot's ``z`` rows
    and blockdsl's ``in_proj`` rows ``[x, B, C | Δ]`` (weight or bias). A split only, so the
    HF export runs it backwards."""
    z, rest = in_proj.split([inner, in_proj.shape[0] - inner], dim=0)
    return z, rest


def split_mamba2_conv(
    conv: torch.Tensor, inner: int, group_state: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """transformers' one ``conv1d`` over ``[x (E) | B (GN) | C (GN)]`` channels (weight or
    bias) as the q (C), k (B) and v (x) slots' ``Conv`` tensors, in that order."""
    x, B, C = conv.split([inner, group_state, group_state], dim=0)
    return C, B, x


def mamba2_norm_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """transformers' grouped norm weight ``[E]`` as the o slot's per-group ``Norm`` weight
    ``[groups, E / groups]``."""
    return weight.reshape(groups, -1)


def _rename_hf_mamba2_weights(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
) -> None:
    """Load weights in transformers' ``Mamba2Mixer`` layout (and blockdsl <= 0.3's, which kept
    it): ``in_proj`` with the z rows, ``conv1d`` and ``norm`` become the mixer's ``in_proj``
    and the default slot blocks' tensors (``slots.gate.linear``, ``slots.{q,k,v}.conv``,
    ``slots.o.norm.weight``)."""
    mamba2: Mamba2 = module  # type: ignore[assignment]
    for kind in ("weight", "bias"):
        joint = state_dict.get(f"{prefix}in_proj.{kind}")
        if joint is not None and joint.shape[0] == mamba2.inner + mamba2.in_proj.out_features:
            z, rest = split_mamba2_in_proj(state_dict.pop(f"{prefix}in_proj.{kind}"), mamba2.inner)
            state_dict[f"{prefix}in_proj.{kind}"] = rest
            state_dict[f"{prefix}slots.gate.linear.{kind}"] = z
        conv = state_dict.pop(f"{prefix}conv1d.{kind}", None)
        if conv is not None:
            parts = split_mamba2_conv(conv, mamba2.inner, mamba2.groups * mamba2.state)
            for name, tensor in zip("qkv", parts):
                state_dict[f"{prefix}slots.{name}.conv.{kind}"] = tensor
    norm = state_dict.pop(prefix + "norm.weight", None)
    if norm is not None:
        state_dict[prefix + "slots.o.norm.weight"] = mamba2_norm_weight(norm, mamba2.groups)


_MAMBA2_HELP: dict[str, str] = {
    "state": "SSM state size N per head channel",
    "expand": "inner width E as a multiple of d_model",
    "inner": "inner width E; none: int(expand * d_model)",
    "head_dim": "channels P per head (heads H = E / head_dim)",
    "groups": "groups G of heads sharing B and C (G divides H)",
    "conv": "kernel K of the causal depthwise convs in the default q, k, v slots",
    "chunk": "chunk length of the SSD scan (the result does not depend on it)",
    "bias": "biases on in_proj, out_proj and the default gate's projection",
    "conv_bias": "bias on the default q, k, v slots' convs",
    "norm": "the default o slot: the grouped RMSNorm before out_proj (else none: y * gate)",
    "norm_before_gate": "o before the gate, rmsnorm(y) * silu(z) (Falcon-H1), not o(y * gate)",
    "eps": "epsilon of the default o slot's RMSNorm",
    "dt_min": "smallest initial time step",
    "dt_max": "largest initial time step",
}


@register(
    "Mamba2",
    out_features=same_size,
    mixes_positions=True,
    state_size=_mamba2_state_size,
    params=_mamba2_params,
    flops=_mamba2_flops,
    check=_check_mamba2,
    arg_help=_MAMBA2_HELP,
    decodes=True,
    shape_steps=_mamba2_steps,
    slots=MAMBA2_SLOTS,
)
class Mamba2(nn.Module):
    """Mamba2's SSD mixer: a scalar decay per head, grouped B/C, between its slots.

    ``x, B, C, Δ = in_proj(u)``; ``x``, ``B``, ``C`` through the ``v``, ``k``, ``q`` slots;
    ``Δ = softplus(Δ + dt_bias)``; per head h (of ``H = E / head_dim``), ``h_t = exp(Δ_t A_h)
    h_{t-1} + Δ_t x_t ⊗ B_t``, ``y_t = h_t C_t + D_h x_t`` (B, C of group ``h // (H/G)``),
    computed in chunks of ``chunk`` (see ``ssd``); out ``out_proj(o(y * gate(u)))``, or with
    ``norm_before_gate`` (Falcon-H1) ``out_proj(o(y) * gate(u))``.

    Slots (docs/language.md "Slots") and their default contents, Mamba2's anatomy: ``q`` (C),
    ``k`` (B), per group ``(B, T, groups, state)``, and ``v`` (x), per head: ``Conv(kernel=conv,
    bias=conv_bias)->Act(silu)``, the short causal convolution; ``gate`` (over the input):
    ``Linear(out=inner, bias=bias)->Act(silu)``, transformers' ``z``; ``o`` (per group of
    ``inner / groups`` channels): ``Norm(kind=rms, eps=eps, per_head=true)``, none with
    ``norm=false``. The gate comes before ``o``, as in Mamba2's reference (its norm is
    ``rmsnorm(y * silu(z))``). ``Mamba2[q=Act(silu), k=Act(silu), v=Act(silu)]`` is Mamba2
    without its short convolution.

    Parameters: ``in_proj [2GN + E + H, D]`` (order x, B, C, Δ), ``dt_bias``, ``A_log``, ``D``
    (``[H]`` each), ``out_proj [D, E]``, and the slots' blocks' under ``slots.``
    (``slots.v.conv.weight``, ``slots.gate.linear.weight``, ``slots.o.norm.weight``).
    transformers' ``Mamba2Mixer`` weights (``in_proj`` with z, ``conv1d``, ``norm``) load by
    name, split into these. Decoding state: ``ssm`` (B, H, P, N) and ``slots``, the states of
    the slots' blocks (the convs' windows).
    """

    def __init__(
        self,
        d_model: int,
        state: int = 128,
        expand: float = 2.0,
        inner: int | None = None,
        head_dim: int = 64,
        groups: int = 1,
        conv: int = 4,
        chunk: int = 256,
        bias: bool = False,
        conv_bias: bool = True,
        norm: bool = True,
        norm_before_gate: bool = False,
        eps: float = 1e-5,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        slots: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        args = dict(
            state=state,
            expand=expand,
            inner=inner,
            head_dim=head_dim,
            groups=groups,
            conv=conv,
            chunk=chunk,
        )
        raise_problem(_check_mamba2(d_model, **args, dt_min=dt_min, dt_max=dt_max))
        if slots is None:  # built directly, not by the compiler: the default contents
            slots = shorthand_slots(
                "Mamba2",
                d_model,
                {**args, "bias": bias, "conv_bias": conv_bias, "norm": norm, "eps": eps},
            )
        sizes = mamba2_sizes(d_model, **args)
        E, H = sizes.inner, sizes.heads
        self.inner, self.heads, self.head_dim, self.groups = E, H, head_dim, groups
        self.state, self.kernel, self.chunk = state, conv, chunk
        self.dt_min, self.dt_max = dt_min, dt_max
        self.norm_before_gate = norm_before_gate
        self.conv_dim = sizes.conv_dim
        self.in_proj = nn.Linear(d_model, sizes.in_proj_out, bias=bias)
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        self.slots = nn.ModuleDict(dict(slots))
        self.stateful_slots = tuple(
            name for name, m in self.slots.items() if getattr(m, "state_attrs", ())
        )
        self.register_load_state_dict_pre_hook(_rename_hf_mamba2_weights)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mamba2's init: ``A = -[1..H]``, ``D = 1``, time steps in ``[dt_min, dt_max]``."""
        with torch.no_grad():
            A = torch.arange(1, self.heads + 1, dtype=torch.float32, device=self.A_log.device)
            self.A_log.copy_(torch.log(A))
            self.D.fill_(1.0)
        _init_dt_bias(self.dt_bias, self.dt_min, self.dt_max, 1e-4)

    def init_state(self, batch_size: int, max_len: int) -> dict[str, Any]:
        """Zero decoding state: the SSM state (independent of max_len) and ``slots``, the
        states of the slots' blocks that keep one (the short convs' windows)."""
        w = self.A_log
        return {
            "ssm": torch.zeros(
                batch_size, self.heads, self.head_dim, self.state, device=w.device, dtype=w.dtype
            ),
            "slots": {
                name: self.slots[name].init_state(batch_size, max_len)
                for name in self.stateful_slots
            },
        }

    def _slot(
        self, name: str, x: torch.Tensor, context: Mapping[str, Any], state: Any
    ) -> torch.Tensor:
        """``x`` through the block in slot ``name`` (unchanged when the slot is empty)."""
        if name not in self.slots:
            return x
        slot_state = None if state is None else state["slots"].get(name)
        return _call_slot(self.slots[name], x, context, slot_state)

    def _step(
        self, x: torch.Tensor, dt: torch.Tensor, B: torch.Tensor, C: torch.Tensor, h: torch.Tensor
    ) -> torch.Tensor:
        """One token of the recurrence, updating ``h`` (B, H, P, N) in place: x (B, H, P),
        dt (B, H), B/C (B, G, N) -> y (B, H, P)."""
        r = self.heads // self.groups
        B, C = (t.float().repeat_interleave(r, dim=1) for t in (B, C))  # (B, H, N)
        decay = torch.exp(dt * -torch.exp(self.A_log.float()))  # (B, H)
        h.copy_(decay[..., None, None] * h + (dt[..., None] * x)[..., None] * B[:, :, None])
        return torch.einsum("bhpn,bhn->bhp", h.float(), C)

    def _gate(
        self, y: torch.Tensor, x: torch.Tensor, context: Mapping[str, Any], state: Any
    ) -> torch.Tensor:
        """``y`` (B, T, E) times the gate slot's output (per channel or per head)."""
        if "gate" not in self.slots:
            return y
        gate = self._slot("gate", x, context, state).float()
        return (y.unflatten(-1, (self.heads, -1)) * gate.unflatten(-1, (self.heads, -1))).flatten(2)

    def _o(self, y: torch.Tensor, context: Mapping[str, Any], state: Any) -> torch.Tensor:
        """``y`` (B, T, E) through the o slot, per group of ``E / groups`` channels."""
        return self._slot("o", y.unflatten(-1, (self.groups, -1)), context, state).flatten(2)

    def forward(
        self,
        x: torch.Tensor,
        state: dict[str, Any] | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if state is not None:
            _check_state(state, ("ssm", "slots"), "Mamba2")
        context = {"positions": positions}
        T = x.shape[1]
        E, H, P, G, N = self.inner, self.heads, self.head_dim, self.groups, self.state
        xs, B, C, dt = self.in_proj(x).split([E, G * N, G * N, H], dim=-1)
        xs = self._slot("v", xs.unflatten(-1, (H, P)), context, state).float()  # (B, T, H, P)
        B = self._slot("k", B.unflatten(-1, (G, N)), context, state)  # (B, T, G, N)
        C = self._slot("q", C.unflatten(-1, (G, N)), context, state)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (B, T, H)
        if state is not None and T == 1:  # decode step
            y = self._step(xs[:, 0], dt[:, 0], B[:, 0], C[:, 0], state["ssm"])[:, None]
        else:
            A = -torch.exp(self.A_log.float())  # (H,)
            h0 = None if state is None else state["ssm"]
            y, final = ssd(xs * dt[..., None], dt * A, B, C, self.chunk, h0)
            if state is not None:
                state["ssm"].copy_(final)
        y = rearrange(y + self.D.float()[:, None] * xs, "b t h p -> b t (h p)")
        if self.norm_before_gate:  # Falcon-H1: rmsnorm(y) * silu(z)
            y = self._gate(self._o(y, context, state), x, context, state)
        else:  # Mamba2's reference: rmsnorm(y * silu(z))
            y = self._o(self._gate(y, x, context, state), context, state)
        return self.out_proj(y.to(x.dtype))

    def extra_repr(self) -> str:
        return (
            f"inner={self.inner}, heads={self.heads}, head_dim={self.head_dim}, "
            f"groups={self.groups}, state={self.state}, conv={self.kernel}, chunk={self.chunk}"
        )


# --------------------------------------------------------------------------- RG-LRU

#: Griffin's fixed scale of the recurrence gate: ``log a = -C * r_t * softplus(Λ)``.
_RGLRU_C = 8.0
_MAX_SQRT_GRADIENT = 1000.0


class _SqrtBoundedGradient(torch.autograd.Function):
    """``sqrt(x)`` whose gradient is clipped at 1000 (Griffin's ``sqrt_bound_derivative``), so
    ``sqrt(1 - a^2)`` stays trainable when ``a -> 1``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sqrt(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad / torch.sqrt(torch.clip(4.0 * x, min=_MAX_SQRT_GRADIENT**-2))


def _rglru_width(d_in: int, width: int | None) -> int:
    return d_in if width is None else width


def _rglru_params(d_in: int, width: int | None, heads: int, conv: int, **_) -> int:
    W = _rglru_width(d_in, width)
    gates = 2 * (W * (W // heads) + W) if heads > 0 else 0
    return 2 * (d_in * W + W) + (W * d_in + d_in) + W * conv + W + gates + W


def _rglru_flops(d_in: int, seq: int, width: int | None, heads: int, conv: int, **_) -> int:
    W = _rglru_width(d_in, width)
    gates = 2 * 2 * W * (W // heads) if heads > 0 else 0
    # linear_x, linear_y, linear_out; conv; gates; recurrence, gating and normalisation
    return seq * (2 * 2 * d_in * W + 2 * W * d_in + 2 * W * conv + gates + 10 * W)


def _rglru_state_size(d_in: int, width: int | None, conv: int, **_) -> int:
    W = _rglru_width(d_in, width)
    return W + W * (conv - 1)


def _check_rglru(
    d_in: int, width: int | None = None, heads: int = 1, conv: int = 4, act: str = "gelu_tanh", **_
) -> Problem:
    W = _rglru_width(d_in, width)
    if W <= 0:
        return f"RGLRU width must be positive, got {W}"
    if heads <= 0 or W % heads:
        return (
            f"RGLRU width {W} is not a multiple of heads={heads}",
            "heads sets the blocks of the block-diagonal gates: choose one dividing the width",
        )
    if conv <= 0:
        return f"RGLRU conv kernel must be positive, got {conv}"
    if act not in ACTIVATIONS:
        return f"unknown activation '{act}'", f"one of {', '.join(ACTIVATIONS)}"
    return None


class _RGLRUGates(nn.Module):
    """The RG-LRU's own parameters (transformers' ``RecurrentGemmaRglru``): ``recurrent_param
    [W]`` (Λ), and block-diagonal gates ``input_gate_weight``/``recurrent_gate_weight [heads,
    W/heads, W/heads]`` (applied as ``x_block @ weight``) with biases ``[heads, W/heads]``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.block = heads, width // heads
        self.recurrent_param = nn.Parameter(torch.empty(width))
        self.input_gate_weight = nn.Parameter(torch.empty(heads, self.block, self.block))
        self.input_gate_bias = nn.Parameter(torch.empty(heads, self.block))
        self.recurrent_gate_weight = nn.Parameter(torch.empty(heads, self.block, self.block))
        self.recurrent_gate_bias = nn.Parameter(torch.empty(heads, self.block))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Griffin's init (as transformers'): gates like ``nn.Linear``, biases zero; ``Λ`` such
        that ``softplus(Λ) = -log(rad)`` with ``rad²`` uniform in ``[0.81, 0.998]``, so that
        ``a = rad^(8 r)``."""
        for w in (self.input_gate_weight, self.recurrent_gate_weight):
            init_linear_(w, self.block)
        nn.init.zeros_(self.input_gate_bias)
        nn.init.zeros_(self.recurrent_gate_bias)
        with torch.no_grad():
            rad2 = torch.empty_like(self.recurrent_param, dtype=torch.float32).uniform_(0.81, 0.998)
            sp = -0.5 * torch.log(rad2)  # softplus(Λ)
            self.recurrent_param.copy_(sp + torch.log(-torch.expm1(-sp)))  # inverse softplus

    def gate(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        blocks = rearrange(x, "b t (h i) -> b t h i", h=self.heads)
        out = torch.einsum("bthi,hij->bthj", blocks, weight) + bias
        return torch.sigmoid(rearrange(out, "b t h j -> b t (h j)"))


def _rglru_steps(
    d_in: int, seq: int, batch: int, width: int | None, heads: int, conv: int, **_
) -> list[tuple]:
    """The steps inside, for ``blockdsl compile --show-shapes --depth 2``."""
    W, n = _rglru_width(d_in, width), batch * seq
    hid = ("B", "T", "W"), (batch, seq, W)
    # The last element of each step is what the float32 forward keeps for backward (the
    # training memory estimate): linear_y's output and its activation; the conv's padded
    # input and output; the block-diagonal gates' copies of their input and the two
    # sigmoids; in the recurrence -8·r, exp(2 log a), 1 - exp(2 log a), the bounded sqrt,
    # exp(log a), a, x·i, the scan's states and the product fed to linear_out.
    return [
        ("gate branch", *hid, 2 * n * d_in * W, 2),
        ("linear_x", *hid, 2 * n * d_in * W, 1),
        ("conv", *hid, 2 * n * W * conv, 1),
        ("gates", *hid, 4 * n * W * (W // heads), 4),
        ("recurrence", *hid, 8 * n * W, 9),
        ("linear_out", ("B", "T", "D"), (batch, seq, d_in), 2 * n * W * d_in),
    ]


_RGLRU_HELP: dict[str, str] = {
    "width": "recurrence width W; none: d_model",
    "heads": "blocks of the block-diagonal input and recurrence gates",
    "conv": "causal depthwise conv kernel K",
    "act": "activation of the gate branch: relu, gelu, gelu_tanh, silu or relu2",
}


@register(
    "RGLRU",
    out_features=same_size,
    mixes_positions=True,
    state_size=_rglru_state_size,
    params=_rglru_params,
    flops=_rglru_flops,
    check=_check_rglru,
    arg_help=_RGLRU_HELP,
    decodes=True,
    shape_steps=_rglru_steps,
)
class RGLRU(nn.Module):
    """Griffin's recurrent block (RecurrentGemma, Hawk): a real-gated linear recurrence (RG-LRU)
    after a causal conv, times a GeLU gate branch.

    ``y = act(linear_y(u))``; ``x = conv(linear_x(u))``; gates ``i_t = σ(x_t W_i + b_i)``,
    ``r_t = σ(x_t W_r + b_r)`` (block-diagonal, ``heads`` blocks); ``a_t = exp(-8 r_t
    softplus(Λ))``; ``h_t = a_t h_{t-1} + sqrt(1 - a_t²) (i_t x_t)``; out ``linear_out(h * y)``.
    At position 0 (``positions``, default ``arange(T)``) the state resets and the input is not
    scaled, as in transformers' ``RecurrentGemmaRecurrentBlock``, whose parameter names this
    uses (``linear_x``, ``linear_y``, ``linear_out``, ``conv_1d``, ``rg_lru.*``). Decoding
    state: ``conv`` (B, K-1, W) and ``rnn`` (B, W).
    """

    def __init__(
        self,
        d_model: int,
        width: int | None = None,
        heads: int = 1,
        conv: int = 4,
        act: Literal["relu", "gelu", "gelu_tanh", "silu", "relu2"] = "gelu_tanh",
    ) -> None:
        super().__init__()
        raise_problem(_check_rglru(d_model, width, heads, conv, act))
        W = _rglru_width(d_model, width)
        self.width, self.kernel, self.act_name, self.act = W, conv, act, activation(act)
        self.linear_y = nn.Linear(d_model, W)
        self.linear_x = nn.Linear(d_model, W)
        self.linear_out = nn.Linear(W, d_model)
        self.conv_1d = nn.Conv1d(W, W, conv, groups=W, padding=conv - 1)
        self.rg_lru = _RGLRUGates(W, heads)

    def init_state(self, batch_size: int, max_len: int) -> State:
        """Zero decoding state: the conv window and the recurrence (independent of max_len)."""
        w = self.linear_x.weight
        return {
            "conv": torch.zeros(
                batch_size, self.kernel - 1, self.width, device=w.device, dtype=w.dtype
            ),
            "rnn": torch.zeros(batch_size, self.width, device=w.device, dtype=w.dtype),
        }

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        state: State | None = None,
    ) -> torch.Tensor:
        if state is not None:
            _check_state(state, ("conv", "rnn"), "RGLRU")
        b, T, _ = x.shape
        if positions is None:
            positions = torch.arange(T, device=x.device)
        reset = (positions == 0).expand(b, T)[..., None]  # (B, T, 1): a sequence starts here
        y = self.act(self.linear_y(x))  # (B, T, W)
        window = None if state is None else state["conv"]
        xs = causal_conv(self.linear_x(x), self.conv_1d.weight, self.conv_1d.bias, window)
        lru = self.rg_lru
        i = lru.gate(xs, lru.input_gate_weight, lru.input_gate_bias)
        r = lru.gate(xs, lru.recurrent_gate_weight, lru.recurrent_gate_bias)
        log_a = -_RGLRU_C * r.float() * F.softplus(lru.recurrent_param.float())  # (B, T, W)
        scale = _SqrtBoundedGradient.apply(1 - torch.exp(2 * log_a))
        scale = torch.where(reset, 1.0, scale)
        a = torch.where(reset, 0.0, torch.exp(log_a))
        h0 = None if state is None else state["rnn"]
        h = linear_scan(a, xs.float() * i.float() * scale, h0)  # (B, T, W)
        if state is not None:
            state["rnn"].copy_(h[:, -1])
        return self.linear_out(h.to(x.dtype) * y)

    def extra_repr(self) -> str:
        heads = self.rg_lru.heads
        return f"width={self.width}, heads={heads}, conv={self.kernel}, act={self.act_name}"
