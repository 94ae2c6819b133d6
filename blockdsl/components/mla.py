"""Multi-head latent attention (MLA, DeepSeek-V2/V3): keys and values are decoded per head from
one small latent per token, so a decoding cache holds that latent and one shared rotary key.

Shapes in comments: ``B`` batch, ``T`` query length, ``S``/``L`` key length, ``H`` heads,
``n`` the no-rope part of a query/key head, ``r`` its rotary part, ``v`` a value head, ``c`` the
latent (``kv_lora_rank``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from blockdsl.components._util import Problem, raise_problem, same_size
from blockdsl.components.attention import _call_slot, _grouped, apply_rotary, attend
from blockdsl.components.norm import Norm
from blockdsl.registry import Slot, register


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


# The slots (language v3, docs/language.md "Slots"), all empty by default: per head, after
# MLA's low-rank projections. The decoupled rotary part is the last qk_rope_head_dim features
# of a query or key head; a Rope step in q or k rotates that part where it stands.
def _qk_features(d_in: int, qk_nope_head_dim: int = 32, qk_rope_head_dim: int = 16, **_) -> int:
    return qk_nope_head_dim + qk_rope_head_dim


def _v_features(d_in: int, v_head_dim: int = 32, **_) -> int:
    return v_head_dim


def _heads(d_in: int, heads: int = 8, **_) -> int:
    return heads


MLA_SLOTS: dict[str, Slot] = {
    "q": Slot(
        "heads",
        "per query head (B, T, heads, qk_nope_head_dim + qk_rope_head_dim), [nope | rope], "
        "after q (or q_b), before rotary on the rope part; a Rope step here rotates the "
        "rope part where it stands",
        features=_qk_features,
        heads=_heads,
        rotary=True,
    ),
    "k": Slot(
        "heads",
        "per key head (B, S, heads, qk_nope_head_dim + qk_rope_head_dim), [k_nope | k_rope] "
        "(k_rope shared by the heads), before rotary on the rope part; filled, a decode "
        "step recomputes the cached positions' keys from the latent",
        features=_qk_features,
        heads=_heads,
        rotary=True,
    ),
    "v": Slot(
        "heads",
        "per value head (B, S, heads, v_head_dim), decoded from the latent by kv_b; filled, "
        "a decode step recomputes the cached positions' values from the latent",
        features=_v_features,
        heads=_heads,
    ),
    "o": Slot(
        "heads",
        "per head on the attention's output (B, T, heads, v_head_dim), before o",
        features=_v_features,
        heads=_heads,
    ),
    "scores": Slot(
        "scores",
        "on the scaled logits (B, heads, T, S) before the mask and softmax; extra columns "
        "it appends are sink logits (in the softmax, then dropped)",
        features=lambda d_in, context=2048, **_: context,
        heads=_heads,
    ),
}


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
    slots=MLA_SLOTS,
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

    Slots (docs/language.md "Slots"), empty by default: ``q`` and ``k`` per head ``[nope |
    rope]`` (the key's rope part is the shared ``k_rope``, one copy per head in the slot),
    before rotary positions rotate the rope part, unless the slot holds the ``Rope`` step,
    which then rotates the rope part exactly there; ``v`` per head; ``o`` per head before
    ``o``; ``scores`` on the logits. A block in ``k`` or ``v`` leaves nothing to absorb: a
    decode step then decodes every cached position's keys and values from the cached latent
    (the cache holds the latent and the unrotated ``k_rope``) and runs them through the slots,
    ``O(positions)`` per step, exactly what the full sequence computes.

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
        slots: Mapping[str, nn.Module] | None = None,
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
        self.slots = nn.ModuleDict(dict(slots or {}))
        # what the slots' blocks do, found once: which hold the Rope step; whether keys and
        # values must be decoded per head at each step; which keep a decoding state (k and v
        # see every cached position again at each step, so theirs keep none)
        self.rotates_in_slot = frozenset(
            name for name, m in self.slots.items() if "rotary" in getattr(m, "context", ())
        )
        self.expands_keys = "k" in self.slots or "v" in self.slots
        self.stateful_slots = tuple(
            name
            for name, m in self.slots.items()
            if getattr(m, "state_attrs", ()) and name not in ("k", "v")
        )
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
    def _slot(
        self, name: str, x: torch.Tensor, context: Mapping[str, Any], state: Any = None
    ) -> torch.Tensor:
        """``x`` through the block in slot ``name`` (unchanged when the slot is empty)."""
        if name not in self.slots:
            return x
        slot_state = None if state is None else state.get("slots", {}).get(name)
        return _call_slot(self.slots[name], x, context, slot_state)

    def _rotary(
        self, cos: torch.Tensor, sin: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """What the ``Rope`` step in a q or k slot applies: rotary positions on the rope part
        (the last ``qk_rope_head_dim`` features) of a per-head ``(B, T, H, n + r)`` tensor."""

        def rotate(t: torch.Tensor) -> torch.Tensor:
            nope, rope = t.split([self.nope_dim, self.rope_dim], dim=-1)
            rope = apply_rotary(rope.transpose(1, 2), cos, sin, self.rope_interleaved)
            return torch.cat((nope, rope.transpose(1, 2)), dim=-1)

        return rotate

    def _rotate_heads(
        self, name: str, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """A slot's per-head ``(B, T, H, n + r)`` output as ``(B, H, T, n + r)``, its rope part
        rotated unless the slot's ``Rope`` step did."""
        t = t.transpose(1, 2)
        if name in self.rotates_in_slot:
            return t
        nope, rope = t.split([self.nope_dim, self.rope_dim], dim=-1)
        return torch.cat((nope, apply_rotary(rope, cos, sin, self.rope_interleaved)), dim=-1)

    def _queries(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        context: Mapping[str, Any],
        state: Any = None,
    ) -> torch.Tensor:
        """(B, T, D) -> the queries (B, H, T, n + r): through the q slot, the rope part
        rotated."""
        B, T = x.shape[:2]
        q = self.q(x) if self.q is not None else self.q_b(self.q_norm(self.q_a(x)))
        q = self._slot("q", q.view(B, T, self.heads, self.nope_dim + self.rope_dim), context, state)
        return self._rotate_heads("q", q, cos, sin)

    def _keys_and_values(
        self,
        latent: torch.Tensor,
        k_rope: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        context: Mapping[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised latent (B, S, c) and the unrotated shared key (B, 1, S, r) -> each
        head's key (B, H, S, n + r) and value (B, H, S, v), through the k and v slots."""
        B, S = latent.shape[:2]
        kv = self.kv_b(latent).view(B, S, self.heads, self.nope_dim + self.v_dim)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)  # (B, S, H, n), (B, S, H, v)
        v = self._slot("v", v, context).transpose(1, 2)
        if "k" not in self.slots:  # rotate the one shared key, then give every head a copy
            k_rope = apply_rotary(k_rope, cos, sin, self.rope_interleaved)
            k = torch.cat((k_nope.transpose(1, 2), k_rope.expand(-1, self.heads, -1, -1)), -1)
            return k, v
        k_rope = k_rope.transpose(1, 2).expand(-1, -1, self.heads, -1)  # (B, S, H, r)
        k = self._slot("k", torch.cat((k_nope, k_rope), dim=-1), context)
        return self._rotate_heads("k", k, cos, sin), v

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

    def _scores(self, context: Mapping[str, Any]) -> Callable | None:
        """The scores slot as a function of the logits, or None (the fused kernel)."""
        if "scores" not in self.slots:
            return None
        module = self.slots["scores"]
        return lambda logits: _call_slot(module, logits, context)

    def _out(self, y: torch.Tensor, context: Mapping[str, Any], state: Any) -> torch.Tensor:
        """The heads' outputs (B, T, H, v) through the o slot and ``o``."""
        y = self._slot("o", y, context, state)
        return self.o(y.reshape(*y.shape[:2], self.heads * self.v_dim))

    # ------------------------------------------------------------------ forward
    def init_state(self, batch_size: int, max_len: int) -> dict[str, Any]:
        """The latent cache: ``latent`` (B, max_len, c) and ``k_rope`` (B, max_len, r); and
        ``slots``, the states of the q and o slots' blocks that keep one, when any does."""
        weight = self.kv_a.weight
        kwargs = {"device": weight.device, "dtype": weight.dtype}
        state: dict[str, Any] = {
            "latent": torch.zeros(batch_size, max_len, self.kv_lora_rank, **kwargs),
            "k_rope": torch.zeros(batch_size, max_len, self.rope_dim, **kwargs),
        }
        if self.stateful_slots:
            state["slots"] = {
                name: self.slots[name].init_state(batch_size, max_len)
                for name in self.stateful_slots
            }
        return state

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        state: dict[str, Any] | None = None,
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if state is not None:
            return self._decode(x, positions, state)
        T = x.shape[1]
        cos, sin = self._angles(T, positions)
        context = {"positions": positions, "rotary": self._rotary(cos, sin)}
        q = self._queries(x, cos, sin, context)  # (B, H, T, n + r)
        latent, k_rope = self._latent(x)  # (B, T, c), (B, 1, T, r)
        k, v = self._keys_and_values(latent, k_rope, cos, sin, context)
        y = attend(q, k, v, scale=self.scale, is_causal=True, scores=self._scores(context))
        return self._out(y.transpose(1, 2), context, None)  # (B, H, T, v) -> (B, T, D)

    def _decode(
        self, x: torch.Tensor, positions: torch.Tensor | None, state: dict[str, Any]
    ) -> torch.Tensor:
        """The new tokens ``x`` (B, T, D) at ``positions`` (B, T) against the latent cache,
        ``kv_b`` absorbed (see the class doc): one shared key/value head of size ``c + r``;
        with a block in k or v, every cached position's keys and values decoded instead."""
        if positions is None:
            raise ValueError("MLA with a decoding state needs positions (B, T_new)")
        B, T = x.shape[:2]
        H = self.heads
        positions = positions.expand(B, T) if positions.dim() == 2 else positions.expand(B, -1)
        cos, sin = self._angles(T, positions)  # (B, 1, T, r/2)
        context = {"positions": positions, "rotary": self._rotary(cos, sin)}
        q = self._queries(x, cos, sin, context, state)  # (B, H, T, n + r)
        latent, k_rope = self._latent(x)  # (B, T, c), (B, 1, T, r)
        if not self.expands_keys:  # the cache holds the rotated shared key
            k_rope = apply_rotary(k_rope, cos, sin, self.rope_interleaved)
        cache_c, cache_r = state["latent"], state["k_rope"]
        slots = positions[..., None]
        cache_c.scatter_(1, slots.expand(B, T, self.kv_lora_rank), latent.to(cache_c.dtype))
        cache_r.scatter_(1, slots.expand(B, T, self.rope_dim), k_rope[:, 0].to(cache_r.dtype))
        used = cache_c.shape[1]
        if not torch.compiler.is_compiling():  # read no slot past the furthest position
            used = int(positions.max()) + 1
        j = torch.arange(used, device=x.device)
        mask = (positions[:, :, None] >= j)[:, None]  # (B, 1, T, L)
        scores = self._scores(context)
        if self.expands_keys:  # the whole prefix's keys and values, as the full path has them
            key_cos, key_sin = self._angles(used, None)
            key_context = {"positions": j, "rotary": self._rotary(key_cos, key_sin)}
            k, v = self._keys_and_values(
                cache_c[:, :used].to(x.dtype), cache_r[:, None, :used].to(x.dtype),
                key_cos, key_sin, key_context,
            )  # fmt: skip
            y = attend(q, k, v, scale=self.scale, mask=mask, scores=scores)  # (B, H, T, v)
            return self._out(y.transpose(1, 2), context, state)
        keys = torch.cat((cache_c[:, :used], cache_r[:, :used]), dim=-1)[:, None]  # (B,1,L,c+r)
        w_uk, w_uv = self._head_weights()  # (H, n, c), (H, v, c)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        q_latent = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk.to(q_nope.dtype))
        q = torch.cat((q_latent, q_rope), dim=-1).reshape(B, 1, H * T, -1)  # heads as queries
        mixed = attend(
            q, keys, keys[..., : self.kv_lora_rank], scale=self.scale,
            mask=mask.repeat(1, 1, H, 1),  # (B, 1, H*T, L)
            scores=None if scores is None else _grouped(scores, H, 1, T),
        )  # fmt: skip
        mixed = mixed.view(B, H, T, self.kv_lora_rank)  # weighted latents per head
        y = torch.einsum("bhtc,hvc->bthv", mixed, w_uv.to(mixed.dtype))  # (B, T, H, v)
        return self._out(y, context, state)

    def extra_repr(self) -> str:
        q = "full" if self.q is not None else self.q_a.out_features
        return (
            f"heads={self.heads}, kv_lora_rank={self.kv_lora_rank}, q_lora_rank={q}, "
            f"qk_nope_head_dim={self.nope_dim}, qk_rope_head_dim={self.rope_dim}, "
            f"v_head_dim={self.v_dim}"
        )
