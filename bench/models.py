"""The four contenders of ``bench/step.py``, built at one configuration, with shared weights.

The weights start in the blockdsl model; ``ReferenceLlama`` loads them by name
(``reference_llama.load_blockdsl_weights``) and ``transformers.LlamaForCausalLM`` loads them from
the reference (``load_reference_into_hf``). x-transformers' Llama-like decoder keeps its own
initialisation: its RMSNorm (``F.normalize * sqrt(d) * (gamma + 1)``) and parameter layout differ,
so its logits are not compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.reference_llama import LlamaArgs, ReferenceLlama, load_blockdsl_weights


def logits_of(out: object) -> torch.Tensor:
    """The logits of a contender's forward: blockdsl models return ``LMOutput``, the
    references return the logits themselves."""
    from blockdsl.model import LMOutput

    return out.logits if isinstance(out, LMOutput) else out


@dataclass
class Config:
    vocab: int = 4096
    d_model: int = 256
    layers: int = 4
    heads: int = 8
    kv_heads: int = 2
    hidden: int = 704
    seq: int = 256
    batch: int = 8
    rope_theta: float = 10000.0
    eps: float = 1e-5


def build_blockdsl(cfg: Config, device=None, dtype=None) -> nn.Module:
    import blockdsl

    kwargs = {}
    if device is not None:
        kwargs["device"] = device
    if dtype is not None:
        kwargs["dtype"] = dtype
    return blockdsl.build_model(
        "llama",
        vocab=cfg.vocab,
        d_model=cfg.d_model,
        context=cfg.seq,
        layers=f"block*{cfg.layers}",
        defaults={
            "Attn": {"heads": cfg.heads, "kv_heads": cfg.kv_heads},
            "MLP": {"hidden": cfg.hidden},
        },
        **kwargs,
    )


def blockdsl_norm_eps(model: nn.Module) -> float:
    """The eps of the blockdsl model's norms (they must all agree)."""
    eps = {m.eps for m in model.modules() if type(m).__name__ == "Norm"}
    if len(eps) != 1:
        raise ValueError(f"norms disagree on eps: {eps}")
    return eps.pop()


def blockdsl_rope_theta(model: nn.Module) -> float:
    thetas = {m.rope_theta for m in model.modules() if hasattr(m, "rope_theta")}
    if len(thetas) != 1:
        raise ValueError(f"attention layers disagree on rope_theta: {thetas}")
    return thetas.pop()


def build_reference(cfg: Config, gqa: str = "sdpa") -> ReferenceLlama:
    return ReferenceLlama(
        LlamaArgs(
            vocab=cfg.vocab,
            d_model=cfg.d_model,
            n_layers=cfg.layers,
            heads=cfg.heads,
            kv_heads=cfg.kv_heads,
            hidden=cfg.hidden,
            context=cfg.seq,
            rope_theta=cfg.rope_theta,
            eps=cfg.eps,
            gqa=gqa,
        )
    )


def reference_from_blockdsl(cfg: Config, model: nn.Module, gqa: str = "sdpa") -> ReferenceLlama:
    """A reference with the blockdsl model's weights, eps and rope theta."""
    cfg = Config(**{**cfg.__dict__})
    cfg.eps, cfg.rope_theta = blockdsl_norm_eps(model), blockdsl_rope_theta(model)
    p = next(model.parameters())
    ref = build_reference(cfg, gqa=gqa).to(device=p.device, dtype=p.dtype)
    load_blockdsl_weights(ref, model)
    return ref


def hf_config(cfg: Config, **kwargs):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.seq,
        rms_norm_eps=cfg.eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attn_implementation="sdpa",
        **kwargs,
    )


class HFLogits(nn.Module):
    """``LlamaForCausalLM`` returning plain logits (no cache)."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=idx, use_cache=False).logits


def build_hf(cfg: Config) -> nn.Module:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(hf_config(cfg))


@torch.no_grad()
def load_reference_into_hf(hf: nn.Module, ref: ReferenceLlama) -> None:
    names = {
        "tok_emb.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
    }
    for i in range(ref.args.n_layers):
        r, h = f"blocks.{i}.", f"model.layers.{i}."
        names |= {
            r + "attn_norm.weight": h + "input_layernorm.weight",
            r + "attn.wq.weight": h + "self_attn.q_proj.weight",
            r + "attn.wk.weight": h + "self_attn.k_proj.weight",
            r + "attn.wv.weight": h + "self_attn.v_proj.weight",
            r + "attn.wo.weight": h + "self_attn.o_proj.weight",
            r + "mlp_norm.weight": h + "post_attention_layernorm.weight",
            r + "mlp.w_gate.weight": h + "mlp.gate_proj.weight",
            r + "mlp.w_up.weight": h + "mlp.up_proj.weight",
            r + "mlp.w_down.weight": h + "mlp.down_proj.weight",
        }
    src, dst = dict(ref.named_parameters()), dict(hf.named_parameters())
    if set(names) != set(src) or set(names.values()) != set(dst):
        raise KeyError("reference / transformers parameter names do not match the mapping")
    for r, h in names.items():
        dst[h].copy_(src[r])


def hf_from_reference(cfg: Config, ref: ReferenceLlama) -> HFLogits:
    cfg = Config(**{**cfg.__dict__})
    cfg.eps, cfg.rope_theta = ref.args.eps, ref.args.rope_theta
    p = next(ref.parameters())
    hf = build_hf(cfg).to(device=p.device, dtype=p.dtype)
    load_reference_into_hf(hf, ref)
    return HFLogits(hf)


def build_xtransformers(cfg: Config) -> nn.Module:
    """x-transformers' closest equivalent: pre-norm RMSNorm decoder, rotary on the full head,
    GQA, SwiGLU of inner width ``hidden``, no biases, SDPA attention, untied head."""
    from x_transformers import Decoder, TransformerWrapper

    head_dim = cfg.d_model // cfg.heads
    return TransformerWrapper(
        num_tokens=cfg.vocab,
        max_seq_len=cfg.seq,
        use_abs_pos_emb=False,
        tie_embedding=False,
        attn_layers=Decoder(
            dim=cfg.d_model,
            depth=cfg.layers,
            heads=cfg.heads,
            attn_dim_head=head_dim,
            attn_kv_heads=cfg.kv_heads,
            attn_flash=True,
            rotary_pos_emb=True,
            rotary_emb_dim=head_dim,
            ff_glu=True,
            ff_swish=True,
            ff_mult=cfg.hidden / cfg.d_model,
            ff_no_bias=True,
            use_rmsnorm=True,
        ),
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
