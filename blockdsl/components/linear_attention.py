"""Delta-rule linear attention: Gated DeltaNet (Qwen3-Next) and RWKV-7 time and channel mixing.

Both keep a matrix-valued state per head, ``S`` of shape ``(V, K)`` (value dim x key dim), read
with a query (``o = S q``) and updated once per token by the *generalised delta rule*

    S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T

* Gated DeltaNet (Yang et al. 2025): ``w_t = alpha_t`` (one scalar per head), ``a_t = k_t``,
  ``b_t = -alpha_t beta_t k_t`` and value ``beta_t v_t``, i.e.
  ``S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T``;
* RWKV-7 (Peng et al. 2025): ``w_t`` a per-channel decay, ``a_t = -kappa_t`` and
  ``b_t = kappa_t * lr_t`` with ``kappa`` the normalised "removal key" and ``lr`` the
  in-context learning rate.

Training uses the chunked (WY / UT-transform) form: within a chunk of ``C`` tokens the updates
are condensed into ``C x C`` triangular systems solved in parallel for every chunk; what remains
sequential is one ``(V, K) @ (K, K)`` product per chunk. Decoding uses the step form above. The
two agree to float32 rounding (the tests check it against a loop written from the equations).

Shapes in comments: ``B`` batch, ``T`` tokens, ``H`` heads, ``K``/``V`` key/value head size,
``n`` chunks of ``C`` tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from blockdsl.components._util import (
    Problem,
    flops_from_steps,
    init_linear_,
    raise_problem,
    same_size,
)
from blockdsl.components.attention import _call_slot
from blockdsl.printer import format_value
from blockdsl.registry import Slot, head_slot, register, shorthand_slots

Steps = list[tuple[str, tuple[str, ...], tuple[int, ...], int]]

# --------------------------------------------------------------------------- shared kernels


def causal_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    window: torch.Tensor | None = None,
) -> torch.Tensor:
    """Depthwise causal convolution of ``x`` (B, C, T) with ``weight`` (C, 1, k).

    ``window`` (B, C, k-1) holds the last ``k-1`` inputs seen before ``x`` (zeros for a fresh
    sequence); when given it is updated in place to the last ``k-1`` inputs including ``x``,
    so that the next call continues the same sequence."""
    k = weight.shape[-1]
    if window is None:  # padding both sides and dropping the tail saves a padded copy
        return F.conv1d(x, weight, bias, padding=k - 1, groups=x.shape[1])[..., : x.shape[-1]]
    else:
        padded = torch.cat((window.to(x.dtype), x), dim=-1)  # (B, C, k-1 + T)
        if k > 1:
            window.copy_(padded[..., -(k - 1) :])
        if x.shape[-1] == 1:  # a decode step: one dot product per channel beats conv1d's setup
            y = (padded * weight[:, 0]).sum(-1, keepdim=True)  # (B, C, 1)
            return y if bias is None else y + bias[:, None]
    return F.conv1d(padded, weight, bias, groups=x.shape[1])  # (B, C, T)


def token_shift(x: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (B, T, D) shifted one step right: the token before each one. The first token's
    predecessor is ``last`` (B, D) when continuing a sequence (updated in place to ``x[:, -1]``),
    else zeros."""
    if last is None:
        return F.pad(x, (0, 0, 1, -1))
    shifted = torch.cat((last.to(x.dtype)[:, None], x[:, :-1]), dim=1)
    last.copy_(x[:, -1])
    return shifted


def _pair_scores(
    x: torch.Tensor, gx: torch.Tensor, y: torch.Tensor, gy: torch.Tensor, strict: bool
) -> torch.Tensor:
    """``M[t, s] = sum_c x[t, c] y[s, c] exp(gx[t, c] - gy[s, c])`` for ``s < t`` (``strict``) or
    ``s <= t``, zero above; ``x``, ``y`` are (..., C, K) and ``gx``, ``gy`` cumulative log decays
    (..., C, K) or, for one decay per head, (..., C, 1).

    Decays are <= 1 only where ``s <= t``; masked entries are never exponentiated (scalar
    decay) or the factors are taken about the chunk's middle (per-channel decay, which callers
    bound so that ``|g|`` stays small within a chunk)."""
    C = x.shape[-2]
    upper = torch.ones(C, C, dtype=torch.bool, device=x.device).triu(0 if strict else 1)
    if gx.shape[-1] == 1:  # one decay per head: exact pairwise factors
        diff = (gx - gy.transpose(-1, -2)).masked_fill(upper, float("-inf"))
        return (x @ y.transpose(-1, -2)) * diff.exp()
    ref = gy[..., C // 2 : C // 2 + 1, :]  # (..., 1, K) keeps both factors near 1
    scores = (x * (gx - ref).exp()) @ (y * (ref - gy).exp()).transpose(-1, -2)
    return scores.masked_fill(upper, 0.0)


def chunked_delta_rule(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    log_w: torch.Tensor,
    state: torch.Tensor | None = None,
    chunk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The generalised delta rule over a sequence, chunk by chunk.

    ``S_t = S_{t-1} (diag(exp(log_w_t)) + a_t b_t^T) + v_t k_t^T``, ``o_t = S_t r_t``.

    ``r``, ``k``, ``a``, ``b``: (B, T, H, K); ``v``: (B, T, H, V); ``log_w``: (B, T, H, K) or
    (B, T, H, 1) (one decay per head), entries <= 0; ``state``: (B, H, V, K) or None (zeros).
    Returns the outputs (B, T, H, V) and the final state (B, H, V, K).

    Within a chunk, with ``G`` the cumulative log decay from the chunk's start, write
    ``u_t = S_{t-1} a_t``; unrolling gives ``U = (I - L)^{-1} (A~ S_0^T + L_k V)`` with the
    strictly lower triangular ``L[t, s] = a~_t . b~_s`` (UT transform), solved for every chunk
    at once; the scan over chunks is then three matrix products each (chunk-major, so that each
    chunk's operands are contiguous)."""
    B, T, H, K = k.shape
    Vd = v.shape[-1]
    dtype = v.dtype
    r, k, v, a, b, log_w = (t.float() for t in (r, k, v, a, b, log_w))
    pad = (-T) % chunk
    if pad:  # zero inputs with decay 1 leave the state as it is
        r, k, v, a, b, log_w = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (r, k, v, a, b, log_w))
    r, k, v, a, b, log_w = (
        rearrange(t, "b (n c) h d -> n b h c d", c=chunk) for t in (r, k, v, a, b, log_w)
    )
    G = log_w.cumsum(dim=-2)  # (n, B, H, C, K|1) log decay from the chunk's start, inclusive
    G_before = G - log_w  # ... exclusive: the decay applied before token t's own update
    G_end = G[..., -1:, :]  # (n, B, H, 1, K|1)

    L_ab = _pair_scores(a, G_before, b, G, strict=True)  # (n, B, H, C, C)
    L_ak = _pair_scores(a, G_before, k, G, strict=True)
    M_rb = _pair_scores(r, G, b, G, strict=False)
    M_rk = _pair_scores(r, G, k, G, strict=False)
    a_dec = a * G_before.exp()  # (n, B, H, C, K)
    eye = torch.eye(chunk, dtype=L_ab.dtype, device=L_ab.device)
    solved = torch.linalg.solve_triangular(
        eye - L_ab, torch.cat((a_dec, L_ak @ v), dim=-1), upper=False, unitriangular=True
    )
    W, U_v = solved.split([K, Vd], dim=-1)  # u_t = U_v[t] + S_0 W[t]
    q_eff = r * G.exp() + M_rb @ W  # (n, B, H, C, K): o = O_v + q_eff S_0^T
    O_v = M_rb @ U_v + M_rk @ v  # (n, B, H, C, V)
    to_end = (G_end - G).exp()  # (n, B, H, C, K|1) decay from each token to the chunk's end
    b_end_t = (b * to_end).transpose(-1, -2).contiguous()  # (n, B, H, K, C)
    X_t = (k * to_end).transpose(-1, -2) @ v  # (n, B, H, K, V): the values' own writes
    decay_end = G_end.exp().transpose(-1, -2)  # (n, B, H, K|1, 1)

    # S^T (K, V) here; unbind, not indexing: its backward stacks the gradients once (no
    # full-size zero tensor per chunk)
    St = v.new_zeros(B, H, K, Vd) if state is None else state.float().transpose(-1, -2)
    outputs = []
    for O_i, q_i, W_i, U_i, b_i, X_i, d_i in zip(
        *(t.unbind(0) for t in (O_v, q_eff, W, U_v, b_end_t, X_t, decay_end))
    ):
        outputs.append(O_i + q_i @ St)  # (B, H, C, V)
        St = St * d_i + b_i @ (U_i + W_i @ St) + X_i
    o = rearrange(torch.stack(outputs), "n b h c d -> b (n c) h d")[:, :T]
    return o.to(dtype), St.transpose(-1, -2).to(dtype)


def chunked_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor | None = None,
    chunk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule ``S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T``,
    ``o_t = S_t q_t``, chunk by chunk: the special case of ``chunked_delta_rule`` with one decay
    per head, in fewer operations (the WY form of Yang et al., as fla and HF compute it).

    ``q``, ``k``: (B, T, H, K); ``v``: (B, T, H, V); ``log_alpha``, ``beta``: (B, T, H);
    ``state``: (B, H, V, K) or None. Returns the outputs (B, T, H, V) and the final state.

    With ``g`` the cumulative log decay within a chunk, the corrections ``u_t = beta_t (v_t -
    alpha_t S_{t-1} k_t)`` (so that ``S_t = alpha_t S_{t-1} + u_t k_t^T``) solve
    ``(I + A) U = beta V - diag(beta e^g) K S_0^T`` with ``A[t, s] = beta_t e^{g_t - g_s} k_t.k_s``
    (s < t); both right-hand sides are solved for every chunk at once, and the scan over chunks
    is four matrix products each (chunk-major, so that each chunk's operands are contiguous)."""
    B, T, H, K = k.shape
    Vd = v.shape[-1]
    dtype = v.dtype
    q, k, v, log_alpha, beta = (t.float() for t in (q, k, v, log_alpha, beta))
    pad = (-T) % chunk
    if pad:  # zero keys and values with decay 1 leave the state as it is
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        log_alpha, beta = (F.pad(t, (0, 0, 0, pad)) for t in (log_alpha, beta))
    q, k, v = (rearrange(t, "b (n c) h d -> n b h c d", c=chunk) for t in (q, k, v))
    g = rearrange(log_alpha, "b (n c) h -> n b h c", c=chunk).cumsum(-1)  # (n, B, H, C)
    beta = rearrange(beta, "b (n c) h -> n b h c", c=chunk)[..., None]  # (n, B, H, C, 1)
    upper = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
    decay = (g[..., :, None] - g[..., None, :]).masked_fill(upper, float("-inf")).exp()
    A = (beta * (k @ k.transpose(-1, -2)) * decay).tril(-1)  # (n, B, H, C, C)
    eye = torch.eye(chunk, dtype=A.dtype, device=A.device)
    rhs = torch.cat((beta * v, beta * g.exp()[..., None] * k), dim=-1)
    U0, Wk = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True).split(
        [Vd, K], dim=-1
    )  # U = U0 - Wk S_0^T
    M = (q @ k.transpose(-1, -2)) * decay  # (n, B, H, C, C), zero above the diagonal
    q_dec = q * g.exp()[..., None]
    k_end = (k * (g[..., -1:] - g).exp()[..., None]).transpose(-1, -2).contiguous()  # (.., K, C)
    g_end = g[..., -1].exp()[..., None, None]  # (n, B, H, 1, 1)

    S = v.new_zeros(B, H, K, Vd) if state is None else state.float().transpose(-1, -2)
    outputs = []
    # unbind, not indexing: its backward stacks the chunks' gradients once instead of adding
    # each into a zero tensor of the whole size
    for U0_i, Wk_i, q_i, M_i, k_i, g_i in zip(
        *(t.unbind(0) for t in (U0, Wk, q_dec, M, k_end, g_end))
    ):  # S is (K, V) here: rows are read by keys and queries
        U = U0_i - Wk_i @ S  # (B, H, C, V)
        outputs.append(q_i @ S + M_i @ U)
        S = S * g_i + k_i @ U
    o = rearrange(torch.stack(outputs), "n b h c d -> b (n c) h d")[:, :T]
    return o.to(dtype), S.transpose(-1, -2).to(dtype)


def delta_rule_step(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    log_w: torch.Tensor,
    state: torch.Tensor,
) -> torch.Tensor:
    """One token of the generalised delta rule, updating ``state`` (B, H, V, K) in place;
    inputs are (B, H, K) (``v``: (B, H, V); ``log_w``: (B, H, K) or (B, H, 1)). Returns
    ``o = S r`` (B, H, V)."""
    S = state.float()
    Sa = (S @ a.float()[..., None]).squeeze(-1)  # (B, H, V)
    S = S * log_w.float().exp()[..., None, :] + Sa[..., None] * b.float()[..., None, :]
    S = S + v.float()[..., None] * k.float()[..., None, :]
    state.copy_(S)
    return (S @ r.float()[..., None]).squeeze(-1).to(v.dtype)


def _delta_rule(
    r, k, v, a, b, log_w, state: torch.Tensor | None, chunk: int
) -> torch.Tensor:  # all (B, T, H, d) -> (B, T, H, V)
    """The chunked form for sequences (starting from ``state`` if given, which is then updated
    in place), the step form for a single token with a state."""
    if state is not None and r.shape[1] == 1:
        o = delta_rule_step(*(t[:, 0] for t in (r, k, v, a, b, log_w)), state)
        return o[:, None]
    o, final = chunked_delta_rule(r, k, v, a, b, log_w, state=state, chunk=chunk)
    if state is not None:
        state.copy_(final)
    return o


# --------------------------------------------------------------------------- Gated DeltaNet


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(|x|^2 + eps)`` over the last dim (fla's and HF Qwen3-Next's convention)."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


@dataclass(frozen=True)
class GatedDeltaNetSizes:
    """Gated DeltaNet's derived sizes, computed once from its arguments by ``gdn_sizes``: read
    by the constructor and by every hook (params, state size, shape steps, check, slots)."""

    d_in: int
    heads: int  # key (and query) heads Hk
    v_heads: int  # value heads Hv
    head_dim: int  # key head size dk
    v_head_dim: int  # value head size dv
    kernel: int  # of the default short convs in q, k, v; 0: none
    chunk: int

    @property
    def key_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def value_dim(self) -> int:
        return self.v_heads * self.v_head_dim

    @property
    def conv_dim(self) -> int:
        """The short convolutions' channels: q, k and v (HF's one ``conv1d``)."""
        return 2 * self.key_dim + self.value_dim

    @property
    def qkvz_dim(self) -> int:
        """HF's ``in_proj_qkvz`` rows: q, k, v and the gate's z."""
        return 2 * self.key_dim + 2 * self.value_dim


def gdn_sizes(
    d_in: int,
    heads: int = 4,
    v_heads: int | None = None,
    head_dim: int | None = None,
    v_head_dim: int | None = None,
    kernel: int = 4,
    chunk: int = 64,
    **_,
) -> GatedDeltaNetSizes:
    """``GatedDeltaNetSizes`` at input size ``d_in``, defaults filled in (``head_dim = d_in //
    heads``, ``v_heads = heads``, ``v_head_dim = head_dim``)."""
    hk = d_in // heads if head_dim is None else head_dim
    hv = hk if v_head_dim is None else v_head_dim
    return GatedDeltaNetSizes(
        d_in, heads, heads if v_heads is None else v_heads, hk, hv, kernel, chunk
    )


def _check_gdn(d_in: int, heads: int = 4, head_dim: int | None = None, **args) -> Problem:
    if heads <= 0:
        return f"heads must be positive, got {heads}"
    if head_dim is None and d_in % heads:
        return (
            f"d_model={d_in} is not divisible by heads={heads}",
            "set head_dim, or choose heads dividing d_model",
        )
    sizes = gdn_sizes(d_in, heads, head_dim=head_dim, **args)
    Hk, Hv, dk, dv = sizes.heads, sizes.v_heads, sizes.head_dim, sizes.v_head_dim
    kernel, chunk = sizes.kernel, sizes.chunk
    if dk <= 0 or dv <= 0:
        return f"head sizes must be positive, got head_dim={dk}, v_head_dim={dv}"
    if Hv <= 0 or Hv % Hk:
        return (
            f"v_heads={Hv} is not a multiple of heads={Hk}",
            "each key head serves v_heads // heads value heads",
        )
    if kernel < 0:
        return f"kernel must be 0 (no short conv) or positive, got {kernel}"
    if chunk <= 0:
        return f"chunk must be positive, got {chunk}"
    return None


def _gdn_params(d_in: int, **args) -> int:
    """The projections, decay and output: the slots' blocks (short convs, output norm, the
    gate's z projection) count as the blocks in them."""
    s = gdn_sizes(d_in, **args)
    qkv = d_in * (2 * s.key_dim + s.value_dim)
    ba = d_in * 2 * s.v_heads
    return qkv + ba + 2 * s.v_heads + s.value_dim * d_in  # + dt_bias and A_log, out_proj


def _gdn_steps(d_in: int, seq: int, batch: int, **args) -> Steps:
    sizes = gdn_sizes(d_in, **args)
    Hv, dk, dv = sizes.v_heads, sizes.head_dim, sizes.v_head_dim
    chunk, qkv_dim = sizes.chunk, sizes.conv_dim
    n = batch * seq
    padded = -(-seq // chunk) * chunk
    # The last element of each step is what the float32 forward keeps for backward (the
    # training memory estimate, measured with saved_tensors_hooks): q, k, v; within chunks
    # the decay mask, k·k^T and its scaled form, A, q·k^T and the masked scores (C x C per
    # position and head); about sixteen per-head K- or V-sized tensors of the WY form and the
    # scan over chunks (q, k copies, right-hand sides and solutions, decayed q and k,
    # per-chunk states); the gated output fed to out_proj. The slots' blocks (short convs,
    # output norm, gate) are counted as their own calls.
    return [
        ("q, k, v", ("B", "T", "2HK+Hv·V"), (batch, seq, qkv_dim), 2 * n * d_in * qkv_dim, 1),
        ("beta, decay", ("B", "T", "2Hv"), (batch, seq, 2 * Hv), 2 * n * d_in * 2 * Hv, 2),
        ("state", ("B", "Hv", "V", "K"), (batch, Hv, dv, dk), 0),
        ("chunk masks", ("B", "Hv", "T", "C"), (batch, Hv, padded, chunk), 0, 6),
        ("delta rule", ("B", "T", "Hv", "V"), (batch, seq, Hv, dv), 7 * n * Hv * dk * dv, 16),
        ("o*gate", ("B", "T", "Hv", "V"), (batch, seq, Hv, dv), n * Hv * dv, 2),
        ("out", ("B", "T", "D"), (batch, seq, d_in), 2 * n * Hv * dv * d_in),
    ]  # fmt: skip


def _gdn_state_size(d_in: int, **args) -> int:
    s = gdn_sizes(d_in, **args)
    return s.value_dim * s.head_dim  # the delta state (the slots' conv windows: their own)


# The slots (language v3, docs/language.md "Slots"): what Qwen3-Next hard-wires is the
# slots' default contents, each a block string compiled like any other (a model's [defaults]
# do not reach them: they mean what their text says).


def _conv_default(d_in: int, kernel: int = 4, **_) -> str:
    """q, k, v: the short causal conv, then SiLU (``kernel=0``: SiLU alone, as fla's
    ``use_short_conv=False``)."""
    return "Act(fn=silu)" if kernel == 0 else f"Conv(kernel={kernel}, bias=false)->Act(fn=silu)"


def _o_default(d_in: int, eps: float = 1e-6, **_) -> str:
    return f"Norm(kind=rms, eps={format_value(float(eps))})"


def _gate_default(d_in: int, **args) -> str:
    return f"Linear(out={gdn_sizes(d_in, **args).value_dim}, bias=false)->Act(fn=silu)"


GATED_DELTANET_SLOTS: dict[str, Slot] = {
    "q": head_slot(
        "per key head (B, T, heads, head_dim), after the q projection, before the L2 norm; "
        "default: Conv(kernel=kernel, bias=false)->Act(silu)",
        gdn_sizes,
        "head_dim",
        "heads",
        default=_conv_default,
    ),
    "k": head_slot(
        "per key head (B, T, heads, head_dim), after the k projection, before the L2 norm; "
        "default: Conv(kernel=kernel, bias=false)->Act(silu)",
        gdn_sizes,
        "head_dim",
        "heads",
        default=_conv_default,
    ),
    "v": head_slot(
        "per value head (B, T, v_heads, v_head_dim), after the v projection; default: "
        "Conv(kernel=kernel, bias=false)->Act(silu)",
        gdn_sizes,
        "v_head_dim",
        "v_heads",
        default=_conv_default,
    ),
    "o": head_slot(
        "per value head on the delta rule's output (B, T, v_heads, v_head_dim), before the "
        "gate and out_proj; default: Norm(kind=rms, eps=eps)",
        gdn_sizes,
        "v_head_dim",
        "v_heads",
        default=_o_default,
    ),
    "gate": Slot(
        "stream",
        "a block over the mixer's input (B, T, D) whose output, one value per value head or "
        "per value head feature, multiplies o's output; default: "
        "Linear(out=v_heads*v_head_dim)->Act(silu) (Qwen3-Next's z)",
        features=lambda d_in, **_: d_in,
        heads=lambda d_in, **a: gdn_sizes(d_in, **a).v_heads,
        outputs=lambda d_in, **a: (
            gdn_sizes(d_in, **a).value_dim,
            gdn_sizes(d_in, **a).v_heads,
        ),
        default=_gate_default,
    ),
}


def split_grouped_qkvz(
    qkvz: torch.Tensor, heads: int, v_heads: int, head_dim: int, v_head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """HF Qwen3-Next's ``in_proj_qkvz`` rows (grouped per key head: ``[q (K), k (K), v (r·V),
    z (r·V)]`` with ``r = v_heads // heads``) as the rows of the q, k, v and z projections
    (value heads in order). A rearrangement only, so the HF export runs it backwards."""
    r = v_heads // heads
    grouped = qkvz.reshape(heads, 2 * head_dim + 2 * r * v_head_dim, *qkvz.shape[1:])
    q, k, v, z = grouped.split([head_dim, head_dim, r * v_head_dim, r * v_head_dim], dim=1)
    return tuple(t.reshape(-1, *qkvz.shape[1:]) for t in (q, k, v, z))  # type: ignore[return-value]


def split_qkv_conv(
    conv: torch.Tensor, key_dim: int, value_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HF Qwen3-Next's one ``conv1d.weight`` over ``[q | k | v]`` channels as the three slots'
    ``Conv`` weights."""
    return conv.split([key_dim, key_dim, value_dim], dim=0)  # type: ignore[return-value]


def _rename_hf_layout_weights(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
) -> None:
    """Load weights in HF Qwen3-Next's layout (and blockdsl <= 0.3's, which kept it):
    ``in_proj_qkvz``, ``conv1d`` and ``norm`` become the q/k/v projections and the default
    slot blocks' weights (``slots.q.conv.weight``, ``slots.o.norm.weight``,
    ``slots.gate.linear.weight``)."""
    gdn: GatedDeltaNet = module  # type: ignore[assignment]
    qkvz = state_dict.pop(prefix + "in_proj_qkvz.weight", None)
    if qkvz is not None:
        parts = split_grouped_qkvz(qkvz, gdn.heads, gdn.v_heads, gdn.head_dim, gdn.v_head_dim)
        for name, tensor in zip(("q_proj", "k_proj", "v_proj", "slots.gate.linear"), parts):
            state_dict[f"{prefix}{name}.weight"] = tensor
    conv = state_dict.pop(prefix + "conv1d.weight", None)
    if conv is not None:
        for name, tensor in zip("qkv", split_qkv_conv(conv, gdn.key_dim, gdn.value_dim)):
            state_dict[f"{prefix}slots.{name}.conv.weight"] = tensor
    norm = state_dict.pop(prefix + "norm.weight", None)
    if norm is not None:
        state_dict[prefix + "slots.o.norm.weight"] = norm


_GATED_DELTA_NET_HELP: dict[str, str] = {
    "heads": "query/key heads",
    "v_heads": "value heads (a multiple of heads); none: = heads",
    "head_dim": "query/key head size; none: d_model // heads",
    "v_head_dim": "value head size; none: = head_dim",
    "kernel": "width of the causal short conv in the default q, k, v slots; 0: SiLU alone",
    "chunk": "tokens per chunk of the chunked (training) form",
    "eps": "epsilon of the default o slot's RMSNorm",
    "neg_eigval": "beta = 2 sigmoid(b) in (0, 2), not (0, 1): the state transition may have "
    "negative eigenvalues (OLMo Hybrid)",
}


@register(
    "GatedDeltaNet",
    out_features=same_size,
    mixes_positions=True,
    params=_gdn_params,
    flops=flops_from_steps(_gdn_steps),
    check=_check_gdn,
    state_size=_gdn_state_size,
    arg_help=_GATED_DELTA_NET_HELP,
    shape_steps=_gdn_steps,
    decodes=True,
    slots=GATED_DELTANET_SLOTS,
)
class GatedDeltaNet(nn.Module):
    """Gated DeltaNet (Qwen3-Next's linear attention): the gated delta rule between its slots.

    Per value head, with ``q``, ``k`` L2-normalised (``q`` also scaled by ``head_dim ** -0.5``)
    after their slots, ``beta = sigmoid(b)`` and decay ``alpha = exp(-exp(A_log) *
    softplus(a + dt_bias))``: ``S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t
    k_t^T``, ``o_t = S_t q_t`` (with ``neg_eigval``, ``beta = 2 sigmoid(b)``: the transition
    may have negative eigenvalues, Grazzi et al. 2025); then ``out_proj(o(o) * gate(x))`` per
    head. ``heads`` key/query heads serve ``v_heads`` value heads (``v_heads // heads`` each,
    as GQA). Training runs the chunked WY form (``chunk`` tokens per chunk), a decode step the
    recurrence.

    Slots (docs/language.md "Slots") and their default contents, Qwen3-Next's anatomy:
    ``q``, ``k``, ``v`` (per head, after the projections): ``Conv(kernel=kernel,
    bias=false)->Act(silu)``, the short causal convolution (``kernel=0``: ``Act(silu)``
    alone); ``o`` (per value head): ``Norm(kind=rms, eps=eps)``; ``gate`` (over the input):
    ``Linear(out=v_heads*v_head_dim)->Act(silu)``, HF's ``z``. A block written in a slot
    replaces its default: ``GatedDeltaNet[q=Act(silu), k=Act(silu), v=Act(silu)]`` is
    Gated DeltaNet without its short convolution (the same as ``kernel=0``).

    Parameters: ``q_proj``, ``k_proj``, ``v_proj``, ``in_proj_ba`` (HF's grouped layout: per
    key head ``[b.., a..]``), ``dt_bias [Hv]``, ``A_log [Hv]``, ``out_proj``, and the slots'
    blocks' under ``slots.`` (``slots.q.conv.weight``, ``slots.o.norm.weight``,
    ``slots.gate.linear.weight``). HF Qwen3-Next's ``in_proj_qkvz``, ``conv1d`` and ``norm``
    weights load by name (split into these).
    """

    def __init__(
        self,
        d_model: int,
        heads: int = 4,
        v_heads: int | None = None,
        head_dim: int | None = None,
        v_head_dim: int | None = None,
        kernel: int = 4,
        chunk: int = 64,
        eps: float = 1e-6,
        neg_eigval: bool = False,
        slots: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        args = dict(v_heads=v_heads, v_head_dim=v_head_dim, kernel=kernel, chunk=chunk)
        raise_problem(_check_gdn(d_model, heads, head_dim, **args))
        if slots is None:  # built directly, not by the compiler: the default contents
            slots = shorthand_slots(
                "GatedDeltaNet", d_model, {"heads": heads, "head_dim": head_dim, "eps": eps, **args}
            )
        sizes = gdn_sizes(d_model, heads, head_dim=head_dim, **args)
        Hk, Hv, dk, dv = sizes.heads, sizes.v_heads, sizes.head_dim, sizes.v_head_dim
        self.heads, self.v_heads, self.head_dim, self.v_head_dim = Hk, Hv, dk, dv
        self.kernel, self.chunk, self.eps = kernel, chunk, eps
        self.neg_eigval = neg_eigval
        self.key_dim, self.value_dim = sizes.key_dim, sizes.value_dim
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.in_proj_ba = nn.Linear(d_model, 2 * Hv, bias=False)
        self.dt_bias = nn.Parameter(torch.empty(Hv))
        self.A_log = nn.Parameter(torch.empty(Hv))
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self.slots = nn.ModuleDict(dict(slots))
        self.stateful_slots = tuple(
            name for name, m in self.slots.items() if getattr(m, "state_attrs", ())
        )
        self.register_load_state_dict_pre_hook(_rename_hf_layout_weights)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """fla's init: ``A ~ U(0, 16)``; ``dt_bias`` the inverse softplus of a log-uniform
        ``dt`` in [0.001, 0.1] (Mamba2)."""
        with torch.no_grad():
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1e-4, 16).log())
            dt = torch.exp(
                torch.rand_like(self.dt_bias) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)
            ).clamp(min=1e-4)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _slot(self, name: str, x: torch.Tensor, context: Mapping[str, Any], state: Any) -> Any:
        """``x`` through the block in slot ``name`` (unchanged when the slot is empty)."""
        if name not in self.slots:
            return x
        slot_state = None if state is None else state["slots"].get(name)
        return _call_slot(self.slots[name], x, context, slot_state)

    def _beta_and_decay(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``beta`` and ``log alpha`` (B, T, Hv, 1) from HF's grouped ``in_proj_ba`` (per key
        head ``[b (r), a (r)]`` with ``r = v_heads // heads``)."""
        r = self.v_heads // self.heads
        ba = rearrange(self.in_proj_ba(x), "b t (h d) -> b t h d", h=self.heads)
        b, a = (t.reshape(*x.shape[:2], self.v_heads) for t in ba.split([r, r], dim=-1))
        beta = torch.sigmoid(b.float())[..., None]
        if self.neg_eigval:  # I - beta k k^T may then reflect, not only shrink (state tracking)
            beta = 2.0 * beta
        log_alpha = (-self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias))[..., None]
        return beta, log_alpha

    def init_state(self, batch_size: int, max_len: int) -> dict[str, Any]:
        """The ``(Hv, V, K)`` delta state (fixed size, whatever ``max_len``) and ``slots``: the
        states of the slots' blocks that keep one (the short convs' windows)."""
        p = self.out_proj.weight
        return {
            "ssm": p.new_zeros(batch_size, self.v_heads, self.v_head_dim, self.head_dim),
            "slots": {
                name: self.slots[name].init_state(batch_size, max_len)
                for name in self.stateful_slots
            },
        }

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        state: dict[str, Any] | None = None,
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        context = {"positions": positions}
        heads = (self.heads, self.head_dim)
        q = self._slot("q", self.q_proj(x).unflatten(-1, heads), context, state)  # (B, T, Hk, K)
        k = self._slot("k", self.k_proj(x).unflatten(-1, heads), context, state)
        v = self.v_proj(x).unflatten(-1, (self.v_heads, self.v_head_dim))
        v = self._slot("v", v, context, state)  # (B, T, Hv, V)
        group = self.v_heads // self.heads
        # normalised per key head, then shared by its value heads (no copy when there is one
        # value head per key head)
        q, k = l2norm(q.float()), l2norm(k.float())
        q = q * self.head_dim**-0.5
        if group > 1:
            q, k = (t.repeat_interleave(group, dim=2) for t in (q, k))  # (B, T, Hv, K)
        beta, log_alpha = self._beta_and_decay(x)  # (B, T, Hv, 1)
        ssm = None if state is None else state["ssm"]
        if ssm is not None and x.shape[1] == 1:  # decode step: the recurrence
            alpha_beta = (log_alpha.exp() * beta)[:, 0]
            o = delta_rule_step(
                q[:, 0], k[:, 0], (beta * v.float())[:, 0], k[:, 0], -alpha_beta * k[:, 0],
                log_alpha[:, 0], ssm,
            )[:, None]  # fmt: skip
        else:
            o, final = chunked_gated_delta_rule(
                q, k, v, log_alpha[..., 0], beta[..., 0], ssm, self.chunk
            )
            if ssm is not None:
                ssm.copy_(final)
        o = self._slot("o", o.to(x.dtype), context, state)  # (B, T, Hv, V)
        if "gate" in self.slots:  # (B, T, Hv·V) or (B, T, Hv)
            o = o * self._slot("gate", x, context, state).unflatten(-1, (self.v_heads, -1))
        return self.out_proj(o.flatten(2))

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, v_heads={self.v_heads}, head_dim={self.head_dim}, "
            f"v_head_dim={self.v_head_dim}, kernel={self.kernel}, chunk={self.chunk}"
            + (", neg_eigval=True" if self.neg_eigval else "")
        )


# --------------------------------------------------------------------------- RWKV-7

#: ``exp(-0.5)``: RWKV-7's per-step log decay is ``-exp(-0.5) * sigmoid(.)``, in (-0.61, 0).
_MAX_LOG_DECAY = math.exp(-0.5)


def _lora_rank(d: int, scale: float, power: float) -> int:
    """BlinkDL's LoRA widths: ``max(32, round(scale * d**power / 32) * 32)``."""
    return max(32, round(scale * d**power / 32) * 32)


def _rwkv7_dims(
    d_in: int,
    head_dim: int | None,
    decay_rank: int | None,
    a_rank: int | None,
    gate_rank: int | None,
) -> tuple[int, int, int, int]:
    """``(head size, decay rank, a rank, gate rank)`` with BlinkDL's defaults filled in."""
    return (
        min(64, d_in) if head_dim is None else head_dim,
        _lora_rank(d_in, 1.8, 0.5) if decay_rank is None else decay_rank,
        _lora_rank(d_in, 1.8, 0.5) if a_rank is None else a_rank,
        _lora_rank(d_in, 0.6, 0.8) if gate_rank is None else gate_rank,
    )


def _check_rwkv7(
    d_in: int,
    head_dim: int | None = None,
    decay_rank: int | None = None,
    a_rank: int | None = None,
    gate_rank: int | None = None,
    chunk: int = 16,
    **_,
) -> Problem:
    N, *ranks = _rwkv7_dims(d_in, head_dim, decay_rank, a_rank, gate_rank)
    if N <= 0 or d_in % N:
        return (
            f"d_model={d_in} is not divisible by head_dim={N}",
            "RWKV-7 splits d_model into heads of head_dim channels",
        )
    if min(ranks) <= 0:
        return f"LoRA ranks must be positive, got {ranks}"
    if not 0 < chunk <= 32:
        return (
            f"chunk must be in 1..32, got {chunk}",
            "per-channel decays are factored within a chunk; longer chunks lose float32 range",
        )
    return None


def _rwkv7_params(d_in: int, head_dim, decay_rank, a_rank, gate_rank, **_) -> int:
    """The token shift's mixes, the decay and a LoRAs, k_k, k_a, r_k and r/k/v/output: the
    slots' blocks (the output gate's LoRA, the per-head norm) count as the blocks in them."""
    _, dw, da, _ = _rwkv7_dims(d_in, head_dim, decay_rank, a_rank, gate_rank)
    C = d_in
    mixes = 6 * C  # x_r, x_w, x_k, x_v, x_a, x_g
    loras = (C + 2 * C * dw) + (C + 2 * C * da)  # w0 w1 w2, a0 a1 a2
    return mixes + loras + 2 * C + C + 4 * C * C  # k_k, k_a, r_k, r/k/v/output


def _rwkv7_steps(
    d_in: int, seq: int, batch: int, head_dim, decay_rank, a_rank, gate_rank, chunk=16, **_
) -> Steps:
    N, dw, da, _ = _rwkv7_dims(d_in, head_dim, decay_rank, a_rank, gate_rank)
    C, n, H = d_in, batch * seq, d_in // N
    btd = ("B", "T", "D")
    shape = (batch, seq, C)
    # The last element of each step is what the float32 forward keeps for backward (the
    # training memory estimate, measured with saved_tensors_hooks): the shifted and mixed
    # inputs, r, k, v and the low-rank decay, a and gate branches; the state entering each
    # chunk; about 33 per-head N-sized tensors of the chunked delta rule (its within-chunk
    # products and their operand copies); the group norm, bonus and gate before out.
    # The slots' blocks (the output gate's LoRA, the per-head norm) count as their own calls.
    return [
        ("shift+mix", btd, shape, 7 * n * C, 7),
        ("r, k, v", btd, shape, 3 * 2 * n * C * C, 3),
        ("decay, a", btd, shape, 2 * n * 2 * C * (dw + da), 3),
        ("state", ("B", "H", "N", "N"), (batch, H, N, N), 0),
        ("chunk states", ("B", "T/C", "H", "N", "N"), (batch, -(-seq // chunk), H, N, N), 0, 1),
        ("delta rule", ("B", "T", "H", "N"), (batch, seq, H, N), 9 * n * H * N * N, 33),
        ("bonus", btd, shape, 4 * n * C, 3),
        ("out", btd, shape, 2 * n * C * C + n * C),
    ]


def _rwkv7_state_size(d_in: int, head_dim=None, **_) -> int:
    N = min(64, d_in) if head_dim is None else head_dim
    return d_in + d_in * N  # token shift + (H, N, N)


def _orthogonal_(weight: torch.Tensor, gain: float) -> None:
    if weight.device.type != "meta":
        nn.init.orthogonal_(weight, gain=gain)


# The slots (language v3, docs/language.md "Slots"): RWKV-7's output norm and output gate are
# the o and gate slots' default contents; r, k and v (the query, key and value of its delta
# rule) are empty by default. The token shift stays the mixer's own: the gate slot reads the
# shifted input x + (x_prev - x) * x_g, as BlinkDL's gate does.


def _rwkv7_heads(d_in: int, head_dim: int | None = None, **_) -> tuple[int, int]:
    """``(heads, head_dim)``."""
    N = min(64, d_in) if head_dim is None else head_dim
    return d_in // max(1, N), N


def _rwkv7_o_default(d_in: int, **_) -> str:
    """BlinkDL's ``ln_x``: a GroupNorm with one group per head is a LayerNorm over each head's
    features with a weight and a bias per head feature."""
    return "Norm(kind=layer, eps=0.00064, bias=true, per_head=true)"


def _rwkv7_gate_default(
    d_in: int, head_dim=None, decay_rank=None, a_rank=None, gate_rank=None, **_
) -> str:
    """BlinkDL's gate LoRA ``sigmoid(x_g G1) G2``."""
    dg = _rwkv7_dims(d_in, head_dim, decay_rank, a_rank, gate_rank)[3]
    return f"Linear(out={dg}, bias=false)->Act(fn=sigmoid)->Linear(out={d_in}, bias=false)"


def _rwkv7_head_slot(doc: str, default: Callable[..., str | None] | None = None) -> Slot:
    return Slot(
        "heads",
        doc,
        features=lambda d_in, **a: _rwkv7_heads(d_in, **a)[1],
        heads=lambda d_in, **a: _rwkv7_heads(d_in, **a)[0],
        default=default,
    )


RWKV7_SLOTS: dict[str, Slot] = {
    "q": _rwkv7_head_slot(
        "the receptance r, per head (B, T, heads, head_dim), after its projection; empty"
    ),
    "k": _rwkv7_head_slot(
        "the key k, per head (B, T, heads, head_dim), after its projection, before the "
        "removal key and the in-context learning rate read it; empty"
    ),
    "v": _rwkv7_head_slot("the value v, per head (B, T, heads, head_dim); empty"),
    "o": _rwkv7_head_slot(
        "per head on the delta rule's output (B, T, heads, head_dim), before the bonus, "
        "the gate and output; default: Norm(kind=layer, eps=0.00064, bias=true, "
        "per_head=true) (BlinkDL's ln_x)",
        _rwkv7_o_default,
    ),
    "gate": Slot(
        "stream",
        "a block over the token-shifted input x + (x_prev - x) * x_g (B, T, D) whose output, "
        "one value per head or per channel, multiplies o's output plus the bonus before the "
        "output projection; default: "
        "Linear(out=gate_rank, bias=false)->Act(sigmoid)->Linear(bias=false) (BlinkDL's "
        "g1, g2)",
        features=lambda d_in, **_: d_in,
        heads=lambda d_in, **a: _rwkv7_heads(d_in, **a)[0],
        outputs=lambda d_in, **a: (d_in, _rwkv7_heads(d_in, **a)[0]),
        default=_rwkv7_gate_default,
    ),
}


def _rename_rwkv7_weights(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
) -> None:
    """Load weights saved before the slots (BlinkDL's names): ``g1``, ``g2`` (``x @ g1``) are
    the gate slot's two linear maps (``weight = g1.T``), ``ln_x`` the o slot's per-head norm."""
    rwkv: RWKV7 = module  # type: ignore[assignment]
    for old, new in (("g1", "linear"), ("g2", "linear_1")):
        weight = state_dict.pop(prefix + old, None)
        if weight is not None:
            state_dict[f"{prefix}slots.gate.{new}.weight"] = weight.T
    for kind in ("weight", "bias"):
        tensor = state_dict.pop(f"{prefix}ln_x.{kind}", None)
        if tensor is not None:
            state_dict[f"{prefix}slots.o.norm.{kind}"] = tensor.view(rwkv.heads, rwkv.head_dim)


_RWKV7_HELP: dict[str, str] = {
    "head_dim": "channels per head (the state is head_dim x head_dim); none: min(64, d_model)",
    "decay_rank": "rank of the decay LoRA; none: BlinkDL's default for d_model",
    "a_rank": "rank of the in-context learning-rate LoRA; none: BlinkDL's default",
    "gate_rank": "rank of the default gate slot's LoRA; none: BlinkDL's default",
    "chunk": "tokens per chunk of the chunked (training) form, at most 32",
}


@register(
    "RWKV7",
    out_features=same_size,
    mixes_positions=True,
    params=_rwkv7_params,
    flops=flops_from_steps(_rwkv7_steps),
    check=_check_rwkv7,
    state_size=_rwkv7_state_size,
    arg_help=_RWKV7_HELP,
    shape_steps=_rwkv7_steps,
    decodes=True,
    slots=RWKV7_SLOTS,
)
class RWKV7(nn.Module):
    """RWKV-7 "Goose" time mixing: the generalised delta rule with per-channel decay.

    Token shift ``x_* = x + (x_prev - x) * mix_*``; ``r, k, v`` linear maps; per-channel decay
    ``w = exp(-exp(-0.5) * sigmoid(w0 + tanh(x_w W1) W2))``; in-context learning rate
    ``a = sigmoid(a0 + x_a A1 A2)``; removal key ``kk = normalize(k * k_k)`` per head and
    ``k <- k * (1 + (a - 1) * k_a)``; then per head ``S_t = S_{t-1} (diag(w_t) - kk_t (kk_t
    a_t)^T) + v_t k_t^T``, ``o_t = S_t r_t``; GroupNorm per head, plus the bonus
    ``sum(r * k * r_k) v``; gated output ``output((o) * (sigmoid(x_g G1) G2))``.

    Slots (docs/language.md "Slots"): ``q`` (r), ``k``, ``v``, per head after their
    projections, empty by default; ``o`` (per head, on the delta rule's output, before the
    bonus): ``Norm(kind=layer, eps=0.00064, bias=true, per_head=true)``, BlinkDL's GroupNorm
    ``ln_x``; ``gate`` (over the shifted input ``x_g``): ``Linear(out=gate_rank,
    bias=false)->Act(sigmoid)->Linear(bias=false)``, BlinkDL's ``g1``, ``g2``. The token shift
    stays outside the slots.

    As BlinkDL's reference (``RWKV-v7/rwkv_v7_demo.py``), with its parameter names: ``x_r ..
    x_g``, ``w0 w1 w2``, ``a0 a1 a2``, ``k_k``, ``k_a``, ``r_k [H, N]``, ``receptance``,
    ``key``, ``value``, ``output``; its ``g1``, ``g2`` and ``ln_x`` are the default slot
    blocks' (``slots.gate.linear.weight = g1.T``, ``slots.gate.linear_1.weight = g2.T``,
    ``slots.o.norm.weight``, ``.bias``), and load by those names. Not included: the value residual
    of layers after the first (``v0 v1 v2``, mixing in layer 0's values): a component sees only
    its own input. Init as BlinkDL's for a middle layer, except that the LoRA down-projections
    and ``output`` start small and random rather than at zero, so every parameter gets a
    gradient from the first step. Training runs the chunked form (``chunk`` <= 32 tokens: the
    per-channel decays are factored within a chunk), a decode step the recurrence.
    """

    def __init__(
        self,
        d_model: int,
        head_dim: int | None = None,
        decay_rank: int | None = None,
        a_rank: int | None = None,
        gate_rank: int | None = None,
        chunk: int = 16,
        slots: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        raise_problem(_check_rwkv7(d_model, head_dim, decay_rank, a_rank, gate_rank, chunk))
        if slots is None:  # built directly, not by the compiler: the default contents
            slots = shorthand_slots(
                "RWKV7",
                d_model,
                {"head_dim": head_dim, "decay_rank": decay_rank, "a_rank": a_rank,
                 "gate_rank": gate_rank, "chunk": chunk},
            )  # fmt: skip
        N, dw, da, _ = _rwkv7_dims(d_model, head_dim, decay_rank, a_rank, gate_rank)
        C = d_model
        self.d_model, self.head_dim, self.heads, self.chunk = C, N, C // N, chunk
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
            setattr(self, name, nn.Parameter(torch.empty(1, 1, C)))
        self.w1, self.w2 = nn.Parameter(torch.empty(C, dw)), nn.Parameter(torch.empty(dw, C))
        self.a1, self.a2 = nn.Parameter(torch.empty(C, da)), nn.Parameter(torch.empty(da, C))
        self.r_k = nn.Parameter(torch.empty(self.heads, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.slots = nn.ModuleDict(dict(slots))
        self.stateful_slots = tuple(
            name for name, m in self.slots.items() if getattr(m, "state_attrs", ())
        )
        self.register_load_state_dict_pre_hook(_rename_rwkv7_weights)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        C = self.d_model
        r0, r1 = 0.5, 0.5  # a middle layer: ratio_0_to_1, ratio_1_to_almost0
        ddd = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        with torch.no_grad():
            for name, p in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9)):
                getattr(self, name).copy_(1.0 - ddd.pow(p * r1))
            self.x_g.copy_(1.0 - ddd.pow(0.2 * r1))
            n = torch.arange(C, dtype=torch.float32)
            decay_speed = -7 + 5 * (n / max(C - 1, 1)) ** (0.85 + 1.0 * r0**0.5)
            self.w0.copy_(decay_speed.view(1, 1, C) + 0.5)
            self.a0.zero_()
            self.k_k.fill_(0.85)
            self.k_a.fill_(1.0)
            self.r_k.fill_(-0.04)
            for first, second in ((self.w1, self.w2), (self.a1, self.a2)):
                init_linear_(first, C)  # BlinkDL: zeros (see the class docstring)
                _orthogonal_(second, 0.1)
            bound = 0.5 / math.sqrt(C)
            nn.init.uniform_(self.receptance.weight, -bound, bound)
            nn.init.uniform_(self.key.weight, -0.1 * bound, 0.1 * bound)
            nn.init.uniform_(self.value.weight, -bound, bound)
            nn.init.uniform_(self.output.weight, -0.1 * bound, 0.1 * bound)
        self._init_default_slots()

    def _init_default_slots(self) -> None:
        """BlinkDL's init of what the default slot contents hold: the gate LoRA's second map
        orthogonal with gain 0.1 (``g2``; its first, ``g1``, keeps ``Linear``'s init) and the
        output norm's weight ``0.5 ** 0.7`` (``ln_x``), where the slots hold blocks of those
        kinds (a block the user writes there keeps its own init otherwise)."""
        second = getattr(getattr(self.slots, "gate", None), "linear_1", None)
        if isinstance(second, nn.Linear) and second.out_features == self.d_model:
            with torch.no_grad():
                _orthogonal_(second.weight, 0.1)
        norm = getattr(getattr(self.slots, "o", None), "norm", None)
        weight = getattr(norm, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.shape == (self.heads, self.head_dim):
            with torch.no_grad():
                weight.fill_(0.5**0.7)

    def init_state(self, batch_size: int, max_len: int) -> dict[str, Any]:
        """The previous token (token shift) and the ``(H, N, N)`` state: fixed size; and
        ``slots``, the states of the slots' blocks that keep one (a ``Conv`` in ``k``)."""
        p = self.output.weight
        return {
            "shift": p.new_zeros(batch_size, self.d_model),
            "wkv": p.new_zeros(batch_size, self.heads, self.head_dim, self.head_dim),
            "slots": {
                name: self.slots[name].init_state(batch_size, max_len)
                for name in self.stateful_slots
            },
        }

    def _slot(self, name: str, x: torch.Tensor, context: Mapping[str, Any], state: Any) -> Any:
        """``x`` through the block in slot ``name`` (unchanged when the slot is empty)."""
        if name not in self.slots:
            return x
        slot_state = None if state is None else state["slots"].get(name)
        return _call_slot(self.slots[name], x, context, slot_state)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        state: dict[str, Any] | None = None,
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        H, N = self.heads, self.head_dim
        context = {"positions": positions}
        xx = token_shift(x, None if state is None else state["shift"]) - x
        xr, xw, xk, xv, xa, xg = (x + xx * m for m in (self.x_r, self.x_w, self.x_k, self.x_v,
                                                        self.x_a, self.x_g))  # fmt: skip
        r = self._slot("q", self.receptance(xr).unflatten(-1, (H, N)), context, state)
        decay_logit = (self.w0 + torch.tanh(xw @ self.w1) @ self.w2).float()
        log_w = -_MAX_LOG_DECAY * torch.sigmoid(decay_logit)  # (B, T, D), in (-0.61, 0)
        k = self._slot("k", self.key(xk).unflatten(-1, (H, N)), context, state).flatten(2)
        v = self._slot("v", self.value(xv).unflatten(-1, (H, N)), context, state)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        heads = "b t (h n) -> b t h n"
        kk = F.normalize(rearrange(k * self.k_k, heads, n=N), dim=-1, p=2.0)
        k = k * (1 + (a - 1) * self.k_a)
        k, a, log_w = (rearrange(t, heads, n=N) for t in (k, a, log_w))
        o = _delta_rule(
            r, k, v, -kk, kk * a, log_w, None if state is None else state["wkv"], self.chunk
        )  # (B, T, H, N)
        o = self._slot("o", o, context, state)
        o = o + (r * k * self.r_k).sum(dim=-1, keepdim=True) * v  # the bonus, (B, T, H, N)
        if "gate" in self.slots:  # (B, T, D) or (B, T, H)
            o = o * self._slot("gate", xg, context, state).unflatten(-1, (H, -1))
        return self.output(o.flatten(2))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}, chunk={self.chunk}"


# --------------------------------------------------------------------------- RWKV-7 channel mix


def _cmix_hidden(d_in: int, hidden: int | None, mult: float) -> int:
    return int(mult * d_in) if hidden is None else hidden


def _check_cmix(d_in: int, hidden: int | None = None, mult: float = 4.0, **_) -> Problem:
    h = _cmix_hidden(d_in, hidden, mult)
    return None if h > 0 else f"RWKV7ChannelMix hidden size must be positive, got {h}"


def _cmix_params(d_in: int, hidden: int | None, mult: float, **_) -> int:
    return d_in + 2 * d_in * _cmix_hidden(d_in, hidden, mult)


def _cmix_steps(d_in: int, seq: int, batch: int, hidden: int | None, mult: float, **_) -> Steps:
    h, n = _cmix_hidden(d_in, hidden, mult), batch * seq
    return [
        ("shift+mix", ("B", "T", "D"), (batch, seq, d_in), 3 * n * d_in),
        ("key, relu²", ("B", "T", "F"), (batch, seq, h), 2 * n * d_in * h + 2 * n * h),
        ("value", ("B", "T", "D"), (batch, seq, d_in), 2 * n * h * d_in),
    ]


_RWKV7_CHANNEL_MIX_HELP: dict[str, str] = {
    "hidden": "hidden width; none: int(mult * d_model)",
    "mult": "hidden width as a multiple of d_model when hidden is none",
}


@register(
    "RWKV7ChannelMix",
    out_features=same_size,
    mixes_positions=True,
    params=_cmix_params,
    flops=flops_from_steps(_cmix_steps),
    check=_check_cmix,
    state_size=lambda d_in, **_: d_in,
    arg_help=_RWKV7_CHANNEL_MIX_HELP,
    shape_steps=_cmix_steps,
    decodes=True,
)
class RWKV7ChannelMix(nn.Module):
    """RWKV-7 channel mixing (the MLP slot): ``value(relu(key(x + (x_prev - x) * x_k))^2)``.

    A squared-ReLU MLP of width ``hidden`` (default ``int(mult * d_model)``) on a token-shifted
    input, so it sees the previous token too (hence causal, with a one-token decoding state).
    Parameters as BlinkDL's: ``x_k [1, 1, D]``, ``key``, ``value`` (``nn.Linear``, no bias).
    """

    def __init__(self, d_model: int, hidden: int | None = None, mult: float = 4.0) -> None:
        super().__init__()
        raise_problem(_check_cmix(d_model, hidden, mult))
        h = _cmix_hidden(d_model, hidden, mult)
        self.d_model, self.hidden = d_model, h
        self.x_k = nn.Parameter(torch.empty(1, 1, d_model))
        self.key = nn.Linear(d_model, h, bias=False)
        self.value = nn.Linear(h, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BlinkDL's init for a middle layer; ``value`` small and random instead of zero."""
        ddd = torch.arange(self.d_model, dtype=torch.float32) / self.d_model
        with torch.no_grad():
            self.x_k.copy_((1.0 - ddd.pow(0.5**4)).view(1, 1, -1))
        bound = 0.5 / math.sqrt(self.d_model)
        nn.init.uniform_(self.key.weight, -bound, bound)
        nn.init.uniform_(self.value.weight, -0.1 * bound, 0.1 * bound)

    def init_state(self, batch_size: int, max_len: int) -> dict[str, torch.Tensor]:
        return {"shift": self.key.weight.new_zeros(batch_size, self.d_model)}

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        xx = token_shift(x, None if state is None else state["shift"]) - x
        k = torch.relu(self.key(x + xx * self.x_k)) ** 2  # (B, T, hidden)
        return self.value(k)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}"
