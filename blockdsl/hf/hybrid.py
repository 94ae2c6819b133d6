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
    expert_weights,
    gated_shared_expert_weights,
    layer_kinds,
    llama_mlp_weights,
    model_config,
    qk_norm_weights,
    register_architecture,
    rotary_fraction,
    shared_expert_args,
    unsupported,
)


def _lfm2_layers(cfg: Any, t: str) -> list[tuple[str, str]]:
    """``(mixer, feed-forward)`` per layer: ``conv`` or ``attn`` from ``layer_types``, then
    ``mlp``, or for LFM2-MoE ``dense`` before ``num_dense_layers`` and ``moe`` after."""
    mixers = layer_kinds(cfg, t, {"conv": "conv", "full_attention": "attn"})
    if t == "lfm2":
        return [(mixer, "mlp") for mixer in mixers]
    return [
        (mixer, "dense" if i < cfg.num_dense_layers else "moe") for i, mixer in enumerate(mixers)
    ]


def _config_lfm2(cfg: Any) -> dict:
    """LFM2: gated short-conv layers (``ShortConv``) and GQA attention layers with q/k RMSNorm,
    from ``layer_types``; SwiGLU feed-forward everywhere; the final norm is HF's
    ``embedding_norm``. LFM2-MoE: the same layers with sigmoid-routed experts (a selection-only
    ``expert_bias`` with ``use_expert_bias``, times ``routed_scaling_factor``) after the first
    ``num_dense_layers``."""
    t = cfg.model_type
    theta, fraction = default_rope(cfg, t)
    if fraction != 1.0:
        raise unsupported(t, "partial_rotary_factor")
    layers = _lfm2_layers(cfg, t)
    hidden = cfg.intermediate_size
    if t == "lfm2" and cfg.block_auto_adjust_ff_dim:  # as Lfm2MLP; Lfm2MoeMLP takes it as is
        hidden = int(2 * hidden / 3)
        if cfg.block_ffn_dim_multiplier is not None:
            hidden = int(cfg.block_ffn_dim_multiplier * hidden)
            multiple = cfg.block_multiple_of
            hidden = multiple * ((hidden + multiple - 1) // multiple)
    mixer_calls = {"conv": "Norm->ShortConv", "attn": "Norm->Attn"}
    ffn_calls = {"mlp": "MLP", "dense": "MLP", "moe": "MoE"}
    names = [mixer if ffn == "mlp" else f"{mixer}_{ffn}" for mixer, ffn in layers]
    blocks = {
        name: f"{mixer_calls[mixer]}->+->Norm->{ffn_calls[ffn]}->+"
        for name, (mixer, ffn) in dict(zip(names, layers, strict=True)).items()
    }
    defaults: dict[str, dict] = {
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
    }
    if any(ffn != "moe" for _, ffn in layers):
        defaults["MLP"] = {"hidden": hidden, "act": "silu", "gated": True}
    if any(ffn == "moe" for _, ffn in layers):
        defaults["MoE"] = {
            "experts": cfg.num_experts,
            "k": cfg.num_experts_per_tok,
            "hidden": cfg.moe_intermediate_size,
            "act": "silu",
            "gated": True,
            "score": "sigmoid",
            "score_bias": bool(cfg.use_expert_bias),
            "norm_topk": bool(cfg.norm_topk_prob),
            "routed_scale": float(cfg.routed_scaling_factor),
            "aux_loss": 0.0,  # transformers adds no load-balancing loss for LFM2-MoE
        }
    return model_config(
        cfg,
        layers=compress_layers(names),
        blocks={name: blocks[name] for name in dict.fromkeys(names)},
        defaults=defaults,
        tied_by_default=True,
    )


def _weights_lfm2(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    bias = bool(cfg.conv_bias)
    for i, (mixer, ffn) in enumerate(_lfm2_layers(cfg, cfg.model_type)):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.operator_norm", bias=False)
        if mixer == "conv":
            for n in ("in_proj", "conv", "out_proj"):
                m.linear(f"{q}.short_conv.{n}", f"{p}.conv.{n}", bias)
        else:
            for n, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
                m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{hf}", bias=False)
            qk_norm_weights(m, f"{p}.self_attn", f"{q}.attn", names=("q_layernorm", "k_layernorm"))
        m.norm(f"{q}.norm_1", f"{p}.ffn_norm", bias=False)
        src = f"{p}.feed_forward"
        if ffn != "moe":
            for n, hf in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
                m.linear(f"{q}.mlp.{n}", f"{src}.{hf}", bias=False)
            continue
        m.put(f"{q}.moe.router.weight", f"{src}.gate.weight")
        if cfg.use_expert_bias:
            m.put(f"{q}.moe.score_bias", f"{src}.expert_bias")
        expert_weights(
            m,
            f"{src}.experts",
            f"{q}.moe",
            experts=cfg.num_experts,
            inter=cfg.moe_intermediate_size,
            names=("w1", "w3", "w2"),
        )
    m.norm("head.norm", "model.embedding_norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", True))


register_architecture(
    Architecture("lfm2", "Lfm2ForCausalLM", "model", config=_config_lfm2, weights=_weights_lfm2)
)
register_architecture(
    Architecture(
        "lfm2_moe",
        "Lfm2MoeForCausalLM",
        "model",
        config=_config_lfm2,
        weights=_weights_lfm2,
        buffers=("expert_bias",),
    )
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
        shared = shared_expert_args(cfg.shared_expert_intermediate_size, cfg.moe_intermediate_size)
        defaults["MoE"] = {
            "experts": cfg.num_experts,
            "k": cfg.num_experts_per_tok,
            "hidden": cfg.moe_intermediate_size,
            "act": act,
            "gated": True,
            **shared,
            "shared_gate": shared["shared"] > 0,
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
            expert_weights(m, f"{src}.experts", e, experts=cfg.num_experts, inter=inter)
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
