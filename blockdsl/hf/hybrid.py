"""Hybrids of attention with short convolutions or linear attention for the Hugging Face
import: LFM2 (gated short-conv layers and GQA layers) and Qwen3-Next (Gated DeltaNet layers and
gated full-attention layers, with a mixture of experts): one ``Architecture`` record each. The
hybrids with state-space layers (Jamba, Bamba, Falcon-H1) are in ``blockdsl.hf.ssm``.

``layer_types`` becomes a ``layers`` chain over named blocks (``(linear_moe*3->full_moe)*2``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from blockdsl.components.linear_attention import split_grouped_qkvz, split_qkv_conv
from blockdsl.hf.base import (
    Architecture,
    Tensor,
    WeightMapper,
    activation,
    compress_layers,
    default_rope,
    gated_shared_expert_weights,
    layer_kinds,
    llama_mlp_weights,
    model_config,
    register_architecture,
    rotary_fraction,
    shared_expert_multiple,
    stacked_expert_weights,
    unsupported,
)


def _config_lfm2(cfg: Any) -> dict:
    """LFM2: gated short-conv layers (``ShortConv``) and GQA attention layers with q/k RMSNorm,
    from ``layer_types``; SwiGLU feed-forward everywhere; the final norm is HF's
    ``embedding_norm``."""
    t = "lfm2"
    theta, fraction = default_rope(cfg, t)
    if fraction != 1.0:
        raise unsupported(t, "partial_rotary_factor")
    names = layer_kinds(cfg, t, {"conv": "conv", "full_attention": "attn"})
    hidden = cfg.intermediate_size
    if cfg.block_auto_adjust_ff_dim:  # as Lfm2MLP
        hidden = int(2 * hidden / 3)
        if cfg.block_ffn_dim_multiplier is not None:
            hidden = int(cfg.block_ffn_dim_multiplier * hidden)
            multiple = cfg.block_multiple_of
            hidden = multiple * ((hidden + multiple - 1) // multiple)
    mlp = "->+->Norm->MLP->+"
    blocks = {"conv": "Norm->ShortConv" + mlp, "attn": "Norm->Attn" + mlp}
    return model_config(
        cfg,
        layers=compress_layers(names),
        blocks={name: blocks[name] for name in dict.fromkeys(names)},
        defaults={
            "Norm": {"kind": "rms", "eps": cfg.norm_eps},
            "Attn": {
                "heads": cfg.num_attention_heads,
                "kv_heads": cfg.num_key_value_heads,
                "head_dim": cfg.hidden_size // cfg.num_attention_heads,
                "pos": "rope",
                "rope_theta": theta,
                "qk_norm": True,
                "qk_norm_eps": cfg.norm_eps,
            },
            "ShortConv": {"kernel": cfg.conv_L_cache, "bias": bool(cfg.conv_bias)},
            "MLP": {"hidden": hidden, "act": "silu", "gated": True},
        },
        tied_by_default=True,
    )


def _weights_lfm2(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    bias = bool(cfg.conv_bias)
    for i, kind in enumerate(cfg.layer_types):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.operator_norm", bias=False)
        if kind == "conv":
            for n in ("in_proj", "conv", "out_proj"):
                m.linear(f"{q}.short_conv.{n}", f"{p}.conv.{n}", bias)
        else:
            for n, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
                m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{hf}", bias=False)
            m.norm(f"{q}.attn.slots.q.norm", f"{p}.self_attn.q_layernorm", bias=False)
            m.norm(f"{q}.attn.slots.k.norm", f"{p}.self_attn.k_layernorm", bias=False)
        m.norm(f"{q}.norm_1", f"{p}.ffn_norm", bias=False)
        for n, hf in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
            m.linear(f"{q}.mlp.{n}", f"{p}.feed_forward.{hf}", bias=False)
    m.norm("head.norm", "model.embedding_norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", True))


register_architecture(
    Architecture("lfm2", "Lfm2ForCausalLM", "model", config=_config_lfm2, weights=_weights_lfm2)
)


def _qwen3_next_sparse(cfg: Any, layer: int) -> bool:
    """Whether Qwen3-Next's layer ``layer`` has the MoE (as ``Qwen3NextDecoderLayer``)."""
    return (
        layer not in (cfg.mlp_only_layers or [])
        and cfg.num_experts > 0
        and (layer + 1) % cfg.decoder_sparse_step == 0
    )


def _config_qwen3_next(cfg: Any) -> dict:
    """Qwen3-Next: Gated DeltaNet layers and gated full-attention layers (``layer_types``),
    each followed by the MoE with a gated shared expert (or a dense MLP on ``mlp_only_layers``
    and between ``decoder_sparse_step``s); RMSNorms with a unit offset."""
    t = "qwen3_next"
    act = activation(cfg.hidden_act, t)
    if act != "silu":  # the DeltaNet conv and gate are hard-wired SiLU in blockdsl
        raise unsupported(t, f"hidden_act '{cfg.hidden_act}' (GatedDeltaNet uses SiLU)")
    theta, fraction = default_rope(cfg, t)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rotary = int(head_dim * fraction)  # odd counts too: Attn follows transformers' arithmetic
    mixers = layer_kinds(cfg, t, {"linear_attention": "linear", "full_attention": "full"})
    ffn = {True: "MoE", False: "MLP"}
    names = [f"{mixer}_{ffn[_qwen3_next_sparse(cfg, i)].lower()}" for i, mixer in enumerate(mixers)]
    mixer_of = {"linear": "GatedDeltaNet", "full": "Attn"}
    blocks = {}
    for name in dict.fromkeys(names):
        mixer, kind = name.split("_")
        blocks[name] = f"Norm->{mixer_of[mixer]}->+->Norm->{ffn[kind == 'moe']}->+"
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps, "unit_offset": True},
        "GatedDeltaNet": {
            "heads": cfg.linear_num_key_heads,
            "v_heads": cfg.linear_num_value_heads,
            "head_dim": cfg.linear_key_head_dim,
            "v_head_dim": cfg.linear_value_head_dim,
            "kernel": cfg.linear_conv_kernel_dim,
            "eps": cfg.rms_norm_eps,
        },
        "Attn": {
            "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": head_dim,
            "pos": "rope",
            "rope_theta": theta,
            "rope_fraction": rotary_fraction(rotary, head_dim),
            "qk_norm": True,
            "qk_norm_eps": cfg.rms_norm_eps,
            "gate": True,
            "bias": bool(getattr(cfg, "attention_bias", False)),
        },
        "MLP": {"hidden": cfg.intermediate_size, "act": act, "gated": True},
    }
    if any(name.endswith("_moe") for name in names):
        shared = shared_expert_multiple(
            t,
            cfg.shared_expert_intermediate_size,
            cfg.moe_intermediate_size,
            "shared_expert_intermediate_size",
        )
        defaults["MoE"] = {
            "experts": cfg.num_experts,
            "k": cfg.num_experts_per_tok,
            "hidden": cfg.moe_intermediate_size,
            "act": act,
            "gated": True,
            "shared": shared,
            "shared_gate": shared > 0,
            "norm_topk": bool(cfg.norm_topk_prob),
            "aux_loss": float(cfg.router_aux_loss_coef),
        }
    return model_config(cfg, layers=compress_layers(names), blocks=blocks, defaults=defaults)


def _unit_offset(w: Tensor) -> Tensor:
    """HF's ``(1 + weight)`` RMSNorm weight as blockdsl's plain RMSNorm weight."""
    return 1.0 + w


def _weights_qwen3_next(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    H = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    bias = bool(getattr(cfg, "attention_bias", False))
    inter = cfg.moe_intermediate_size
    Hk, Hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    dk, dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim

    def query_and_gate(w: Tensor) -> list[Tensor]:  # per head: [q (hd) | gate (hd)] rows
        halves = w.reshape(H, 2, head_dim, *w.shape[1:]).unbind(1)
        return [t.reshape(H * head_dim, *w.shape[1:]) for t in halves]

    for i, kind in enumerate(cfg.layer_types):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        if kind == "linear_attention":  # HF's fused q/k/v/z and conv are the slots' weights
            g, src = f"{q}.gated_delta_net", f"{p}.linear_attn"
            m.split(
                [f"{g}.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "slots.gate.linear")],
                f"{src}.in_proj_qkvz.weight",
                partial(split_grouped_qkvz, heads=Hk, v_heads=Hv, head_dim=dk, v_head_dim=dv),
            )
            m.split(
                [f"{g}.slots.{n}.conv.weight" for n in "qkv"],
                f"{src}.conv1d.weight",
                partial(split_qkv_conv, key_dim=Hk * dk, value_dim=Hv * dv),
            )
            m.put(f"{g}.slots.o.norm.weight", f"{src}.norm.weight")
            for n in ("in_proj_ba", "out_proj"):
                m.put(f"{g}.{n}.weight", f"{src}.{n}.weight")
            for n in ("dt_bias", "A_log"):
                m.put(f"{g}.{n}", f"{src}.{n}")
        else:
            a, src = f"{q}.attn", f"{p}.self_attn"
            m.split(
                [f"{a}.q.weight", f"{a}.slots.gate.linear.weight"],
                f"{src}.q_proj.weight",
                query_and_gate,
            )
            if bias:
                m.split(
                    [f"{a}.q.bias", f"{a}.slots.gate.linear.bias"],
                    f"{src}.q_proj.bias",
                    query_and_gate,
                )
            for n in "kvo":
                m.linear(f"{a}.{n}", f"{src}.{n}_proj", bias)
            for n in "qk":  # Attn's q/k norms are plain RMSNorms: fold HF's unit offset in
                m.put(f"{a}.slots.{n}.norm.weight", f"{src}.{n}_norm.weight", fn=_unit_offset)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        if _qwen3_next_sparse(cfg, i):
            e, src = f"{q}.moe", f"{p}.mlp"
            m.put(f"{e}.router.weight", f"{src}.gate.weight")
            stacked_expert_weights(m, f"{src}.experts", e, inter)
            if cfg.shared_expert_intermediate_size:
                gated_shared_expert_weights(m, src, e)
        else:
            llama_mlp_weights(cfg, m, p, q)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture(
        "qwen3_next",
        "Qwen3NextForCausalLM",
        "model",
        config=_config_qwen3_next,
        weights=_weights_qwen3_next,
    )
)
