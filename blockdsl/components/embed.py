"""Token embedding (with learned or sinusoidal positions) and the output head."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from blockdsl.components._util import (
    Problem,
    accepts_any,
    raise_problem,
    require,
    same_size,
    softcap,
)
from blockdsl.errors import ConfigError
from blockdsl.registry import register

# --------------------------------------------------------------------------- Embed


def _embed_params(d_in: int, vocab: int, pos: str, context: int, pos_offset: int = 0, **_) -> int:
    return vocab * d_in + ((context + pos_offset) * d_in if pos == "learned" else 0)


def _embed_flops(d_in: int, seq: int, pos: str, scale: float | str, **_) -> int:
    return seq * d_in * (int(pos != "none") + int(scale != 1.0))  # lookups are free


#: The layouts of ``pos=sinusoidal`` (``Embed(sinusoid=...)``).
SINUSOIDS = ("interleaved", "halves", "fairseq")


def sinusoidal_table(
    context: int, d_model: int, device=None, layout: str = "interleaved"
) -> torch.Tensor:
    """Sinusoidal positions (context, d_model), in one of three layouts:

    * ``interleaved`` (the Transformer's): dim 2i is ``sin(t / 10000^(2i/d))``, dim 2i+1
      ``cos`` of the same angle;
    * ``halves`` (CTRL's): the same angles, every sine first, then every cosine;
    * ``fairseq`` (fairseq's and tensor2tensor's: XGLM, M2M100): sines then cosines of
      ``t * 10000^(-k / (d/2 - 1))``, ``k < d/2``, a zero column last for an odd width.

    Each is computed with the arithmetic of the models it reproduces, so the tables agree with
    theirs to the last bit."""
    t = torch.arange(context, dtype=torch.float32, device=device)[:, None]  # (context, 1)
    if layout == "fairseq":
        half = d_model // 2
        rates = torch.exp(
            torch.arange(half, device=device).float() * -(math.log(10000) / (half - 1))
        )
        angles = t * rates[None]  # (context, d/2)
        table = torch.cat([angles.sin(), angles.cos()], dim=1)
        return torch.cat([table, torch.zeros(context, d_model % 2, device=device)], dim=1)
    if layout == "halves":
        i = torch.arange(d_model, device=device).float()[None]  # (1, d)
        angles = t * (1 / torch.pow(10000, (2 * (i // 2)) / d_model))  # (context, d)
        return torch.cat([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=-1)
    i = torch.arange(0, d_model, 2, dtype=torch.float32, device=device)  # (ceil(d/2),)
    angles = t * torch.exp(-math.log(10000.0) * i / d_model)  # (context, ceil(d/2))
    table = torch.zeros(context, d_model, device=device)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()[:, : d_model // 2]
    return table


def _check_embed(
    vocab: int,
    pos: str = "none",
    pos_offset: int = 0,
    sinusoid: str = "interleaved",
    d_in: int | None = None,
    **_,
) -> Problem:
    if vocab <= 0:
        return f"vocab must be positive, got {vocab}"
    if pos_offset < 0:
        return f"pos_offset must be >= 0, got {pos_offset}"
    if pos_offset and pos == "none":
        return (
            f"pos_offset={pos_offset} needs pos=learned or pos=sinusoidal (it shifts the "
            "position table's rows)",
            "set pos, or drop pos_offset",
        )
    if sinusoid != "interleaved" and pos != "sinusoidal":
        return (
            f"sinusoid={sinusoid} needs pos=sinusoidal (it is the sinusoidal table's layout)",
            "set pos=sinusoidal, or drop sinusoid",
        )
    if sinusoid == "fairseq" and d_in is not None and d_in < 4:
        return f"sinusoid=fairseq needs d_model >= 4 (it spaces d/2 frequencies), got {d_in}"
    return None


_EMBED_HELP: dict[str, str] = {
    "vocab": "vocabulary size (set by the model)",
    "pos": "position embeddings: learned, sinusoidal or none",
    "scale": "multiplies the token embeddings: a number, or sqrt_d for sqrt(d_model)",
    "context": "maximum sequence length (set by the model)",
    "pos_offset": "position p reads table row p + pos_offset (OPT, XGLM: 2)",
    "sinusoid": "pos=sinusoidal's layout: interleaved (sin, cos per pair), halves (sines, "
    "then cosines: CTRL) or fairseq (halves with fairseq's frequencies: XGLM)",
}


@register(
    "Embed",
    out_features=same_size,
    tokens_in=True,
    params=_embed_params,
    flops=_embed_flops,
    check=_check_embed,
    embedding=lambda module: module.tok,
    arg_help=_EMBED_HELP,
    init_roles={"tok.*": "embedding", "pos.*": "position"},
)
class Embed(nn.Module):
    """Token embedding ``tok(idx) * scale``, plus learned or sinusoidal position embeddings.

    Input: token ids (B, T); output (B, T, d_model). ``scale`` is a number or ``sqrt_d``
    (Gemma's ``* sqrt(d_model)``, applied in the embedding's dtype) and multiplies the token
    embedding only. ``pos=learned``: parameter ``pos`` (``nn.Embedding(context, d_model)``);
    ``pos=sinusoidal``: a non-persistent buffer ``pos_table`` laid out as ``sinusoid`` says
    (``sinusoidal_table``); both indexed by ``positions`` (default ``arange(T)``, must be
    ``< context``). ``pos_offset``: the table has ``context + pos_offset`` rows and position
    ``p`` reads row ``p + pos_offset`` (OPT's and XGLM's 2: their first two rows are never
    read). Parameters: ``tok``
    (``nn.Embedding(vocab, d_model)``), ``pos``. Both are initialised N(0, 0.02) as in GPT-2
    and Llama, not PyTorch's N(0, 1): a head tied to N(0, 1) embeddings starts with logits
    so large that an untrained model's loss is far above ln(vocab).
    """

    def __init__(
        self,
        d_model: int,
        vocab: int,
        pos: Literal["learned", "sinusoidal", "none"] = "none",
        scale: float | Literal["sqrt_d"] = 1.0,
        context: int = 2048,
        pos_offset: int = 0,
        sinusoid: Literal["interleaved", "halves", "fairseq"] = "interleaved",
    ) -> None:
        super().__init__()
        raise_problem(_check_embed(vocab, pos, pos_offset, sinusoid, d_in=d_model))
        self.d_model, self.pos_kind, self.context = d_model, pos, context
        self.pos_offset, self.sinusoid = pos_offset, sinusoid
        self.scale = math.sqrt(d_model) if scale == "sqrt_d" else float(scale)
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context + pos_offset, d_model) if pos == "learned" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) embeddings; recompute the sinusoidal table."""
        nn.init.normal_(self.tok.weight, std=0.02)
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.02)
        if self.pos_kind == "sinusoidal":
            rows, device = self.context + self.pos_offset, self.tok.weight.device
            table = sinusoidal_table(rows, self.d_model, device, self.sinusoid)
            self.register_buffer("pos_table", table, persistent=False)  # (context + offset, D)

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tok(idx)  # (B, T, D)
        if self.scale != 1.0:
            x = x * torch.tensor(self.scale, dtype=x.dtype)
        if self.pos_kind != "none":
            T = idx.shape[1]
            table = self.pos.weight if self.pos is not None else self.pos_table  # (context, D)
            table = table[self.pos_offset :] if self.pos_offset else table
            x = x + (table[:T] if positions is None else table[positions]).to(x.dtype)
        return x


# --------------------------------------------------------------------------- Head


def _head_params(d_in: int, vocab: int, tie: bool, bias: bool, **_) -> int:
    return (0 if tie else vocab * d_in) + (vocab if bias else 0)


def _head_flops(
    d_in: int, seq: int, vocab: int, bias: bool, softcap: float | None, scale: float = 1.0, **_
) -> int:
    return seq * vocab * (2 * d_in + int(bias) + (2 if softcap else 0) + int(scale != 1.0))


def _head_out(vocab: int, **_) -> int:
    return vocab


def _tie_head(head: Head, embedding: nn.Module | None) -> None:
    """The ``tie`` hook: a ``Head(tie=true)`` takes the token embedding's weight."""
    if not head.tie:
        return
    if embedding is None:
        raise ConfigError("Head(tie=true) needs an embedding to tie to")
    head.tie_to(embedding)


_HEAD_HELP: dict[str, str] = {
    "vocab": "vocabulary size (set by the model)",
    "tie": "share the token embedding's weight (the model calls `tie_to`)",
    "bias": "learn a bias per vocabulary entry",
    "softcap": "cap logits with `softcap * tanh(logits / softcap)` (Gemma 2); none: off",
    "scale": "multiply the logits by a constant (Cohere logit_scale)",
}


@register(
    "Head",
    out_features=_head_out,
    params=_head_params,
    flops=_head_flops,
    check=accepts_any,
    tie=_tie_head,
    arg_help=_HEAD_HELP,
    init_roles={"weight": "readout", "bias": "readout"},
)
class Head(nn.Module):
    """Output projection to vocabulary logits ``x @ weight.T (+ bias)``, optionally soft-capped.

    Parameters: ``weight [vocab, D]`` and ``bias [vocab]``. With ``tie`` the module owns no
    weight until ``head.tie_to(embed)`` sets ``head.weight = embed.tok.weight`` (one shared
    parameter, counted once; the declared count is then the bias only). ``scale``: logits
    multiplied by a constant (Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``),
    before ``softcap``: final logits ``softcap * tanh(logits / softcap)`` (Gemma 2).
    """

    def __init__(
        self,
        d_model: int,
        vocab: int,
        tie: bool = False,
        bias: bool = False,
        softcap: float | None = None,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.d_model, self.vocab, self.tie, self.softcap = d_model, vocab, tie, softcap
        self.scale = scale
        if tie:
            self.register_parameter("weight", None)
        else:
            self.weight = nn.Parameter(torch.empty(vocab, d_model))
        self.bias = nn.Parameter(torch.empty(vocab)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default init (an untied weight only)."""
        if self.weight is not None and not self.tie:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.d_model)
            nn.init.uniform_(self.bias, -bound, bound)

    def tie_to(self, embed: nn.Module) -> None:
        """Share the token embedding's weight: ``self.weight = embed.tok.weight``."""
        weight = embed.tok.weight if hasattr(embed, "tok") else embed.weight
        require(
            tuple(weight.shape) == (self.vocab, self.d_model),
            f"cannot tie Head [{self.vocab}, {self.d_model}] to an embedding of shape "
            f"{list(weight.shape)}",
        )
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, vocab)
        if self.weight is None:
            raise RuntimeError("Head(tie=true) is not tied: call head.tie_to(embedding) first")
        logits = torch.nn.functional.linear(x, self.weight, self.bias)
        if self.scale != 1.0:
            logits = logits * self.scale
        return logits if self.softcap is None else softcap(logits, self.softcap)

    def extra_repr(self) -> str:
        return f"{self.d_model} -> {self.vocab}, tie={self.tie}, softcap={self.softcap}"
