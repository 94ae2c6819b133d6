"""MAD's ``AutoEncoder`` backbone (``mad/model/auto_encoder.py``) around a blockdsl model, for
the compression task: the model's embedding and layers encode the sequence, the features at
its last position are the encoding, and MAD's fixed decoder (encoding plus a sinusoidal
position embedding, then LayerNorm → Linear → GELU → LayerNorm → Linear → GELU at each
position) feeds the model's own head to rebuild every token."""

from __future__ import annotations

import math

import torch
from torch import nn

from blockdsl.model import LanguageModel, LMOutput


def sincos_positions(count: int, dim: int) -> torch.Tensor:
    """fairseq's sinusoidal table, as MAD's ``posemb_sincos_1d``."""
    half = dim // 2
    rate = math.log(10000) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float) * -rate)
    angles = torch.arange(count, dtype=torch.float).unsqueeze(1) * freqs.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(count, 1)], dim=1)
    return table


class AutoEncoder(LanguageModel):
    """A ``LanguageModel`` whose head rebuilds the whole sequence from the last position. It
    holds the given model's own embedding, layers and head (same parameter names, so the
    checkpoints of ``blockdsl train`` hold it whole: the model's tensors plus ``decoder.*``)."""

    def __init__(self, model: LanguageModel, seq_len: int) -> None:
        super().__init__(model.config, model.embed, model.layers, model.head, model.layer_names)
        dim = model.config.d_model
        self.register_buffer("positions", sincos_positions(seq_len, dim), persistent=False)
        self.decoder = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim),
            nn.GELU(),
            nn.LayerNorm(dim),
            nn.Linear(dim, dim),
            nn.GELU(),
        )
        for module in self.decoder.modules():  # MAD's _init_weights
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> LMOutput:
        """``LMOutput`` of the rebuilt sequence (as ``LanguageModel.forward``): logits
        ``(B, T, vocab)``, with ``targets`` the loss adding the encoder's auxiliary losses."""
        aux = self.new_aux_values()
        x = self.forward_features(idx, aux)
        encoding = x[:, -1]
        decoded = self.decoder(encoding.unsqueeze(1) + self.positions[: idx.shape[1]].to(x.dtype))
        return self.output(self.forward_head(decoded, aux), targets, aux)
