"""Dense decoder architectures for the Hugging Face import: Llama, Mistral, Gemma 2, Qwen2,
Qwen3, Gemma, Gemma 3, OLMo, OLMo 2, Cohere, StableLM, Phi-3, Granite, StarCoder2, Persimmon
and Nemotron, and the Llama relatives at the end of the module (InternLM3, EXAONE, Ministral,
SmolLM3, GLM, Cohere 2, Apertus, ...): one ``Architecture`` record each.

Each is a Llama relative that differs in a few named places (q/k norms, biases, norm kind and
placement, multipliers, fused projections), and each difference is an argument of a built-in
component, so an imported config reads as the architecture: ``layers`` is ``block*N`` (or
``local``/``global`` blocks from ``layer_types``), the per-model conventions sit in
``[defaults]``. Fused checkpoint tensors (Phi-3's ``qkv_proj`` and ``gate_up_proj``,
Persimmon's per-head ``query_key_value``, StableLM's per-head norms) are split or stacked,
never recomputed, so the export runs the same mapping backwards.
"""

from __future__ import annotations

from typing import Any

import torch

from blockdsl.hf.base import (
    Architecture,
    WeightMapper,
    activation,
    compress_layers,
    default_rope,
    llama_attention_weights,
    llama_like_config,
    llama_mlp_weights,
    llama_weights,
    model_config,
    qk_norm_weights,
    register_architecture,
    rope_args,
    rotary_fraction,
    sink_layers,
    sink_weights,
    unsupported,
)

Tensor = torch.Tensor


# ---------------------------------------------------------------- llama, mistral


def _config_llama(cfg: Any) -> dict:
    return llama_like_config(cfg, "llama")


def _config_mistral(cfg: Any) -> dict:
    return llama_like_config(cfg, "mistral", window=True)


def _weights_llama(cfg: Any, m: WeightMapper) -> None:
    llama_weights(cfg, m)


register_architecture(
    Architecture("llama", "LlamaForCausalLM", "model", config=_config_llama, weights=_weights_llama)
)
register_architecture(
    Architecture(
        "mistral", "MistralForCausalLM", "model", config=_config_mistral, weights=_weights_llama
    )
)


# ---------------------------------------------------------------- gemma2


def _config_gemma2(cfg: Any) -> dict:
    return _gemma2_like_config(cfg, "gemma2", "Norm->Attn{}->Norm->+->Norm->MLP->Norm->+")


def _config_vaultgemma(cfg: Any) -> dict:
    """VaultGemma: Gemma 2 with pre-norms only (no norm after attention or the MLP)."""
    return _gemma2_like_config(cfg, "vaultgemma", "Norm->Attn{}->+->Norm->MLP->+")


def _gemma2_like_config(cfg: Any, t: str, sandwich: str) -> dict:
    if getattr(cfg, "use_bidirectional_attention", False):
        raise unsupported(t, "use_bidirectional_attention")
    theta, fraction = default_rope(cfg, t)
    if fraction != 1.0:
        raise unsupported(t, "partial_rotary_factor")
    L = cfg.num_hidden_layers
    kinds = list(cfg.layer_types or [])
    if len(kinds) != L or not set(kinds) <= {"sliding_attention", "full_attention"}:
        raise unsupported(t, f"layer_types {kinds}")
    blocks: dict[str, str] = {}
    names = []
    for kind in kinds:
        if kind == "sliding_attention" and cfg.sliding_window is not None:
            blocks["local"] = sandwich.format(f"(window={int(cfg.sliding_window)})")
            names.append("local")
        else:
            blocks["global"] = sandwich.format("")
            names.append("global")
    softcap = getattr(cfg, "attn_logit_softcapping", None)
    final_softcap = getattr(cfg, "final_logit_softcapping", None)
    act = getattr(cfg, "hidden_activation", None) or cfg.hidden_act
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps, "unit_offset": True},
        "Attn": {
            "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "pos": "rope",
            "rope_theta": theta,
            "scale": float(cfg.query_pre_attn_scalar) ** -0.5,
            "bias": bool(getattr(cfg, "attention_bias", False)),
        },
        "MLP": {
            "hidden": cfg.intermediate_size,
            "act": activation(act, t),
            "gated": True,
            "bias": False,
        },
        "Embed": {"scale": "sqrt_d"},
    }
    if softcap is not None:
        defaults["Attn"]["softcap"] = float(softcap)
    if final_softcap is not None:
        defaults["Head"] = {"softcap": float(final_softcap)}
    return model_config(
        cfg,
        layers=compress_layers(names),
        blocks=blocks,
        defaults=defaults,
        tied_by_default=True,
    )


def _weights_gemma2(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        llama_attention_weights(cfg, m, p, q)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        m.norm(f"{q}.norm_2", f"{p}.pre_feedforward_layernorm", bias=False)
        llama_mlp_weights(cfg, m, p, q)
        m.norm(f"{q}.norm_3", f"{p}.post_feedforward_layernorm", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", True))


def _weights_vaultgemma(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        llama_attention_weights(cfg, m, p, q)
        m.norm(f"{q}.norm_1", f"{p}.pre_feedforward_layernorm", bias=False)
        llama_mlp_weights(cfg, m, p, q)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", True))


register_architecture(
    Architecture(
        "gemma2", "Gemma2ForCausalLM", "model", config=_config_gemma2, weights=_weights_gemma2
    )
)
register_architecture(
    Architecture(
        "vaultgemma",
        "VaultGemmaForCausalLM",
        "model",
        config=_config_vaultgemma,
        weights=_weights_vaultgemma,
    )
)


# --------------------------------------------------------------------------- shared helpers


def _head_dim(cfg: Any) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _attn(cfg: Any, t: str, *, partial: bool = False, params: Any = None) -> dict:
    """``Attn`` defaults of a GQA + RoPE attention: heads, kv heads, head size, the rotary
    (scaled or not; a partial rotary only where the architecture has one)."""
    head_dim = _head_dim(cfg)
    rope, fraction = rope_args(cfg, t, params)
    attn: dict[str, Any] = {
        "heads": cfg.num_attention_heads,
        "kv_heads": getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        "head_dim": head_dim,
        "pos": "rope",
        **rope,
    }
    if fraction != 1.0:
        if not partial:
            raise unsupported(t, "partial_rotary_factor")
        attn["rope_fraction"] = rotary_fraction(int(head_dim * fraction), head_dim)
    return attn


def _windows(cfg: Any, t: str) -> list[str]:
    """``local`` or ``global`` per layer, from ``layer_types`` (a window only where the config
    has one)."""
    L = cfg.num_hidden_layers
    kinds = list(getattr(cfg, "layer_types", None) or ["full_attention"] * L)
    if len(kinds) != L or not set(kinds) <= {"sliding_attention", "full_attention"}:
        raise unsupported(t, f"layer_types {kinds}")
    window = getattr(cfg, "sliding_window", None)
    return ["local" if k == "sliding_attention" and window is not None else "global" for k in kinds]


def _layered(cfg: Any, block: str, kinds: list[str], window_step: str = "Attn") -> tuple:
    """``(blocks, layers)``: one ``block`` where every layer is global, else a ``local`` block
    with ``Attn(window=W)`` and a ``global`` one."""
    if set(kinds) == {"global"}:
        return {"block": block}, f"block*{len(kinds)}"
    local = block.replace(window_step, f"{window_step}(window={int(cfg.sliding_window)})", 1)
    blocks = {"local": local, "global": block}
    return {k: blocks[k] for k in dict.fromkeys(kinds)}, compress_layers(kinds)


def _rms(cfg: Any, **extra: Any) -> dict:
    return {"kind": "rms", "eps": cfg.rms_norm_eps, **extra}


def _gated_mlp(cfg: Any, t: str, bias: bool = False) -> dict:
    act = getattr(cfg, "hidden_activation", None) or cfg.hidden_act
    return {"hidden": cfg.intermediate_size, "act": activation(act, t), "gated": True, "bias": bias}


def _tied(cfg: Any, default: bool) -> bool:
    return bool(getattr(cfg, "tie_word_embeddings", default))


def _attn_weights(
    m: WeightMapper, p: str, q: str, qkv_bias: bool, o_bias: bool, o_name: str = "o_proj"
) -> None:
    for n in "qkv":
        m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", qkv_bias)
    m.linear(f"{q}.attn.o", f"{p}.self_attn.{o_name}", o_bias)


GATED_MLP = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def _mlp_weights(
    m: WeightMapper, p: str, q: str, bias: bool = False, names: dict[str, str] = GATED_MLP
) -> None:
    """``names``: blockdsl's MLP linear -> the checkpoint's name under ``mlp``."""
    for ours, theirs in names.items():
        m.linear(f"{q}.mlp.{ours}", f"{p}.mlp.{theirs}", bias)


def _standard_layers(
    cfg: Any,
    m: WeightMapper,
    *,
    qkv_bias: bool,
    o_bias: bool,
    norm_bias: bool = False,
    mlp_bias: bool = False,
    qk_norm: bool = False,
    mlp_names: dict[str, str] = GATED_MLP,
    norms: tuple[str, str] = ("input_layernorm", "post_attention_layernorm"),
) -> None:
    """Llama-layout layers: ``input_layernorm``, ``self_attn.{q,k,v,o}_proj`` (and
    ``q_norm``/``k_norm``), ``post_attention_layernorm``, ``mlp.{gate,up,down}_proj`` (or the
    ``mlp_names`` of an ungated MLP). ``norms``: the checkpoint's names of each layer's two
    norms, in the block's order (its ``norm`` and ``norm_1``), wherever the block puts them."""
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.{norms[0]}", bias=norm_bias)
        _attn_weights(m, p, q, qkv_bias, o_bias)
        if qk_norm:
            qk_norm_weights(m, f"{p}.self_attn", f"{q}.attn")
        m.norm(f"{q}.norm_1", f"{p}.{norms[1]}", bias=norm_bias)
        _mlp_weights(m, p, q, mlp_bias, mlp_names)
    m.norm("head.norm", "model.norm", bias=norm_bias)


def _register(model_type: str, hf_class: str, config: Any, weights: Any) -> None:
    register_architecture(Architecture(model_type, hf_class, "model", config, weights))


PRE_NORM = "Norm->Attn->+->Norm->MLP->+"


# --------------------------------------------------------------------------- qwen2, qwen3


def config_qwen2(cfg: Any) -> dict:
    """Qwen2: Llama with biases on q, k and v (none on o); sliding-window layers from
    ``layer_types`` when ``use_sliding_window``."""
    t = "qwen2"
    blocks, layers = _layered(cfg, PRE_NORM, _windows(cfg, t))
    attn = {**_attn(cfg, t), "qkv_bias": True}
    defaults = {"Norm": _rms(cfg), "Attn": attn, "MLP": _gated_mlp(cfg, t)}
    return model_config(cfg, layers=layers, blocks=blocks, defaults=defaults)


def weights_qwen2(cfg: Any, m: WeightMapper) -> None:
    _standard_layers(cfg, m, qkv_bias=True, o_bias=False)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


def config_qwen3(cfg: Any) -> dict:
    """Qwen3: Llama with an RMSNorm of each head's queries and keys (weights shared by the
    heads, eps ``rms_norm_eps``) and ``head_dim`` of its own."""
    t = "qwen3"
    blocks, layers = _layered(cfg, PRE_NORM, _windows(cfg, t))
    attn = {
        **_attn(cfg, t),
        "bias": bool(cfg.attention_bias),
        "qk_norm": True,
        "qk_norm_eps": cfg.rms_norm_eps,
    }
    defaults = {"Norm": _rms(cfg), "Attn": attn, "MLP": _gated_mlp(cfg, t)}
    return model_config(cfg, layers=layers, blocks=blocks, defaults=defaults)


def weights_qwen3(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    _standard_layers(cfg, m, qkv_bias=bias, o_bias=bias, qk_norm=True)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


_register("qwen2", "Qwen2ForCausalLM", config_qwen2, weights_qwen2)
_register("qwen3", "Qwen3ForCausalLM", config_qwen3, weights_qwen3)


# --------------------------------------------------------------------------- gemma, gemma 3


def config_gemma(cfg: Any) -> dict:
    """Gemma: Llama with ``(1 + w)`` RMSNorms, embeddings times ``sqrt(d_model)``, the tanh
    GELU, a tied head."""
    t = "gemma"
    if getattr(cfg, "use_bidirectional_attention", False):
        raise unsupported(t, "use_bidirectional_attention")
    attn = {**_attn(cfg, t), "bias": bool(getattr(cfg, "attention_bias", False))}
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": PRE_NORM},
        defaults={
            "Norm": _rms(cfg, unit_offset=True),
            "Attn": attn,
            "MLP": _gated_mlp(cfg, t),
            "Embed": {"scale": "sqrt_d"},
        },
        tied_by_default=True,
    )


def weights_gemma(cfg: Any, m: WeightMapper) -> None:
    bias = bool(getattr(cfg, "attention_bias", False))
    _standard_layers(cfg, m, qkv_bias=bias, o_bias=bias)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, True))


GEMMA_SANDWICH = "Norm->Attn->Norm->+->Norm->MLP->Norm->+"


def config_gemma3(cfg: Any) -> dict:
    """Gemma 3 (text): Gemma 2's sandwich norms and local/global layers, with ``(1 + w)``
    RMSNorms of each head's queries and keys, and a RoPE of its own per layer type (the local
    layers' ``rope_theta`` inline)."""
    t = "gemma3_text"
    if getattr(cfg, "use_bidirectional_attention", False):
        raise unsupported(t, "use_bidirectional_attention")
    kinds = _windows(cfg, t)
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    attn = {
        **_attn(cfg, t, params=rope.get("full_attention")),
        "scale": float(cfg.query_pre_attn_scalar) ** -0.5,
        "bias": bool(getattr(cfg, "attention_bias", False)),
        "qk_norm": True,
        "qk_norm_eps": cfg.rms_norm_eps,
        "qk_norm_unit_offset": True,
    }
    # attn_logit_softcapping is read by no transformers Gemma 3 attention: not carried over
    blocks, layers = _layered(cfg, GEMMA_SANDWICH, kinds)
    if "local" in blocks:  # the local layers' rotary, where it differs from the global one
        local = _attn(cfg, t, params=rope.get("sliding_attention"))
        inline = [f"window={int(cfg.sliding_window)}"]
        for name, value in local.items():
            if attn.get(name) != value:
                inline.append(f"{name}={_value(value)}")
        if "rope_scaling" in attn and "rope_scaling" not in local:  # scaled global layers only
            inline.append("rope_scaling=none")
        blocks["local"] = GEMMA_SANDWICH.replace("Attn", f"Attn({', '.join(inline)})", 1)
    defaults: dict[str, dict] = {
        "Norm": _rms(cfg, unit_offset=True),
        "Attn": attn,
        "MLP": _gated_mlp(cfg, t),
        "Embed": {"scale": "sqrt_d"},
    }
    if cfg.final_logit_softcapping is not None:
        defaults["Head"] = {"softcap": float(cfg.final_logit_softcapping)}
    return model_config(cfg, layers=layers, blocks=blocks, defaults=defaults, tied_by_default=True)


def _value(value: Any) -> str:
    from blockdsl.printer import format_value

    return format_value(value)


def weights_gemma3(cfg: Any, m: WeightMapper) -> None:
    bias = bool(getattr(cfg, "attention_bias", False))
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        _attn_weights(m, p, q, bias, bias)
        qk_norm_weights(m, f"{p}.self_attn", f"{q}.attn")
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        m.norm(f"{q}.norm_2", f"{p}.pre_feedforward_layernorm", bias=False)
        _mlp_weights(m, p, q)
        m.norm(f"{q}.norm_3", f"{p}.post_feedforward_layernorm", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, True))


_register("gemma", "GemmaForCausalLM", config_gemma, weights_gemma)
_register("gemma3_text", "Gemma3ForCausalLM", config_gemma3, weights_gemma3)


# --------------------------------------------------------------------------- olmo, olmo 2


def config_olmo(cfg: Any) -> dict:
    """OLMo: Llama with LayerNorms that learn nothing (eps 1e-5) and q/k/v clipped to
    ``clip_qkv``."""
    t = "olmo"
    attn = {**_attn(cfg, t), "bias": bool(cfg.attention_bias)}
    if cfg.clip_qkv is not None:
        attn["clip_qkv"] = float(cfg.clip_qkv)
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": PRE_NORM},
        defaults={
            "Norm": {"kind": "layer", "eps": 1e-5, "affine": False, "bias": False},
            "Attn": attn,
            "MLP": _gated_mlp(cfg, t),
        },
    )


def weights_olmo(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        _attn_weights(m, p, q, bias, bias)
        _mlp_weights(m, p, q)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


def config_olmo2(cfg: Any) -> dict:
    """OLMo 2: norms after attention and MLP, not before (``Attn->Norm->+``), and an RMSNorm
    of the whole query and key projections (``qk_norm_over=all``)."""
    t = "olmo2"
    attn = {
        **_attn(cfg, t),
        "bias": bool(cfg.attention_bias),
        "qk_norm": True,
        "qk_norm_over": "all",
        "qk_norm_eps": cfg.rms_norm_eps,
    }
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": "Attn->Norm->+->MLP->Norm->+"},
        defaults={"Norm": _rms(cfg), "Attn": attn, "MLP": _gated_mlp(cfg, t)},
    )


def weights_olmo2(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        _attn_weights(m, p, q, bias, bias)
        qk_norm_weights(m, f"{p}.self_attn", f"{q}.attn")
        m.norm(f"{q}.norm", f"{p}.post_attention_layernorm", bias=False)
        _mlp_weights(m, p, q)
        m.norm(f"{q}.norm_1", f"{p}.post_feedforward_layernorm", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


_register("olmo", "OlmoForCausalLM", config_olmo, weights_olmo)
_register("olmo2", "Olmo2ForCausalLM", config_olmo2, weights_olmo2)


# --------------------------------------------------------------------------- cohere, stablelm

PARALLEL_SHARED = "Norm#ln->Attn->+ | Norm#ln->MLP->+"


def config_cohere(cfg: Any) -> dict:
    """Cohere (Command R): parallel attention and MLP on one bias-free LayerNorm, interleaved
    rotary pairs, optional per-head LayerNorms of queries and keys, logits times
    ``logit_scale``."""
    t = "cohere"
    attn = {**_attn(cfg, t), "rope_interleaved": True, "bias": bool(cfg.attention_bias)}
    if cfg.use_qk_norm:
        attn.update(
            qk_norm=True,
            qk_norm_kind="layer",
            qk_norm_per_head=True,
            qk_norm_eps=cfg.layer_norm_eps,
        )
    defaults: dict[str, dict] = {
        "Norm": {"kind": "layer", "eps": cfg.layer_norm_eps, "bias": False},
        "Attn": attn,
        "MLP": _gated_mlp(cfg, t),
    }
    if cfg.logit_scale is not None and cfg.logit_scale != 1.0:
        defaults["Head"] = {"scale": float(cfg.logit_scale)}
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": PARALLEL_SHARED},
        defaults=defaults,
        tied_by_default=True,
    )


def weights_cohere(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.ln", f"{p}.input_layernorm", bias=False)
        _attn_weights(m, p, q, bias, bias)
        if cfg.use_qk_norm:
            qk_norm_weights(m, f"{p}.self_attn", f"{q}.attn")
        _mlp_weights(m, p, q)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, True))


def config_stablelm(cfg: Any) -> dict:
    """StableLM: LayerNorms, a partial rotary, q/k/v biases (``use_qkv_bias``, none on o),
    optional per-head LayerNorms of queries and keys, parallel residual (one shared norm) or
    sequential."""
    t = "stablelm"
    attn = {**_attn(cfg, t, partial=True), "qkv_bias": bool(cfg.use_qkv_bias)}
    if cfg.qk_layernorm:
        attn.update(
            qk_norm=True,
            qk_norm_kind="layer",
            qk_norm_per_head=True,
            qk_norm_eps=cfg.layer_norm_eps,
        )
    block = PARALLEL_SHARED if cfg.use_parallel_residual else PRE_NORM
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": block},
        defaults={
            "Norm": {"kind": "layer", "eps": cfg.layer_norm_eps, "bias": True},
            "Attn": attn,
            "MLP": _gated_mlp(cfg, t),
        },
    )


def _stack(*ws: Tensor) -> Tensor:
    return torch.stack(ws)


def weights_stablelm(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    heads = {"q": cfg.num_attention_heads, "k": cfg.num_key_value_heads}
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        first = "ln" if cfg.use_parallel_residual else "norm"
        m.norm(f"{q}.{first}", f"{p}.input_layernorm", bias=True)
        _attn_weights(m, p, q, bool(cfg.use_qkv_bias), False)
        if cfg.qk_layernorm:  # one LayerNorm per head: stacked into weight [heads, head_dim]
            for n, count in heads.items():
                srcs = [f"{p}.self_attn.{n}_layernorm.norms.{h}.weight" for h in range(count)]
                m.put(f"{q}.attn.slots.{n}.norm.weight", *srcs, fn=_stack)
        if not cfg.use_parallel_residual:
            m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=True)
        _mlp_weights(m, p, q)
    m.norm("head.norm", "model.norm", bias=True)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


_register("cohere", "CohereForCausalLM", config_cohere, weights_cohere)
_register("stablelm", "StableLmForCausalLM", config_stablelm, weights_stablelm)


# --------------------------------------------------------------------------- phi3, granite


def config_phi3(cfg: Any) -> dict:
    """Phi-3: Llama with fused q/k/v and gate/up projections (split on import), a partial
    rotary, LongRoPE, an optional sliding window."""
    t = "phi3"
    attn = _attn(cfg, t, partial=True)
    if cfg.sliding_window is not None:
        attn["window"] = int(cfg.sliding_window)
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": PRE_NORM},
        defaults={"Norm": _rms(cfg), "Attn": attn, "MLP": _gated_mlp(cfg, t)},
    )


def weights_phi3(cfg: Any, m: WeightMapper) -> None:
    H, K, hd = cfg.num_attention_heads, cfg.num_key_value_heads, _head_dim(cfg)
    inter = cfg.intermediate_size
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        m.split(  # rows [q (H*hd) | k (K*hd) | v (K*hd)]
            [f"{q}.attn.{n}.weight" for n in "qkv"],
            f"{p}.self_attn.qkv_proj.weight",
            lambda w: list(w.split([H * hd, K * hd, K * hd])),
        )
        m.linear(f"{q}.attn.o", f"{p}.self_attn.o_proj", bias=False)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        m.split(  # rows [gate | up]
            [f"{q}.mlp.gate.weight", f"{q}.mlp.up.weight"],
            f"{p}.mlp.gate_up_proj.weight",
            lambda w: list(w.split([inter, inter])),
        )
        m.linear(f"{q}.mlp.down", f"{p}.mlp.down_proj", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


def config_granite(cfg: Any) -> dict:
    """Granite: Llama with constant multipliers: embeddings (``Embed(scale)``), each residual
    update (``Scale(by)`` before ``+``), attention scores (``Attn(scale)``) and the logits
    (``Head(scale = 1 / logits_scaling)``)."""
    t = "granite"
    bias = bool(cfg.attention_bias)
    attn = {**_attn(cfg, t), "scale": float(cfg.attention_multiplier), "bias": bias}
    defaults: dict[str, dict] = {
        "Norm": _rms(cfg),
        "Attn": attn,
        "MLP": _gated_mlp(cfg, t, bias=bool(getattr(cfg, "mlp_bias", False))),
    }
    block = PRE_NORM
    if cfg.residual_multiplier != 1.0:
        block = "Norm->Attn->Scale->+->Norm->MLP->Scale->+"
        defaults["Scale"] = {"by": float(cfg.residual_multiplier)}
    if cfg.embedding_multiplier != 1.0:
        defaults["Embed"] = {"scale": float(cfg.embedding_multiplier)}
    if cfg.logits_scaling != 1.0:
        defaults["Head"] = {"scale": 1.0 / float(cfg.logits_scaling)}
    return model_config(
        cfg, layers=f"block*{cfg.num_hidden_layers}", blocks={"block": block}, defaults=defaults
    )


def weights_granite(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    _standard_layers(
        cfg, m, qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(cfg, "mlp_bias", False))
    )
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


def config_granite_swa(cfg: Any) -> dict:
    """Granite-SWA: Granite with a learned sink logit per head in every attention
    (``Attn[scores=Sink]``), sliding-window layers from ``layer_types`` and a rotary base per
    layer (``layer_rope_theta``, 0 for no positions)."""
    config = config_granite(cfg)
    theta = config["defaults"]["Attn"]["rope_theta"]
    blocks, layers = sink_layers(cfg, "granite_swa", config["blocks"]["block"], theta)
    config["blocks"], config["model"]["layers"] = blocks, layers
    return config


def weights_granite_swa(cfg: Any, m: WeightMapper) -> None:
    weights_granite(cfg, m)
    sink_weights(cfg, m)


_register("phi3", "Phi3ForCausalLM", config_phi3, weights_phi3)
_register("granite", "GraniteForCausalLM", config_granite, weights_granite)
_register("granite_swa", "GraniteSWAForCausalLM", config_granite_swa, weights_granite_swa)


# --------------------------------------------------------------------------- starcoder2


def config_starcoder2(cfg: Any) -> dict:
    """StarCoder2: LayerNorms and biases everywhere (``use_bias``), a plain (ungated) MLP,
    an optional sliding window."""
    t = "starcoder2"
    attn = {**_attn(cfg, t), "bias": bool(cfg.use_bias)}
    if cfg.sliding_window is not None:
        attn["window"] = int(cfg.sliding_window)
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": PRE_NORM},
        defaults={
            "Norm": {"kind": "layer", "eps": cfg.norm_epsilon, "bias": True},
            "Attn": attn,
            "MLP": {
                "hidden": cfg.intermediate_size,
                "act": activation(cfg.hidden_act, t),
                "gated": False,
                "bias": bool(cfg.use_bias),
            },
        },
        tied_by_default=True,
    )


def weights_starcoder2(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.use_bias)
    _standard_layers(
        cfg, m, qkv_bias=bias, o_bias=bias, norm_bias=True, mlp_bias=bias,
        mlp_names={"up": "c_fc", "down": "c_proj"},
    )  # fmt: skip
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, True))


_register("starcoder2", "Starcoder2ForCausalLM", config_starcoder2, weights_starcoder2)


# --------------------------------------------------------------------------- persimmon, nemotron


def config_persimmon(cfg: Any) -> dict:
    """Persimmon: LayerNorms, biases everywhere, a partial rotary, LayerNorms (with bias) of
    each head's queries and keys (``qk_layernorm``), a squared-ReLU MLP."""
    t = "persimmon"
    # every head has its own keys and values (the config has no num_key_value_heads)
    attn = {**_attn(cfg, t, partial=True), "kv_heads": cfg.num_attention_heads, "bias": True}
    if cfg.qk_layernorm:
        attn.update(
            qk_norm=True, qk_norm_kind="layer", qk_norm_bias=True, qk_norm_eps=cfg.layer_norm_eps
        )
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": PRE_NORM},
        defaults={
            "Norm": {"kind": "layer", "eps": cfg.layer_norm_eps, "bias": True},
            "Attn": attn,
            "MLP": {
                "hidden": cfg.intermediate_size,
                "act": activation(cfg.hidden_act, t),
                "gated": False,
                "bias": True,
            },
        },
    )


def weights_persimmon(cfg: Any, m: WeightMapper) -> None:
    H, d = cfg.num_attention_heads, cfg.hidden_size
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=True)
        # fused per head: rows [q_0 | k_0 | v_0 | q_1 | ...] (as GPT-NeoX)
        m.split(
            [f"{q}.attn.{n}.weight" for n in "qkv"],
            f"{p}.self_attn.query_key_value.weight",
            lambda w: [t.reshape(d, d) for t in w.reshape(H, 3, -1, d).unbind(1)],
        )
        m.split(
            [f"{q}.attn.{n}.bias" for n in "qkv"],
            f"{p}.self_attn.query_key_value.bias",
            lambda b: [t.reshape(d) for t in b.reshape(H, 3, -1).unbind(1)],
        )
        m.linear(f"{q}.attn.o", f"{p}.self_attn.dense", bias=True)
        if cfg.qk_layernorm:
            qk_norm_weights(
                m, f"{p}.self_attn", f"{q}.attn", names=("q_layernorm", "k_layernorm"), bias=True
            )
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=True)
        m.linear(f"{q}.mlp.up", f"{p}.mlp.dense_h_to_4h", bias=True)
        m.linear(f"{q}.mlp.down", f"{p}.mlp.dense_4h_to_h", bias=True)
    m.norm("head.norm", "model.final_layernorm", bias=True)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


def config_nemotron(cfg: Any) -> dict:
    """Nemotron: LayerNorms with a ``(1 + w)`` weight and a bias (LayerNorm1P), a partial
    rotary, a squared-ReLU MLP."""
    t = "nemotron"
    attn = {**_attn(cfg, t, partial=True), "bias": bool(cfg.attention_bias)}
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": PRE_NORM},
        defaults={
            "Norm": {"kind": "layer", "eps": cfg.norm_eps, "bias": True, "unit_offset": True},
            "Attn": attn,
            "MLP": {
                "hidden": cfg.intermediate_size,
                "act": activation(cfg.hidden_act, t),
                "gated": False,
                "bias": bool(cfg.mlp_bias),
            },
        },
    )


def weights_nemotron(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    _standard_layers(
        cfg, m, qkv_bias=bias, o_bias=bias, norm_bias=True, mlp_bias=bool(cfg.mlp_bias),
        mlp_names={"up": "up_proj", "down": "down_proj"},
    )  # fmt: skip
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


_register("persimmon", "PersimmonForCausalLM", config_persimmon, weights_persimmon)
_register("nemotron", "NemotronForCausalLM", config_nemotron, weights_nemotron)


# --------------------------------------------------------------------------- llama relatives
# Types transformers keeps apart that are the Llama layout with a named difference or none
# (another name for ``LlamaForCausalLM``, per-layer windows or NoPE layers, biases, interleaved
# or partial rotary, post-norms): one config function and the shared weight layout each.


def _layer_attn(cfg: Any, t: str, global_nope: bool = False) -> list[dict[str, Any]]:
    """Each layer's own ``Attn`` arguments: a window on ``sliding_attention`` layers (from
    ``layer_types``) and ``pos=none`` on the NoPE layers (``no_rope_layers``: 0 = no rotary;
    with ``global_nope``, the full-attention layers of a model that has sliding ones)."""
    kinds = _windows(cfg, t)
    nope = list(getattr(cfg, "no_rope_layers", None) or [1] * len(kinds))
    if global_nope and "local" in kinds:
        nope = [int(kind == "local") for kind in kinds]
    if len(nope) != len(kinds):
        raise unsupported(t, f"no_rope_layers {nope} (expected one entry per layer)")
    per_layer = []
    for kind, rope in zip(kinds, nope, strict=True):
        args: dict[str, Any] = {}
        if kind == "local":
            args["window"] = int(cfg.sliding_window)
        if not rope:
            args["pos"] = "none"
        per_layer.append(args)
    return per_layer


def _blocks_per_layer(block: str, per_layer: list[dict[str, Any]]) -> tuple[dict, str]:
    """``(blocks, layers)`` of layers that differ only in their ``Attn`` arguments: one block
    per distinct set of arguments (``block``, ``local``, ``nope``, ``local_nope``)."""
    if all(not args for args in per_layer):
        return {"block": block}, f"block*{len(per_layer)}"
    blocks: dict[str, str] = {}
    names = []
    for args in per_layer:
        name = (
            "_".join(["local"] * ("window" in args) + ["nope"] * (args.get("pos") == "none"))
            or "global"
        )
        inline = ", ".join(f"{k}={_value(v)}" for k, v in args.items())
        blocks[name] = block.replace("Attn", f"Attn({inline})", 1) if inline else block
        names.append(name)
    return blocks, compress_layers(names)


def _rope_params(cfg: Any) -> Any:
    """The ``rope_parameters`` of the full-attention layers where the config keeps one per
    layer type (OLMo 3), else None (the config's own)."""
    params = getattr(cfg, "rope_parameters", None) or {}
    if "full_attention" in params and isinstance(params["full_attention"], dict):
        other = params.get("sliding_attention", params["full_attention"])
        if other != params["full_attention"]:
            raise unsupported(cfg.model_type, "a rotary of its own on the sliding-window layers")
        return params["full_attention"]
    return None


def _llama_relative(
    cfg: Any,
    t: str,
    *,
    block: str = PRE_NORM,
    attn: dict | None = None,
    mlp: dict | None = None,
    partial: bool = False,
    defaults: dict | None = None,
    global_nope: bool = False,
    tied_by_default: bool = False,
) -> dict:
    """The config of a Llama relative: per-layer windows and NoPE layers, ``attn``, ``mlp``
    and ``defaults`` over the Llama defaults."""
    blocks, layers = _blocks_per_layer(block, _layer_attn(cfg, t, global_nope))
    attention = {**_attn(cfg, t, partial=partial, params=_rope_params(cfg)), **(attn or {})}
    return model_config(
        cfg,
        layers=layers,
        blocks=blocks,
        defaults={
            "Norm": (defaults or {}).get("Norm") or _rms(cfg),
            "Attn": attention,
            "MLP": mlp or _gated_mlp(cfg, t, bias=bool(getattr(cfg, "mlp_bias", False))),
            **(defaults or {}),
        },
        tied_by_default=tied_by_default,
    )


def _llama_relative_weights(cfg: Any, m: WeightMapper) -> None:
    bias = bool(getattr(cfg, "attention_bias", False))
    _standard_layers(
        cfg, m, qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(cfg, "mlp_bias", False))
    )
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


def config_llama_alias(cfg: Any) -> dict:
    """Llama under another ``model_type`` (InternLM3, IQuestCoder; Ministral and CWM with
    sliding-window layers from ``layer_types``; SmolLM3 with NoPE layers)."""
    t = cfg.model_type
    return _llama_relative(cfg, t, attn={"bias": bool(getattr(cfg, "attention_bias", False))})


for _type, _class in (
    ("internlm3", "LlamaForCausalLM"),
    ("iquestcoder", "LlamaForCausalLM"),
    ("ministral", "MinistralForCausalLM"),
    ("cwm", "CwmForCausalLM"),
    ("smollm3", "SmolLM3ForCausalLM"),
):
    _register(_type, _class, config_llama_alias, _llama_relative_weights)


def config_helium(cfg: Any) -> dict:
    """Helium: Llama with interleaved rotary pairs; ``attention_bias`` biases q, k and v only."""
    attn = {"rope_interleaved": True, "qkv_bias": bool(cfg.attention_bias)}
    return _llama_relative(cfg, "helium", attn=attn)


def weights_helium(cfg: Any, m: WeightMapper) -> None:
    _standard_layers(
        cfg, m, qkv_bias=bool(cfg.attention_bias), o_bias=False, mlp_bias=bool(cfg.mlp_bias)
    )
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


_register("helium", "HeliumForCausalLM", config_helium, weights_helium)


def config_exaone(cfg: Any) -> dict:
    """EXAONE: Llama (transformers builds a ``LlamaForCausalLM``); its checkpoints keep their
    own weight names (``transformer.h.{i}.attn.attention.*``, ``mlp.c_fc_0``...)."""
    return config_llama_alias(cfg)


def weights_exaone(cfg: Any, m: WeightMapper) -> None:
    if not m.has("transformer.wte.weight"):  # a model in memory: Llama's own names
        _llama_relative_weights(cfg, m)
        return
    m.put("embed.embed.tok.weight", "transformer.wte.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"transformer.h.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.ln_1", bias=False)
        for n, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
            m.linear(f"{q}.attn.{n}", f"{p}.attn.attention.{theirs}", bias=False)
        m.norm(f"{q}.norm_1", f"{p}.ln_2", bias=False)
        for n, theirs in (("gate", "c_fc_0"), ("up", "c_fc_1"), ("down", "c_proj")):
            m.linear(f"{q}.mlp.{n}", f"{p}.mlp.{theirs}", bias=False)
    m.norm("head.norm", "transformer.ln_f", bias=False)
    m.head(cfg, "transformer.wte.weight", _tied(cfg, False))


register_architecture(
    Architecture(
        "exaone",
        "LlamaForCausalLM",
        "model",
        config=config_exaone,
        weights=weights_exaone,
        outside=("lm_head", "transformer"),
    )
)


def config_seed_oss(cfg: Any) -> dict:
    """Seed-OSS: Llama with biases on q, k, v (``attention_bias``) and on o
    (``attention_out_bias``) set apart."""
    t = "seed_oss"
    qkv, out = bool(cfg.attention_bias), bool(cfg.attention_out_bias)
    if out and not qkv:
        raise unsupported(t, "attention_out_bias without attention_bias")
    return _llama_relative(cfg, t, attn={"bias": out, "qkv_bias": qkv} if qkv else {})


def weights_seed_oss(cfg: Any, m: WeightMapper) -> None:
    _standard_layers(
        cfg,
        m,
        qkv_bias=bool(cfg.attention_bias),
        o_bias=bool(cfg.attention_out_bias),
        mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
    )
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


_register("seed_oss", "SeedOssForCausalLM", config_seed_oss, weights_seed_oss)


def config_arcee(cfg: Any) -> dict:
    """Arcee (AFM): Llama with an ungated MLP (``up``, ``down``; squared ReLU)."""
    t = "arcee"
    mlp = {**_gated_mlp(cfg, t, bias=bool(getattr(cfg, "mlp_bias", False))), "gated": False}
    return _llama_relative(cfg, t, attn={"bias": bool(cfg.attention_bias)}, mlp=mlp)


def weights_arcee(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    _standard_layers(
        cfg, m, qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
        mlp_names={"up": "up_proj", "down": "down_proj"},
    )  # fmt: skip
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


_register("arcee", "ArceeForCausalLM", config_arcee, weights_arcee)


def config_ernie4_5(cfg: Any) -> dict:
    """ERNIE 4.5: Llama with interleaved rotary pairs and ``use_bias`` on every projection."""
    t = "ernie4_5"
    bias = bool(cfg.use_bias)
    return _llama_relative(
        cfg, t, attn={"rope_interleaved": True, "bias": bias}, mlp=_gated_mlp(cfg, t, bias=bias)
    )


def weights_ernie4_5(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.use_bias)
    _standard_layers(cfg, m, qkv_bias=bias, o_bias=bias, mlp_bias=bias)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, True))


_register("ernie4_5", "Ernie4_5ForCausalLM", config_ernie4_5, weights_ernie4_5)


def config_hyperclovax(cfg: Any) -> dict:
    """HyperCLOVA X: Granite's multipliers (embeddings, residual updates, attention scores;
    the logits *times* ``logits_scaling``) and, with ``use_post_norm``, an RMSNorm after
    attention and after the MLP (Gemma 2's sandwich)."""
    t = "hyperclovax"
    post = bool(cfg.use_post_norm)
    scale = "->Scale" if cfg.residual_multiplier != 1.0 else ""
    attn_out, mlp_out = ("->Attn->Norm", "->MLP->Norm") if post else ("->Attn", "->MLP")
    block = f"Norm{attn_out}{scale}->+->Norm{mlp_out}{scale}->+"
    defaults: dict[str, dict] = {}
    if scale:
        defaults["Scale"] = {"by": float(cfg.residual_multiplier)}
    if cfg.embedding_multiplier != 1.0:
        defaults["Embed"] = {"scale": float(cfg.embedding_multiplier)}
    if cfg.logits_scaling != 1.0:
        defaults["Head"] = {"scale": float(cfg.logits_scaling)}
    attn = {"scale": float(cfg.attention_multiplier), "bias": bool(cfg.attention_bias)}
    return _llama_relative(cfg, t, block=block, attn=attn, defaults=defaults)


def weights_hyperclovax(cfg: Any, m: WeightMapper) -> None:
    bias, mlp_bias = bool(cfg.attention_bias), bool(getattr(cfg, "mlp_bias", False))
    post = bool(cfg.use_post_norm)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        names = iter(f"{q}.norm" + ("" if n == 0 else f"_{n}") for n in range(4))
        m.norm(next(names), f"{p}.input_layernorm", bias=False)
        _attn_weights(m, p, q, bias, bias)
        if post:
            m.norm(next(names), f"{p}.post_norm1", bias=False)
        m.norm(next(names), f"{p}.post_attention_layernorm", bias=False)
        _mlp_weights(m, p, q, mlp_bias)
        if post:
            m.norm(next(names), f"{p}.post_norm2", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


_register("hyperclovax", "HyperCLOVAXForCausalLM", config_hyperclovax, weights_hyperclovax)


def config_olmo3(cfg: Any) -> dict:
    """OLMo 3: OLMo 2 (norms after attention and MLP, an RMSNorm of the whole q and k
    projections) with sliding-window layers from ``layer_types``."""
    t = "olmo3"
    attn = {
        "bias": bool(cfg.attention_bias),
        "qk_norm": True,
        "qk_norm_over": "all",
        "qk_norm_eps": cfg.rms_norm_eps,
    }
    return _llama_relative(cfg, t, block="Attn->Norm->+->MLP->Norm->+", attn=attn)


_register("olmo3", "Olmo3ForCausalLM", config_olmo3, weights_olmo2)


def config_glm(cfg: Any) -> dict:
    """GLM (and GLM-4 with its sandwich norms: ``post_self_attn_layernorm``,
    ``post_mlp_layernorm``): Llama with a partial, interleaved rotary, q/k/v biases
    (``attention_bias``, none on o) and a fused ``gate_up_proj``."""
    t = cfg.model_type
    block = "Norm->Attn->Norm->+->Norm->MLP->Norm->+" if t == "glm4" else PRE_NORM
    attn = {"rope_interleaved": True, "qkv_bias": bool(cfg.attention_bias)}
    return _llama_relative(cfg, t, block=block, attn=attn, partial=True)


def weights_glm(cfg: Any, m: WeightMapper) -> None:
    inter, sandwich = cfg.intermediate_size, cfg.model_type == "glm4"
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        names = iter(f"{q}.norm" + ("" if n == 0 else f"_{n}") for n in range(4))
        m.norm(next(names), f"{p}.input_layernorm", bias=False)
        _attn_weights(m, p, q, bias, False)
        if sandwich:
            m.norm(next(names), f"{p}.post_self_attn_layernorm", bias=False)
        m.norm(next(names), f"{p}.post_attention_layernorm", bias=False)
        m.split(  # rows [gate | up]
            [f"{q}.mlp.gate.weight", f"{q}.mlp.up.weight"],
            f"{p}.mlp.gate_up_proj.weight",
            lambda w: list(w.split([inter, inter])),
        )
        m.linear(f"{q}.mlp.down", f"{p}.mlp.down_proj", bias=False)
        if sandwich:
            m.norm(next(names), f"{p}.post_mlp_layernorm", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


_register("glm", "GlmForCausalLM", config_glm, weights_glm)
_register("glm4", "Glm4ForCausalLM", config_glm, weights_glm)


def config_exaone4(cfg: Any) -> dict:
    """EXAONE 4: OLMo 2's norms after attention and MLP, an RMSNorm of each head's queries
    and keys, sliding-window layers from ``layer_types`` and, where there are some, no rotary
    on the full-attention layers (global NoPE)."""
    attn = {"qk_norm": True, "qk_norm_eps": cfg.rms_norm_eps}
    block = "Attn->Norm->+->MLP->Norm->+"
    return _llama_relative(cfg, "exaone4", block=block, attn=attn, global_nope=True)


def weights_exaone4(cfg: Any, m: WeightMapper) -> None:
    post_norms = ("post_attention_layernorm", "post_feedforward_layernorm")
    _standard_layers(cfg, m, qkv_bias=False, o_bias=False, qk_norm=True, norms=post_norms)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


_register("exaone4", "Exaone4ForCausalLM", config_exaone4, weights_exaone4)


def config_cohere2(cfg: Any) -> dict:
    """Cohere 2 (Command R7B): Cohere's parallel block on one bias-free LayerNorm and
    interleaved rotary, with sliding-window layers from ``layer_types`` and no rotary on the
    full-attention layers."""
    t = "cohere2"
    defaults: dict[str, dict] = {
        "Norm": {"kind": "layer", "eps": cfg.layer_norm_eps, "bias": False},
    }
    if cfg.logit_scale is not None and cfg.logit_scale != 1.0:
        defaults["Head"] = {"scale": float(cfg.logit_scale)}
    attn = {"rope_interleaved": True, "bias": bool(cfg.attention_bias)}
    return _llama_relative(
        cfg,
        t,
        block=PARALLEL_SHARED,
        attn=attn,
        defaults=defaults,
        global_nope=True,
        tied_by_default=True,
    )


def weights_cohere2(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.ln", f"{p}.input_layernorm", bias=False)
        _attn_weights(m, p, q, bias, bias)
        _mlp_weights(m, p, q)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, True))


_register("cohere2", "Cohere2ForCausalLM", config_cohere2, weights_cohere2)


def config_jais2(cfg: Any) -> dict:
    """Jais 2: Llama with LayerNorms (with bias), biased projections and an ungated MLP
    (``up``, ``down``; squared ReLU)."""
    t = "jais2"
    mlp_bias = bool(getattr(cfg, "mlp_bias", False))
    return _llama_relative(
        cfg,
        t,
        attn={"bias": bool(cfg.attention_bias)},
        mlp={**_gated_mlp(cfg, t, bias=mlp_bias), "gated": False},
        defaults={"Norm": {"kind": "layer", "eps": cfg.layer_norm_eps, "bias": True}},
    )


def weights_jais2(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    _standard_layers(
        cfg, m, qkv_bias=bias, o_bias=bias, norm_bias=True,
        mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
        mlp_names={"up": "up_proj", "down": "down_proj"},
    )  # fmt: skip
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


_register("jais2", "Jais2ForCausalLM", config_jais2, weights_jais2)


def config_apertus(cfg: Any) -> dict:
    """Apertus: Llama with an RMSNorm of each head's queries and keys and an ungated MLP
    whose activation is xIELU (``MLP(act=xielu)``: two learned scalars per layer)."""
    t = cfg.model_type
    if getattr(cfg, "output_vocab_size", None) not in (None, cfg.vocab_size):
        raise unsupported(t, f"output_vocab_size={cfg.output_vocab_size} other than vocab_size")
    act = cfg.hidden_act if cfg.hidden_act == "xielu" else activation(cfg.hidden_act, t)
    mlp = {"hidden": cfg.intermediate_size, "act": act, "gated": False, "bias": False}
    attn = {"qk_norm": True, "qk_norm_eps": cfg.rms_norm_eps, "bias": bool(cfg.attention_bias)}
    return _llama_relative(cfg, t, attn=attn, mlp=mlp)


def weights_apertus(cfg: Any, m: WeightMapper) -> None:
    bias = bool(cfg.attention_bias)
    _standard_layers(
        cfg, m, qkv_bias=bias, o_bias=bias, qk_norm=True,
        mlp_names={"up": "up_proj", "down": "down_proj"},
        norms=("attention_layernorm", "feedforward_layernorm"),
    )  # fmt: skip
    if cfg.hidden_act == "xielu":  # its scalars (parameters) and constants (buffers)
        for i in range(cfg.num_hidden_layers):
            for n in ("alpha_p", "alpha_n", "beta", "eps"):
                m.put(f"layers.{i}.mlp.act.{n}", f"model.layers.{i}.mlp.act_fn.{n}")
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False))


for _type, _class in (
    ("apertus", "ApertusForCausalLM"),
    ("apertus1p5_text", "Apertus1p5TextForCausalLM"),
):
    register_architecture(
        Architecture(
            _type,
            _class,
            "model",
            config=config_apertus,
            weights=weights_apertus,
            buffers=("act_fn.beta", "act_fn.eps"),
        )
    )


# --------------------------------------------------------------------------- modernbert-decoder


def config_modernbert_decoder(cfg: Any) -> dict:
    """ModernBERT-Decoder: LayerNorms (``norm_bias``) before attention and the MLP, none before
    the first layer's attention (the embeddings have their own), multi-head attention with
    each layer type's rotary base and windowed layers (``local_attention // 2``), a gated MLP
    fused as ``Wi`` (rows ``[activated | multiplier]``), and BERT's prediction head before the
    tied output projection (``Linear->Act->Norm``, then ``Head(bias=decoder_bias)``)."""
    t = "modernbert-decoder"
    if "sliding_attention" in cfg.layer_types and not cfg.local_attention:
        raise unsupported(t, "sliding_attention layers without a local_attention window")
    full, full_fraction = rope_args(cfg, t, cfg.rope_parameters["full_attention"])
    local, local_fraction = rope_args(cfg, t, cfg.rope_parameters["sliding_attention"])
    if full_fraction != 1.0 or local_fraction != 1.0 or set(local) != {"rope_theta"}:
        raise unsupported(t, "a partial or scaled rotary on the sliding-window layers")
    kinds = _windows(cfg, t)
    names = [("first_" if i == 0 else "") + kind for i, kind in enumerate(kinds)]
    blocks: dict[str, str] = {}
    for name, kind in zip(names, kinds, strict=True):
        layer = PRE_NORM if not name.startswith("first_") else PRE_NORM.removeprefix("Norm->")
        if kind == "local":
            window = (
                f"Attn(window={int(cfg.sliding_window)}, rope_theta={_value(local['rope_theta'])})"
            )
            layer = layer.replace("Attn", window, 1)
        blocks[name] = layer
    norm = {"kind": "layer", "eps": cfg.norm_eps, "bias": bool(cfg.norm_bias)}
    config = model_config(
        cfg,
        layers=compress_layers(names),
        blocks=blocks,
        defaults={
            "Norm": norm,
            "Attn": {
                "heads": cfg.num_attention_heads,
                "pos": "rope",
                **full,
                "bias": bool(cfg.attention_bias),
            },
            "MLP": {
                "hidden": cfg.intermediate_size,
                "act": activation(cfg.hidden_activation, t),
                "gated": True,
                "bias": bool(cfg.mlp_bias),
            },
            "Linear": {"bias": bool(cfg.classifier_bias)},
            "Act": {"fn": activation(cfg.classifier_activation, t)},
            "Head": {"bias": bool(cfg.decoder_bias)},
        },
        embed="Embed->Norm",
        tied_by_default=True,
    )
    config["model"]["head"] = config["model"]["head"].replace(
        "Norm->", "Norm->Linear->Act->Norm->", 1
    )
    return config


def weights_modernbert_decoder(cfg: Any, m: WeightMapper) -> None:
    inter, bias, norm_bias = cfg.intermediate_size, bool(cfg.attention_bias), bool(cfg.norm_bias)
    mlp_bias = bool(cfg.mlp_bias)
    m.put("embed.embed.tok.weight", "model.embeddings.tok_embeddings.weight")
    m.norm("embed.norm", "model.embeddings.norm", bias=norm_bias)
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        # the first layer has no norm before attention: its MLP norm is the block's first
        if i:
            m.norm(f"{q}.norm", f"{p}.attn_norm", bias=norm_bias)
        m.norm(f"{q}.norm_1" if i else f"{q}.norm", f"{p}.mlp_norm", bias=norm_bias)
        for n in "qkv":
            m.linear(f"{q}.attn.{n}", f"{p}.attn.{n}_proj", bias)
        m.linear(f"{q}.attn.o", f"{p}.attn.Wo", bias)
        for kind in ["weight", "bias"] if mlp_bias else ["weight"]:
            # rows [activated (blockdsl's gate) | multiplied (up)]
            m.split(
                [f"{q}.mlp.gate.{kind}", f"{q}.mlp.up.{kind}"],
                f"{p}.mlp.Wi.{kind}",
                lambda w: list(w.split([inter, inter])),
            )
        m.linear(f"{q}.mlp.down", f"{p}.mlp.Wo", mlp_bias)
    m.norm("head.norm", "model.final_norm", bias=norm_bias)
    m.linear("head.linear", "lm_head.dense", bool(cfg.classifier_bias))
    m.norm("head.norm_1", "lm_head.norm", bias=norm_bias)
    embed = "model.embeddings.tok_embeddings.weight"
    m.head(cfg, embed, _tied(cfg, True), bias=bool(cfg.decoder_bias), name="decoder")


register_architecture(
    Architecture(
        "modernbert-decoder",
        "ModernBertDecoderForCausalLM",
        "model",
        config=config_modernbert_decoder,
        weights=weights_modernbert_decoder,
        outside=("lm_head", "decoder"),
    )
)
