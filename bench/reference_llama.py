"""A plain, hand-written Llama in PyTorch: the no-overhead reference for ``bench/step.py``.

nanoGPT-style, one file, no framework: token embedding, ``n_layers`` pre-norm blocks
(RMSNorm -> causal GQA attention with rotary -> residual, RMSNorm -> SwiGLU MLP -> residual),
a final RMSNorm and an untied linear head. Projections are separate ``wq``/``wk``/``wv``/``wo``
and ``w_gate``/``w_up``/``w_down`` linears without bias (as in Meta's Llama reference code).

* RMSNorm is ``F.rms_norm`` (one fused op where the backend has one).
* Rotary uses Llama's ``rotate_half`` pairing ``(i, i + hd/2)``; the full-width ``cos``/``sin``
  tables ``(context, head_dim)`` are computed once at construction and sliced per call.
* Attention is ``F.scaled_dot_product_attention(..., is_causal=True)``; grouped-query heads are
  handed to SDPA with ``enable_gqa=True`` (``gqa="sdpa"``, the default: measured ~5% faster per
  training step on CPU than expanding them) or expanded with ``repeat_interleave``
  (``gqa="repeat"``).

``load_blockdsl_weights`` copies the weights of a ``blockdsl`` ``llama`` model into it (parameter
names are listed in ``blockdsl_names``), so both compute the same logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LlamaArgs:
    vocab: int = 4096
    d_model: int = 256
    n_layers: int = 4
    heads: int = 8
    kv_heads: int = 2
    hidden: int = 704
    context: int = 256
    rope_theta: float = 10000.0
    eps: float = 1e-5
    gqa: str = "sdpa"  # "repeat" (repeat_interleave) or "sdpa" (enable_gqa=True)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, a: LlamaArgs) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = a.heads, a.kv_heads, a.d_model // a.heads
        self.groups = a.heads // a.kv_heads
        self.sdpa_gqa = a.gqa == "sdpa"
        self.wq = nn.Linear(a.d_model, a.heads * self.head_dim, bias=False)
        self.wk = nn.Linear(a.d_model, a.kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(a.d_model, a.kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(a.heads * self.head_dim, a.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, hd)
        v = self.wv(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.sdpa_gqa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            if self.groups > 1:
                k = k.repeat_interleave(self.groups, dim=1)
                v = v.repeat_interleave(self.groups, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, a: LlamaArgs) -> None:
        super().__init__()
        self.w_gate = nn.Linear(a.d_model, a.hidden, bias=False)
        self.w_up = nn.Linear(a.d_model, a.hidden, bias=False)
        self.w_down = nn.Linear(a.hidden, a.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class Block(nn.Module):
    def __init__(self, a: LlamaArgs) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(a.d_model, a.eps)
        self.attn = Attention(a)
        self.mlp_norm = RMSNorm(a.d_model, a.eps)
        self.mlp = SwiGLU(a)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class ReferenceLlama(nn.Module):
    def __init__(self, a: LlamaArgs | None = None, **kwargs) -> None:
        super().__init__()
        a = a or LlamaArgs(**kwargs)
        self.args = a
        self.tok_emb = nn.Embedding(a.vocab, a.d_model)
        self.blocks = nn.ModuleList(Block(a) for _ in range(a.n_layers))
        self.norm = RMSNorm(a.d_model, a.eps)
        self.lm_head = nn.Linear(a.d_model, a.vocab, bias=False)
        hd = a.d_model // a.heads
        inv_freq = 1.0 / a.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        angles = torch.outer(torch.arange(a.context, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)  # (context, hd), rotate_half layout
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02 if "emb" in name else 1 / math.sqrt(p.shape[1]))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, vocab)
        T = idx.shape[1]
        cos, sin = (
            self.cos[:T].to(self.tok_emb.weight.dtype),
            self.sin[:T].to(self.tok_emb.weight.dtype),
        )
        x = self.tok_emb(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(self.norm(x))


def blockdsl_names(n_layers: int) -> dict[str, str]:
    """Reference parameter name -> blockdsl ``llama`` parameter name (API contract names)."""
    names = {
        "tok_emb.weight": "embed.embed.tok.weight",
        "norm.weight": "head.norm.weight",
        "lm_head.weight": "head.head.weight",
    }
    for i in range(n_layers):
        r, b = f"blocks.{i}.", f"layers.{i}."
        names |= {
            r + "attn_norm.weight": b + "norm.weight",
            r + "attn.wq.weight": b + "attn.q.weight",
            r + "attn.wk.weight": b + "attn.k.weight",
            r + "attn.wv.weight": b + "attn.v.weight",
            r + "attn.wo.weight": b + "attn.o.weight",
            r + "mlp_norm.weight": b + "norm_1.weight",
            r + "mlp.w_gate.weight": b + "mlp.gate.weight",
            r + "mlp.w_up.weight": b + "mlp.up.weight",
            r + "mlp.w_down.weight": b + "mlp.down.weight",
        }
    return names


@torch.no_grad()
def load_blockdsl_weights(ref: ReferenceLlama, model: nn.Module) -> None:
    """Copy every parameter of a blockdsl ``llama`` model into ``ref``; raise on any mismatch
    (a name missing on either side, or a shape that differs)."""
    src = dict(model.named_parameters())
    names = blockdsl_names(ref.args.n_layers)
    dst = dict(ref.named_parameters())
    missing = sorted(set(names.values()) - set(src))
    extra = sorted(set(src) - set(names.values()))
    if missing or extra or set(dst) != set(names):
        raise KeyError(f"blockdsl names missing {missing}, unexpected {extra}")
    for r, b in names.items():
        if dst[r].shape != src[b].shape:
            raise ValueError(f"{r} {tuple(dst[r].shape)} != {b} {tuple(src[b].shape)}")
        dst[r].copy_(src[b])
