"""Mixture-of-experts architectures for the Hugging Face import: Mixtral, Qwen2-MoE, OLMoE,
DBRX, DeepSeek-V2 and DeepSeek-V3 (one ``Architecture`` record each; Qwen3-Next, whose experts
follow Gated DeltaNet layers, is in ``blockdsl.hf.hybrid``).

Their routing conventions are ``MoE`` arguments: renormalised or raw top-k weights
(``norm_topk``), a sigmoid-gated shared expert (Qwen2-MoE), sigmoid scores with a selection-only
correction bias, group-limited top-k and a routed scaling factor (DeepSeek), jitter on the whole
MoE input (DBRX). Layers without experts (``mlp_only_layers``, ``decoder_sparse_step``,
DeepSeek's ``first_k_dense_replace``) are their own named block, so ``layers`` reads as the
architecture: ``dense->moe*26``. DeepSeek's multi-head latent attention is the ``MLA``
component.
"""

from __future__ import annotations

from typing import Any

from blockdsl.hf.base import (
    Architecture,
    WeightMapper,
    activation,
    compress_layers,
    default_rope,
    expert_weights,
    gated_shared_expert_weights,
    llama_like_config,
    llama_mlp_weights,
    llama_weights,
    model_config,
    register_architecture,
    shared_expert_multiple,
    unsupported,
)

# ---------------------------------------------------------------- mixtral


def _config_mixtral(cfg: Any) -> dict:
    moe = {
        "experts": cfg.num_local_experts,
        "k": cfg.num_experts_per_tok,
        "hidden": cfg.intermediate_size,
        "act": activation(cfg.hidden_act, "mixtral"),
        "gated": True,
        "norm_topk": True,
        "aux_loss": float(cfg.router_aux_loss_coef),
    }
    jitter = float(getattr(cfg, "router_jitter_noise", 0.0) or 0.0)
    if jitter:  # transformers multiplies the whole MoE input, which the experts see too
        moe.update(jitter=jitter, jitter_scope="input")
    return llama_like_config(cfg, "mixtral", mlp=moe, window=True)


def _moe_mixtral(cfg: Any, m: WeightMapper, p: str, q: str) -> None:
    E, inter = cfg.num_local_experts, cfg.intermediate_size
    # On disk Mixtral keeps its original names (``block_sparse_moe``, experts' ``w1`` gate,
    # ``w3`` up, ``w2`` down); transformers renames them ``mlp``, ``gate_up_proj``/``down_proj``.
    src = f"{p}.mlp"
    if m.has(f"{p}.block_sparse_moe.gate.weight") and not m.has(f"{src}.gate.weight"):
        src = f"{p}.block_sparse_moe"
    m.put(f"{q}.moe.router.weight", f"{src}.gate.weight")
    expert_weights(
        m, f"{src}.experts", f"{q}.moe", experts=E, inter=inter, names=("w1", "w3", "w2")
    )


def _weights_mixtral(cfg: Any, m: WeightMapper) -> None:
    llama_weights(cfg, m, feed_forward=_moe_mixtral)


register_architecture(
    Architecture(
        "mixtral", "MixtralForCausalLM", "model", config=_config_mixtral, weights=_weights_mixtral
    )
)


_SPARSE_BLOCKS = {
    "moe": "Norm->Attn->+->Norm->MoE->+",
    "dense": "Norm->Attn->+->Norm->MLP->+",
}


def _named_layers(kinds: list[str], blocks: dict[str, str]) -> tuple[str, dict[str, str]]:
    """``layers`` chain and the blocks it uses, from one block name per layer."""
    return compress_layers(kinds), {name: blocks[name] for name in dict.fromkeys(kinds)}


def _attn_gqa(cfg: Any, t: str) -> dict[str, Any]:
    theta, fraction = default_rope(cfg, t)
    if fraction != 1.0:
        raise unsupported(t, "partial_rotary_factor")
    return {
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads or cfg.num_attention_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        "pos": "rope",
        "rope_theta": theta,
        "bias": False,
    }


# --------------------------------------------------------------------------- qwen2_moe


def _qwen2_moe_sparse(cfg: Any, layer: int) -> bool:
    """Whether Qwen2-MoE's layer ``layer`` has the experts (as ``Qwen2MoeDecoderLayer``)."""
    return (
        layer not in (cfg.mlp_only_layers or [])
        and cfg.num_experts > 0
        and (layer + 1) % cfg.decoder_sparse_step == 0
    )


def _config_qwen2_moe(cfg: Any) -> dict:
    """Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Llama-like attention with q/k/v biases (none on
    o), experts with raw or renormalised top-k weights and one shared expert scaled by
    ``sigmoid(shared_expert_gate(x))``; dense MLP layers from ``mlp_only_layers`` and
    ``decoder_sparse_step``."""
    t = "qwen2_moe"
    if getattr(cfg, "use_sliding_window", False):
        raise unsupported(t, "use_sliding_window (sliding-window layers)")
    act = activation(cfg.hidden_act, t)
    attn = _attn_gqa(cfg, t)
    if cfg.qkv_bias:
        attn["qkv_bias"] = True
    kinds = ["moe" if _qwen2_moe_sparse(cfg, i) else "dense" for i in range(cfg.num_hidden_layers)]
    layers, blocks = _named_layers(kinds, _SPARSE_BLOCKS)
    defaults: dict[str, dict] = {"Norm": {"kind": "rms", "eps": cfg.rms_norm_eps}, "Attn": attn}
    if "dense" in blocks:
        defaults["MLP"] = {"hidden": cfg.intermediate_size, "act": act, "gated": True}
    if "moe" in blocks:
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
    return model_config(cfg, layers=layers, blocks=blocks, defaults=defaults)


def _weights_qwen2_moe(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        for n in "qkv":
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", bool(cfg.qkv_bias))
        m.linear(f"{q}.attn.o", f"{p}.self_attn.o_proj", bias=False)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        if not _qwen2_moe_sparse(cfg, i):
            llama_mlp_weights(cfg, m, p, q)
            continue
        e, src = f"{q}.moe", f"{p}.mlp"
        m.put(f"{e}.router.weight", f"{src}.gate.weight")
        expert_weights(
            m, f"{src}.experts", e, experts=cfg.num_experts, inter=cfg.moe_intermediate_size
        )
        if cfg.shared_expert_intermediate_size:
            gated_shared_expert_weights(m, src, e)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture(
        "qwen2_moe",
        "Qwen2MoeForCausalLM",
        "model",
        config=_config_qwen2_moe,
        weights=_weights_qwen2_moe,
    )
)


# --------------------------------------------------------------------------- olmoe


def _config_olmoe(cfg: Any) -> dict:
    """OLMoE: Llama-like layers whose attention RMS-normalises the whole query and key
    projections (``qk_norm_over=all``, before the heads split), every layer with experts."""
    t = "olmoe"
    if cfg.clip_qkv is not None:  # OLMoE clips after the q/k norm, blockdsl before it
        raise unsupported(t, f"clip_qkv={cfg.clip_qkv} (clipped after the q/k norm)")
    act = activation(cfg.hidden_act, t)
    attn = {
        **_attn_gqa(cfg, t),
        "bias": bool(cfg.attention_bias),
        "qk_norm": True,
        "qk_norm_over": "all",
        "qk_norm_eps": cfg.rms_norm_eps,
    }
    return model_config(
        cfg,
        layers=f"moe*{cfg.num_hidden_layers}",
        blocks={"moe": _SPARSE_BLOCKS["moe"]},
        defaults={
            "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
            "Attn": attn,
            "MoE": {
                "experts": cfg.num_experts,
                "k": cfg.num_experts_per_tok,
                "hidden": cfg.intermediate_size,
                "act": act,
                "gated": True,
                "norm_topk": bool(cfg.norm_topk_prob),
                "aux_loss": float(cfg.router_aux_loss_coef),
            },
        },
    )


def _weights_olmoe(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        for n in "qkvo":
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", bias)
        for n in "qk":
            m.norm(f"{q}.attn.{n}_norm", f"{p}.self_attn.{n}_norm", bias=False)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        m.put(f"{q}.moe.router.weight", f"{p}.mlp.gate.weight")
        expert_weights(
            m,
            f"{p}.mlp.experts",
            f"{q}.moe",
            experts=cfg.num_experts,
            inter=cfg.intermediate_size,
        )
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture("olmoe", "OlmoeForCausalLM", "model", config=_config_olmoe, weights=_weights_olmoe)
)


# --------------------------------------------------------------------------- dbrx


def _config_dbrx(cfg: Any) -> dict:
    """DBRX: LayerNorms without bias, GQA with a fused ``Wqkv`` (optionally clipped,
    ``clip_qkv``), experts on every layer; ``moe_jitter_eps`` multiplies the whole MoE input
    in training (transformers' router scales its input in place, and the experts read it)."""
    t = "dbrx"
    attn_cfg, ffn = cfg.attn_config, cfg.ffn_config
    theta, _ = default_rope(cfg, t)
    p = ffn.moe_normalize_expert_weights
    if p not in (None, 1, 1.0):
        raise unsupported(t, f"moe_normalize_expert_weights={p} (only 1, the sum, or none)")
    act_fn = dict(ffn.ffn_act_fn or {"name": "silu"})
    act = activation(act_fn.pop("name", "silu"), t)
    if act_fn:
        raise unsupported(t, f"ffn_act_fn options {sorted(act_fn)}")
    attn: dict[str, Any] = {
        "heads": cfg.n_heads,
        "kv_heads": attn_cfg.kv_n_heads,
        "pos": "rope",
        "rope_theta": theta,
        "bias": False,
    }
    if attn_cfg.clip_qkv is not None:
        attn["clip_qkv"] = float(attn_cfg.clip_qkv)
    moe: dict[str, Any] = {
        "experts": ffn.moe_num_experts,
        "k": ffn.moe_top_k,
        "hidden": ffn.ffn_hidden_size,
        "act": act,
        "gated": True,
        "norm_topk": p is not None,
        "aux_loss": float(ffn.moe_loss_weight),
    }
    if ffn.moe_jitter_eps:
        moe.update(jitter=float(ffn.moe_jitter_eps), jitter_scope="input")
    return model_config(
        cfg,
        layers=f"block*{cfg.n_layers}",
        blocks={"block": _SPARSE_BLOCKS["moe"]},
        defaults={
            "Norm": {"kind": "layer", "eps": 1e-5, "bias": False},  # nn.LayerNorm's default eps
            "Attn": attn,
            "MoE": moe,
        },
        d_model=cfg.d_model,
        context=cfg.max_seq_len,
    )


def _weights_dbrx(cfg: Any, m: WeightMapper) -> None:
    d, E, inter = cfg.d_model, cfg.ffn_config.moe_num_experts, cfg.ffn_config.ffn_hidden_size
    kv = cfg.attn_config.kv_n_heads * (d // cfg.n_heads)
    m.put("embed.embed.tok.weight", "transformer.wte.weight")
    for i in range(cfg.n_layers):
        p, q = f"transformer.blocks.{i}", f"layers.{i}"
        a = f"{p}.norm_attn_norm"
        m.norm(f"{q}.norm", f"{a}.norm_1", bias=False)
        m.split(  # Wqkv's rows are [q (d) | k (kv) | v (kv)]
            [f"{q}.attn.{n}.weight" for n in "qkv"],
            f"{a}.attn.Wqkv.weight",
            lambda w: list(w.split([d, kv, kv])),
        )
        m.linear(f"{q}.attn.o", f"{a}.attn.out_proj", bias=False)
        m.norm(f"{q}.norm_1", f"{a}.norm_2", bias=False)
        e, src = f"{q}.moe", f"{p}.ffn"
        m.put(f"{e}.router.weight", f"{src}.router.layer.weight")
        # experts stacked along rows: w1 (gate), v1 (up) [E*I, D]; w2 [E*I, D] is down^T
        m.put(f"{e}.w_gate", f"{src}.experts.mlp.w1", fn=lambda w: w.view(E, inter, d))
        m.put(f"{e}.w_up", f"{src}.experts.mlp.v1", fn=lambda w: w.view(E, inter, d))
        m.put(
            f"{e}.w_down",
            f"{src}.experts.mlp.w2",
            fn=lambda w: w.view(E, inter, d).transpose(1, 2),
        )
    m.norm("head.norm", "transformer.norm_f", bias=False)
    m.head(cfg, "transformer.wte.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture(
        "dbrx", "DbrxForCausalLM", "transformer", config=_config_dbrx, weights=_weights_dbrx
    )
)


# --------------------------------------------------------------------------- deepseek


def _mla(cfg: Any, t: str, interleaved: bool) -> dict[str, Any]:
    theta, _ = default_rope(cfg, t)  # RoPE scaling (YaRN) is refused here, naming the rope_type
    if (cfg.num_key_value_heads or cfg.num_attention_heads) != cfg.num_attention_heads:
        raise unsupported(
            t,
            f"num_key_value_heads={cfg.num_key_value_heads} different from "
            f"num_attention_heads={cfg.num_attention_heads} (MLA gives every head its keys)",
        )
    return {
        "heads": cfg.num_attention_heads,
        "kv_lora_rank": cfg.kv_lora_rank,
        "q_lora_rank": cfg.q_lora_rank,
        "qk_nope_head_dim": cfg.qk_nope_head_dim,
        "qk_rope_head_dim": cfg.qk_rope_head_dim,
        "v_head_dim": cfg.v_head_dim,
        "rope_theta": theta,
        "rope_interleaved": interleaved,
        "bias": bool(cfg.attention_bias),
    }


def _deepseek(cfg: Any, t: str, mla: dict, routing: dict) -> dict:
    """DeepSeek-V2/V3: MLA in every layer, a dense MLP in the first ``first_k_dense_replace``
    layers and routed experts with ``n_shared_experts`` always-on ones after them."""
    act = activation(cfg.hidden_act, t)
    L, first_dense = cfg.num_hidden_layers, cfg.first_k_dense_replace or 0
    kinds = ["dense" if i < first_dense else "moe" for i in range(L)]
    blocks = {
        "dense": "Norm->MLA->+->Norm->MLP->+",
        "moe": "Norm->MLA->+->Norm->MoE->+",
    }
    layers, blocks = _named_layers(kinds, blocks)
    defaults: dict[str, dict] = {"Norm": {"kind": "rms", "eps": cfg.rms_norm_eps}, "MLA": mla}
    if "dense" in blocks:
        defaults["MLP"] = {"hidden": cfg.intermediate_size, "act": act, "gated": True}
    if "moe" in blocks:
        defaults["MoE"] = {
            "experts": cfg.n_routed_experts,
            "k": cfg.num_experts_per_tok,
            "hidden": cfg.moe_intermediate_size,
            "act": act,
            "gated": True,
            "shared": cfg.n_shared_experts or 0,
            "aux_loss": 0.0,  # transformers adds no load-balancing loss for DeepSeek
            **routing,
        }
    return model_config(cfg, layers=layers, blocks=blocks, defaults=defaults)


def _groups(cfg: Any, group_top: int) -> dict[str, Any]:
    return {"groups": cfg.n_group, "topk_groups": cfg.topk_group, "group_top": group_top}


def _config_deepseek_v2(cfg: Any) -> dict:
    """DeepSeek-V2: softmax scores, greedy or group-limited (a group's score is its best
    expert's) top-k, never renormalised, times ``routed_scaling_factor``; rotary on adjacent
    pairs."""
    t = "deepseek_v2"
    if cfg.mlp_bias:
        raise unsupported(t, "mlp_bias (biases on the dense and shared-expert MLPs)")
    routing: dict[str, Any] = {"norm_topk": False, "routed_scale": float(cfg.routed_scaling_factor)}
    if cfg.topk_method == "group_limited_greedy":
        routing.update(_groups(cfg, group_top=1))
    elif cfg.topk_method != "greedy":
        raise unsupported(t, f"topk_method '{cfg.topk_method}'")
    return _deepseek(cfg, t, _mla(cfg, t, interleaved=True), routing)


def _config_deepseek_v3(cfg: Any) -> dict:
    """DeepSeek-V3: sigmoid scores, experts chosen by the scores plus
    ``e_score_correction_bias`` within the ``topk_group`` best of ``n_group`` groups (a group's
    score is the sum of its two best), weighted by the unbiased scores (renormalised with
    ``norm_topk_prob``) times ``routed_scaling_factor``."""
    t = "deepseek_v3"
    routing = {
        "score": "sigmoid",
        "score_bias": True,
        "norm_topk": bool(cfg.norm_topk_prob),
        "routed_scale": float(cfg.routed_scaling_factor),
        **_groups(cfg, group_top=2),
    }
    return _deepseek(cfg, t, _mla(cfg, t, interleaved=bool(cfg.rope_interleave)), routing)


def _weights_deepseek(cfg: Any, m: WeightMapper) -> None:
    v3 = cfg.model_type == "deepseek_v3"
    first_dense = cfg.first_k_dense_replace or 0
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    bias = bool(cfg.attention_bias)
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        a, src = f"{q}.mla", f"{p}.self_attn"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        if cfg.q_lora_rank is None:
            m.linear(f"{a}.q", f"{src}.q_proj", bias=False)
        else:
            m.linear(f"{a}.q_a", f"{src}.q_a_proj", bias)
            m.norm(f"{a}.q_norm", f"{src}.q_a_layernorm", bias=False)
            m.linear(f"{a}.q_b", f"{src}.q_b_proj", bias=False)
        m.linear(f"{a}.kv_a", f"{src}.kv_a_proj_with_mqa", bias)
        m.norm(f"{a}.kv_norm", f"{src}.kv_a_layernorm", bias=False)
        m.linear(f"{a}.kv_b", f"{src}.kv_b_proj", bias=False)
        m.linear(f"{a}.o", f"{src}.o_proj", bias)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        if i < first_dense:
            llama_mlp_weights(cfg, m, p, q)
            continue
        e, mlp = f"{q}.moe", f"{p}.mlp"
        m.put(f"{e}.router.weight", f"{mlp}.gate.weight")
        if v3:
            m.put(f"{e}.score_bias", f"{mlp}.gate.e_score_correction_bias")
        expert_weights(
            m,
            f"{mlp}.experts",
            e,
            experts=cfg.n_routed_experts,
            inter=cfg.moe_intermediate_size,
        )
        if cfg.n_shared_experts:
            for n in ("gate", "up", "down"):
                m.linear(f"{e}.shared.{n}", f"{mlp}.shared_experts.{n}_proj", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture(
        "deepseek_v2",
        "DeepseekV2ForCausalLM",
        "model",
        config=_config_deepseek_v2,
        weights=_weights_deepseek,
    )
)
register_architecture(
    Architecture(
        "deepseek_v3",
        "DeepseekV3ForCausalLM",
        "model",
        config=_config_deepseek_v3,
        weights=_weights_deepseek,
        buffers=("e_score_correction_bias",),
    )
)
