"""Normalisation: RMSNorm, LayerNorm, cosine (L2) norm, or none."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from blockdsl.components._util import same_size
from blockdsl.registry import register, register_alias

NormKind = Literal["rms", "layer", "none", "l2"]


def _norm_params(
    d_in: int,
    kind: str,
    affine: bool,
    bias: bool,
    per_head: bool = False,
    whole: bool = False,
    heads: int | None = None,
    **_,
) -> int:
    if kind == "none":
        return 0
    rows = heads if (per_head or whole) and heads else 1
    return d_in * rows * (int(affine) + int(bias))


def _norm_flops(
    d_in: int, seq: int, kind: str, affine: bool, bias: bool, heads: int | None = None, **_
) -> int:
    if kind == "none":
        return 0
    per_element = {"rms": 4, "layer": 6, "l2": 4}[kind] + int(affine) + int(bias)
    return per_element * d_in * seq * (heads or 1)  # in a per-head slot: every head


def _check_norm(per_head: bool = False, whole: bool = False, heads: int | None = None, **_):
    if (per_head or whole) and not heads:
        which = "per_head" if per_head else "whole"
        return (
            f"Norm({which}=true) needs the heads of the attention slot it is in",
            "write it in a q, k, v or o slot: Attn[q=Norm(per_head=true)]",
        )
    if per_head and whole:
        return "per_head and whole exclude each other (whole: one weight per feature already)"
    return None


_NORM_HELP: dict[str, str] = {
    "kind": "rms (RMSNorm), layer (LayerNorm), l2 (cosine normalisation) or none (identity)",
    "eps": "added to the mean square / variance (l2: the minimum norm)",
    "affine": "learn a per-channel scale `weight`",
    "bias": "learn a per-channel `bias` added last",
    "unit_offset": "Gemma: scale by `(1 + weight)`, weight initialised to 0",
    "per_head": "in a per-head slot: one weight row per head, `[heads, D]` (Cohere, StableLM)",
    "whole": "in a per-head slot: normalise all heads' features together (OLMo 2's q/k norm)",
    "heads": "the heads of the slot the norm is in (set by the slot)",
}


@register(
    "Norm",
    out_features=same_size,
    params=_norm_params,
    flops=_norm_flops,
    check=_check_norm,
    arg_help=_NORM_HELP,
    per_head=True,
)
class Norm(nn.Module):
    """Normalise each position's features: rms (RMSNorm), layer (LayerNorm), l2 (cosine) or none.

    * ``rms``: ``w * (x.float() * rsqrt(mean(x²) + eps)).to(dtype)`` (HF Llama); with
      ``unit_offset`` Gemma's ``(x.float() * rsqrt(...)) * (1 + w.float())``, cast at the end;
    * ``layer``: ``F.layer_norm`` (mean and variance), weight ``(1 + w)`` with ``unit_offset``;
    * ``l2``: ``F.normalize(x) * w`` (cosine normalisation, nGPT / QK-norm style);
    * ``none``: identity.

    In an attention's per-head slot (``Attn[q=Norm]``) the input is ``(B, T, heads, D)`` and
    the norm is over each head's ``D`` features with one weight for all heads; ``per_head``
    gives each head its own weight row (``[heads, D]``, computed in float32 and cast last, as
    Cohere and StableLM do); ``whole`` normalises all heads' features together (weight
    ``[heads * D]``, OLMo 2). ``heads`` is set by the slot.

    Parameters: ``weight`` (when ``affine``; initialised to 1, or to 0 with ``unit_offset``)
    and ``bias`` (when ``bias``; initialised to 0).
    """

    def __init__(
        self,
        d_model: int,
        kind: NormKind = "rms",
        eps: float = 1e-5,
        affine: bool = True,
        bias: bool = False,
        unit_offset: bool = False,
        per_head: bool = False,
        whole: bool = False,
        heads: int | None = None,
    ) -> None:
        super().__init__()
        problem = _check_norm(per_head, whole, heads)
        if problem:
            raise ValueError(problem if isinstance(problem, str) else problem[0])
        self.whole, self.per_head = whole, per_head
        # ``d_model`` is the size normalised over: all heads' features with ``whole``
        size = d_model * heads if whole else d_model
        self.d_model, self.kind, self.eps = size, kind, eps
        self.unit_offset = unit_offset
        learn = kind != "none"
        shape = (heads, size) if per_head else (size,)
        self.weight = nn.Parameter(torch.empty(shape)) if learn and affine else None
        self.bias = nn.Parameter(torch.empty(shape)) if learn and bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.constant_(self.weight, 0.0 if self.unit_offset else 1.0)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _scale(self) -> torch.Tensor | None:
        if self.weight is None:
            return None
        return 1.0 + self.weight.float() if self.unit_offset else self.weight

    def _plain_float32_rms(self) -> bool:
        """No unit offset and a float32 weight (or none): ``F.rms_norm`` computes exactly the
        float32 formula of ``forward``."""
        return not self.unit_offset and (self.weight is None or self.weight.dtype == torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if self.kind == "none":
            return x
        if self.whole:  # (B, T, H, hd): one norm over every head's features
            return self._normalise(x.flatten(-2)).view_as(x)
        if self.per_head:
            return self._per_head(x)
        return self._normalise(x)

    def _per_head(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H, hd), weight (H, hd)
        dtype, x32 = x.dtype, x.float()
        if self.kind == "layer":
            x32 = x32 - x32.mean(-1, keepdim=True)
        if self.kind == "l2":
            y = F.normalize(x32, dim=-1, eps=self.eps)
        else:
            y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            weight = self.weight.float()
            y = y * (1.0 + weight if self.unit_offset else weight)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(dtype)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.kind == "rms" and dtype == torch.float32 and self._plain_float32_rms():
            # the same float32 arithmetic as below, as one fused op (and its fused backward)
            y = F.rms_norm(x, (self.d_model,), self.weight, self.eps)
        elif self.kind == "rms":
            x32 = x.float()
            y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + self.eps)
            if self.weight is None:
                y = y.to(dtype)
            elif self.unit_offset:  # Gemma: scale in float32, cast last
                y = (y * (1.0 + self.weight.float())).to(dtype)
            else:  # Llama: cast, then scale
                y = self.weight * y.to(dtype)
        elif self.kind == "layer":
            scale = self._scale()
            scale = scale.to(dtype) if scale is not None else None
            return F.layer_norm(x, (self.d_model,), scale, self.bias, self.eps)
        else:  # l2
            y = F.normalize(x.float(), dim=-1, eps=self.eps)
            scale = self._scale()
            y = (y * scale.float()).to(dtype) if scale is not None else y.to(dtype)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{self.d_model}, kind={self.kind}, eps={self.eps}, unit_offset={self.unit_offset}"


register_alias("RMSNorm", "Norm", kind="rms")
register_alias("LayerNorm", "Norm", kind="layer", bias=True)
