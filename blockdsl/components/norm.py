"""Normalisation: RMSNorm, LayerNorm, cosine (L2) norm, or none."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from blockdsl.components._util import accepts_any, same_size
from blockdsl.registry import register, register_alias

NormKind = Literal["rms", "layer", "none", "l2"]


def _norm_params(d_in: int, kind: str, affine: bool, bias: bool, **_) -> int:
    if kind == "none":
        return 0
    return d_in * (int(affine) + int(bias))


def _norm_flops(d_in: int, seq: int, kind: str, affine: bool, bias: bool, **_) -> int:
    if kind == "none":
        return 0
    per_element = {"rms": 4, "layer": 6, "l2": 4}[kind] + int(affine) + int(bias)
    return per_element * d_in * seq


_NORM_HELP: dict[str, str] = {
    "kind": "rms (RMSNorm), layer (LayerNorm), l2 (cosine normalisation) or none (identity)",
    "eps": "added to the mean square / variance (l2: the minimum norm)",
    "affine": "learn a per-channel scale `weight`",
    "bias": "learn a per-channel `bias` added last",
    "unit_offset": "Gemma: scale by `(1 + weight)`, weight initialised to 0",
}


@register(
    "Norm",
    out_features=same_size,
    params=_norm_params,
    flops=_norm_flops,
    check=accepts_any,
    arg_help=_NORM_HELP,
)
class Norm(nn.Module):
    """Normalise each position's features: rms (RMSNorm), layer (LayerNorm), l2 (cosine) or none.

    * ``rms``: ``w * (x.float() * rsqrt(mean(x²) + eps)).to(dtype)`` (HF Llama); with
      ``unit_offset`` Gemma's ``(x.float() * rsqrt(...)) * (1 + w.float())``, cast at the end;
    * ``layer``: ``F.layer_norm`` (mean and variance), weight ``(1 + w)`` with ``unit_offset``;
    * ``l2``: ``F.normalize(x) * w`` (cosine normalisation, nGPT / QK-norm style);
    * ``none``: identity.

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
    ) -> None:
        super().__init__()
        self.d_model, self.kind, self.eps = d_model, kind, eps
        self.unit_offset = unit_offset
        learn = kind != "none"
        self.weight = nn.Parameter(torch.empty(d_model)) if learn and affine else None
        self.bias = nn.Parameter(torch.empty(d_model)) if learn and bias else None
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


class QKNorm(Norm):
    """Attention's query or key norm (not a registered component): a ``Norm`` over each
    head's ``size`` features (or over a whole projection), or, with ``heads``, one weight row
    per head (``weight [heads, size]``, Cohere / StableLM) for inputs ``(B, heads, T, size)``.
    The per-head form computes in float32 and casts last, as those references do."""

    def __init__(
        self,
        size: int,
        kind: Literal["rms", "layer"] = "rms",
        eps: float = 1e-6,
        bias: bool = False,
        unit_offset: bool = False,
        heads: int | None = None,
    ) -> None:
        self.heads = heads
        super().__init__(size, kind=kind, eps=eps, bias=bias, unit_offset=unit_offset)
        if heads is not None:
            self.weight = nn.Parameter(torch.empty(heads, size))
            self.bias = nn.Parameter(torch.empty(heads, size)) if bias else None
            self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, T, hd) or (..., size)
        if self.heads is None:
            return super().forward(x)
        dtype, x32 = x.dtype, x.float()
        if self.kind == "layer":
            x32 = x32 - x32.mean(-1, keepdim=True)
        y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + self.eps)
        weight = self.weight.float()[:, None, :]  # (H, 1, hd): one row per head
        y = y * (1.0 + weight if self.unit_offset else weight)
        if self.bias is not None:
            y = y + self.bias.float()[:, None, :]
        return y.to(dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", heads={self.heads}" if self.heads else "")


register_alias("RMSNorm", "Norm", kind="rms")
register_alias("LayerNorm", "Norm", kind="layer", bias=True)
