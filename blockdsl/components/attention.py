"""Attention: causal self-attention (MHA/MQA/GQA, RoPE/ALiBi, windows, soft-capping) and
cross-attention to a memory.

Shapes in comments: ``B`` batch, ``T`` query length, ``S`` key length, ``D`` model width,
``H`` query heads, ``K`` key/value heads, ``hd`` head size, ``r`` rotated dims per head.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from blockdsl.components import rope as rope_math
from blockdsl.components._util import Problem, raise_problem, same_size
from blockdsl.printer import format_value
from blockdsl.registry import Slot, register, shorthand_slots, sized

# --------------------------------------------------------------------------- helpers

#: ``F.scaled_dot_product_attention(..., enable_gqa=True)`` exists (torch >= 2.5).
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def _check_heads(
    d_in: int,
    heads: int,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    dropout: float = 0.0,
    v_head_dim: int | None = None,
    **_,
) -> Problem:
    if v_head_dim is not None and v_head_dim <= 0:
        return f"v_head_dim must be positive, got {v_head_dim}"
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
    pos: str = "rope",
    alibi_scale: float = 1.0,
    **_,
) -> Problem:
    if window is not None and window <= 0:
        return f"window must be positive, got {window}"
    if not 0.0 <= rope_fraction <= 1.0:
        return f"rope_fraction must be in [0, 1], got {rope_fraction}"
    if alibi_scale != 1.0 and pos != "alibi":
        return (f"alibi_scale={alibi_scale} needs pos=alibi, got pos={pos}", "set pos=alibi")
    return None


def _check_projection_options(
    clip_qkv: float | None = None,
    qk_norm_over: str = "head",
    qk_norm_per_head: bool = False,
    **_,
) -> Problem:
    if clip_qkv is not None and not clip_qkv > 0:  # NaN too
        return f"clip_qkv must be positive, got {clip_qkv}"
    if qk_norm_per_head and qk_norm_over != "head":
        return (
            "qk_norm_per_head needs qk_norm_over=head (one weight row per head)",
            "a norm over the whole projection already has one weight per feature",
        )
    return None


def _check_rope(
    d_in: int,
    heads: int,
    head_dim: int | None = None,
    pos: str = "rope",
    rope_fraction: float = 1.0,
    **args,
) -> Problem:
    if pos != "rope" or heads <= 0:
        return None
    hd = d_in // heads if head_dim is None else head_dim
    n, _ = rotary_sizes(hd, rope_fraction)
    return rope_math.check_rope_scaling(hd, n, **args)


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
    return (
        _check_heads(d_in, **args)
        or _check_attn_options(**args)
        or _check_projection_options(**args)
        or _check_rope(d_in, **args)
    )


@dataclass(frozen=True)
class AttnSizes:
    """Attention's derived sizes, computed once from its arguments by ``attn_sizes``: the
    constructor builds its layers from them and every hook (params, FLOPs, shape steps, state
    size, slot sizes) counts from them, so the arithmetic lives here only. What the slots hold
    (q/k norms, the output gate) counts as the blocks in them."""

    d_in: int  # the stream's features: the input of q, the output of o
    d_kv: int  # the input of k and v: the memory's width for cross-attention, else d_in
    heads: int
    kv_heads: int
    head_dim: int  # of queries and keys
    v_head_dim: int  # of values (and so of each head's output)
    in_bias: bool  # on q, k, v
    out_bias: bool  # on o

    @property
    def q_features(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_features(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def v_features(self) -> int:
        return self.kv_heads * self.v_head_dim

    @property
    def out_features(self) -> int:
        """The heads' outputs concatenated: the input of ``o``."""
        return self.heads * self.v_head_dim

    @property
    def groups(self) -> int:
        """Query heads per kv head (GQA)."""
        return self.heads // self.kv_heads


def attn_sizes(
    d_in: int,
    heads: int = 8,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    bias: bool = False,
    qkv_bias: bool | None = None,
    o_bias: bool | None = None,
    d_memory: int | None = None,
    v_head_dim: int | None = None,
    **_,
) -> AttnSizes:
    """``AttnSizes`` of attention (or cross-attention) with these arguments at input size
    ``d_in``; defaults filled in (``kv_heads = heads``, ``head_dim = d_in // heads``,
    ``v_head_dim = head_dim``, each bias from ``bias`` unless set on its own)."""
    kv = heads if kv_heads is None else kv_heads
    hd = d_in // heads if head_dim is None else head_dim
    return AttnSizes(
        d_in=d_in,
        d_kv=d_memory or d_in,
        heads=heads,
        kv_heads=kv,
        head_dim=hd,
        v_head_dim=hd if v_head_dim is None else v_head_dim,
        in_bias=bias if qkv_bias is None else qkv_bias,
        out_bias=bias if o_bias is None else o_bias,
    )


# --------------------------------------------------------------------------- slots
# The anatomy of language v3 (docs/language.md, "Slots"): blocks applied per head to q, k, v
# and the core's output o, a gate over the input, and the scores before the softmax. The flags
# that mean a slot's contents (qk_norm*, clip_qkv, gate, softcap) are shorthand: they put a
# block in the slot (``Slot.shorthand``), compiled like any other, so there is one code path.


def _qk_norm_text(
    qk_norm: bool = False,
    qk_norm_eps: float = 1e-6,
    qk_norm_kind: str = "rms",
    qk_norm_over: str = "head",
    qk_norm_per_head: bool = False,
    qk_norm_bias: bool = False,
    qk_norm_unit_offset: bool = False,
    **_,
) -> str | None:
    if not qk_norm:
        return None
    # every argument written out: a config's [defaults] for Norm must not reach the shorthand
    args = [
        f"kind={qk_norm_kind}",
        f"eps={format_value(float(qk_norm_eps))}",
        "affine=true",
        f"bias={format_value(qk_norm_bias)}",
        f"unit_offset={format_value(qk_norm_unit_offset)}",
    ]
    args += ["per_head=true"] * qk_norm_per_head + ["whole=true"] * (qk_norm_over == "all")
    return f"Norm({', '.join(args)})"


def _clip_text(clip_qkv: float | None = None, **_) -> str | None:
    return None if clip_qkv is None else f"Clip(limit={format_value(float(clip_qkv))})"


def _chain(*steps: str | None) -> str | None:
    present = [step for step in steps if step]
    return "->".join(present) or None


def _qk_shorthand(d_in: int, **args: Any) -> str | None:
    """``clip_qkv`` then ``qk_norm*``: OLMo clamps the projections before normalising them."""
    return _chain(_clip_text(**args), _qk_norm_text(**args))


def _v_shorthand(d_in: int, **args: Any) -> str | None:
    return _clip_text(**args)


def _gate_shorthand(d_in: int, gate: bool = False, bias: bool = False, **args: Any) -> str | None:
    if not gate:
        return None
    out = attn_sizes(d_in, bias=bias, **args).out_features
    return f"Linear(out={out}, bias={format_value(bias)})->Act(fn=sigmoid)"


def _scores_shorthand(d_in: int, softcap: float | None = None, **_) -> str | None:
    return None if softcap is None else f"Softcap(cap={format_value(float(softcap))})"


def _sizes_of(d_in: int, **args: Any) -> AttnSizes:
    return attn_sizes(d_in, **args)


def attn_slots(*, rotary: bool | Callable[..., bool], keys: Callable[..., int]) -> dict[str, Slot]:
    """The slots of an attention mixer (``Attn``, ``CrossAttn``); ``rotary``: it has rotary
    positions (q, k and v may hold the ``Rope`` step); ``keys``: the scores' feature size used
    to validate the scores block (keys vary with the sequence; the longest)."""
    return {
        "q": Slot(
            "heads",
            "per query head (B, T, heads, head_dim), after the q projection, before rotary",
            features=sized(_sizes_of, "head_dim"),
            heads=sized(_sizes_of, "heads"),
            shorthand=_qk_shorthand,
            rotary=rotary,
        ),
        "k": Slot(
            "heads",
            "per key head (B, S, kv_heads, head_dim), after the k projection, before rotary",
            features=sized(_sizes_of, "head_dim"),
            heads=sized(_sizes_of, "kv_heads"),
            shorthand=_qk_shorthand,
            rotary=rotary,
        ),
        "v": Slot(
            "heads",
            "per value head (B, S, kv_heads, v_head_dim), after the v projection",
            features=sized(_sizes_of, "v_head_dim"),
            heads=sized(_sizes_of, "kv_heads"),
            shorthand=_v_shorthand,
            rotary=rotary,
        ),
        "o": Slot(
            "heads",
            "per head on the core's output (B, T, heads, v_head_dim), before the o projection",
            features=sized(_sizes_of, "v_head_dim"),
            heads=sized(_sizes_of, "heads"),
        ),
        "gate": Slot(
            "stream",
            "a block over the mixer's input (B, T, D) whose output, one value per head or per "
            "head feature, multiplies the heads' outputs before o",
            features=lambda d_in, **_: d_in,
            heads=sized(_sizes_of, "heads"),
            outputs=lambda d_in, **a: (
                _sizes_of(d_in, **a).out_features,
                _sizes_of(d_in, **a).heads,
            ),
            shorthand=_gate_shorthand,
        ),
        "scores": Slot(
            "scores",
            "on the scaled logits (B, heads, T, S) before the mask and softmax; extra columns "
            "it appends are sink logits (in the softmax, then dropped)",
            features=keys,
            heads=sized(_sizes_of, "heads"),
            shorthand=_scores_shorthand,
        ),
    }


def _grouped(
    scores: Callable[[torch.Tensor], torch.Tensor], heads: int, kv_heads: int, T: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A scores block for logits grouped by kv head, ``(B, K, G*T, L)`` (the decoding layout),
    applied as the full path applies it, to ``(B, H, T, L)``."""

    def apply(logits: torch.Tensor) -> torch.Tensor:
        B, L = logits.shape[0], logits.shape[-1]
        out = scores(logits.reshape(B, heads, T, L))
        return out.reshape(B, kv_heads, -1, out.shape[-1])

    return apply


def _call_slot(
    module: nn.Module, x: torch.Tensor, context: Mapping[str, Any], state: Any = None
) -> torch.Tensor:
    """Apply a slot's module to ``x`` with the call-time values it reads (a compiled block
    declares them in ``context``; a plain module reads none)."""
    wanted = getattr(module, "context", ())
    kwargs = {name: context[name] for name in wanted if name in context}
    if state is not None:
        kwargs["state"] = state
    return module(x, **kwargs)


def _pair_angles(
    cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of one angle per rotated pair (..., r/2) widened to the r rotated dims:
    pairs (2i, 2i+1) with ``interleaved`` (GPT-J), else (i, i + r/2) (Llama, GPT-NeoX)."""
    if interleaved:
        return cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)
    return torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)


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
    cos, sin = _pair_angles(cos, sin, interleaved)
    rotate = rotate_every_two if interleaved else rotate_half
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
    scores: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dropout: float = 0.0,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``softmax(scores(q k^T * scale) + bias, masked) v`` for (B, H, T|S, hd) tensors.

    ``mask`` is boolean, True where a query may see a key; ``bias`` is additive (ALiBi).
    ``scores`` (an attention's scores slot: a soft-cap, a temperature, sink logits) maps the
    scaled logits ``(B, H, T, S)`` to ``(B, H, T, S + n)``: the ``n`` extra columns are sinks,
    in the softmax's denominator and then dropped (no value). Uses
    ``F.scaled_dot_product_attention`` unless ``scores`` needs the logits explicitly.
    ``enable_gqa``: ``k``/``v`` have fewer heads (B, K, S, hd), which SDPA shares between the
    query heads itself (query head h reads kv head h // (H / K)); SDPA path only.
    """
    if scores is None:
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
    logits = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S)
    T, S = logits.shape[-2:]
    logits = scores(logits)  # (B, H, T, S + sinks)
    sinks = logits.shape[-1] - S
    if bias is not None:
        logits = logits + (F.pad(bias, (0, sinks)) if sinks else bias)
    if is_causal and mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if mask is not None:
        mask = F.pad(mask, (0, sinks), value=True) if sinks else mask
        logits = logits.masked_fill(~mask, float("-inf"))
    probs = F.softmax(logits.float(), dim=-1).to(q.dtype)
    probs = probs[..., :S] if sinks else probs
    probs = F.dropout(probs, p=dropout) if dropout > 0 else probs
    return probs @ v  # (B, H, T, hd)


# --------------------------------------------------------------------------- declarations


def _attn_params(d_in: int, **args) -> int:
    s = attn_sizes(d_in, **args)
    q = (d_in + s.in_bias) * s.q_features
    k = (s.d_kv + s.in_bias) * s.kv_features
    v = (s.d_kv + s.in_bias) * s.v_features
    o = s.out_features * d_in + s.out_bias * d_in
    return q + k + v + o


def _attn_flops(d_in: int, seq: int, window: int | None = None, **args) -> int:
    s = attn_sizes(d_in, **args)
    projections = seq * (
        (2 * d_in + s.in_bias) * s.q_features
        + (2 * s.d_kv + s.in_bias) * (s.kv_features + s.v_features)
        + (2 * s.out_features + s.out_bias) * d_in
    )
    keys = seq if window is None else min(seq, window)
    scores = 2 * seq * keys * s.q_features
    mix = 2 * seq * keys * s.heads * s.v_head_dim
    return projections + scores + mix


# --------------------------------------------------------------------------- modules


class _Projections(nn.Module):
    """q, k, v, o linears and the slots between them, shared by Attn and CrossAttn."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        kv_heads: int | None,
        head_dim: int | None,
        scale: float | None,
        bias: bool,
        dropout: float,
        d_memory: int | None = None,
        qkv_bias: bool | None = None,
        o_bias: bool | None = None,
        v_head_dim: int | None = None,
        slots: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        raise_problem(_check_heads(d_model, heads, kv_heads, head_dim, dropout, v_head_dim))
        sizes = attn_sizes(
            d_model, heads, kv_heads, head_dim, bias, qkv_bias, o_bias, d_memory, v_head_dim
        )
        self.sizes = sizes
        self.heads, self.kv_heads, self.head_dim = heads, sizes.kv_heads, sizes.head_dim
        self.v_head_dim = sizes.v_head_dim
        self.groups = sizes.groups
        self.scale = sizes.head_dim**-0.5 if scale is None else scale
        self.dropout = dropout
        self.q = nn.Linear(d_model, sizes.q_features, bias=sizes.in_bias)
        self.k = nn.Linear(sizes.d_kv, sizes.kv_features, bias=sizes.in_bias)
        self.v = nn.Linear(sizes.d_kv, sizes.v_features, bias=sizes.in_bias)
        self.o = nn.Linear(sizes.out_features, d_model, bias=sizes.out_bias)
        self.slots = nn.ModuleDict(dict(slots or {}))
        # what the slots' blocks do, found once: which hold the Rope step, which keep a state
        self.rotates_in_slot = frozenset(
            name for name, m in self.slots.items() if "rotary" in getattr(m, "context", ())
        )
        self.stateful_slots = tuple(
            name for name, m in self.slots.items() if getattr(m, "state_attrs", ())
        )
        self.register_load_state_dict_pre_hook(_rename_legacy_slot_weights)

    def slot(
        self, name: str, x: torch.Tensor, context: Mapping[str, Any], state: Any = None
    ) -> torch.Tensor:
        """``x`` through the block in slot ``name`` (unchanged when the slot is empty)."""
        module = self.slots[name] if name in self.slots else None  # noqa: SIM401 (ModuleDict)
        if module is None:
            return x
        slot_state = state["slots"][name] if state is not None and name in state["slots"] else None
        return _call_slot(module, x, context, slot_state)

    def slot_states(self, batch_size: int, max_len: int) -> dict[str, Any]:
        """The decoding states of the slots' blocks that keep one (a ``Conv`` in ``v``)."""
        return {
            name: self.slots[name].init_state(batch_size, max_len) for name in self.stateful_slots
        }

    def project(
        self,
        x: torch.Tensor,
        kv_source: torch.Tensor,
        context: Mapping[str, Any],
        state: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, T, H, hd), keys (B, S, K, hd) and values (B, S, K, v_hd): projected,
        then each through its slot, then rotated (``context["rotary"]``) unless the slot did."""
        q = self.q(x).unflatten(-1, (self.heads, self.head_dim))  # (B, T, H, hd)
        k = self.k(kv_source).unflatten(-1, (self.kv_heads, self.head_dim))  # (B, S, K, hd)
        v = self.v(kv_source).unflatten(-1, (self.kv_heads, self.v_head_dim))  # (B, S, K, v_hd)
        q = self.slot("q", q, context, state)
        k = self.slot("k", k, context, state)
        v = self.slot("v", v, context, state)
        rotary = context.get("rotary")
        if rotary is not None:
            q = q if "q" in self.rotates_in_slot else rotary(q)
            k = k if "k" in self.rotates_in_slot else rotary(k)
        return q, k, v

    def scores_slot(self, context: Mapping[str, Any]) -> Callable | None:
        """The scores slot as a function of the logits, or None (the fused kernel)."""
        if "scores" not in self.slots:
            return None
        module = self.slots["scores"]
        return lambda logits: _call_slot(module, logits, context)

    def repeat_kv(self, kv: torch.Tensor) -> torch.Tensor:
        """(B, K, S, hd) -> (B, H, S, hd): query head h reads kv head h // (H / K)."""
        return kv if self.groups == 1 else kv.repeat_interleave(self.groups, dim=1)

    def sdpa_gqa(self, masked: bool = False) -> bool:
        """Whether SDPA shares the kv heads itself (``enable_gqa``), so that ``k``/``v`` need not
        be repeated: grouped heads, no scores slot (explicit scores), no mask or bias (the
        fused kernels that take grouped heads take no mask either), torch >= 2.5."""
        return self.groups > 1 and "scores" not in self.slots and not masked and _SDPA_HAS_GQA

    def merge(
        self, y: torch.Tensor, x: torch.Tensor, context: Mapping[str, Any], state: Any = None
    ) -> torch.Tensor:
        """The heads' outputs ``y`` (B, T, H, v_hd) through the o slot, times the gate slot's
        block of the input ``x`` (one value per head or per head feature), then ``o``."""
        y = self.slot("o", y, context, state)
        if "gate" in self.slots:
            gate = self.slot("gate", x, context, state)  # (B, T, H) or (B, T, H·v_hd)
            y = y * gate.unflatten(-1, (self.heads, -1))
        return self.o(y.flatten(2))  # (B, T, D)


#: Weight names before the slots (blockdsl <= 0.3): the q/k norms and the output gate were
#: attributes of the attention itself; they now live in the blocks of its slots.
_LEGACY_SLOT_WEIGHTS = (("q_norm.", "slots.q.norm."), ("k_norm.", "slots.k.norm."),
                        ("gate.", "slots.gate.linear."))  # fmt: skip


def _rename_legacy_slot_weights(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
) -> None:
    """Load a checkpoint saved before the slots: its ``q_norm``/``k_norm``/``gate`` weights
    are the same tensors as the shorthand's slot blocks hold."""
    for old, new in _LEGACY_SLOT_WEIGHTS:
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)


def _attn_steps(
    d_in: int, seq: int, batch: int, window: int | None = None, **args
) -> list[tuple[str, tuple[str, ...], tuple[int, ...], int]]:
    """Attention's steps for ``blockdsl compile --show-shapes --depth 2``: ``(name, symbolic
    shape, concrete shape, forward FLOPs of the batch)``; scores over ``min(T, window)`` keys
    are counted, as in ``_attn_flops`` (the slots' blocks are counted as their own calls)."""
    s = attn_sizes(d_in, **args)
    heads, kv, hd, vhd = s.heads, s.kv_heads, s.head_dim, s.v_head_dim
    vd = "hd" if vhd == hd else "vd"  # the value heads' size, named apart when it differs
    n = batch * seq
    keys = seq if window is None else min(seq, window)
    return [
        ("q", ("B", "H", "T", "hd"), (batch, heads, seq, hd), 2 * n * d_in * s.q_features),
        ("k", ("B", "K", "T", "hd"), (batch, kv, seq, hd), 2 * n * d_in * s.kv_features),
        ("v", ("B", "K", "T", vd), (batch, kv, seq, vhd), 2 * n * d_in * s.v_features),
        ("scores", ("B", "H", "T", "T"), (batch, heads, seq, seq), 2 * n * keys * s.q_features),
        ("mix", ("B", "H", "T", vd), (batch, heads, seq, vhd), 2 * n * keys * s.out_features),
        ("o", ("B", "T", "D"), (batch, seq, d_in), 2 * n * s.out_features * d_in),
    ]


def _attn_state_size(d_in: int, context: int, **args) -> int:
    s = attn_sizes(d_in, **args)
    return (s.kv_features + s.v_features) * context  # keys and values of every position


_ATTN_HELP: dict[str, str] = {
    "heads": "query heads",
    "kv_heads": "key/value heads (GQA; 1 = MQA); none: = heads",
    "head_dim": "size of each head; none: d_model // heads",
    "pos": "positions: rope (rotary), alibi (linear distance bias) or none",
    "rope_theta": "rotary base",
    "rope_fraction": "fraction of each head's dims that rotate (GPT-NeoX partial rotary)",
    "rope_interleaved": "rotate adjacent pairs (GPT-J) instead of halves (Llama/NeoX)",
    "causal": "query t sees only keys <= t",
    "window": "sliding window: query t sees keys t-window+1 ... t; none: unlimited",
    "v_head_dim": "size of each value head (and head output); none: = head_dim",
    "qk_norm": "shorthand for q=Norm, k=Norm: a norm of queries and keys over head_dim",
    "softcap": "shorthand for scores=Softcap(cap=...): `softcap * tanh(scores / softcap)` "
    "(Gemma 2); none: off",
    "scale": "score scale; none: head_dim ** -0.5",
    "bias": "biases on the q, k, v, o projections",
    "dropout": "dropout on attention probabilities (training only)",
    "context": "maximum sequence length (rotary table size; set by the model)",
    "gate": "shorthand for gate=Linear->Act(sigmoid): an output gate before `o` (Qwen3-Next)",
    "qk_norm_eps": "epsilon of the q/k norm",
    "qk_norm_kind": "q/k norm: rms (RMSNorm) or layer (LayerNorm)",
    "qk_norm_over": "q/k norm over each head (head) or over the whole projection (all)",
    "qk_norm_per_head": "q/k norm weights per head, `[heads, head_dim]` (over=head only)",
    "qk_norm_bias": "q/k norm learns a bias",
    "qk_norm_unit_offset": "q/k norm scales by `(1 + weight)` (Gemma 3)",
    "qkv_bias": "biases on q, k, v; none: = bias",
    "o_bias": "bias on the output projection o; none: = bias",
    "clip_qkv": "shorthand for q=Clip(limit=...), k=..., v=...: clamp the projections (OLMo, "
    "MPT); none: off",
    "alibi_scale": "multiplies the ALiBi slopes (Falcon: head_dim ** -0.5)",
    "rope_scaling": "rotary scaling: none, linear, dynamic (NTK), llama3, yarn or longrope",
    "rope_factor": "rotary scaling factor (context extension ratio)",
    "rope_original_context": "the context trained with (dynamic, llama3, yarn, longrope)",
    "rope_low_freq": "llama3: low_freq_factor",
    "rope_high_freq": "llama3: high_freq_factor",
    "rope_beta_fast": "yarn: rotations where extrapolation ends",
    "rope_beta_slow": "yarn: rotations where interpolation starts",
    "rope_truncate": "yarn: round the ramp's correction range to whole dims",
    "rope_attention_factor": "yarn/longrope: cos/sin multiplier; none: the paper's default",
    "rope_short_factor": "longrope: frequency divisors within rope_original_context",
    "rope_long_factor": "longrope: frequency divisors beyond rope_original_context",
}


#: What the projections are to an ``[init]`` scheme (``blockdsl/initialisation.py``).
ATTN_INIT_ROLES = {"q.*": "hidden", "k.*": "hidden", "v.*": "hidden", "gate.*": "hidden",
                   "o.*": "output"}  # fmt: skip


@register(
    "Attn",
    out_features=same_size,
    mixes_positions=True,
    params=_attn_params,
    flops=_attn_flops,
    check=_check_attn,
    state_size=_attn_state_size,
    decodes=True,
    arg_help=_ATTN_HELP,
    shape_steps=_attn_steps,
    slots=attn_slots(
        rotary=lambda d_in, pos="rope", rope_fraction=1.0, **a: (
            pos == "rope" and rotary_sizes(_sizes_of(d_in, **a).head_dim, rope_fraction)[1] > 0
        ),
        keys=lambda d_in, context=2048, **_: context,
    ),
    init_roles=ATTN_INIT_ROLES,
)
class Attn(_Projections):
    """Multi-head self-attention: MHA/MQA/GQA, RoPE or ALiBi, sliding window, and slots.

    * slots (language v3, docs/language.md "Slots"): ``Attn[q=..., k=..., v=..., o=...,
      gate=..., scores=...]`` applies a block per head to the projected queries, keys and
      values (before rotary positions, unless the block holds the ``Rope`` step), per head to
      the core's output before ``o``, a block over the input ``x`` whose output multiplies the
      heads' outputs (``gate``), and a block on the scaled logits before the mask and softmax
      (``scores``; off the fused kernel). Parameters of a slot's block live under
      ``slots.<slot>.`` (``slots.q.norm.weight``).

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
    * ``rope_scaling`` (``linear``, ``dynamic``, ``llama3``, ``yarn``, ``longrope``; default
      ``none``): rotary frequencies for contexts beyond ``rope_original_context``, transformers'
      arithmetic (``blockdsl.components.rope``): ``rope_factor``, ``rope_low_freq`` /
      ``rope_high_freq`` (llama3), ``rope_beta_fast`` / ``rope_beta_slow`` / ``rope_truncate``
      (yarn), ``rope_short_factor`` / ``rope_long_factor`` (longrope), and a cos/sin multiplier
      ``rope_attention_factor`` (yarn, longrope). ``dynamic`` and ``longrope`` depend on the
      furthest position of each call (as transformers computes them per forward); a decoding
      cache keeps every key (and every later layer's input) as the call that wrote it computed
      them, as transformers' cache does, so cached decoding departs from the full forward once
      a call reaches past ``rope_original_context`` (``generate(use_cache=False)`` does not).
    * shorthand arguments that fill slots (one code path: the compiler puts their block in the
      slot): ``qk_norm`` is ``q=Norm(...), k=Norm(...)`` with ``qk_norm_kind``, ``qk_norm_eps``,
      ``qk_norm_bias``, ``qk_norm_unit_offset`` (``(1 + w)``, Gemma 3), one weight row per head
      with ``qk_norm_per_head`` (``Norm(per_head=true)``; Cohere, StableLM) or one norm over
      all heads with ``qk_norm_over=all`` (``Norm(whole=true)``; OLMo 2); ``clip_qkv`` is
      ``Clip(limit=...)`` first in q, k and v (OLMo, MPT); ``gate`` is
      ``gate=Linear(out=heads*v_head_dim)->Act(sigmoid)`` (Qwen3-Next); ``softcap`` is
      ``scores=Softcap(cap=...)`` (Gemma 2). A slot filled both ways is an error.
    * ``qkv_bias`` / ``o_bias``: the q/k/v and the output projections' biases each on their own
      (Qwen2: ``qkv_bias=true``); unset, both follow ``bias``. ``v_head_dim``: values (and
      each head's output) wider or narrower than queries and keys.
    * ``scale`` defaults to ``head_dim ** -0.5``.
    * ``dropout``: on the attention probabilities, in training only.
    * decoding (``state``, docs/generation.md): a static cache ``k``/``v`` of shape
      ``(B, kv_heads, max_len, head_dim)`` (keys after rotary), written at each row's absolute
      positions; a query at position ``p`` sees the cached keys ``j <= p`` (and ``p - j <
      window``), with ALiBi's bias ``-slope * (p - j)``: the full path's masks, per row.

    Parameters: ``q``, ``k``, ``v``, ``o`` (``nn.Linear``; biases with ``bias``), and the
    slots' blocks' under ``slots.``.
    """

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
        qk_norm_kind: Literal["rms", "layer"] = "rms",
        qk_norm_over: Literal["head", "all"] = "head",
        qk_norm_per_head: bool = False,
        qk_norm_bias: bool = False,
        qk_norm_unit_offset: bool = False,
        qkv_bias: bool | None = None,
        o_bias: bool | None = None,
        clip_qkv: float | None = None,
        rope_scaling: rope_math.RopeScaling = "none",
        rope_factor: float = 1.0,
        rope_original_context: int | None = None,
        rope_low_freq: float = 1.0,
        rope_high_freq: float = 4.0,
        rope_beta_fast: float = 32.0,
        rope_beta_slow: float = 1.0,
        rope_truncate: bool = True,
        rope_attention_factor: float | None = None,
        rope_short_factor: list[float] | None = None,
        rope_long_factor: list[float] | None = None,
        alibi_scale: float = 1.0,
        v_head_dim: int | None = None,
        slots: Mapping[str, nn.Module] | None = None,
    ) -> None:
        raise_problem(_check_projection_options(clip_qkv, qk_norm_over, qk_norm_per_head))
        if slots is None:  # built directly, not by the compiler: the shorthand's blocks
            args = {k: v for k, v in locals().items() if k not in ("self", "slots", "__class__")}
            slots = shorthand_slots("Attn", d_model, args)
        super().__init__(
            d_model, heads, kv_heads, head_dim, scale, bias, dropout,
            qkv_bias=qkv_bias, o_bias=o_bias, v_head_dim=v_head_dim, slots=slots,
        )  # fmt: skip
        raise_problem(
            _check_attn_options(
                window=window,
                rope_fraction=rope_fraction,
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
        self.rope = {
            "kind": rope_scaling if pos == "rope" else "none",
            "factor": rope_factor,
            "original": rope_original_context,
            "low_freq": rope_low_freq,
            "high_freq": rope_high_freq,
            "beta_fast": rope_beta_fast,
            "beta_slow": rope_beta_slow,
            "truncate": rope_truncate,
            "short": rope_short_factor,
            "long": rope_long_factor,
        }
        if pos == "rope":
            raise_problem(
                rope_math.check_rope_scaling(
                    self.head_dim, self.rotary_size, rope_scaling, rope_factor,
                    rope_original_context, rope_low_freq, rope_high_freq,
                    rope_short_factor, rope_long_factor,
                )
            )  # fmt: skip
        self.rope_attention_factor = (
            rope_math.default_attention_factor(rope_scaling, rope_factor, rope_original_context)
            if rope_attention_factor is None
            else rope_attention_factor
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Recompute the non-persistent tables (rotary cos/sin, ALiBi slopes)."""
        device = self.q.weight.device
        if self.rotary_dims:
            # longrope: a second table, for calls beyond the original context
            tables = {"rope": self.rope["short"]}
            if self.rope["kind"] == "longrope":
                tables["rope_long"] = self.rope["long"]
            for name, factors in tables.items():
                if device.type == "meta":  # shapes only: nothing to compute
                    shape = (self.context, self.rotary_dims // 2)
                    cos = torch.empty(shape, device=device, dtype=torch.float32)
                    sin = torch.empty(shape, device=device, dtype=torch.float32)
                else:
                    cos, sin = self._rope_table(factors, device)
                self.register_buffer(f"{name}_cos", cos, persistent=False)
                self.register_buffer(f"{name}_sin", sin, persistent=False)
        if self.pos == "alibi":  # (H,) slopes
            slopes = alibi_slopes(self.heads) * self.alibi_scale
            self.register_buffer("alibi", slopes.to(device), persistent=False)

    def _rope_table(
        self, factors: list[float] | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (context, r/2) of every position (``factors``: longrope's divisors)."""
        rope = self.rope
        inv_freq = rope_math.inv_freq(
            self.rotary_size, self.rope_theta, rope["kind"], factor=rope["factor"],
            original=rope["original"], low_freq=rope["low_freq"], high_freq=rope["high_freq"],
            beta_fast=rope["beta_fast"], beta_slow=rope["beta_slow"],
            truncate=rope["truncate"], factors=factors, device=device,
        )  # fmt: skip
        t = torch.arange(self.context, dtype=torch.float32, device=device)
        angles = torch.outer(t, inv_freq)  # (context, r/2)
        return angles.cos() * self.rope_attention_factor, angles.sin() * self.rope_attention_factor

    def _cos_sin(self, T: int, positions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary cos and sin of the positions of a call: (T, r/2), or ``positions.shape +
        (r/2,)``. Dynamic NTK and longrope depend on the furthest position the call reaches
        (computed in tensors: no host sync, one graph under ``torch.compile``)."""
        kind = self.rope["kind"]
        if kind not in rope_math.PER_CALL:
            if positions is None:
                return self.rope_cos[:T], self.rope_sin[:T]
            return self.rope_cos[positions], self.rope_sin[positions]
        device = self.rope_cos.device
        if positions is None:
            return self._per_call_cos_sin(
                torch.arange(T, device=device), torch.tensor(T, device=device)
            )
        return self._per_call_cos_sin(positions, positions.max() + 1)

    def _per_call_cos_sin(
        self, index: torch.Tensor, length: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dynamic NTK's or longrope's cos and sin at positions ``index`` for a call that
        reaches ``length`` positions (a 0-d tensor)."""
        kind, original = self.rope["kind"], self.rope["original"]
        if kind == "longrope":
            long = length > original
            cos = torch.where(long, self.rope_long_cos[index], self.rope_cos[index])
            sin = torch.where(long, self.rope_long_sin[index], self.rope_sin[index])
            return cos, sin
        inv_freq = rope_math.dynamic_inv_freq(
            self.rotary_size, self.rope_theta, self.rope["factor"], original, length
        )
        angles = index.float()[..., None] * inv_freq  # (..., r/2)
        return angles.cos(), angles.sin()

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

    def init_state(self, batch_size: int, max_len: int) -> dict[str, Any]:
        """A static key/value cache of ``max_len`` positions: ``k`` (B, K, max_len, hd), ``v``
        (B, K, max_len, v_hd), and ``slots``: the states of the slots' blocks that keep one."""
        weight = self.k.weight
        keys = (batch_size, self.kv_heads, max_len, self.head_dim)
        values = (batch_size, self.kv_heads, max_len, self.v_head_dim)
        return {
            "k": torch.zeros(keys, device=weight.device, dtype=weight.dtype),
            "v": torch.zeros(values, device=weight.device, dtype=weight.dtype),
            "slots": self.slot_states(batch_size, max_len),
        }

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        state: dict[str, Any] | None = None,
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if state is not None:
            return self._decode(x, positions, state)
        T = x.shape[1]
        context: dict[str, Any] = {"positions": positions}
        if self.rotary_dims:
            context["rotary"] = self._rotary(T, positions)
        q, k, v = self.project(x, x, context)  # (B, T, H, hd), (B, T, K, hd), (B, T, K, v_hd)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # heads first
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
            scores=self.scores_slot(context),
            dropout=self.dropout if self.training else 0.0,
            enable_gqa=gqa,
        )  # (B, H, T, v_hd)
        return self.merge(y.transpose(1, 2), x, context)

    def _rotary(
        self, T: int, positions: torch.Tensor | None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Rotary positions of a full-sequence call, as a function of a (B, T, heads, hd)
        tensor: what q and k get after their slots, and what the ``Rope`` step applies."""
        cos, sin = self._cos_sin(T, positions)  # (T, r/2) or (B, T, r/2)
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over the heads
        interleaved = self.rope_interleaved
        return lambda x: apply_rotary(x, cos, sin, interleaved)

    def _decode_rotary(self, positions: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Rotary positions of new tokens at ``positions`` (B, T) as a function of a (B, T,
        heads, hd) tensor (``apply_rotary``'s math with the angles looked up per row)."""
        rotate = rotate_every_two if self.rope_interleaved else rotate_half
        dtype = self.q.weight.dtype  # of the queries and keys: cast the angles once for both
        if self.rope["kind"] in rope_math.PER_CALL:
            cos, sin = self._cos_sin(positions.shape[1], positions)
            cos, sin = _pair_angles(cos, sin, self.rope_interleaved)
        else:  # the fixed table, already widened to the r dims: one lookup per step
            cos_table, sin_table = self._decode_tables()
            cos, sin = cos_table[positions], sin_table[positions]  # (B, T, r)
        cos, sin = cos.unsqueeze(2).to(dtype), sin.unsqueeze(2).to(dtype)  # (B, T, 1, r)
        r = self.rotary_dims

        def rotated(x: torch.Tensor) -> torch.Tensor:
            c, s = (cos, sin) if cos.dtype == x.dtype else (cos.to(x.dtype), sin.to(x.dtype))
            if r == x.shape[-1]:
                return x * c + rotate(x) * s
            x_rot, x_pass = x[..., :r], x[..., r:]
            return torch.cat((x_rot * c + rotate(x_rot) * s, x_pass), dim=-1)

        return rotated

    def _decode_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (context, r) of every position with each angle repeated over its pair
        of dims, as ``apply_rotary`` widens them per call: made once per rotary table (a
        decoding step then indexes instead of widening the angles in every layer)."""
        source = (self.rope_cos, self.rope_sin)
        cached = self.__dict__.get("_decode_tables_of")
        if cached is None or cached[0] is not source[0] or cached[1] is not source[1]:
            cached = (*source, *_pair_angles(*source, self.rope_interleaved))
            self.__dict__["_decode_tables_of"] = cached  # not a buffer: never saved or moved
        return cached[2], cached[3]

    def _decode(
        self, x: torch.Tensor, positions: torch.Tensor | None, state: dict[str, Any]
    ) -> torch.Tensor:
        """The new tokens ``x`` (B, T, D) at ``positions`` (B, T), attending to the cache.

        Query heads are grouped by the kv head they read, ``(B, K, G*T, hd)``, so the cache is
        never repeated; in eager mode only the slots some query may see are read, without a
        mask when every row is at one position (under ``torch.compile`` the whole cache,
        masked: static shapes)."""
        if positions is None:
            raise ValueError("Attn with a decoding state needs positions (B, T_new)")
        B, T = x.shape[:2]
        K, G, hd, vhd = self.kv_heads, self.groups, self.head_dim, self.v_head_dim
        positions = positions.expand(B, T) if positions.dim() == 2 else positions.expand(B, -1)
        cache_k, cache_v = state["k"], state["v"]  # (B, K, L, hd), (B, K, L, v_hd)
        context: dict[str, Any] = {"positions": positions}
        if self.rotary_dims:
            context["rotary"] = self._decode_rotary(positions)
        q, k, v = self.project(x, x, context, state)  # (B, T, H, hd), (B, T, K, hd), ...
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # heads first
        where = positions[:, None, :, None]  # each row's cache slots
        key_slots = where.expand(B, K, T, hd)
        value_slots = key_slots if vhd == hd else where.expand(B, K, T, vhd)
        cache_k.scatter_(2, key_slots, k.to(cache_k.dtype))
        cache_v.scatter_(2, value_slots, v.to(cache_v.dtype))
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
        mask = distance = None
        if not uniform or self.pos == "alibi":
            j = torch.arange(start, start + keys.shape[2], device=x.device)  # key positions
            distance = (positions[:, :, None] - j).repeat(1, G, 1)[:, None]  # (B, 1, G*T, L)
        if not uniform:
            mask = distance >= 0  # causal (the cache past a row's position is never seen)
            if self.window is not None:
                mask = mask & (distance < self.window)
        bias = None
        if self.pos == "alibi":  # (B, K, G*T, L): query head k*G + g has slope alibi[k*G + g]
            slopes = self.alibi.view(K, G, 1).expand(K, G, T).reshape(K, G * T, 1)
            bias = -slopes * distance.to(torch.float32)
        scores = self.scores_slot(context)
        if scores is not None:  # the slot sees (B, H, T, L), as in the full path
            scores = _grouped(scores, self.heads, K, T)
        q = q.reshape(B, K, G * T, hd)  # query head h = k*G + g reads kv head k
        y = attend(q, keys, values, scale=self.scale, mask=mask, bias=bias, scores=scores)
        y = y.view(B, self.heads, T, vhd).transpose(1, 2)  # (B, T, H, v_hd)
        return self.merge(y, x, context, state)

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
            f"pos={self.pos}, causal={self.causal}, window={self.window}"
        )


_CROSS_ATTN_HELP: dict[str, str] = {
    "heads": "query heads",
    "kv_heads": "key/value heads (GQA; 1 = MQA); none: = heads",
    "head_dim": "size of each head; none: d_model // heads",
    "d_memory": "feature size of the memory; none: = d_model",
    "qk_norm": "shorthand for q=Norm, k=Norm: a norm of queries and keys over head_dim",
    "softcap": "shorthand for scores=Softcap(cap=...); none: off",
    "v_head_dim": "size of each value head (and head output); none: = head_dim",
    "scale": "score scale; none: head_dim ** -0.5",
    "bias": "biases on the q, k, v, o projections",
    "dropout": "dropout on attention probabilities (training only)",
}


@register(
    "CrossAttn",
    out_features=same_size,
    params=_attn_params,
    flops=_attn_flops,
    check=_check_heads,
    arg_help=_CROSS_ATTN_HELP,
    slots=attn_slots(rotary=False, keys=lambda d_in, **_: 2048),
    init_roles=ATTN_INIT_ROLES,
)
class CrossAttn(_Projections):
    """Cross-attention from the stream to a ``memory`` (B, S, d_memory) given at call time.

    Every query sees every memory position (no mask, no positional encoding); the stream's own
    positions are not mixed, so it needs no causality. ``d_memory`` defaults to ``d_model``.
    FLOPs are counted with ``S = seq``. Slots as in Attn (``q``, ``k``, ``v``, ``o``, ``gate``,
    ``scores``; no rotary positions, so no ``Rope`` step); ``qk_norm`` and ``softcap`` are
    shorthand for the q/k and scores slots. Parameters: ``q``, ``k``, ``v``, ``o``, and the
    slots' blocks' under ``slots.``.
    """

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
        v_head_dim: int | None = None,
        slots: Mapping[str, nn.Module] | None = None,
    ) -> None:
        if slots is None:  # built directly, not by the compiler: the shorthand's blocks
            args = {k: v for k, v in locals().items() if k not in ("self", "slots", "__class__")}
            slots = shorthand_slots("CrossAttn", d_model, args)
        super().__init__(
            d_model, heads, kv_heads, head_dim, scale, bias, dropout, d_memory,
            v_head_dim=v_head_dim, slots=slots,
        )  # fmt: skip

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        context: dict[str, Any] = {}
        q, k, v = self.project(x, memory, context)  # (B, T, H, hd), (B, S, K, hd), ...
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # heads first
        gqa = self.sdpa_gqa()
        if not gqa:
            k, v = self.repeat_kv(k), self.repeat_kv(v)  # (B, H, S, hd)
        y = attend(
            q,
            k,
            v,
            scale=self.scale,
            scores=self.scores_slot(context),
            dropout=self.dropout if self.training else 0.0,
            enable_gqa=gqa,
        )  # (B, H, T, v_hd)
        return self.merge(y.transpose(1, 2), x, context)


@register(
    "Rope",
    out_features=same_size,
    params=lambda **_: 0,
    flops=lambda d_in, seq, **_: 3 * d_in * seq,
    check=lambda **_: None,
    description="The mixer's rotary positions, applied at this step of its q, k or v slot.",
)
class Rope(nn.Module):
    """The mixer's rotary positions, applied at this step of its q, k or v slot.

    An attention with ``pos=rope`` rotates queries and keys after their slots' blocks; a slot
    holding ``Rope`` rotates exactly there instead (``Attn[q=Rope->Norm, k=Rope->Norm]``: the
    norm after rotary, as in some q/k-norm variants), with the attention's own frequencies and
    scaling. ``Rope`` in ``v`` rotates the values too. Outside a slot it has no rotary
    positions to apply: a validation error. No parameters."""

    def __init__(self, d_model: int) -> None:
        super().__init__()

    def forward(
        self, x: torch.Tensor, rotary: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:  # (B, T, H, hd) -> (B, T, H, hd)
        return rotary(x)


def _check_temperature(period: float = 1.0, **_) -> Problem:
    return None if period > 0 else f"Temperature period must be positive, got {period}"


@register(
    "Temperature",
    out_features=same_size,
    params=lambda **_: 0,
    flops=lambda d_in, seq, **_: d_in * seq,
    check=_check_temperature,
    arg_help={
        "beta": "the slope: the scale is 1 + beta * log(1 + floor((position + offset) / period))",
        "period": "positions per step of the floor (Ministral 3: original_max_position_embeddings; "
        "Llama 4: floor_scale)",
        "offset": "added to the position first (Llama 4: 1)",
    },
)
class Temperature(nn.Module):
    """A query temperature that grows with the position (Llama 4's attention temperature
    tuning, Ministral 3's ``llama_4_scaling_beta``): each query is multiplied by ``1 + beta *
    log(1 + floor((position + offset) / period))``, so that far positions attend more sharply.
    In an attention's q slot: ``Attn[q=Temperature(beta=0.1, period=8192)]``. No parameters."""

    def __init__(
        self, d_model: int, beta: float = 0.1, period: float = 8192.0, offset: float = 0.0
    ) -> None:
        super().__init__()
        raise_problem(_check_temperature(period))
        self.beta, self.period, self.offset = beta, period, offset

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:  # (B, T, H, hd) or (B, T, D), the same; positions (B, T), default 0..T-1
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device)
        steps = torch.floor((positions.float() + self.offset) / self.period)
        scale = 1.0 + self.beta * torch.log1p(steps)  # (T,) or (B, T)
        return x * scale.view(*scale.shape, *[1] * (x.dim() - 2)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, period={self.period}, offset={self.offset}"
