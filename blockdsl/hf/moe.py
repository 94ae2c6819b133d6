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

import math
from collections.abc import Callable
from typing import Any

from blockdsl.hf.base import (
    Architecture,
    Tensor,
    WeightMapper,
    activation,
    compress_layers,
    deepseek_v3_routing,
    default_rope,
    expert_weights,
    gated_shared_expert_weights,
    llama_like_config,
    llama_mlp_weights,
    llama_weights,
    model_config,
    qk_norm_weights,
    register_architecture,
    rope_args,
    rotary_fraction,
    shared_expert_args,
    sink_layers,
    sink_weights,
    unsupported,
)

#: Maps one layer's weights: ``(hf_config, mapper, HF layer prefix, blockdsl layer prefix)``.
LayerWeights = Callable[[Any, WeightMapper, str, str], None]

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
    # On disk Mixtral keeps its original names (``block_sparse_moe``, experts' ``w1`` gate,
    # ``w3`` up, ``w2`` down); transformers renames them ``mlp``, ``gate_up_proj``/``down_proj``.
    src = f"{p}.mlp"
    if m.has(f"{p}.block_sparse_moe.gate.weight") and not m.has(f"{src}.gate.weight"):
        src = f"{p}.block_sparse_moe"
    m.put(f"{q}.moe.router.weight", f"{src}.gate.weight")
    if cfg.model_type == "minimax_m2":  # its selection-only bias sits beside the router
        m.put(f"{q}.moe.score_bias", f"{src}.e_score_correction_bias")
    expert_weights(
        m,
        f"{src}.experts",
        f"{q}.moe",
        experts=cfg.num_local_experts,
        inter=cfg.intermediate_size,
        names=("w1", "w3", "w2"),
    )


def _weights_mixtral(cfg: Any, m: WeightMapper) -> None:
    llama_weights(cfg, m, feed_forward=_moe_mixtral)


register_architecture(
    Architecture(
        "mixtral", "MixtralForCausalLM", "model", config=_config_mixtral, weights=_weights_mixtral
    )
)


def _config_minimax_m2(cfg: Any) -> dict:
    """MiniMax-M2: Mixtral's layout with OLMo-2's attention (RMSNorm over the whole query and
    key projections, ``qk_norm_over=all``), a partial rotary, and sigmoid routing whose
    choice adds ``e_score_correction_bias`` (no groups), the chosen scores renormalised."""
    t = "minimax_m2"
    moe: dict[str, Any] = {
        "experts": cfg.num_local_experts,
        "k": cfg.num_experts_per_tok,
        "hidden": cfg.intermediate_size,
        "act": activation(cfg.hidden_act, t),
        "gated": True,
        "score": "sigmoid",
        "score_bias": True,
        "norm_topk": True,
        "aux_loss": float(cfg.router_aux_loss_coef),
    }
    jitter = float(getattr(cfg, "router_jitter_noise", 0.0) or 0.0)
    if jitter:  # as Mixtral: the whole MoE input is multiplied
        moe.update(jitter=jitter, jitter_scope="input")
    attn = {
        **_attn_gqa(cfg, t, partial=True),
        "qk_norm": True,
        "qk_norm_over": "all",
        "qk_norm_eps": cfg.rms_norm_eps,
    }
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": "Norm->Attn->+->Norm->MoE->+"},
        defaults={"Norm": {"kind": "rms", "eps": cfg.rms_norm_eps}, "Attn": attn, "MoE": moe},
    )


def _weights_minimax_m2(cfg: Any, m: WeightMapper) -> None:
    def attention_and_moe(cfg: Any, m: WeightMapper, p: str, q: str) -> None:
        # llama_weights maps q/k/v/o; the whole-projection norms are extra
        qk_norm_weights(m, f"{p}.self_attn", f"{q}.attn")
        _moe_mixtral(cfg, m, p, q)

    llama_weights(cfg, m, feed_forward=attention_and_moe)


register_architecture(
    Architecture(
        "minimax_m2",
        "MiniMaxM2ForCausalLM",
        "model",
        config=_config_minimax_m2,
        weights=_weights_minimax_m2,
        buffers=("e_score_correction_bias",),
    )
)


_SPARSE_BLOCKS = {
    "moe": "Norm->Attn->+->Norm->MoE->+",
    "dense": "Norm->Attn->+->Norm->MLP->+",
}


def _named_layers(kinds: list[str], blocks: dict[str, str]) -> tuple[str, dict[str, str]]:
    """``layers`` chain and the blocks it uses, from one block name per layer."""
    return compress_layers(kinds), {name: blocks[name] for name in dict.fromkeys(kinds)}


def _attn_gqa(cfg: Any, t: str, *, partial: bool = False) -> dict[str, Any]:
    """``Attn`` of a GQA + RoPE attention without biases; a partial rotary (the first
    ``head_dim * partial_rotary_factor`` features of each head, GPT-NeoX style) only where the
    architecture has one."""
    rope, fraction = rope_args(cfg, t)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn: dict[str, Any] = {
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads or cfg.num_attention_heads,
        "head_dim": head_dim,
        "pos": "rope",
        **rope,
        "bias": False,
    }
    if fraction != 1.0:
        if not partial:
            raise unsupported(t, "partial_rotary_factor")
        attn["rope_fraction"] = rotary_fraction(int(head_dim * fraction), head_dim)
    return attn


def _layered_blocks(
    mixer: str,
    feed_forwards: list[str],
    windows: list[int | None],
    global_args: str = "",
    local_args: str = "",
) -> tuple[str, dict[str, str]]:
    """``(layers, blocks)`` of pre-norm layers ``Norm->mixer->+->Norm->MoE|MLP->+``, one
    ``moe`` or ``dense`` per layer in ``feed_forwards`` and a sliding window (or ``None``) per
    layer in ``windows``: ``dense->moe*2``, or ``local_moe``/``global_moe`` blocks where some
    layers have a window (``global_args``, ``local_args``: each kind's own arguments, such as
    ``pos=none`` or a rotary base of its own)."""
    windowed = any(w is not None for w in windows)
    names: list[str] = []
    blocks: dict[str, str] = {}
    for ffn, window in zip(feed_forwards, windows, strict=True):
        name = ffn if not windowed else f"{'global' if window is None else 'local'}_{ffn}"
        if window is not None:
            call = f"{mixer}(window={int(window)}{', ' + local_args if local_args else ''})"
        else:
            call = f"{mixer}({global_args})" if windowed and global_args else mixer
        blocks[name] = f"Norm->{call}->+->Norm->{'MoE' if ffn == 'moe' else 'MLP'}->+"
        names.append(name)
    return compress_layers(names), blocks


def _windows(cfg: Any, t: str) -> list[int | None]:
    """The sliding window of each layer, from ``layer_types`` (all full without it)."""
    L = cfg.num_hidden_layers
    kinds = list(getattr(cfg, "layer_types", None) or ["full_attention"] * L)
    if len(kinds) != L or not set(kinds) <= {"sliding_attention", "full_attention"}:
        raise unsupported(t, f"layer_types {kinds}")
    window = getattr(cfg, "sliding_window", None)
    return [window if k == "sliding_attention" else None for k in kinds]


def _softmax_experts(
    cfg: Any, act: str, *, experts: int, hidden: int, norm_topk: bool | None = None, **extra: Any
) -> dict[str, Any]:
    """``MoE`` arguments of softmax top-k experts: ``num_experts_per_tok`` of ``experts`` gated
    MLPs ``hidden`` wide, ``extra`` (shared experts, a selection bias), the top-k probabilities
    renormalised as ``norm_topk`` says (default: the config's ``norm_topk_prob``) and the
    config's ``router_aux_loss_coef``."""
    return {
        "experts": experts,
        "k": cfg.num_experts_per_tok,
        "hidden": hidden,
        "act": act,
        "gated": True,
        **extra,
        "norm_topk": bool(cfg.norm_topk_prob) if norm_topk is None else norm_topk,
        "aux_loss": float(cfg.router_aux_loss_coef),
    }


def _rms_layer_defaults(
    cfg: Any, attn: dict, kinds: list[str], act: str, moe: dict
) -> dict[str, dict]:
    """``[defaults]`` of RMSNorm layers with ``attn``, and as ``kinds`` has them a dense gated
    MLP ``intermediate_size`` wide and the ``moe`` experts."""
    defaults: dict[str, dict] = {"Norm": {"kind": "rms", "eps": cfg.rms_norm_eps}, "Attn": attn}
    if "dense" in kinds:
        defaults["MLP"] = {"hidden": cfg.intermediate_size, "act": act, "gated": True}
    if "moe" in kinds:
        defaults["MoE"] = moe
    return defaults


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
    shared = shared_expert_args(cfg.shared_expert_intermediate_size, cfg.moe_intermediate_size)
    moe = _softmax_experts(
        cfg,
        act,
        experts=cfg.num_experts,
        hidden=cfg.moe_intermediate_size,
        **shared,
        shared_gate=shared["shared"] > 0,
    )
    defaults = _rms_layer_defaults(cfg, attn, kinds, act, moe)
    return model_config(cfg, layers=layers, blocks=blocks, defaults=defaults)


def _qwen_moe_weights(
    cfg: Any,
    m: WeightMapper,
    *,
    qkv_bias: bool,
    o_bias: bool,
    qk_norm: bool,
    sparse: Callable[[Any, int], bool],
) -> None:
    """The Qwen-MoE layout (Qwen2-MoE, Qwen3-MoE): Llama-like layers whose ``mlp`` is the
    router ``gate``, the routed ``experts`` and, where the config has one, the sigmoid-gated
    ``shared_expert``; a dense ``mlp`` on the layers ``sparse`` says have no experts."""
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    shared = bool(getattr(cfg, "shared_expert_intermediate_size", 0))
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        for n in "qkv":
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", qkv_bias)
        m.linear(f"{q}.attn.o", f"{p}.self_attn.o_proj", o_bias)
        if qk_norm:
            qk_norm_weights(m, f"{p}.self_attn", f"{q}.attn")
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        if not sparse(cfg, i):
            llama_mlp_weights(cfg, m, p, q)
            continue
        e, src = f"{q}.moe", f"{p}.mlp"
        m.put(f"{e}.router.weight", f"{src}.gate.weight")
        expert_weights(
            m, f"{src}.experts", e, experts=cfg.num_experts, inter=cfg.moe_intermediate_size
        )
        if shared:
            gated_shared_expert_weights(m, src, e)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


def _weights_qwen2_moe(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.qkv_bias)
    _qwen_moe_weights(cfg, m, qkv_bias=bias, o_bias=False, qk_norm=False, sparse=_qwen2_moe_sparse)


register_architecture(
    Architecture(
        "qwen2_moe",
        "Qwen2MoeForCausalLM",
        "model",
        config=_config_qwen2_moe,
        weights=_weights_qwen2_moe,
    )
)


# --------------------------------------------------------------------------- qwen3_moe


def _config_qwen3_moe(cfg: Any) -> dict:
    """Qwen3-MoE: Qwen3's attention (an RMSNorm of each head's queries and keys, biases on all
    four projections with ``attention_bias``, a window on every layer with
    ``use_sliding_window``) and Qwen2-MoE's layers without the shared expert."""
    t = "qwen3_moe"
    act = activation(cfg.hidden_act, t)
    attn = {
        **_attn_gqa(cfg, t),
        "bias": bool(cfg.attention_bias),
        "qk_norm": True,
        "qk_norm_eps": cfg.rms_norm_eps,
    }
    L = cfg.num_hidden_layers
    kinds = ["moe" if _qwen2_moe_sparse(cfg, i) else "dense" for i in range(L)]
    layers, blocks = _layered_blocks("Attn", kinds, [cfg.sliding_window] * L)
    moe = _softmax_experts(cfg, act, experts=cfg.num_experts, hidden=cfg.moe_intermediate_size)
    defaults = _rms_layer_defaults(cfg, attn, kinds, act, moe)
    return model_config(cfg, layers=layers, blocks=blocks, defaults=defaults)


def _weights_qwen3_moe(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    _qwen_moe_weights(cfg, m, qkv_bias=bias, o_bias=bias, qk_norm=True, sparse=_qwen2_moe_sparse)


register_architecture(
    Architecture(
        "qwen3_moe",
        "Qwen3MoeForCausalLM",
        "model",
        config=_config_qwen3_moe,
        weights=_weights_qwen3_moe,
    )
)


# --------------------------------------------------------------------------- mellum


def _mellum_rope(cfg: Any, kind: str) -> float:
    """The rotary base of Mellum's ``kind`` layers (``rope_parameters`` per layer type)."""
    params = cfg.rope_parameters.get(kind, cfg.rope_parameters)
    args, fraction = rope_args(cfg, "mellum", params)
    if set(args) != {"rope_theta"} or fraction != 1.0:
        raise unsupported("mellum", f"rope_parameters {params} (scaled or partial, per layer type)")
    return args["rope_theta"]


def _config_mellum(cfg: Any) -> dict:
    """Mellum: Qwen3-MoE's layers named one by one: windowed or full attention from
    ``layer_types`` (each kind with its own rotary base), dense or sparse from
    ``mlp_layer_types``."""
    t = "mellum"
    act = activation(cfg.hidden_act, t)
    attn = {
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads or cfg.num_attention_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        "pos": "rope",
        "rope_theta": _mellum_rope(cfg, "full_attention"),
        "bias": bool(cfg.attention_bias),
        "qk_norm": True,
        "qk_norm_eps": cfg.rms_norm_eps,
    }
    kinds = _mlp_layer_kinds(cfg, t)
    windows = _windows(cfg, t)
    local = ""
    if any(w is not None for w in windows):
        local = f"rope_theta={_mellum_rope(cfg, 'sliding_attention')!r}"
    layers, blocks = _layered_blocks("Attn", kinds, windows, local_args=local)
    moe = _softmax_experts(cfg, act, experts=cfg.num_experts, hidden=cfg.moe_intermediate_size)
    defaults = _rms_layer_defaults(cfg, attn, kinds, act, moe)
    return model_config(cfg, layers=layers, blocks=blocks, defaults=defaults)


def _weights_mellum(cfg: Any, m: WeightMapper) -> None:
    kinds = _mlp_layer_kinds(cfg, "mellum")
    bias = bool(cfg.attention_bias)
    _qwen_moe_weights(
        cfg, m, qkv_bias=bias, o_bias=bias, qk_norm=True, sparse=lambda _, i: kinds[i] == "moe"
    )


register_architecture(
    Architecture(
        "mellum", "MellumForCausalLM", "model", config=_config_mellum, weights=_weights_mellum
    )
)


# --------------------------------------------------------------------------- ernie4_5_moe


def _ernie_sparse(cfg: Any, layer: int) -> bool:
    """Whether ERNIE-4.5-MoE's layer ``layer`` has the experts (as its decoder layer)."""
    return (
        (layer + 1) % cfg.moe_layer_interval == 0
        and cfg.moe_layer_start_index <= layer <= cfg.moe_layer_end_index
    )


def _config_ernie4_5_moe(cfg: Any) -> dict:
    """ERNIE-4.5-MoE: Llama's layers with the rotary on adjacent pairs, softmax experts chosen
    by the probabilities plus ``e_score_correction_bias`` and weighted by the renormalised
    probabilities, ``moe_num_shared_experts`` always-on ones, on every
    ``moe_layer_interval``-th layer from ``moe_layer_start_index`` to
    ``moe_layer_end_index``."""
    t = "ernie4_5_moe"
    if cfg.use_bias:
        raise unsupported(t, "use_bias (biases on every linear layer, shared experts too)")
    act = activation(cfg.hidden_act, t)
    attn = {**_attn_gqa(cfg, t), "rope_interleaved": True}
    L = cfg.num_hidden_layers
    kinds = ["moe" if _ernie_sparse(cfg, i) else "dense" for i in range(L)]
    layers, blocks = _layered_blocks("Attn", kinds, [None] * L)
    moe = _softmax_experts(
        cfg,
        act,
        experts=cfg.num_experts,
        hidden=cfg.moe_intermediate_size,
        norm_topk=True,  # divided by the sum clamped at moe_norm_min: the sum is larger
        shared=cfg.moe_num_shared_experts or 0,
        score_bias=True,
    )
    defaults = _rms_layer_defaults(cfg, attn, kinds, act, moe)
    return model_config(cfg, layers=layers, blocks=blocks, defaults=defaults)


def _weights_ernie4_5_moe(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        _gqa_weights(qkv_bias=False, o_bias=False, qk_norm=False)(cfg, m, p, q)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        if not _ernie_sparse(cfg, i):
            llama_mlp_weights(cfg, m, p, q)
            continue
        e, src = f"{q}.moe", f"{p}.mlp"
        m.put(f"{e}.router.weight", f"{src}.gate.weight")
        statics = f"{src}.gate.moe_statics.e_score_correction_bias"
        if not m.has(statics):  # as saved: beside the router, not inside it
            statics = f"{src}.moe_statics.e_score_correction_bias"
        m.put(f"{e}.score_bias", statics, fn=lambda b: b.reshape(-1))  # [1, E] -> [E]
        expert_weights(
            m, f"{src}.experts", e, experts=cfg.num_experts, inter=cfg.moe_intermediate_size
        )
        if cfg.moe_num_shared_experts:
            for n in ("gate", "up", "down"):
                m.linear(f"{e}.shared.{n}", f"{src}.shared_experts.{n}_proj", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", True))


register_architecture(
    Architecture(
        "ernie4_5_moe",
        "Ernie4_5_MoeForCausalLM",
        "model",
        config=_config_ernie4_5_moe,
        weights=_weights_ernie4_5_moe,
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
    moe = _softmax_experts(cfg, act, experts=cfg.num_experts, hidden=cfg.intermediate_size)
    return model_config(
        cfg,
        layers=f"moe*{cfg.num_hidden_layers}",
        blocks={"moe": _SPARSE_BLOCKS["moe"]},
        defaults=_rms_layer_defaults(cfg, attn, ["moe"], act, moe),
    )


def _weights_olmoe(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        for n in "qkvo":
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", bias)
        qk_norm_weights(m, f"{p}.self_attn", f"{q}.attn")
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


def _config_flex_olmo(cfg: Any) -> dict:
    """FlexOlmo: OLMo 2's layers (norms after attention and after the experts, an RMSNorm of
    the whole query and key projections) with OLMoE's experts on every layer."""
    t = "flex_olmo"
    attn = {
        **_attn_gqa(cfg, t),
        "bias": bool(cfg.attention_bias),
        "qk_norm": True,
        "qk_norm_over": "all",
        "qk_norm_eps": cfg.rms_norm_eps,
    }
    act = activation(cfg.hidden_act, t)
    moe = _softmax_experts(cfg, act, experts=cfg.num_experts, hidden=cfg.intermediate_size)
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": "Attn->Norm->+->MoE->Norm->+"},
        defaults=_rms_layer_defaults(cfg, attn, ["moe"], act, moe),
    )


def _weights_flex_olmo(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        _gqa_weights(qkv_bias=bias, o_bias=bias, qk_norm=True)(cfg, m, p, q)
        m.norm(f"{q}.norm", f"{p}.post_attention_layernorm", bias=False)
        m.put(f"{q}.moe.router.weight", f"{p}.mlp.gate.weight")
        expert_weights(
            m,
            f"{p}.mlp.experts",
            f"{q}.moe",
            experts=cfg.num_experts,
            inter=cfg.intermediate_size,
        )
        m.norm(f"{q}.norm_1", f"{p}.post_feedforward_layernorm", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture(
        "flex_olmo",
        "FlexOlmoForCausalLM",
        "model",
        config=_config_flex_olmo,
        weights=_weights_flex_olmo,
    )
)


# --------------------------------------------------------------------------- granitemoe


#: The Granite-MoE types with a shared expert (``shared_intermediate_size``).
_GRANITE_SHARED = ("granitemoeshared", "granitemoe_swa")


def _config_granitemoe(cfg: Any) -> dict:
    """Granite-MoE (and Granite-MoE-Shared): Granite's constant multipliers (embeddings, each
    residual update, attention scores, logits) around Mixtral-like layers whose router takes
    the softmax of the top-k logits (the renormalised top-k probabilities); with
    ``shared_intermediate_size`` an always-on gated expert beside them."""
    t = cfg.model_type
    attn = {
        **_attn_gqa(cfg, t),
        "scale": float(cfg.attention_multiplier),
        "bias": bool(cfg.attention_bias),
    }
    moe: dict[str, Any] = {
        "experts": cfg.num_local_experts,
        "k": cfg.num_experts_per_tok,
        "hidden": cfg.intermediate_size,
        "act": activation(cfg.hidden_act, t),
        "gated": True,
        "norm_topk": True,
        "aux_loss": float(cfg.router_aux_loss_coef),
    }
    # Granite-MoE has no shared expert, whatever attribute its config is given
    shared_size = cfg.shared_intermediate_size if t in _GRANITE_SHARED else 0
    if shared_size:
        moe.update(shared_expert_args(shared_size, cfg.intermediate_size))
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
        "Attn": attn,
        "MoE": moe,
    }
    block = "Norm->Attn->+->Norm->MoE->+"
    if cfg.residual_multiplier != 1.0:
        block = "Norm->Attn->Scale->+->Norm->MoE->Scale->+"
        defaults["Scale"] = {"by": float(cfg.residual_multiplier)}
    if cfg.embedding_multiplier != 1.0:
        defaults["Embed"] = {"scale": float(cfg.embedding_multiplier)}
    if cfg.logits_scaling != 1.0:
        defaults["Head"] = {"scale": 1.0 / float(cfg.logits_scaling)}
    return model_config(
        cfg, layers=f"block*{cfg.num_hidden_layers}", blocks={"block": block}, defaults=defaults
    )


def _weights_granitemoe(cfg: Any, m: WeightMapper) -> None:
    """Granite-MoE's experts are stacked on disk too: ``input_linear [E, 2I, D]`` (gate rows
    first) and ``output_linear [E, D, I]``, which transformers renames ``gate_up_proj`` and
    ``down_proj``; the router is ``router.layer`` on disk, ``router`` in memory."""
    inter = cfg.intermediate_size
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    shared = cfg.shared_intermediate_size if cfg.model_type in _GRANITE_SHARED else 0
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        _gqa_weights(qkv_bias=bias, o_bias=bias, qk_norm=False)(cfg, m, p, q)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        src, e = f"{p}.block_sparse_moe", f"{q}.moe"
        saved = m.has(f"{src}.router.layer.weight")
        router = f"{src}.router.layer.weight" if saved else f"{src}.router.weight"
        m.put(f"{e}.router.weight", router)
        gate_up = f"{src}.input_linear.weight" if saved else f"{src}.experts.gate_up_proj"
        down = f"{src}.output_linear.weight" if saved else f"{src}.experts.down_proj"
        m.split([f"{e}.w_gate", f"{e}.w_up"], gate_up, lambda w: [w[:, :inter], w[:, inter:]])
        m.put(f"{e}.w_down", down)
        if shared:  # one Linear [2S, D], gate rows first
            m.split(
                [f"{e}.shared.gate.weight", f"{e}.shared.up.weight"],
                f"{p}.shared_mlp.input_linear.weight",
                lambda w: [w[:shared], w[shared:]],
            )
            m.linear(f"{e}.shared.down", f"{p}.shared_mlp.output_linear", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


for _type, _class in (
    ("granitemoe", "GraniteMoeForCausalLM"),
    ("granitemoeshared", "GraniteMoeSharedForCausalLM"),
):
    register_architecture(
        Architecture(_type, _class, "model", _config_granitemoe, _weights_granitemoe)
    )


def _config_granitemoe_swa(cfg: Any) -> dict:
    """Granite-MoE-SWA: Granite-MoE-Shared with Granite-SWA's attention (a learned sink logit
    per head, sliding-window layers from ``layer_types``, a rotary base per layer)."""
    config = _config_granitemoe(cfg)
    theta = config["defaults"]["Attn"]["rope_theta"]
    blocks, layers = sink_layers(cfg, "granitemoe_swa", config["blocks"]["block"], theta)
    config["blocks"], config["model"]["layers"] = blocks, layers
    return config


def _weights_granitemoe_swa(cfg: Any, m: WeightMapper) -> None:
    _weights_granitemoe(cfg, m)
    sink_weights(cfg, m)


register_architecture(
    Architecture(
        "granitemoe_swa",
        "GraniteMoeSWAForCausalLM",
        "model",
        _config_granitemoe_swa,
        _weights_granitemoe_swa,
    )
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
    theta, fraction = default_rope(cfg, t)  # RoPE scaling (YaRN) is refused, naming the rope_type
    if fraction != 1.0:
        raise unsupported(t, "partial_rotary_factor (MLA rotates all qk_rope_head_dim features)")
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


def _expert_counts(cfg: Any) -> tuple[int, int]:
    """``(routed, shared)`` experts: DeepSeek's ``n_routed_experts``/``n_shared_experts``, or
    EXAONE-MoE's ``num_experts``/``num_shared_experts``."""
    if hasattr(cfg, "n_routed_experts"):
        return cfg.n_routed_experts, cfg.n_shared_experts or 0
    return cfg.num_experts, cfg.num_shared_experts or 0


def _first_dense(cfg: Any) -> list[str]:
    """``dense`` for the first ``first_k_dense_replace`` layers, ``moe`` after them."""
    first = cfg.first_k_dense_replace or 0
    return ["dense" if i < first else "moe" for i in range(cfg.num_hidden_layers)]


def _deepseek(
    cfg: Any,
    t: str,
    mixer: str,
    mixer_args: dict,
    routing: dict,
    kinds: list[str],
    windows: list[int | None] | None = None,
    global_args: str = "",
) -> dict:
    """The DeepSeek layout (DeepSeek-V2/V3 and the records that reuse it): ``mixer`` (``MLA``
    or ``Attn``) in every layer, then a dense MLP or routed experts with
    ``n_shared_experts`` always-on ones, as ``kinds`` says per layer."""
    act = activation(cfg.hidden_act, t)
    windows = windows or [None] * cfg.num_hidden_layers
    layers, blocks = _layered_blocks(mixer, kinds, windows, global_args)
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
        mixer: mixer_args,
    }
    if "dense" in kinds:
        defaults["MLP"] = {"hidden": cfg.intermediate_size, "act": act, "gated": True}
    if "moe" in kinds:  # a config without experts (Youtu) has no expert counts to read
        routed, shared = _expert_counts(cfg)
        defaults["MoE"] = {
            "experts": routed,
            "k": cfg.num_experts_per_tok,
            "hidden": cfg.moe_intermediate_size,
            "act": act,
            "gated": True,
            "shared": shared,
            "aux_loss": 0.0,  # transformers adds no load-balancing loss for these
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
    mla = _mla(cfg, t, interleaved=True)
    return _deepseek(cfg, t, "MLA", mla, routing, _first_dense(cfg))


def _config_deepseek_v3(cfg: Any) -> dict:
    """DeepSeek-V3: MLA (rotary on adjacent pairs with ``rope_interleave``) and V3 routing.
    Sarvam-MLA (``sarvam_mla``) is this class under its own ``model_type``."""
    t = cfg.model_type
    mla = _mla(cfg, t, interleaved=bool(cfg.rope_interleave))
    return _deepseek(cfg, t, "MLA", mla, deepseek_v3_routing(cfg), _first_dense(cfg))


def _mla_weights(cfg: Any, m: WeightMapper, p: str, q: str) -> None:
    """DeepSeek's ``self_attn`` (low-rank q, joint kv latent) of HF layer ``p`` -> ``mla``."""
    bias = bool(cfg.attention_bias)
    a, src = f"{q}.mla", f"{p}.self_attn"
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


def _gqa_weights(qkv_bias: bool, o_bias: bool, qk_norm: bool) -> LayerWeights:
    """``self_attn.{q,k,v,o}_proj`` (and per-head ``q_norm``/``k_norm``) -> ``attn``."""

    def weights(cfg: Any, m: WeightMapper, p: str, q: str) -> None:
        for n in "qkv":
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", qkv_bias)
        m.linear(f"{q}.attn.o", f"{p}.self_attn.o_proj", o_bias)
        if qk_norm:
            qk_norm_weights(m, f"{p}.self_attn", f"{q}.attn")

    return weights


def _deepseek_weights(
    cfg: Any,
    m: WeightMapper,
    attention: LayerWeights,
    kinds: list[str],
    score_bias: bool,
    *,
    embed: str = "model.embed_tokens.weight",
    score_bias_name: str = "gate.e_score_correction_bias",
) -> None:
    """The DeepSeek checkpoint layout: ``attention`` maps each layer's ``self_attn``; a dense
    ``mlp`` or the router ``gate`` (with its ``e_score_correction_bias``), the routed
    ``experts`` and the ``shared_experts``, as ``kinds`` says."""
    m.put("embed.embed.tok.weight", embed)
    routed, shared = _expert_counts(cfg) if "moe" in kinds else (0, 0)
    for i, kind in enumerate(kinds):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        attention(cfg, m, p, q)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        if kind == "dense":
            llama_mlp_weights(cfg, m, p, q)
            continue
        e, mlp = f"{q}.moe", f"{p}.mlp"
        m.put(f"{e}.router.weight", f"{mlp}.gate.weight")
        if score_bias:
            bias_name = f"{mlp}.{score_bias_name}"
            if not m.has(bias_name) and m.has(f"{mlp}.e_score_correction_bias"):
                bias_name = f"{mlp}.e_score_correction_bias"  # EXAONE-MoE's, as saved
            m.put(f"{e}.score_bias", bias_name)
        expert_weights(
            m,
            f"{mlp}.experts",
            e,
            experts=routed,
            inter=cfg.moe_intermediate_size,
        )
        if shared:
            for n in ("gate", "up", "down"):
                m.linear(f"{e}.shared.{n}", f"{mlp}.shared_experts.{n}_proj", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, embed, getattr(cfg, "tie_word_embeddings", False))


def _weights_deepseek(cfg: Any, m: WeightMapper) -> None:
    v3 = cfg.model_type != "deepseek_v2"  # DeepSeek-V3 and Sarvam-MLA: the selection bias
    _deepseek_weights(cfg, m, _mla_weights, _first_dense(cfg), score_bias=v3)


register_architecture(
    Architecture(
        "deepseek_v2",
        "DeepseekV2ForCausalLM",
        "model",
        config=_config_deepseek_v2,
        weights=_weights_deepseek,
    )
)
for _type in ("deepseek_v3", "sarvam_mla"):
    register_architecture(
        Architecture(
            _type,
            "DeepseekV3ForCausalLM",
            "model",
            config=_config_deepseek_v3,
            weights=_weights_deepseek,
            buffers=("e_score_correction_bias",),
        )
    )


# ---------------------------------------------- DeepSeek-V3 routing after other attention


def _config_dots1(cfg: Any) -> dict:
    """dots.llm1: Qwen3's attention (per-head q/k RMSNorm; a window on the layers
    ``layer_types`` says) and DeepSeek-V3's experts after ``first_k_dense_replace`` dense
    layers."""
    t = "dots1"
    attn = {
        **_attn_gqa(cfg, t),
        "bias": bool(cfg.attention_bias),
        "qk_norm": True,
        "qk_norm_eps": cfg.rms_norm_eps,
    }
    routing = deepseek_v3_routing(cfg)
    return _deepseek(cfg, t, "Attn", attn, routing, _first_dense(cfg), _windows(cfg, t))


def _weights_dots1(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    attention = _gqa_weights(qkv_bias=bias, o_bias=bias, qk_norm=True)
    _deepseek_weights(cfg, m, attention, _first_dense(cfg), score_bias=True)


def _config_glm4_moe(cfg: Any) -> dict:
    """GLM-4.5 (``glm4_moe``): GQA with biases on q, k and v only (``attention_bias``), a
    rotary on the first ``partial_rotary_factor`` of each head, per-head q/k RMSNorm with
    ``use_qk_norm``; DeepSeek-V3's experts after ``first_k_dense_replace`` dense layers. The
    multi-token-prediction layers some checkpoints carry are not part of the model. Sarvam-MoE
    and Param2-MoE are this class under their own ``model_type``."""
    t = cfg.model_type
    attn = _attn_gqa(cfg, t, partial=True)
    if cfg.attention_bias:
        attn["qkv_bias"] = True
    if cfg.use_qk_norm:
        attn.update(qk_norm=True, qk_norm_eps=cfg.rms_norm_eps)
    return _deepseek(cfg, t, "Attn", attn, deepseek_v3_routing(cfg), _first_dense(cfg))


def _weights_glm4_moe(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    if m.has("model.word_embeddings.weight"):  # Sarvam's and Param2's names, as saved
        _deepseek_weights(
            cfg,
            m,
            _fused_qkv_weights,
            _first_dense(cfg),
            score_bias=True,
            embed="model.word_embeddings.weight",
            score_bias_name="gate.expert_bias",
        )
        return
    attention = _gqa_weights(bias, o_bias=False, qk_norm=cfg.use_qk_norm)
    _deepseek_weights(cfg, m, attention, _first_dense(cfg), score_bias=True)


def _fused_qkv_weights(cfg: Any, m: WeightMapper, p: str, q: str) -> None:
    """Sarvam-MoE's and Param2-MoE's attention as their checkpoints store it: ``attention``'s
    fused ``query_key_value`` (rows ``[q | k | v]``), ``dense`` and the q/k norms
    ``query_layernorm``/``key_layernorm`` (transformers renames and splits them on load)."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    sizes = [cfg.num_attention_heads * head_dim] + [cfg.num_key_value_heads * head_dim] * 2
    a, src = f"{q}.attn", f"{p}.attention"
    kinds = ["weight", "bias"] if cfg.attention_bias else ["weight"]
    for kind in kinds:
        m.split(
            [f"{a}.{n}.{kind}" for n in "qkv"],
            f"{src}.query_key_value.{kind}",
            lambda w: list(w.split(sizes)),
        )
    m.linear(f"{a}.o", f"{src}.dense", bias=False)
    if cfg.use_qk_norm:
        qk_norm_weights(m, src, a, names=("query_layernorm", "key_layernorm"))


def _mlp_layer_kinds(cfg: Any, t: str) -> list[str]:
    """``dense`` or ``moe`` per layer from ``mlp_layer_types`` (``dense``/``sparse``)."""
    kinds = list(cfg.mlp_layer_types)
    if len(kinds) != cfg.num_hidden_layers or not set(kinds) <= {"dense", "sparse"}:
        raise unsupported(t, f"mlp_layer_types {kinds}")
    return ["moe" if kind == "sparse" else "dense" for kind in kinds]


def _config_exaone_moe(cfg: Any) -> dict:
    """EXAONE-MoE: EXAONE 4's attention (per-head q/k RMSNorm; where the config has a
    ``sliding_window``, windowed layers with RoPE and global layers without positions) and
    DeepSeek-V3's experts with ``num_shared_experts`` on the layers ``mlp_layer_types`` makes
    sparse."""
    t = "exaone_moe"
    attn = {**_attn_gqa(cfg, t), "qk_norm": True, "qk_norm_eps": cfg.rms_norm_eps}
    windows = _windows(cfg, t) if cfg.sliding_window is not None else None
    kinds = _mlp_layer_kinds(cfg, t)
    return _deepseek(cfg, t, "Attn", attn, deepseek_v3_routing(cfg), kinds, windows, "pos=none")


def _weights_exaone_moe(cfg: Any, m: WeightMapper) -> None:
    attention = _gqa_weights(qkv_bias=False, o_bias=False, qk_norm=True)
    _deepseek_weights(cfg, m, attention, _mlp_layer_kinds(cfg, "exaone_moe"), score_bias=True)


def _config_solar_open(cfg: Any) -> dict:
    """Solar-Open: Llama's attention (biases on q, k and v only, with ``attention_bias``) and
    DeepSeek-V3's experts on every layer."""
    t = "solar_open"
    attn = _attn_gqa(cfg, t)
    if cfg.attention_bias:
        attn["qkv_bias"] = True
    kinds = ["moe"] * cfg.num_hidden_layers
    return _deepseek(cfg, t, "Attn", attn, deepseek_v3_routing(cfg), kinds)


def _weights_solar_open(cfg: Any, m: WeightMapper) -> None:
    attention = _gqa_weights(bool(cfg.attention_bias), o_bias=False, qk_norm=False)
    _deepseek_weights(cfg, m, attention, ["moe"] * cfg.num_hidden_layers, score_bias=True)


def _config_glm4_moe_lite(cfg: Any) -> dict:
    """GLM-4.7-Flash (``glm4_moe_lite``): DeepSeek-V3 with the dense and sparse layers named
    one by one (``mlp_layer_types``)."""
    t = "glm4_moe_lite"
    mla = _mla(cfg, t, interleaved=bool(cfg.rope_interleave))
    return _deepseek(cfg, t, "MLA", mla, deepseek_v3_routing(cfg), _mlp_layer_kinds(cfg, t))


def _weights_glm4_moe_lite(cfg: Any, m: WeightMapper) -> None:
    _deepseek_weights(cfg, m, _mla_weights, _mlp_layer_kinds(cfg, "glm4_moe_lite"), score_bias=True)


for _type, _class, _config, _weights in (
    ("dots1", "Dots1ForCausalLM", _config_dots1, _weights_dots1),
    ("glm4_moe", "Glm4MoeForCausalLM", _config_glm4_moe, _weights_glm4_moe),
    ("sarvam_moe", "Glm4MoeForCausalLM", _config_glm4_moe, _weights_glm4_moe),
    ("param2moe", "Glm4MoeForCausalLM", _config_glm4_moe, _weights_glm4_moe),
    ("solar_open", "SolarOpenForCausalLM", _config_solar_open, _weights_solar_open),
    ("exaone_moe", "ExaoneMoeForCausalLM", _config_exaone_moe, _weights_exaone_moe),
    ("glm4_moe_lite", "Glm4MoeLiteForCausalLM", _config_glm4_moe_lite, _weights_glm4_moe_lite),
):
    register_architecture(
        Architecture(
            _type, _class, "model", _config, _weights, buffers=("e_score_correction_bias",)
        )
    )


# ------------------------------------------------------- MLA without experts: Youtu, MiniCPM3


def _dense_layers(cfg: Any) -> list[str]:
    return ["dense"] * cfg.num_hidden_layers


def _config_youtu(cfg: Any) -> dict:
    """Youtu-LLM: DeepSeek-V3's MLA (rotary on adjacent pairs with ``rope_interleave``) in
    every layer, each followed by a dense MLP (no experts)."""
    t = "youtu"
    mla = _mla(cfg, t, interleaved=bool(cfg.rope_interleave))
    return _deepseek(cfg, t, "MLA", mla, {}, _dense_layers(cfg))


def _weights_mla_dense(cfg: Any, m: WeightMapper) -> None:
    _deepseek_weights(cfg, m, _mla_weights, _dense_layers(cfg), score_bias=False)


def _config_minicpm3(cfg: Any) -> dict:
    """MiniCPM3: Youtu's layers with the rotary on the two halves of the rotated features (not
    adjacent pairs) and MiniCPM's multipliers: embeddings times ``scale_emb``, each residual
    update times ``scale_depth / sqrt(num_hidden_layers)``, the logits times
    ``dim_model_base / hidden_size``."""
    t = "minicpm3"
    config = _deepseek(cfg, t, "MLA", _mla(cfg, t, interleaved=False), {}, _dense_layers(cfg))
    defaults = config["defaults"]
    defaults["MLP"]["bias"] = bool(getattr(cfg, "mlp_bias", False))
    residual = float(cfg.scale_depth) / math.sqrt(cfg.num_hidden_layers)
    if residual != 1.0:
        config["blocks"] = {
            name: block.replace("->+", "->Scale->+") for name, block in config["blocks"].items()
        }
        defaults["Scale"] = {"by": residual}
    if cfg.scale_emb != 1:
        defaults["Embed"] = {"scale": float(cfg.scale_emb)}
    if cfg.dim_model_base != cfg.hidden_size:
        defaults["Head"] = {"scale": cfg.dim_model_base / cfg.hidden_size}
    return config


for _type, _class, _config in (
    ("youtu", "YoutuForCausalLM", _config_youtu),
    ("minicpm3", "MiniCPM3ForCausalLM", _config_minicpm3),
):
    register_architecture(Architecture(_type, _class, "model", _config, _weights_mla_dense))


# --------------------------------------------------------------------------- minicpm5_moe


def _config_minicpm5_moe(cfg: Any) -> dict:
    """MiniCPM5-MoE: Llama's attention with a sigmoid output gate (``Attn(gate=true)``: the
    gate's rows sit after each head's query rows in ``q_gate_proj``) and DeepSeek-V3's experts
    on the layers ``mlp_layer_types`` makes sparse."""
    t = "minicpm5_moe"
    bias = bool(cfg.attention_bias)
    attn = {**_attn_gqa(cfg, t), "gate": True, "bias": bias}
    return _deepseek(cfg, t, "Attn", attn, deepseek_v3_routing(cfg), _mlp_layer_kinds(cfg, t))


def _weights_minicpm5_moe(cfg: Any, m: WeightMapper) -> None:
    H = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    bias = bool(cfg.attention_bias)

    def query_and_gate(w: Tensor) -> list[Tensor]:  # per head: [q (hd) | gate (hd)] rows
        halves = w.reshape(H, 2, head_dim, *w.shape[1:]).unbind(1)
        return [half.reshape(H * head_dim, *w.shape[1:]) for half in halves]

    def attention(cfg: Any, m: WeightMapper, p: str, q: str) -> None:
        a, src = f"{q}.attn", f"{p}.self_attn"
        # saved as ``q_proj``, which transformers renames ``q_gate_proj`` on load
        fused = f"{src}.q_gate_proj" if m.has(f"{src}.q_gate_proj.weight") else f"{src}.q_proj"
        for kind in ["weight", "bias"] if bias else ["weight"]:
            m.split(
                [f"{a}.q.{kind}", f"{a}.slots.gate.linear.{kind}"],
                f"{fused}.{kind}",
                query_and_gate,
            )
        for n in "kvo":
            m.linear(f"{a}.{n}", f"{src}.{n}_proj", bias)

    kinds = _mlp_layer_kinds(cfg, "minicpm5_moe")
    _deepseek_weights(cfg, m, attention, kinds, score_bias=True)


register_architecture(
    Architecture(
        "minicpm5_moe",
        "MiniCPM5MoeForCausalLM",
        "model",
        config=_config_minicpm5_moe,
        weights=_weights_minicpm5_moe,
        buffers=("e_score_correction_bias",),
    )
)


# --------------------------------------------------------------------------- aria_text


def _config_aria_text(cfg: Any) -> dict:
    """Aria's text model: Llama's layers with experts on every layer, routed by the softmax of
    the top-k logits (the renormalised top-k probabilities), and ``moe_num_shared_experts``
    always-on experts of the same width beside them."""
    t = "aria_text"
    if cfg.mlp_bias:
        raise unsupported(t, "mlp_bias (biases on the shared experts)")
    if activation(cfg.hidden_act, t) != "silu":  # the routed experts are SiLU whatever it says
        raise unsupported(t, f"hidden_act '{cfg.hidden_act}' (its routed experts are SiLU)")
    moe = {
        "experts": cfg.moe_num_experts,
        "k": cfg.moe_topk,
        "hidden": cfg.intermediate_size,
        "act": "silu",
        "gated": True,
        "shared": cfg.moe_num_shared_experts,
        "norm_topk": True,
        "aux_loss": 0.0,  # transformers adds no load-balancing loss for Aria
    }
    return llama_like_config(cfg, t, mlp=moe)


def _weights_aria_text(cfg: Any, m: WeightMapper) -> None:
    """Aria's experts are stacked transposed, ``[E, D, 2I]`` (gate columns first) and
    ``[E, I, D]``: ``experts.fc1``/``fc2`` on disk, ``gate_up_proj``/``down_proj`` in memory."""
    inter = cfg.intermediate_size

    def moe(cfg: Any, m: WeightMapper, p: str, q: str) -> None:
        e, src = f"{q}.moe", f"{p}.mlp"
        m.put(f"{e}.router.weight", f"{src}.router.weight")
        saved = m.has(f"{src}.experts.fc1.weight")
        gate_up = f"{src}.experts.fc1.weight" if saved else f"{src}.experts.gate_up_proj"
        down = f"{src}.experts.fc2.weight" if saved else f"{src}.experts.down_proj"
        m.split(
            [f"{e}.w_gate", f"{e}.w_up"],
            gate_up,
            lambda w: [w[..., :inter].transpose(1, 2), w[..., inter:].transpose(1, 2)],
        )
        m.put(f"{e}.w_down", down, fn=lambda w: w.transpose(1, 2))
        for n in ("gate", "up", "down"):
            m.linear(f"{e}.shared.{n}", f"{src}.shared_experts.{n}_proj", bias=False)

    llama_weights(cfg, m, feed_forward=moe)


register_architecture(
    Architecture(
        "aria_text",
        "AriaTextForCausalLM",
        "model",
        config=_config_aria_text,
        weights=_weights_aria_text,
    )
)


# --------------------------------------------------------------------------- cohere2_moe


def _config_cohere2_moe(cfg: Any) -> dict:
    """Cohere 2 MoE: Cohere 2's parallel block (attention and the feed-forward on one norm,
    a bias-free LayerNorm or, with ``rms_norm_eps``, an RMSNorm) with experts on the layers
    ``mlp_layer_types`` makes sparse. Sliding-window layers rotate (on adjacent pairs), the
    full-attention ones have no positions except dense layers when
    ``prefix_dense_sliding_window_pattern`` is 1. The router's softmax (or sigmoid,
    ``expert_selection_fn``) is taken over the top-k logits; ``num_shared_experts`` always-on
    experts are added to the routed ones or, with ``shared_expert_combination_strategy``
    ``average``, averaged with them (``MoE->Scale(by=0.5)``)."""
    t = "cohere2_moe"
    kinds = _mlp_layer_kinds(cfg, t)
    windows = _windows(cfg, t)
    names: list[str] = []
    blocks: dict[str, str] = {}
    strategy = cfg.shared_expert_combination_strategy
    if strategy not in ("sum", "average"):
        raise unsupported(t, f"shared_expert_combination_strategy '{strategy}'")
    shared = cfg.num_shared_experts or 0
    average = shared > 0 and strategy == "average"
    rotary_dense = cfg.prefix_dense_sliding_window_pattern == 1  # transformers' force_rope
    for kind, window in zip(kinds, windows, strict=True):
        rope = window is not None or (kind == "dense" and rotary_dense)
        args = [f"window={int(window)}"] if window is not None else []
        if not rope:
            args.append("pos=none")
        name = f"{'global' if window is None else 'local'}{'' if rope else '_nope'}_{kind}"
        attn = f"Attn({', '.join(args)})" if args else "Attn"
        ffn = "MLP" if kind == "dense" else ("MoE->Scale" if average else "MoE")
        blocks[name] = f"Norm#ln->{attn}->+ | Norm#ln->{ffn}->+"
        names.append(name)
    act = activation(cfg.hidden_act, t)
    norm = (
        {"kind": "rms", "eps": cfg.rms_norm_eps}
        if cfg.rms_norm_eps is not None
        else {"kind": "layer", "eps": cfg.layer_norm_eps, "bias": False}
    )
    attn_args = {**_attn_gqa(cfg, t), "rope_interleaved": True, "bias": bool(cfg.attention_bias)}
    defaults: dict[str, dict] = {"Norm": norm, "Attn": attn_args}
    if "dense" in kinds:
        hidden = cfg.prefix_dense_intermediate_size or cfg.intermediate_size
        defaults["MLP"] = {"hidden": hidden, "act": act, "gated": True}
    if "moe" in kinds:
        if cfg.expert_selection_fn not in ("softmax", "sigmoid"):
            raise unsupported(t, f"expert_selection_fn '{cfg.expert_selection_fn}'")
        # the softmax of the top-k logits is the renormalised top-k probabilities; the sigmoid
        # picks the same experts from the logits as from its scores
        routing = (
            {"score": "sigmoid", "norm_topk": bool(cfg.norm_topk_prob)}
            if cfg.expert_selection_fn == "sigmoid"
            else {"norm_topk": True}
        )
        defaults["MoE"] = {
            "experts": cfg.num_experts,
            "k": cfg.num_experts_per_tok,
            "hidden": cfg.intermediate_size,
            "act": act,
            "gated": True,
            "shared": shared,
            **routing,
            "aux_loss": 0.0,  # transformers adds no load-balancing loss for Cohere 2 MoE
        }
    if average:
        defaults["Scale"] = {"by": 0.5}
    if cfg.logit_scale is not None and cfg.logit_scale != 1.0:
        defaults["Head"] = {"scale": float(cfg.logit_scale)}
    return model_config(
        cfg, layers=compress_layers(names), blocks=blocks, defaults=defaults, tied_by_default=True
    )


def _weights_cohere2_moe(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i, kind in enumerate(_mlp_layer_kinds(cfg, "cohere2_moe")):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.ln", f"{p}.input_layernorm", bias=False)
        _gqa_weights(qkv_bias=bias, o_bias=bias, qk_norm=False)(cfg, m, p, q)
        if kind == "dense":
            llama_mlp_weights(cfg, m, p, q)
            continue
        e, src = f"{q}.moe", f"{p}.mlp"
        m.put(f"{e}.router.weight", f"{src}.gate.weight")
        expert_weights(m, f"{src}.experts", e, experts=cfg.num_experts, inter=cfg.intermediate_size)
        if cfg.num_shared_experts:
            for n in ("gate", "up", "down"):
                m.linear(f"{e}.shared.{n}", f"{src}.shared_experts.{n}_proj", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", True))


register_architecture(
    Architecture(
        "cohere2_moe",
        "Cohere2MoeForCausalLM",
        "model",
        config=_config_cohere2_moe,
        weights=_weights_cohere2_moe,
    )
)


# --------------------------------------------------------------------------- afmoe


def _afmoe_kinds(cfg: Any) -> list[str]:
    """``dense`` for the first ``num_dense_layers`` layers, ``moe`` after them."""
    dense = cfg.num_dense_layers or 0
    return ["dense" if i < dense else "moe" for i in range(cfg.num_hidden_layers)]


def _config_afmoe(cfg: Any) -> dict:
    """AFMoE (Arcee's Trinity): sandwich norms (an RMSNorm before and after attention and the
    feed-forward), attention with per-head q/k RMSNorms and a sigmoid output gate, rotary on
    the sliding-window layers only (``layer_types``; the full ones have no positions), dense
    MLPs on the first ``num_dense_layers`` layers and after them sigmoid experts chosen with
    ``expert_bias``, renormalised, times ``route_scale``, beside ``num_shared_experts``
    always-on ones; with ``mup_enabled`` the embeddings times ``sqrt(hidden_size)``."""
    t = "afmoe"
    act = activation(cfg.hidden_act, t)
    bias = bool(getattr(cfg, "attention_bias", False))
    attn = {
        **_attn_gqa(cfg, t),
        "qk_norm": True,
        "qk_norm_eps": cfg.rms_norm_eps,
        "gate": True,
        "bias": bias,
    }
    kinds = _afmoe_kinds(cfg)
    windows = _windows(cfg, t)
    names: list[str] = []
    blocks: dict[str, str] = {}
    for kind, window in zip(kinds, windows, strict=True):
        call = f"Attn(window={int(window)})" if window is not None else "Attn(pos=none)"
        name = f"{'global' if window is None else 'local'}_{kind}"
        ffn = "MLP" if kind == "dense" else "MoE"
        blocks[name] = f"Norm->{call}->Norm->+->Norm->{ffn}->Norm->+"
        names.append(name)
    defaults: dict[str, dict] = {"Norm": {"kind": "rms", "eps": cfg.rms_norm_eps}, "Attn": attn}
    if "dense" in kinds:
        defaults["MLP"] = {"hidden": cfg.intermediate_size, "act": act, "gated": True}
    if "moe" in kinds:
        defaults["MoE"] = {
            "experts": cfg.num_experts,
            "k": cfg.num_experts_per_tok,
            "hidden": cfg.moe_intermediate_size,
            "act": act,
            "gated": True,
            "shared": cfg.num_shared_experts or 0,
            "score": "sigmoid",
            "score_bias": True,
            "norm_topk": True,
            "routed_scale": float(cfg.route_scale),
            "aux_loss": 0.0,  # transformers adds no load-balancing loss for AFMoE
        }
    if cfg.mup_enabled:
        defaults["Embed"] = {"scale": "sqrt_d"}
    return model_config(cfg, layers=compress_layers(names), blocks=blocks, defaults=defaults)


def _weights_afmoe(cfg: Any, m: WeightMapper) -> None:
    bias = bool(getattr(cfg, "attention_bias", False))
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i, kind in enumerate(_afmoe_kinds(cfg)):
        p, q = f"model.layers.{i}", f"layers.{i}"
        # the block's four norms in order: norm, norm_1 (after attention), norm_2, norm_3
        for ours, theirs in (("norm", "input"), ("norm_1", "post_attention"),
                             ("norm_2", "pre_mlp"), ("norm_3", "post_mlp")):  # fmt: skip
            m.norm(f"{q}.{ours}", f"{p}.{theirs}_layernorm", bias=False)
        _gqa_weights(qkv_bias=bias, o_bias=bias, qk_norm=True)(cfg, m, p, q)
        m.linear(f"{q}.attn.slots.gate.linear", f"{p}.self_attn.gate_proj", bias=False)
        if kind == "dense":
            llama_mlp_weights(cfg, m, p, q)
            continue
        e, src = f"{q}.moe", f"{p}.mlp"
        m.put(f"{e}.router.weight", f"{src}.router.gate.weight")
        m.put(f"{e}.score_bias", f"{src}.expert_bias")
        expert_weights(
            m, f"{src}.experts", e, experts=cfg.num_experts, inter=cfg.moe_intermediate_size
        )
        if cfg.num_shared_experts:
            for n in ("gate", "up", "down"):
                m.linear(f"{e}.shared.{n}", f"{src}.shared_experts.{n}_proj", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture("afmoe", "AfmoeForCausalLM", "model", config=_config_afmoe, weights=_weights_afmoe)
)


# --------------------------------------------------------------------------- axk1


def _config_axk1(cfg: Any) -> dict:
    """A.X-K1: DeepSeek-V3 (MLA, grouped sigmoid experts with a shared one) with the dense and
    sparse layers named one by one (``mlp_layer_types``) and an RMSNorm on the experts' output
    before the residual sum (``post_mlp_layernorm``, sparse layers only)."""
    t = "axk1"
    mla = _mla(cfg, t, interleaved=bool(cfg.rope_interleave))
    config = _deepseek(cfg, t, "MLA", mla, deepseek_v3_routing(cfg), _mlp_layer_kinds(cfg, t))
    if "moe" in config["blocks"]:
        config["blocks"]["moe"] = config["blocks"]["moe"].replace("->MoE->+", "->MoE->Norm->+")
    return config


def _weights_axk1(cfg: Any, m: WeightMapper) -> None:
    kinds = _mlp_layer_kinds(cfg, "axk1")
    _deepseek_weights(cfg, m, _mla_weights, kinds, score_bias=True)
    for i, kind in enumerate(kinds):
        p = f"model.layers.{i}"
        # saved beside the layer's norms, moved inside the MoE by transformers on load; a
        # checkpoint may hold one on dense layers too, which transformers ignores (never run)
        saved = f"{p}.post_mlp_layernorm.weight"
        name = saved if m.has(saved) else f"{p}.mlp.post_mlp_layernorm.weight"
        if kind == "moe":
            m.put(f"layers.{i}.norm_2.weight", name)
        elif m.has(name):
            m.get(name)


register_architecture(
    Architecture(
        "axk1",
        "AXK1ForCausalLM",
        "model",
        config=_config_axk1,
        weights=_weights_axk1,
        buffers=("e_score_correction_bias",),
    )
)
