"""Multi-head latent attention (MLA, DeepSeek-V2/V3): keys and values are decoded per head from
one small latent per token, so a decoding cache holds that latent and one shared rotary key.

Shapes in comments: ``B`` batch, ``T`` query length, ``S``/``L`` key length, ``H`` heads,
``n`` the no-rope part of a query/key head, ``r`` its rotary part, ``v`` a value head, ``c`` the
latent (``kv_lora_rank``).
"""

from __future__ import annotations

import torch
from torch import nn

from blockdsl.components._util import Problem, raise_problem, same_size
from blockdsl.components.attention import apply_rotary, attend
from blockdsl.components.norm import Norm
from blockdsl.registry import register


def _check_mla(
    d_in: int,
    heads: int = 8,
    kv_lora_rank: int = 64,
    q_lora_rank: int | None = None,
    qk_nope_head_dim: int = 32,
    qk_rope_head_dim: int = 16,
    v_head_dim: int = 32,
    **_,
) -> Problem:
    if heads <= 0:
        return f"MLA heads must be positive, got {heads}"
    if kv_lora_rank <= 0:
        return f"MLA kv_lora_rank must be positive, got {kv_lora_rank}"
    if q_lora_rank is not None and q_lora_rank <= 0:
        return f"MLA q_lora_rank must be positive or none, got {q_lora_rank}"
    if qk_rope_head_dim <= 0 or qk_rope_head_dim % 2:
        return (
            f"MLA qk_rope_head_dim must be positive and even, got {qk_rope_head_dim}",
            "the rotary part of each head rotates pairs of dims",
        )
    if qk_nope_head_dim < 0:
        return f"MLA qk_nope_head_dim must be at least 0, got {qk_nope_head_dim}"
    if v_head_dim <= 0:
        return f"MLA v_head_dim must be positive, got {v_head_dim}"
    return None


def _mla_params(
    d_in: int,
    heads: int,
    kv_lora_rank: int,
    q_lora_rank: int | None,
    qk_nope_head_dim: int,
    qk_rope_head_dim: int,
    v_head_dim: int,
    bias: bool,
    **_,
) -> int:
    H, c, qk = heads, kv_lora_rank, qk_nope_head_dim + qk_rope_head_dim
    if q_lora_rank is None:
        q = d_in * H * qk
    else:  # q_a (+ bias), its RMSNorm, q_b
        q = (d_in + bias) * q_lora_rank + q_lora_rank + q_lora_rank * H * qk
    kv_a = (d_in + bias) * (c + qk_rope_head_dim)
    kv_b = c + c * H * (qk_nope_head_dim + v_head_dim)  # the latent's RMSNorm, kv_b
    o = H * v_head_dim * d_in + bias * d_in
    return q + kv_a + kv_b + o


def _mla_steps(
    d_in: int,
    seq: int,
    batch: int,
    heads: int,
    kv_lora_rank: int,
    q_lora_rank: int | None,
    qk_nope_head_dim: int,
    qk_rope_head_dim: int,
    v_head_dim: int,
    **_,
) -> list[tuple[str, tuple[str, ...], tuple[int, ...], int]]:
    """MLA's steps for ``blockdsl compile --show-shapes --depth 2``: ``(name, symbolic shape,
    concrete shape, forward FLOPs of the batch)`` of the full-sequence path."""
    H, c, n, r, v = heads, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim
    N = batch * seq
    steps = []
    if q_lora_rank is not None:
        steps.append(
            ("q_a", ("B", "T", "q"), (batch, seq, q_lora_rank), 2 * N * d_in * q_lora_rank)
        )
        q_flops = 2 * N * q_lora_rank * H * (n + r)
    else:
        q_flops = 2 * N * d_in * H * (n + r)
    return [
        *steps,
        ("q", ("B", "H", "T", "n+r"), (batch, H, seq, n + r), q_flops),
        ("latent", ("B", "T", "c+r"), (batch, seq, c + r), 2 * N * d_in * (c + r)),
        ("k_nope|v", ("B", "H", "T", "n+v"), (batch, H, seq, n + v), 2 * N * c * H * (n + v)),
        ("scores", ("B", "H", "T", "T"), (batch, H, seq, seq), 2 * N * seq * H * (n + r)),
        ("mix", ("B", "H", "T", "v"), (batch, H, seq, v), 2 * N * seq * H * v),
        ("o", ("B", "T", "D"), (batch, seq, d_in), 2 * N * H * v * d_in),
    ]


def _mla_flops(d_in: int, seq: int, **args) -> int:
    return sum(step[3] for step in _mla_steps(d_in, seq, 1, **args))


def _mla_state_size(d_in: int, context: int, kv_lora_rank: int, qk_rope_head_dim: int, **_) -> int:
    return (kv_lora_rank + qk_rope_head_dim) * context  # the latent and the rotary key


_MLA_HELP: dict[str, str] = {
    "heads": "attention heads",
    "kv_lora_rank": "size of the key/value latent cached per token",
    "q_lora_rank": "rank of the low-rank query projection; none: one full projection",
    "qk_nope_head_dim": "per head: query/key dims without rotary",
    "qk_rope_head_dim": "per head: query/key dims with rotary (the key part is shared)",
    "v_head_dim": "per head: value dims",
    "rope_theta": "rotary base",
    "rope_interleaved": "rotate adjacent pairs (DeepSeek) instead of halves",
    "scale": "score scale; none: (qk_nope_head_dim + qk_rope_head_dim) ** -0.5",
    "bias": "biases on q_a, kv_a and o (HF attention_bias)",
    "norm_eps": "epsilon of the latent RMSNorms",
    "context": "maximum sequence length (rotary table size; set by the model)",
}


@register(
    "MLA",
    out_features=same_size,
    mixes_positions=True,
    params=_mla_params,
    flops=_mla_flops,
    check=_check_mla,
    state_size=_mla_state_size,
    decodes=True,
    arg_help=_MLA_HELP,
    shape_steps=_mla_steps,
)
class MLA(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3), causal.

    Queries: ``q(x)``, or with ``q_lora_rank`` the low-rank ``q_b(q_norm(q_a(x)))``; each of the
    ``heads`` query heads is ``[nope (qk_nope_head_dim) | rope (qk_rope_head_dim)]``. Keys and
    values: ``kv_a(x)`` gives a latent ``c`` (``kv_lora_rank``) and one rotary key ``k_rope``
    shared by every head; ``kv_b(kv_norm(c))`` gives each head's ``[k_nope | v (v_head_dim)]``
    and its key is ``[k_nope | k_rope]``. Rotary embedding (base ``rope_theta``) rotates the
    query's and key's rope parts only: halves (``rotate_half``) or, with ``rope_interleaved``,
    adjacent pairs (DeepSeek-V2, V3's ``rope_interleave``). Scores are scaled by ``scale``
    (default ``(qk_nope_head_dim + qk_rope_head_dim) ** -0.5``); ``o`` maps the heads' values
    back to ``d_model``. ``q_norm``/``kv_norm`` are RMSNorms with epsilon ``norm_eps``.

    Decoding (``state``, docs/generation.md) caches what MLA is designed to cache: per token the
    normalised latent and the rotated shared key, ``kv_lora_rank + qk_rope_head_dim`` numbers
    (``latent`` (B, max_len, c), ``k_rope`` (B, max_len, r)), against ``2 * heads * head_dim``
    for multi-head attention. A step never expands the cache into per-head keys: ``kv_b``'s
    key part is absorbed into the queries (``q_nope @ W_uk`` scores against the latent
    directly) and its value part applied after the weighted sum of latents, so every head reads
    the one cached latent (a single shared key/value head).

    Parameters: ``q`` (or ``q_a``, ``q_norm``, ``q_b``), ``kv_a``, ``kv_norm``, ``kv_b``, ``o``;
    ``bias`` puts biases on ``q_a``, ``kv_a`` and ``o`` (HF ``attention_bias``).
    """

    def __init__(
        self,
        d_model: int,
        heads: int = 8,
        kv_lora_rank: int = 64,
        q_lora_rank: int | None = None,
        qk_nope_head_dim: int = 32,
        qk_rope_head_dim: int = 16,
        v_head_dim: int = 32,
        rope_theta: float = 10000.0,
        rope_interleaved: bool = False,
        scale: float | None = None,
        bias: bool = False,
        norm_eps: float = 1e-6,
        context: int = 2048,
    ) -> None:
        super().__init__()
        raise_problem(
            _check_mla(
                d_model, heads, kv_lora_rank, q_lora_rank, qk_nope_head_dim, qk_rope_head_dim,
                v_head_dim,
            )
        )  # fmt: skip
        H, c = heads, kv_lora_rank
        n, r, v = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.heads, self.kv_lora_rank = H, c
        self.nope_dim, self.rope_dim, self.v_dim = n, r, v
        self.scale = (n + r) ** -0.5 if scale is None else scale
        self.rope_theta, self.rope_interleaved, self.context = rope_theta, rope_interleaved, context
        if q_lora_rank is None:
            self.q = nn.Linear(d_model, H * (n + r), bias=False)
            self.q_a = self.q_norm = self.q_b = None
        else:
            self.q = None
            self.q_a = nn.Linear(d_model, q_lora_rank, bias=bias)
            self.q_norm = Norm(q_lora_rank, kind="rms", eps=norm_eps)
            self.q_b = nn.Linear(q_lora_rank, H * (n + r), bias=False)
        self.kv_a = nn.Linear(d_model, c + r, bias=bias)
        self.kv_norm = Norm(c, kind="rms", eps=norm_eps)
        self.kv_b = nn.Linear(c, H * (n + v), bias=False)
        self.o = nn.Linear(H * v, d_model, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Recompute the rotary cos/sin tables (non-persistent buffers)."""
        device = self.kv_a.weight.device
        shape = (self.context, self.rope_dim // 2)
        if device.type == "meta":
            cos = sin = torch.empty(shape, device=device, dtype=torch.float32)
        else:
            r = self.rope_dim
            inv_freq = 1.0 / self.rope_theta ** (
                torch.arange(0, r, 2, dtype=torch.float32, device=device) / r
            )  # (r/2,)
            t = torch.arange(self.context, dtype=torch.float32, device=device)
            angles = torch.outer(t, inv_freq)  # (context, r/2)
            cos, sin = angles.cos(), angles.sin()
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    # ------------------------------------------------------------------ pieces
    def _queries(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> the queries' no-rope and rope parts, (B, H, T, n) and (B, H, T, r)."""
        B, T = x.shape[:2]
        q = self.q(x) if self.q is not None else self.q_b(self.q_norm(self.q_a(x)))
        q = q.view(B, T, self.heads, self.nope_dim + self.rope_dim).transpose(1, 2)
        return q.split([self.nope_dim, self.rope_dim], dim=-1)

    def _latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> the normalised latent (B, T, c) and the shared rope key (B, 1, T, r)."""
        latent, k_rope = self.kv_a(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        return self.kv_norm(latent), k_rope.unsqueeze(1)

    def _angles(self, T: int, positions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (T, r/2), or (B, 1, T, r/2) for per-row positions (B, T)."""
        if positions is None:
            return self.rope_cos[:T], self.rope_sin[:T]
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return cos, sin

    def _head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``kv_b`` per head: the key part (H, n, c) and the value part (H, v, c)."""
        w = self.kv_b.weight.view(self.heads, self.nope_dim + self.v_dim, self.kv_lora_rank)
        return w[:, : self.nope_dim], w[:, self.nope_dim :]

    # ------------------------------------------------------------------ forward
    def init_state(self, batch_size: int, max_len: int) -> dict[str, torch.Tensor]:
        """The latent cache: ``latent`` (B, max_len, c) and ``k_rope`` (B, max_len, r)."""
        weight = self.kv_a.weight
        kwargs = {"device": weight.device, "dtype": weight.dtype}
        return {
            "latent": torch.zeros(batch_size, max_len, self.kv_lora_rank, **kwargs),
            "k_rope": torch.zeros(batch_size, max_len, self.rope_dim, **kwargs),
        }

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if state is not None:
            return self._decode(x, positions, state)
        B, T = x.shape[:2]
        q_nope, q_rope = self._queries(x)  # (B, H, T, n), (B, H, T, r)
        latent, k_rope = self._latent(x)  # (B, T, c), (B, 1, T, r)
        cos, sin = self._angles(T, positions)
        q_rope = apply_rotary(q_rope, cos, sin, self.rope_interleaved)
        k_rope = apply_rotary(k_rope, cos, sin, self.rope_interleaved)
        kv = self.kv_b(latent).view(B, T, self.heads, self.nope_dim + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)  # (B, H, T, n), (B, H, T, v)
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(-1, self.heads, -1, -1)), dim=-1)
        y = attend(q, k, v, scale=self.scale, is_causal=True)  # (B, H, T, v)
        return self.o(y.transpose(1, 2).reshape(B, T, self.heads * self.v_dim))

    def _decode(
        self, x: torch.Tensor, positions: torch.Tensor | None, state: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The new tokens ``x`` (B, T, D) at ``positions`` (B, T) against the latent cache,
        ``kv_b`` absorbed (see the class doc): one shared key/value head of size ``c + r``."""
        if positions is None:
            raise ValueError("MLA with a decoding state needs positions (B, T_new)")
        B, T = x.shape[:2]
        H = self.heads
        positions = positions.expand(B, T) if positions.dim() == 2 else positions.expand(B, -1)
        q_nope, q_rope = self._queries(x)  # (B, H, T, n), (B, H, T, r)
        latent, k_rope = self._latent(x)  # (B, T, c), (B, 1, T, r)
        cos, sin = self._angles(T, positions)  # (B, 1, T, r/2)
        q_rope = apply_rotary(q_rope, cos, sin, self.rope_interleaved)
        k_rope = apply_rotary(k_rope, cos, sin, self.rope_interleaved)[:, 0]  # (B, T, r)
        cache_c, cache_r = state["latent"], state["k_rope"]
        slots = positions[..., None]
        cache_c.scatter_(1, slots.expand(B, T, self.kv_lora_rank), latent.to(cache_c.dtype))
        cache_r.scatter_(1, slots.expand(B, T, self.rope_dim), k_rope.to(cache_r.dtype))
        used = cache_c.shape[1]
        if not torch.compiler.is_compiling():  # read no slot past the furthest position
            used = int(positions.max()) + 1
        keys = torch.cat((cache_c[:, :used], cache_r[:, :used]), dim=-1)[:, None]  # (B,1,L,c+r)
        w_uk, w_uv = self._head_weights()  # (H, n, c), (H, v, c)
        q_latent = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk.to(q_nope.dtype))
        q = torch.cat((q_latent, q_rope), dim=-1).reshape(B, 1, H * T, -1)  # heads as queries
        j = torch.arange(used, device=x.device)
        mask = (positions[:, :, None] >= j).repeat(1, H, 1)[:, None]  # (B, 1, H*T, L)
        mixed = attend(q, keys, keys[..., : self.kv_lora_rank], scale=self.scale, mask=mask)
        mixed = mixed.view(B, H, T, self.kv_lora_rank)  # weighted latents per head
        y = torch.einsum("bhtc,hvc->bthv", mixed, w_uv.to(mixed.dtype))  # (B, T, H, v)
        return self.o(y.reshape(B, T, H * self.v_dim))

    def extra_repr(self) -> str:
        q = "full" if self.q is not None else self.q_a.out_features
        return (
            f"heads={self.heads}, kv_lora_rank={self.kv_lora_rank}, q_lora_rank={q}, "
            f"qk_nope_head_dim={self.nope_dim}, qk_rope_head_dim={self.rope_dim}, "
            f"v_head_dim={self.v_dim}"
        )
