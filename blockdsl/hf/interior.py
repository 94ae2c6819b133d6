"""Architectures whose attention has parts inside it, written as slot contents (language v3,
docs/language.md "Slots") rather than ``Attn`` flags: gpt-oss (a learned sink logit per head,
``Attn[scores=Sink]``, beside its biased, clamped-SwiGLU experts); HunYuan dense and MoE, and
nanochat (q/k norms of the rotated heads, ``Attn[q=Rope->Norm, k=Rope->Norm]``); Ministral 3
(a query temperature growing with the position, ``Attn[q=Temperature(...)]``); Flint (sinks
beside Qwen3's q/k norms, NoPE full layers, sigmoid experts); HY v3 (Qwen3's q/k norms written
as slots, DeepSeek-V3's routing without groups); MiMo-V2-Flash (narrower value heads scaled
in the v slot, sinks on its sliding layers).

One ``Architecture`` record each; like every family module this one imports only
``blockdsl.hf.base``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blockdsl.hf.base import (
    Architecture,
    Tensor,
    WeightMapper,
    activation,
    compress_layers,
    deepseek_v3_routing,
    expert_weights,
    layer_kinds,
    llama_mlp_weights,
    llama_weights,
    model_config,
    qk_norm_slots,
    qk_norm_weights,
    register_architecture,
    rope_args,
    shared_expert_args,
    unsupported,
)


def _head_dim(cfg: Any) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _gqa(cfg: Any, rope: dict[str, Any]) -> dict[str, Any]:
    """``Attn`` of GQA with RoPE (``rope``: its arguments) and ``attention_bias`` on all four
    projections. ``head_dim`` only where the config sets it (``d_model / heads`` otherwise):
    the export then finds that a config without it is another model (HunYuan's attention
    cannot be built without one)."""
    head_dim = getattr(cfg, "head_dim", None)
    return {
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads or cfg.num_attention_heads,
        **({"head_dim": head_dim} if head_dim is not None else {}),
        "pos": "rope",
        **rope,
        "bias": bool(getattr(cfg, "attention_bias", False)),
    }


def _full_rope(cfg: Any, t: str) -> dict[str, Any]:
    """The rotary arguments of a config that rotates whole heads (scaled or not)."""
    rope, fraction = rope_args(cfg, t)
    if fraction != 1.0:
        raise unsupported(t, "partial_rotary_factor")
    return rope


# --------------------------------------------------------------------------- gpt_oss


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
            "Attn": _gqa(cfg, _full_rope(cfg, t)),
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


# --------------------------------------------------------------------------- hunyuan


def _hunyuan_rope(cfg: Any, t: str) -> dict[str, Any]:
    """HunYuan's rotary: a ``dynamic`` type with an ``alpha`` is NTK-alpha scaling, a fixed
    base ``theta * alpha ** (head_dim / (head_dim - 2))`` (transformers' ``ntk_alpha``); any
    other type as every record reads it."""
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    alpha = params.get("alpha")
    if alpha and params.get("rope_type", params.get("type")) == "dynamic":
        dim = _head_dim(cfg)
        return {"rope_theta": float(params["rope_theta"]) * float(alpha) ** (dim / (dim - 2))}
    return _full_rope(cfg, t)


def _config_hunyuan(cfg: Any) -> dict:
    """HunYuan (dense and MoE): Llama's layers whose attention normalises each head's queries
    and keys after the rotary (``query_layernorm``, ``key_layernorm``: RMSNorm over the head,
    one weight for all heads); the MoE's softmax top-k experts (renormalised) beside an
    always-on shared MLP as wide as each expert."""
    t = cfg.model_type
    act = activation(cfg.hidden_act, t)
    slots = qk_norm_slots(cfg.rms_norm_eps, after_rope=True)
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
        "Attn": _gqa(cfg, _hunyuan_rope(cfg, t)),
    }
    if t == "hunyuan_v1_moe":
        experts, k = cfg.num_experts, cfg.moe_topk
        if not isinstance(experts, int) or not isinstance(k, int):
            raise unsupported(t, "a number of experts or a top-k per layer")
        feed_forward = "MoE"
        defaults["MoE"] = {
            "experts": experts,
            "k": k,
            "hidden": cfg.intermediate_size,
            "act": act,
            "gated": True,
            "shared": 1,
            "norm_topk": True,
        }
    else:
        feed_forward = "MLP"
        defaults["MLP"] = {"hidden": cfg.intermediate_size, "act": act, "gated": True}
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": f"Norm->Attn{slots}->+->Norm->{feed_forward}->+"},
        defaults=defaults,
    )


def _hunyuan_moe(cfg: Any, m: WeightMapper, p: str, q: str) -> None:
    src, dst = f"{p}.mlp", f"{q}.moe"
    m.put(f"{dst}.router.weight", f"{src}.gate.wg.weight")
    expert_weights(m, f"{src}.experts", dst, experts=cfg.num_experts, inter=cfg.intermediate_size)
    for n in ("gate", "up", "down"):
        m.linear(f"{dst}.shared.{n}", f"{src}.shared_mlp.{n}_proj", bias=False)


def _weights_hunyuan(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    feed_forward = _hunyuan_moe if cfg.model_type == "hunyuan_v1_moe" else llama_mlp_weights
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        for n in "qkvo":
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", bias)
        qk_norm_weights(
            m, f"{p}.self_attn", f"{q}.attn", names=("query_layernorm", "key_layernorm")
        )
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        feed_forward(cfg, m, p, q)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


for _type, _class in (
    ("hunyuan_v1_dense", "HunYuanDenseV1ForCausalLM"),
    ("hunyuan_v1_moe", "HunYuanMoEV1ForCausalLM"),
):
    register_architecture(
        Architecture(_type, _class, "model", config=_config_hunyuan, weights=_weights_hunyuan)
    )


# --------------------------------------------------------------------------- nanochat


def _config_nanochat(cfg: Any) -> dict:
    """nanochat: RMSNorms without weights everywhere (after the embedding too, and on each
    rotated head's queries and keys: ``Attn[q=Rope->Norm(affine=false), ...]``), a plain
    ReLU² MLP, and the logits soft-capped (``final_logit_softcapping``)."""
    t = "nanochat"
    slots = qk_norm_slots(cfg.rms_norm_eps, affine=False, after_rope=True)
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps, "affine": False},
        "Attn": _gqa(cfg, _full_rope(cfg, t)),
        "MLP": {
            "hidden": cfg.intermediate_size,
            "act": activation(cfg.hidden_act, t),
            "gated": False,
        },
    }
    if cfg.final_logit_softcapping is not None:
        defaults["Head"] = {"softcap": float(cfg.final_logit_softcapping)}
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": f"Norm->Attn{slots}->+->Norm->MLP->+"},
        defaults=defaults,
        embed="Embed->Norm",
    )


def _swap_halves(head_dim: int) -> Callable[[Tensor], Tensor]:
    """Rows of a q or k projection with the two halves of every head swapped: nanochat rotates
    by ``-angle`` (its ``rotate_half`` is ``[x2, -x1]``), which is the usual rotation of the
    heads with their halves swapped; swapping both queries' and keys' halves leaves their dot
    products, and the weightless norms after the rotary, as they were."""

    def swap(w: Tensor) -> Tensor:
        heads = w.view(-1, 2, head_dim // 2, *w.shape[1:])  # (heads, halves, hd/2, ...)
        return heads.flip(1).reshape(w.shape)

    return swap


def _weights_nanochat(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    swap = _swap_halves(_head_dim(cfg))
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        for n in "qk":
            m.put(f"{q}.attn.{n}.weight", f"{p}.self_attn.{n}_proj.weight", fn=swap)
            if bias:
                m.put(f"{q}.attn.{n}.bias", f"{p}.self_attn.{n}_proj.bias", fn=swap)
        for n in "vo":
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", bias)
        m.linear(f"{q}.mlp.up", f"{p}.mlp.fc1", bias=False)
        m.linear(f"{q}.mlp.down", f"{p}.mlp.fc2", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture(
        "nanochat",
        "NanoChatForCausalLM",
        "model",
        config=_config_nanochat,
        weights=_weights_nanochat,
    )
)


# --------------------------------------------------------------------------- ministral3


def _config_ministral3(cfg: Any) -> dict:
    """Ministral 3: Mistral's layers (a window on every layer with ``sliding_window``, yarn
    RoPE) whose queries, once rotated, are scaled by a temperature growing with the position,
    ``1 + llama_4_scaling_beta * log(1 + floor(position / original_max_position_embeddings))``
    (``Attn[q=Temperature(...)]``: a scale per position commutes with the rotary)."""
    t = "ministral3"
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    beta = params.get("llama_4_scaling_beta")
    if beta is None:  # transformers cannot run without it
        raise unsupported(t, "rope_parameters without llama_4_scaling_beta")
    period = params.get("original_max_position_embeddings") or cfg.max_position_embeddings
    attn = _gqa(cfg, _full_rope(cfg, t))
    window = getattr(cfg, "sliding_window", None)
    if window is not None:
        attn["window"] = int(window)
    slots = f"[q=Temperature(beta={float(beta)!r}, period={float(period)!r})]" if beta else ""
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": f"Norm->Attn{slots}->+->Norm->MLP->+"},
        defaults={
            "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
            "Attn": attn,
            "MLP": {
                "hidden": cfg.intermediate_size,
                "act": activation(cfg.hidden_act, t),
                "gated": True,
            },
        },
    )


def _weights_ministral3(cfg: Any, m: WeightMapper) -> None:
    llama_weights(cfg, m)


register_architecture(
    Architecture(
        "ministral3",
        "Ministral3ForCausalLM",
        "model",
        config=_config_ministral3,
        weights=_weights_ministral3,
    )
)


# --------------------------------------------------------------------------- flint


def _flint_sparse(cfg: Any, layer: int) -> bool:
    """Whether Flint's layer ``layer`` has the experts (Qwen2-MoE's rule)."""
    return (
        layer not in (cfg.mlp_only_layers or [])
        and cfg.num_experts > 0
        and (layer + 1) % cfg.decoder_sparse_step == 0
    )


def _config_flint(cfg: Any) -> dict:
    """Flint: Qwen3-MoE's attention (each head's queries and keys RMS-normalised) with a sink
    logit per head on every layer, rotary positions and a window on the sliding layers and
    none on the full ones (``layer_types``); experts chosen by the top-k sigmoid scores,
    renormalised, beside an ungated shared expert; dense MLP layers from ``mlp_only_layers``
    and ``decoder_sparse_step``."""
    t = "flint"
    slots = qk_norm_slots(cfg.rms_norm_eps, scores="Sink")
    windowed = layer_kinds(cfg, t, {"sliding_attention": "local", "full_attention": "global"})
    mixers = {
        "local": f"Attn(window={int(cfg.sliding_window)}){slots}",
        "global": f"Attn(pos=none){slots}",
    }
    names, blocks = [], {}
    for i, kind in enumerate(windowed):
        ffn = "moe" if _flint_sparse(cfg, i) else "dense"
        name = f"{kind}_{ffn}"
        blocks[name] = f"Norm->{mixers[kind]}->+->Norm->{'MoE' if ffn == 'moe' else 'MLP'}->+"
        names.append(name)
    act = activation(cfg.hidden_act, t)
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
        "Attn": _gqa(cfg, _full_rope(cfg, t)),
    }
    if any(name.endswith("_dense") for name in names):
        defaults["MLP"] = {"hidden": cfg.intermediate_size, "act": act, "gated": True}
    if any(name.endswith("_moe") for name in names):
        defaults["MoE"] = {
            "experts": cfg.num_experts,
            "k": cfg.num_experts_per_tok,
            "hidden": cfg.moe_intermediate_size,
            "act": act,
            "gated": True,
            "score": "sigmoid",
            "norm_topk": bool(cfg.norm_topk_prob),
            **shared_expert_args(cfg.shared_expert_intermediate_size, cfg.moe_intermediate_size),
            "aux_loss": float(cfg.router_aux_loss_coef),
        }
    return model_config(cfg, layers=compress_layers(names), blocks=blocks, defaults=defaults)


def _weights_flint(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        for n in "qkvo":
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", bias)
        qk_norm_weights(m, f"{p}.self_attn", f"{q}.attn")
        # on disk (save_pretrained, the Hub) the sinks keep Flint's own name
        sinks = "softmax_offset" if m.has(f"{p}.self_attn.softmax_offset") else "sinks"
        m.put(f"{q}.attn.slots.scores.sink.sinks", f"{p}.self_attn.{sinks}")
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        if not _flint_sparse(cfg, i):
            llama_mlp_weights(cfg, m, p, q)
            continue
        src, dst = f"{p}.mlp", f"{q}.moe"
        m.put(f"{dst}.router.weight", f"{src}.gate.weight")
        expert_weights(
            m, f"{src}.experts", dst, experts=cfg.num_experts, inter=cfg.moe_intermediate_size
        )
        if cfg.shared_expert_intermediate_size:
            for n in ("gate", "up", "down"):
                m.linear(f"{dst}.shared.{n}", f"{src}.shared_expert.{n}_proj", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture("flint", "FlintForCausalLM", "model", config=_config_flint, weights=_weights_flint)
)


# --------------------------------------------------------------------------- hy_v3


def _hy_v3_kinds(cfg: Any) -> list[str]:
    kinds = list(cfg.mlp_layer_types or [])
    if len(kinds) != cfg.num_hidden_layers or not set(kinds) <= {"dense", "sparse"}:
        raise unsupported("hy_v3", f"mlp_layer_types {kinds}")
    return ["moe" if kind == "sparse" else "dense" for kind in kinds]


def _config_hy_v3(cfg: Any) -> dict:
    """HY v3 (Hunyuan): Qwen3's attention (each head's queries and keys RMS-normalised before
    the rotary), dense or sparse layers from ``mlp_layer_types``; DeepSeek-V3's sigmoid
    routing without groups (``e_score_correction_bias`` chooses, the chosen scores are
    renormalised and scaled by ``router_scaling_factor``) beside an ungated shared MLP
    ``moe_intermediate_size * num_shared_experts`` wide (``intermediate_size`` for none: its
    MLP's fallback)."""
    t = "hy_v3"
    kinds = _hy_v3_kinds(cfg)
    bias = bool(cfg.mlp_bias)
    attn = qk_norm_slots(cfg.rms_norm_eps)
    feed_forwards = {"moe": "MoE", "dense": "MLP"}
    blocks = {
        kind: f"Norm->Attn{attn}->+->Norm->{feed_forwards[kind]}->+"
        for kind in dict.fromkeys(kinds)
    }
    act = activation(cfg.hidden_act, t)
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
        "Attn": _gqa(cfg, _full_rope(cfg, t)),
    }
    if "dense" in kinds:
        defaults["MLP"] = {"hidden": cfg.intermediate_size, "act": act, "gated": True, "bias": bias}
    if "moe" in kinds:
        if bias:
            raise unsupported(t, "mlp_bias on the shared experts")
        shared = cfg.moe_intermediate_size * cfg.num_shared_experts or cfg.intermediate_size
        defaults["MoE"] = {
            "experts": cfg.num_experts,
            "k": cfg.num_experts_per_tok,
            "hidden": cfg.moe_intermediate_size,
            "act": act,
            "gated": True,
            "score": "sigmoid",
            "score_bias": True,
            "norm_topk": True,
            "routed_scale": float(cfg.router_scaling_factor),
            **shared_expert_args(shared, cfg.moe_intermediate_size),
            "aux_loss": 0.0,
        }
    return model_config(cfg, layers=compress_layers(kinds), blocks=blocks, defaults=defaults)


def _weights_hy_v3(cfg: Any, m: WeightMapper) -> None:
    kinds = _hy_v3_kinds(cfg)
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i, kind in enumerate(kinds):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        for n in "qkvo":
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", bias)
        qk_norm_weights(m, f"{p}.self_attn", f"{q}.attn")
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        if kind == "dense":
            llama_mlp_weights(cfg, m, p, q)
            continue
        src, dst = f"{p}.mlp", f"{q}.moe"
        # on disk (save_pretrained, the Hub) the router, its bias and the shared experts keep
        # HY's own names; transformers renames them in memory
        disk = m.has(f"{src}.router.gate.weight")
        router, score_bias, shared = (
            ("router.gate", "expert_bias", "shared_mlp")
            if disk
            else ("gate", "e_score_correction_bias", "shared_experts")
        )
        m.put(f"{dst}.router.weight", f"{src}.{router}.weight")
        m.put(f"{dst}.score_bias", f"{src}.{score_bias}")
        expert_weights(
            m, f"{src}.experts", dst, experts=cfg.num_experts, inter=cfg.moe_intermediate_size
        )
        for n in ("gate", "up", "down"):
            m.linear(f"{dst}.shared.{n}", f"{src}.{shared}.{n}_proj", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture(
        "hy_v3",
        "HYV3ForCausalLM",
        "model",
        config=_config_hy_v3,
        weights=_weights_hy_v3,
        buffers=("e_score_correction_bias",),
    )
)


# --------------------------------------------------------------------------- mimo_v2_flash

_MIMO_ROTARY = 0.334  # MiMo-V2-Flash's partial_rotary_factor where a layer type leaves it unset


def _config_mimo_v2_flash(cfg: Any) -> dict:
    """MiMo-V2-Flash: GQA whose value heads are narrower than the query/key heads
    (``v_head_dim``) and whose values are scaled by ``attention_value_scale``
    (``Attn[v=Scale(by=...)]``); sliding layers with twice the key/value heads and a sink logit
    per head (``scores=Sink``), full layers without; a partial rotary with each layer type's
    own base; dense MLP layers and DeepSeek-V3's grouped sigmoid routing (a selection bias,
    renormalised with ``norm_topk_prob``, times ``routed_scaling_factor``) without a shared
    expert, by ``mlp_layer_types``."""
    t = "mimo_v2_flash"
    kinds = layer_kinds(cfg, t, {"sliding_attention": "local", "full_attention": "global"})
    sparse = list(cfg.mlp_layer_types or [])
    if len(sparse) != cfg.num_hidden_layers or not set(sparse) <= {"dense", "sparse"}:
        raise unsupported(t, f"mlp_layer_types {sparse}")
    if cfg.attention_bias:  # o_proj never has one; one Attn(bias) cannot say so
        raise unsupported(t, "attention_bias (biases on q, k and v but not o)")
    head_dim = _head_dim(cfg)
    value_scale = cfg.attention_value_scale
    v_slot = f"v=Scale(by={float(value_scale)!r})" if value_scale not in (None, 1.0) else ""
    mixers = {}
    for layer_type, kind in (("sliding_attention", "local"), ("full_attention", "global")):
        params = dict(cfg.rope_parameters.get(layer_type) or {})
        rope, fraction = rope_args(cfg, t, params)
        if "partial_rotary_factor" not in params:
            fraction = _MIMO_ROTARY
        local = kind == "local"
        args = {
            "kv_heads": cfg.num_key_value_heads * (2 if local else 1),
            **rope,
            "rope_fraction": fraction,
            **({"window": int(cfg.sliding_window)} if local else {}),
        }
        slots = ", ".join(s for s in (v_slot, "scores=Sink" if local else "") if s)
        mixers[kind] = f"Attn({', '.join(f'{k}={v!r}' for k, v in args.items())})" + (
            f"[{slots}]" if slots else ""
        )
    names, blocks = [], {}
    for kind, mlp in zip(kinds, sparse):
        name = f"{kind}_{mlp}"
        ffn = "MoE" if mlp == "sparse" else "MLP"
        blocks[name] = f"Norm->{mixers[kind]}->+->Norm->{ffn}->+"
        names.append(name)
    act = activation(cfg.hidden_act, t)
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
        "Attn": {
            "heads": cfg.num_attention_heads,
            "head_dim": head_dim,
            "v_head_dim": cfg.v_head_dim,
            "pos": "rope",
        },
    }
    if "dense" in sparse:
        defaults["MLP"] = {"hidden": cfg.intermediate_size, "act": act, "gated": True}
    if "sparse" in sparse:
        defaults["MoE"] = {
            "experts": cfg.n_routed_experts,
            "k": cfg.num_experts_per_tok,
            "hidden": cfg.moe_intermediate_size,
            "act": act,
            "gated": True,
            **deepseek_v3_routing(cfg),
            "aux_loss": 0.0,  # transformers adds no load-balancing loss for MiMo-V2-Flash
        }
    return model_config(cfg, layers=compress_layers(names), blocks=blocks, defaults=defaults)


def _weights_mimo_v2_flash(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i, (kind, mlp) in enumerate(zip(cfg.layer_types, cfg.mlp_layer_types)):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        for n in "qkvo":
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", bias=False)
        if kind == "sliding_attention":  # on disk the sinks keep MiMo's own name
            sinks = "sinks" if m.has(f"{p}.self_attn.sinks") else "attention_sink_bias"
            m.put(f"{q}.attn.slots.scores.sink.sinks", f"{p}.self_attn.{sinks}")
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        if mlp == "dense":
            llama_mlp_weights(cfg, m, p, q)
            continue
        src, dst = f"{p}.mlp", f"{q}.moe"
        m.put(f"{dst}.router.weight", f"{src}.gate.weight")
        m.put(f"{dst}.score_bias", f"{src}.gate.e_score_correction_bias")
        expert_weights(
            m, f"{src}.experts", dst, experts=cfg.n_routed_experts, inter=cfg.moe_intermediate_size
        )
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture(
        "mimo_v2_flash",
        "MiMoV2FlashForCausalLM",
        "model",
        config=_config_mimo_v2_flash,
        weights=_weights_mimo_v2_flash,
        buffers=("e_score_correction_bias",),
    )
)
