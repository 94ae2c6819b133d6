"""Attention: causal self-attention (MHA/MQA/GQA, RoPE/ALiBi, windows, soft-capping) and
cross-attention to a memory.

Shapes in comments: ``B`` batch, ``T`` query length, ``S`` key length, ``D`` model width,
``H`` query heads, ``K`` key/value heads, ``hd`` head size, ``r`` rotated dims per head.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from blockdsl.components._util import Problem, raise_problem, same_size, softcap
from blockdsl.components.norm import Norm
from blockdsl.registry import register

# --------------------------------------------------------------------------- helpers

#: ``F.scaled_dot_product_attention(..., enable_gqa=True)`` exists (torch >= 2.5).
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def _check_heads(
    d_in: int,
    heads: int,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    dropout: float = 0.0,
    **_,
) -> Problem:
    if not 0.0 <= dropout < 1.0:
        return f"dropout must be in [0, 1), got {dropout}"
    if heads <= 0:
        return f"heads must be positive, got {heads}"
    if head_dim is None and d_in % heads:
        return (
            f"d_model={d_in} is not divisible by heads={heads}",
            "set head_dim, or choose heads dividing d_model",
        )
    kv = heads if kv_heads is None else kv_heads
    if kv <= 0 or heads % kv:
        return f"heads={heads} is not a multiple of kv_heads={kv}"
    return None


def _check_attn_options(
    window: int | None = None,
    rope_fraction: float = 1.0,
    clip_qkv: float | None = None,
    pos: str = "rope",
    alibi_scale: float = 1.0,
    **_,
) -> Problem:
    if window is not None and window <= 0:
        return f"window must be positive, got {window}"
    if not 0.0 <= rope_fraction <= 1.0:
        return f"rope_fraction must be in [0, 1], got {rope_fraction}"
    if clip_qkv is not None and not clip_qkv > 0:
        return f"clip_qkv must be positive, got {clip_qkv}"
    if alibi_scale != 1.0 and pos != "alibi":
        return (f"alibi_scale={alibi_scale} needs pos=alibi, got pos={pos}", "set pos=alibi")
    return None


def rotary_sizes(head_dim: int, rope_fraction: float) -> tuple[int, int]:
    """``(n, r)``: the rotary size ``n = int(head_dim * rope_fraction)`` that sets the
    frequencies ``theta ** (-2i / n)``, one per pair ``i < ceil(n / 2)``, and the ``r = 2 *
    ceil(n / 2)`` dims that rotate: transformers' arithmetic exactly (GPT-NeoX, partial rotary
    factors), so an odd ``n`` rotates ``n + 1`` dims. Where that exceeds the head (an odd
    ``head_dim`` rotated whole, which transformers cannot run) ``n`` is rounded down to even
    and the last dim stays unrotated."""
    n = int(head_dim * rope_fraction)
    r = 2 * ((n + 1) // 2)
    if r > head_dim:
        n = r = n // 2 * 2
    return n, r


def _check_attn(d_in: int, **args) -> Problem:
    return _check_heads(d_in, **args) or _check_attn_options(**args)


def _dims(d_in: int, heads: int, kv_heads: int | None, head_dim: int | None) -> tuple[int, int]:
    """``(kv_heads, head_dim)`` with their defaults filled in."""
    return (heads if kv_heads is None else kv_heads), (
        d_in // heads if head_dim is None else head_dim
    )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Llama / GPT-NeoX: ``[x1, x2] -> [-x2, x1]`` over the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """GPT-J: ``(x0, x1), (x2, x3), ... -> (-x1, x0), (-x3, x2), ...`` over adjacent pairs."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> torch.Tensor:
    """Rotate the first ``r = 2 * cos.shape[-1]`` dims of each head of ``x`` (B, H, T, hd);
    ``cos``/``sin`` are (T, r/2) or (B, 1, T, r/2), one angle per rotated pair."""
    r = 2 * cos.shape[-1]
    if interleaved:  # pairs are adjacent dims (2i, 2i+1)
        cos, sin = cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)
        rotate = rotate_every_two
    else:  # pairs are (i, i + r/2)
        cos, sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
        rotate = rotate_half
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if r == x.shape[-1]:  # the whole head rotates: no slicing, no concatenation (no copies)
        return x * cos + rotate(x) * sin
    x_rot, x_pass = x[..., :r], x[..., r:]
    return torch.cat((x_rot * cos + rotate(x_rot) * sin, x_pass), dim=-1)


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's head slopes ``2^(-8h/H)``, with the paper's interleaving for non-powers of 2."""

    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        slopes = power_of_2(heads)
    else:
        closest = 2 ** math.floor(math.log2(heads))
        slopes = power_of_2(closest) + power_of_2(2 * closest)[0::2][: heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    is_causal: bool = False,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    cap: float | None = None,
    dropout: float = 0.0,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``softmax(q k^T * scale [softcapped] + bias, masked) v`` for (B, H, T|S, hd) tensors.

    ``mask`` is boolean, True where a query may see a key; ``bias`` is additive (ALiBi).
    Uses ``F.scaled_dot_product_attention`` unless soft-capping needs the scores explicitly.
    ``enable_gqa``: ``k``/``v`` have fewer heads (B, K, S, hd), which SDPA shares between the
    query heads itself (query head h reads kv head h // (H / K)); SDPA path only.
    """
    if cap is None:
        attn_mask = mask  # boolean, or an additive float mask when there is a bias
        if bias is not None:
            attn_mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
            attn_mask = attn_mask.to(q.dtype)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=dropout,
            is_causal=is_causal and attn_mask is None,
            scale=scale,
            **({"enable_gqa": True} if enable_gqa else {}),
        )
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S)
    scores = softcap(scores, cap)
    if bias is not None:
        scores = scores + bias
    if is_causal and mask is None:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.softmax(scores.float(), dim=-1).to(q.dtype)
    probs = F.dropout(probs, p=dropout) if dropout > 0 else probs
    return probs @ v  # (B, H, T, hd)


# --------------------------------------------------------------------------- declarations


def _attn_params(
    d_in: int,
    heads: int,
    kv_heads: int | None,
    head_dim: int | None,
    qk_norm: bool,
    bias: bool,
    d_memory: int | None = None,
    gate: bool = False,
    **_,
) -> int:
    kv, hd = _dims(d_in, heads, kv_heads, head_dim)
    d_kv = d_memory or d_in
    q = (d_in + bias) * heads * hd * (2 if gate else 1)  # + the output gate's projection
    k_and_v = 2 * (d_kv + bias) * kv * hd
    o = heads * hd * d_in + bias * d_in
    return q + k_and_v + o + (2 * hd if qk_norm else 0)


def _attn_flops(
    d_in: int,
    seq: int,
    heads: int,
    kv_heads: int | None,
    head_dim: int | None,
    bias: bool,
    window: int | None = None,
    d_memory: int | None = None,
    gate: bool = False,
    **_,
) -> int:
    kv, hd = _dims(d_in, heads, kv_heads, head_dim)
    d_kv = d_memory or d_in
    projections = seq * (
        (2 * d_in + bias) * heads * hd
        + 2 * (2 * d_kv + bias) * kv * hd
        + (2 * heads * hd + bias) * d_in
        + gate * ((2 * d_in + bias) * heads * hd + 2 * heads * hd)  # gate and its product
    )
    keys = seq if window is None else min(seq, window)
    return projections + 2 * 2 * seq * keys * heads * hd  # + QK^T and AV


# --------------------------------------------------------------------------- modules


class _Projections(nn.Module):
    """q, k, v, o linears and optional q/k RMSNorm, shared by Attn and CrossAttn."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        kv_heads: int | None,
        head_dim: int | None,
        qk_norm: bool,
        softcap: float | None,
        scale: float | None,
        bias: bool,
        dropout: float,
        d_memory: int | None = None,
        gate: bool = False,
        qk_norm_eps: float = 1e-6,
        clip_qkv: float | None = None,
    ) -> None:
        super().__init__()
        raise_problem(_check_heads(d_model, heads, kv_heads, head_dim, dropout))
        self.clip_qkv = clip_qkv
        kv, hd = _dims(d_model, heads, kv_heads, head_dim)
        self.heads, self.kv_heads, self.head_dim = heads, kv, hd
        self.groups = heads // kv  # query heads per kv head (GQA)
        self.scale = hd**-0.5 if scale is None else scale
        self.softcap, self.dropout = softcap, dropout
        d_kv = d_memory or d_model
        self.q = nn.Linear(d_model, heads * hd, bias=bias)
        self.k = nn.Linear(d_kv, kv * hd, bias=bias)
        self.v = nn.Linear(d_kv, kv * hd, bias=bias)
        self.o = nn.Linear(heads * hd, d_model, bias=bias)
        self.q_norm = Norm(hd, kind="rms", eps=qk_norm_eps) if qk_norm else None
        self.k_norm = Norm(hd, kind="rms", eps=qk_norm_eps) if qk_norm else None
        self.gate = nn.Linear(d_model, heads * hd, bias=bias) if gate else None

    def projections(
        self, x: torch.Tensor, kv_source: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The q, k, v linears, each clamped to ``[-clip_qkv, clip_qkv]`` when set (MPT)."""
        q, k, v = self.q(x), self.k(kv_source), self.v(kv_source)
        if self.clip_qkv is not None:
            c = self.clip_qkv
            q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
        return q, k, v

    def project(
        self, x: torch.Tensor, kv_source: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.projections(x, kv_source)
        q = rearrange(q, "b t (h d) -> b h t d", h=self.heads)  # (B, H, T, hd)
        k = rearrange(k, "b s (h d) -> b h s d", h=self.kv_heads)  # (B, K, S, hd)
        v = rearrange(v, "b s (h d) -> b h s d", h=self.kv_heads)  # (B, K, S, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def repeat_kv(self, kv: torch.Tensor) -> torch.Tensor:
        """(B, K, S, hd) -> (B, H, S, hd): query head h reads kv head h // (H / K)."""
        return kv if self.groups == 1 else kv.repeat_interleave(self.groups, dim=1)

    def sdpa_gqa(self, masked: bool = False) -> bool:
        """Whether SDPA shares the kv heads itself (``enable_gqa``), so that ``k``/``v`` need not
        be repeated: grouped heads, no soft-capping (explicit scores), no mask or bias (the
        fused kernels that take grouped heads take no mask either), torch >= 2.5."""
        return self.groups > 1 and self.softcap is None and not masked and _SDPA_HAS_GQA

    def merge(self, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Heads concatenated, gated by ``sigmoid(gate(x))`` with an output gate, then ``o``."""
        y = rearrange(y, "b h t d -> b t (h d)")
        if self.gate is not None:
            y = y * torch.sigmoid(self.gate(x))
        return self.o(y)  # (B, T, D)


def _attn_steps(
    d_in: int,
    seq: int,
    batch: int,
    heads: int,
    kv_heads: int | None,
    head_dim: int | None,
    window: int | None = None,
    gate: bool = False,
    **_,
) -> list[tuple[str, tuple[str, ...], tuple[int, ...], int]]:
    """Attention's steps for ``blockdsl compile --show-shapes --depth 2``: ``(name, symbolic
    shape, concrete shape, forward FLOPs of the batch)``; scores over ``min(T, window)`` keys
    are counted, as in ``_attn_flops``."""
    kv, hd = _dims(d_in, heads, kv_heads, head_dim)
    n = batch * seq
    keys = seq if window is None else min(seq, window)
    gate_flops = (2 * d_in + 2) * n * heads * hd  # the gate's projection and product
    return [
        ("q", ("B", "H", "T", "hd"), (batch, heads, seq, hd), 2 * n * d_in * heads * hd),
        ("k", ("B", "K", "T", "hd"), (batch, kv, seq, hd), 2 * n * d_in * kv * hd),
        ("v", ("B", "K", "T", "hd"), (batch, kv, seq, hd), 2 * n * d_in * kv * hd),
        ("scores", ("B", "H", "T", "T"), (batch, heads, seq, seq), 2 * n * keys * heads * hd),
        ("mix", ("B", "H", "T", "hd"), (batch, heads, seq, hd), 2 * n * keys * heads * hd),
        *([("gate", ("B", "T", "H·hd"), (batch, seq, heads * hd), gate_flops)] if gate else []),
        ("o", ("B", "T", "D"), (batch, seq, d_in), 2 * n * heads * hd * d_in),
    ]


def _attn_state_size(
    d_in: int, context: int, heads: int, kv_heads: int | None, head_dim: int | None, **_
) -> int:
    kv, hd = _dims(d_in, heads, kv_heads, head_dim)
    return 2 * kv * hd * context  # keys and values of every position


@register(
    "Attn",
    out_features=same_size,
    mixes_positions=True,
    params=_attn_params,
    flops=_attn_flops,
    check=_check_attn,
    state_size=_attn_state_size,
)
class Attn(_Projections):
    """Multi-head self-attention: MHA/MQA/GQA, RoPE or ALiBi, sliding window, soft-capping.

    * ``kv_heads`` (default ``heads``): query head ``h`` uses kv head ``h // (heads // kv_heads)``
      (HF ``repeat_kv``); ``kv_heads=1`` is MQA.
    * ``pos=rope``: rotary embedding of the first ``n = int(head_dim * rope_fraction)`` dims of
      each head (GPT-NeoX partial rotary; frequencies ``theta ** (-2i / n)`` and, for an odd
      ``n``, ``n + 1`` rotated dims, as transformers computes them), pairs ``(i, i + r/2)`` (Llama
      ``rotate_half``) or, with ``rope_interleaved``, adjacent pairs (GPT-J ``rotate_every_two``);
      the cos/sin tables are non-persistent buffers ``rope_cos``/``rope_sin`` of ``context``
      rows, indexed by ``positions`` (default ``arange(T)``; must be ``< context``).
      ``pos=alibi``: per-head linear bias ``-slope_h * (i - j)`` on query/key *indices*, added
      to the scaled scores; slopes ``alibi_scale * 2^(-8h/H)`` (``alibi_scale``: Falcon adds
      ALiBi before scaling the scores, so its slopes are scaled by ``head_dim ** -0.5``), kept
      in the non-persistent buffer ``alibi``.
    * ``causal`` (default true): query ``i`` sees keys ``j <= i``; ``window``: only keys with
      ``i - j < window`` (HF Mistral/Gemma 2). Masks are index based (built with one broadcast
      compare per call); with neither window nor ALiBi nor soft-capping SDPA's ``is_causal``.
    * ``qk_norm``: RMSNorm over ``head_dim`` of queries and keys (before rotary), weights
      ``q_norm.weight``/``k_norm.weight`` shared by the heads (epsilon ``qk_norm_eps``).
    * ``gate``: head-wise output gate (Qwen3-Next): the concatenated heads are multiplied by
      ``sigmoid(gate(x))`` (a ``D -> heads * head_dim`` linear of the input) before ``o``.
    * ``clip_qkv``: the q, k and v projections (with their biases) clamped to ``[-clip_qkv,
      clip_qkv]`` before anything else (MPT).
    * ``softcap``: scores ``softcap * tanh(scores / softcap)`` after scaling (Gemma 2); computed
      with explicit math, SDPA otherwise. ``scale`` defaults to ``head_dim ** -0.5``.
    * ``dropout``: on the attention probabilities, in training only.
    * decoding (``state``, docs/generation.md): a static cache ``k``/``v`` of shape
      ``(B, kv_heads, max_len, head_dim)`` (keys after rotary), written at each row's absolute
      positions; a query at position ``p`` sees the cached keys ``j <= p`` (and ``p - j <
      window``), with ALiBi's bias ``-slope * (p - j)``: the full path's masks, per row.

    Parameters: ``q``, ``k``, ``v``, ``o`` (``nn.Linear``; biases with ``bias``),
    ``q_norm``, ``k_norm`` (with ``qk_norm``), ``gate`` (with ``gate``).
    """

    arg_help: ClassVar[dict[str, str]] = {
        "heads": "query heads",
        "kv_heads": "key/value heads (GQA; 1 = MQA); none: = heads",
        "head_dim": "size of each head; none: d_model // heads",
        "pos": "positions: rope (rotary), alibi (linear distance bias) or none",
        "rope_theta": "rotary base",
        "rope_fraction": "fraction of each head's dims that rotate (GPT-NeoX partial rotary)",
        "rope_interleaved": "rotate adjacent pairs (GPT-J) instead of halves (Llama/NeoX)",
        "causal": "query t sees only keys <= t",
        "window": "sliding window: query t sees keys t-window+1 ... t; none: unlimited",
        "qk_norm": "RMSNorm of queries and keys over head_dim",
        "softcap": "cap scores with `softcap * tanh(scores / softcap)` (Gemma 2); none: off",
        "scale": "score scale; none: head_dim ** -0.5",
        "bias": "biases on the q, k, v, o projections",
        "dropout": "dropout on attention probabilities (training only)",
        "context": "maximum sequence length (rotary table size; set by the model)",
        "gate": "head-wise output gate `sigmoid(gate(x))` before `o` (Qwen3-Next)",
        "qk_norm_eps": "epsilon of the q/k RMSNorm",
        "alibi_scale": "multiplies the ALiBi slopes (Falcon: head_dim ** -0.5)",
        "clip_qkv": "clamp q, k, v projections to [-clip_qkv, clip_qkv] (MPT); none: off",
    }

    shape_steps = staticmethod(_attn_steps)

    def __init__(
        self,
        d_model: int,
        heads: int = 8,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        pos: Literal["rope", "alibi", "none"] = "rope",
        rope_theta: float = 10000.0,
        rope_fraction: float = 1.0,
        rope_interleaved: bool = False,
        causal: bool = True,
        window: int | None = None,
        qk_norm: bool = False,
        softcap: float | None = None,
        scale: float | None = None,
        bias: bool = False,
        dropout: float = 0.0,
        context: int = 2048,
        gate: bool = False,
        qk_norm_eps: float = 1e-6,
        alibi_scale: float = 1.0,
        clip_qkv: float | None = None,
    ) -> None:
        super().__init__(
            d_model, heads, kv_heads, head_dim, qk_norm, softcap, scale, bias, dropout,
            gate=gate, qk_norm_eps=qk_norm_eps, clip_qkv=clip_qkv,
        )  # fmt: skip
        raise_problem(
            _check_attn_options(
                window=window,
                rope_fraction=rope_fraction,
                clip_qkv=clip_qkv,
                pos=pos,
                alibi_scale=alibi_scale,
            )
        )
        self.alibi_scale = alibi_scale
        self.pos, self.causal, self.window, self.context = pos, causal, window, context
        self.rope_theta, self.rope_interleaved = rope_theta, rope_interleaved
        # rotary_size sets the frequencies, rotary_dims (its even round-up) the rotated dims.
        self.rotary_size, self.rotary_dims = (
            rotary_sizes(self.head_dim, rope_fraction) if pos == "rope" else (0, 0)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Recompute the non-persistent tables (rotary cos/sin, ALiBi slopes)."""
        device = self.q.weight.device
        if self.rotary_dims and device.type == "meta":  # shapes only: nothing to compute
            shape = (self.context, self.rotary_dims // 2)
            self.register_buffer(
                "rope_cos", torch.empty(shape, device=device, dtype=torch.float32), persistent=False
            )
            self.register_buffer(
                "rope_sin", torch.empty(shape, device=device, dtype=torch.float32), persistent=False
            )
        elif self.rotary_dims:
            n = self.rotary_size
            inv_freq = 1.0 / self.rope_theta ** (
                torch.arange(0, n, 2, dtype=torch.float32, device=device) / n
            )  # (r/2,)
            t = torch.arange(self.context, dtype=torch.float32, device=device)
            angles = torch.outer(t, inv_freq)  # (context, r/2)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
        if self.pos == "alibi":  # (H,) slopes
            slopes = alibi_slopes(self.heads) * self.alibi_scale
            self.register_buffer("alibi", slopes.to(device), persistent=False)

    def _mask(self, T: int, device: torch.device) -> torch.Tensor | None:
        """Boolean (T, T), True where query i may see key j; None for plain causal/full."""
        if self.window is None and (self.pos != "alibi" or not self.causal):
            return None
        i = torch.arange(T, device=device)[:, None]
        j = torch.arange(T, device=device)[None, :]
        distance = i - j
        if self.window is None:
            return distance >= 0
        if self.causal:
            return (distance >= 0) & (distance < self.window)
        return distance.abs() < self.window

    def init_state(self, batch_size: int, max_len: int) -> dict[str, torch.Tensor]:
        """A static key/value cache of ``max_len`` positions: ``k``, ``v`` (B, K, max_len, hd)."""
        weight = self.k.weight
        shape = (batch_size, self.kv_heads, max_len, self.head_dim)
        return {
            "k": torch.zeros(shape, device=weight.device, dtype=weight.dtype),
            "v": torch.zeros(shape, device=weight.device, dtype=weight.dtype),
        }

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if state is not None:
            return self._decode(x, positions, state)
        T = x.shape[1]
        q, k, v = self.project(x, x)  # (B, H, T, hd), (B, K, T, hd), (B, K, T, hd)
        if self.rotary_dims:
            if positions is None:
                cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, r/2)
            else:
                cos, sin = self.rope_cos[positions], self.rope_sin[positions]
                if positions.dim() == 2:  # (B, T, r/2) -> (B, 1, T, r/2)
                    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            q = apply_rotary(q, cos, sin, self.rope_interleaved)
            k = apply_rotary(k, cos, sin, self.rope_interleaved)
        gqa = self.sdpa_gqa(masked=self.window is not None or self.pos == "alibi")
        if not gqa:
            k, v = self.repeat_kv(k), self.repeat_kv(v)  # (B, H, T, hd)
        mask = self._mask(T, x.device)
        bias = None
        if self.pos == "alibi":
            idx = torch.arange(T, device=x.device, dtype=torch.float32)
            distance = (idx[:, None] - idx[None, :]).abs()  # (T, T)
            bias = -self.alibi[:, None, None] * distance  # (H, T, T)
        y = attend(
            q,
            k,
            v,
            scale=self.scale,
            is_causal=self.causal,
            mask=mask,
            bias=bias,
            cap=self.softcap,
            dropout=self.dropout if self.training else 0.0,
            enable_gqa=gqa,
        )  # (B, H, T, hd)
        return self.merge(y, x)

    def _rotate(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary of the new queries and keys at ``positions`` (B, T) (``apply_rotary``'s
        math with the angles looked up per row)."""
        cos = self.rope_cos[positions].unsqueeze(1)  # (B, 1, T, r/2)
        sin = self.rope_sin[positions].unsqueeze(1)
        if self.rope_interleaved:  # pairs (2i, 2i+1)
            cos, sin = cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)
            rotate = rotate_every_two
        else:  # pairs (i, i + r/2)
            cos, sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
            rotate = rotate_half
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # (B, 1, T, r), shared by q and k
        r = self.rotary_dims

        def rotated(x: torch.Tensor) -> torch.Tensor:
            if r == x.shape[-1]:
                return x * cos + rotate(x) * sin
            x_rot, x_pass = x[..., :r], x[..., r:]
            return torch.cat((x_rot * cos + rotate(x_rot) * sin, x_pass), dim=-1)

        return rotated(q), rotated(k)

    def _decode(
        self, x: torch.Tensor, positions: torch.Tensor | None, state: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The new tokens ``x`` (B, T, D) at ``positions`` (B, T), attending to the cache.

        Query heads are grouped by the kv head they read, ``(B, K, G*T, hd)``, so the cache is
        never repeated; in eager mode only the slots some query may see are read, without a
        mask when every row is at one position (under ``torch.compile`` the whole cache,
        masked: static shapes)."""
        if positions is None:
            raise ValueError("Attn with a decoding state needs positions (B, T_new)")
        B, T = x.shape[:2]
        K, G, hd = self.kv_heads, self.groups, self.head_dim
        positions = positions.expand(B, T) if positions.dim() == 2 else positions.expand(B, -1)
        cache_k, cache_v = state["k"], state["v"]  # (B, K, L, hd)
        q, k, v = self.projections(x, x)
        q = q.view(B, T, self.heads, hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, K, hd).transpose(1, 2)  # (B, K, T, hd)
        v = v.view(B, T, K, hd).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary_dims:
            q, k = self._rotate(q, k, positions)
        slots = positions[:, None, :, None].expand(B, K, T, hd)
        cache_k.scatter_(2, slots, k.to(cache_k.dtype))
        cache_v.scatter_(2, slots, v.to(cache_v.dtype))
        keys, values, start, uniform = cache_k, cache_v, 0, False
        if not torch.compiler.is_compiling():
            # read only cache slots some query may see: none past the furthest position, none
            # before the window of the nearest; one step of rows at one position sees them all
            low, high = (int(p) for p in torch.aminmax(positions))
            used = high + 1
            if self.window is not None:
                start = max(0, low - self.window + 1)
            keys, values = cache_k[:, :, start:used], cache_v[:, :, start:used]
            uniform = T == 1 and low == high
        j = torch.arange(start, start + keys.shape[2], device=x.device)  # (L,) key positions
        distance = (positions[:, :, None] - j).repeat(1, G, 1)[:, None]  # (B, 1, G*T, L)
        mask = None
        if not uniform:
            mask = distance >= 0  # causal (the cache past a row's position is never seen)
            if self.window is not None:
                mask = mask & (distance < self.window)
        bias = None
        if self.pos == "alibi":  # (B, K, G*T, L): query head k*G + g has slope alibi[k*G + g]
            slopes = self.alibi.view(K, G, 1).expand(K, G, T).reshape(K, G * T, 1)
            bias = -slopes * distance.to(torch.float32)
        q = q.reshape(B, K, G * T, hd)  # query head h = k*G + g reads kv head k
        y = attend(q, keys, values, scale=self.scale, mask=mask, bias=bias, cap=self.softcap)
        y = y.view(B, self.heads, T, hd).transpose(1, 2).reshape(B, T, self.heads * hd)
        if self.gate is not None:
            y = y * torch.sigmoid(self.gate(x))
        return self.o(y)  # (B, T, D)

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
            f"pos={self.pos}, causal={self.causal}, window={self.window}"
        )


@register(
    "CrossAttn", out_features=same_size, params=_attn_params, flops=_attn_flops, check=_check_heads
)
class CrossAttn(_Projections):
    """Cross-attention from the stream to a ``memory`` (B, S, d_memory) given at call time.

    Every query sees every memory position (no mask, no positional encoding); the stream's own
    positions are not mixed, so it needs no causality. ``d_memory`` defaults to ``d_model``.
    FLOPs are counted with ``S = seq``. Parameters: ``q``, ``k``, ``v``, ``o`` (and ``q_norm``,
    ``k_norm`` with ``qk_norm``), as in Attn.
    """

    arg_help: ClassVar[dict[str, str]] = {
        "heads": "query heads",
        "kv_heads": "key/value heads (GQA; 1 = MQA); none: = heads",
        "head_dim": "size of each head; none: d_model // heads",
        "d_memory": "feature size of the memory; none: = d_model",
        "qk_norm": "RMSNorm of queries and keys over head_dim",
        "softcap": "cap scores with `softcap * tanh(scores / softcap)`; none: off",
        "scale": "score scale; none: head_dim ** -0.5",
        "bias": "biases on the q, k, v, o projections",
        "dropout": "dropout on attention probabilities (training only)",
    }

    def __init__(
        self,
        d_model: int,
        heads: int = 8,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        d_memory: int | None = None,
        qk_norm: bool = False,
        softcap: float | None = None,
        scale: float | None = None,
        bias: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            d_model, heads, kv_heads, head_dim, qk_norm, softcap, scale, bias, dropout, d_memory
        )

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x, memory)  # (B, H, T, hd), (B, K, S, hd), (B, K, S, hd)
        gqa = self.sdpa_gqa()
        if not gqa:
            k, v = self.repeat_kv(k), self.repeat_kv(v)  # (B, H, S, hd)
        y = attend(
            q,
            k,
            v,
            scale=self.scale,
            cap=self.softcap,
            dropout=self.dropout if self.training else 0.0,
            enable_gqa=gqa,
        )  # (B, H, T, hd)
        return self.merge(y)  # (B, T, D)
