"""Architectures whose attention has parts inside it, written as slot contents (language v3,
docs/language.md "Slots") rather than ``Attn`` flags: gpt-oss (a learned sink logit per head,
``Attn[scores=Sink]``, beside its biased, clamped-SwiGLU experts).

One ``Architecture`` record each; like every family module this one imports only
``blockdsl.hf.base``.
"""

from __future__ import annotations

from typing import Any

from blockdsl.hf.base import (
    Architecture,
    WeightMapper,
    compress_layers,
    layer_kinds,
    model_config,
    register_architecture,
    rope_args,
    unsupported,
)

# --------------------------------------------------------------------------- gpt_oss


def _gpt_oss_attn(cfg: Any, t: str) -> dict[str, Any]:
    """GQA with RoPE (gpt-oss: yarn-scaled) and biases on all four projections."""
    rope, fraction = rope_args(cfg, t)
    if fraction != 1.0:
        raise unsupported(t, "partial_rotary_factor")
    return {
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads or cfg.num_attention_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        "pos": "rope",
        **rope,
        "bias": bool(cfg.attention_bias),
    }


def _config_gpt_oss(cfg: Any) -> dict:
    """gpt-oss: pre-norm layers, sliding-window or full attention per layer (``layer_types``)
    with a learned sink logit per head in the softmax (``Attn[scores=Sink]``), and experts
    with biases, a biased router whose softmax over the top-k logits is ``norm_topk``, and
    the clamped SwiGLU ``(up + 1) * gate * sigmoid(alpha * gate)`` (``glu_limit``)."""
    t = "gpt_oss"
    kinds = layer_kinds(cfg, t, {"sliding_attention": "local", "full_attention": "global"})
    attn = {
        "local": f"Attn(window={int(cfg.sliding_window)})[scores=Sink]",
        "global": "Attn[scores=Sink]",
    }
    blocks = {kind: f"Norm->{attn[kind]}->+->Norm->MoE->+" for kind in dict.fromkeys(kinds)}
    moe = {
        "experts": cfg.num_local_experts,
        "k": cfg.num_experts_per_tok,
        "hidden": cfg.intermediate_size,
        "act": "silu",  # the clamped SwiGLU; gpt-oss's hidden_act is not read by its experts
        "gated": True,
        "norm_topk": True,
        "router_bias": True,
        "expert_bias": True,
        "glu_limit": float(cfg.swiglu_limit),
        "glu_alpha": float(cfg.swiglu_alpha),
        "aux_loss": float(cfg.router_aux_loss_coef),
    }
    return model_config(
        cfg,
        layers=compress_layers(kinds),
        blocks=blocks,
        defaults={
            "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
            "Attn": _gpt_oss_attn(cfg, t),
            "MoE": moe,
        },
    )


def _gpt_oss_experts(m: WeightMapper, src: str, dst: str) -> None:
    """gpt-oss's experts, stacked in memory and on disk: ``gate_up_proj [E, D, 2I]`` with gate
    and up interleaved (gate the even columns), ``down_proj [E, I, D]`` (both ``x @ W``, the
    transpose of ``F.linear``'s layout) and their biases; the router's weight and bias."""
    m.linear(f"{dst}.router", f"{src}.router", bias=True)
    experts = f"{src}.experts"
    m.split(
        [f"{dst}.w_gate", f"{dst}.w_up"],
        f"{experts}.gate_up_proj",
        lambda w: [w[..., 0::2].transpose(1, 2), w[..., 1::2].transpose(1, 2)],
    )
    m.split(
        [f"{dst}.b_gate", f"{dst}.b_up"],
        f"{experts}.gate_up_proj_bias",
        lambda b: [b[..., 0::2], b[..., 1::2]],
    )
    m.put(f"{dst}.w_down", f"{experts}.down_proj", fn=lambda w: w.transpose(1, 2))
    m.put(f"{dst}.b_down", f"{experts}.down_proj_bias")


def _weights_gpt_oss(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        for n in "qkvo":
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", bias)
        m.put(f"{q}.attn.slots.scores.sink.sinks", f"{p}.self_attn.sinks")
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        _gpt_oss_experts(m, f"{p}.mlp", f"{q}.moe")
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture(
        "gpt_oss", "GptOssForCausalLM", "model", config=_config_gpt_oss, weights=_weights_gpt_oss
    )
)
