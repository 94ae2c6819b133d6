"""Hybrids of attention with short convolutions or linear attention for the Hugging Face
import: LFM2 (gated short-conv layers and GQA layers) and Qwen3-Next (Gated DeltaNet layers and
gated full-attention layers, with a mixture of experts; Qwen3.5 and Qwen3.5-MoE, the same
layers with unfused DeltaNet projections) and OLMo Hybrid (Gated DeltaNet layers and OLMo 3
attention layers): one ``Architecture`` record each. The
hybrids with state-space layers (Jamba, Bamba, Falcon-H1) are in ``blockdsl.hf.ssm``.

``layer_types`` becomes a ``layers`` chain over named blocks (``(linear_moe*3->full_moe)*2``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

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
    rope_args,
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


#: Qwen3.5's text models (Qwen3-Next's layers with the Gated DeltaNet's projections unfused):
#: ``model_type`` -> whether every layer has the MoE (Qwen3.5-MoE) or none (Qwen3.5).
_QWEN3_5_SPARSE = {"qwen3_5_text": False, "qwen3_5_moe_text": True}


def _qwen3_next_sparse(cfg: Any, layer: int) -> bool:
    """Whether Qwen3-Next's layer ``layer`` has the MoE (as ``Qwen3NextDecoderLayer``); Qwen3.5
    has the MLP in every layer, Qwen3.5-MoE the MoE in every layer."""
    if cfg.model_type in _QWEN3_5_SPARSE:
        return _QWEN3_5_SPARSE[cfg.model_type]
    return (
        layer not in (cfg.mlp_only_layers or [])
        and cfg.num_experts > 0
        and (layer + 1) % cfg.decoder_sparse_step == 0
    )


def _deltanet_args(cfg: Any, eps: float) -> dict[str, Any]:
    """``GatedDeltaNet`` arguments from the ``linear_*`` fields of a Qwen3-Next-style config
    (Qwen3-Next, Qwen3.5, OLMo Hybrid, LaraMini); ``eps``: its output norm's."""
    return {
        "heads": cfg.linear_num_key_heads,
        "v_heads": cfg.linear_num_value_heads,
        "head_dim": cfg.linear_key_head_dim,
        "v_head_dim": cfg.linear_value_head_dim,
        "kernel": cfg.linear_conv_kernel_dim,
        "eps": eps,
    }


def _config_qwen3_next(cfg: Any) -> dict:
    """Qwen3-Next: Gated DeltaNet layers and gated full-attention layers (``layer_types``),
    each followed by the MoE with a gated shared expert (or a dense MLP on ``mlp_only_layers``
    and between ``decoder_sparse_step``s); RMSNorms with a unit offset. Qwen3.5 (text) has
    the same layers with a dense MLP everywhere, Qwen3.5-MoE with the MoE everywhere (its
    top-k weights always renormalised); their multimodal rotary (``mrope_section``) is the
    plain one on text, where the three position streams are equal."""
    t = cfg.model_type
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
        "GatedDeltaNet": _deltanet_args(cfg, eps=cfg.rms_norm_eps),
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
    }
    if any(name.endswith("_mlp") for name in names):
        defaults["MLP"] = {"hidden": cfg.intermediate_size, "act": act, "gated": True}
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
            # Qwen3.5-MoE's router renormalises its top-k weights and has no switch for it
            "norm_topk": t == "qwen3_5_moe_text" or bool(cfg.norm_topk_prob),
            "aux_loss": float(cfg.router_aux_loss_coef),
        }
    return model_config(cfg, layers=compress_layers(names), blocks=blocks, defaults=defaults)


def _unit_offset(w: Tensor) -> Tensor:
    """HF's ``(1 + weight)`` RMSNorm weight as blockdsl's plain RMSNorm weight."""
    return 1.0 + w


def _grouped_ba(b: Tensor, a: Tensor, heads: int) -> Tensor:
    """Separate ``b`` and ``a`` projections (one row per value head each) as blockdsl's
    grouped ``in_proj_ba`` rows: per key head ``[b (r), a (r)]``, ``r = v_heads // heads``."""
    per_key_head = [t.reshape(heads, -1, *t.shape[1:]) for t in (b, a)]
    return torch.cat(per_key_head, dim=1).reshape(-1, *b.shape[1:])


def _weights_qwen3_5_delta_net(cfg: Any, m: WeightMapper, src: str, dst: str) -> None:
    """Qwen3.5's Gated DeltaNet, whose projections are not grouped per key head:
    ``in_proj_qkv`` (``[q | k | v]`` rows), ``in_proj_z`` (the gate), ``in_proj_b`` and
    ``in_proj_a`` (one row per value head each), which become blockdsl's grouped
    ``in_proj_ba``."""
    Hk, Hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    key_dim, value_dim = Hk * cfg.linear_key_head_dim, Hv * cfg.linear_value_head_dim
    m.split(
        [f"{dst}.{n}.weight" for n in ("q_proj", "k_proj", "v_proj")],
        f"{src}.in_proj_qkv.weight",
        partial(split_qkv_conv, key_dim=key_dim, value_dim=value_dim),
    )
    m.put(f"{dst}.slots.gate.linear.weight", f"{src}.in_proj_z.weight")
    m.put(
        f"{dst}.in_proj_ba.weight",
        f"{src}.in_proj_b.weight",
        f"{src}.in_proj_a.weight",
        fn=partial(_grouped_ba, heads=Hk),
    )
    m.split(
        [f"{dst}.slots.{n}.conv.weight" for n in "qkv"],
        f"{src}.conv1d.weight",
        partial(split_qkv_conv, key_dim=key_dim, value_dim=value_dim),
    )
    m.put(f"{dst}.slots.o.norm.weight", f"{src}.norm.weight")
    m.put(f"{dst}.out_proj.weight", f"{src}.out_proj.weight")
    for n in ("dt_bias", "A_log"):
        m.put(f"{dst}.{n}", f"{src}.{n}")


def _weights_qwen3_next(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    H = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    bias = bool(getattr(cfg, "attention_bias", False))
    Hk, Hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    dk, dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim

    def query_and_gate(w: Tensor) -> list[Tensor]:  # per head: [q (hd) | gate (hd)] rows
        halves = w.reshape(H, 2, head_dim, *w.shape[1:]).unbind(1)
        return [t.reshape(H * head_dim, *w.shape[1:]) for t in halves]

    for i, kind in enumerate(cfg.layer_types):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        if kind == "linear_attention" and cfg.model_type in _QWEN3_5_SPARSE:
            _weights_qwen3_5_delta_net(cfg, m, f"{p}.linear_attn", f"{q}.gated_delta_net")
        elif kind == "linear_attention":  # HF's fused q/k/v/z and conv are the slots' weights
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
            inter = cfg.moe_intermediate_size
            expert_weights(m, f"{src}.experts", e, experts=cfg.num_experts, inter=inter)
            if cfg.shared_expert_intermediate_size:
                gated_shared_expert_weights(m, src, e)
        else:
            llama_mlp_weights(cfg, m, p, q)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


for _model_type, _hf_class in (
    ("qwen3_next", "Qwen3NextForCausalLM"),
    ("qwen3_5_text", "Qwen3_5ForCausalLM"),
    ("qwen3_5_moe_text", "Qwen3_5MoeForCausalLM"),
):
    register_architecture(
        Architecture(
            _model_type,
            _hf_class,
            "model",
            config=_config_qwen3_next,
            weights=_weights_qwen3_next,
        )
    )


# --------------------------------------------------------------------------- olmo hybrid


def _config_olmo_hybrid(cfg: Any) -> dict:
    """OLMo Hybrid: Gated DeltaNet layers (Llama's pre-norm layout; ``beta`` doubled with
    ``linear_allow_neg_eigval``) and OLMo 3 attention layers (norms after attention and MLP,
    an RMSNorm of the whole q and k projections), from ``layer_types``; SwiGLU MLPs. Without
    a ``rope_theta`` the attention has no positions (transformers' NoPE mode)."""
    t = "olmo_hybrid"
    act = activation(cfg.hidden_act, t)
    if act != "silu":  # the DeltaNet conv and gate are hard-wired SiLU in blockdsl
        raise unsupported(t, f"hidden_act '{cfg.hidden_act}' (GatedDeltaNet uses SiLU)")
    names = layer_kinds(cfg, t, {"linear_attention": "linear", "full_attention": "full"})
    params = getattr(cfg, "rope_parameters", None) or {}
    position: dict[str, Any] = {"pos": "none"}
    if params.get("rope_theta") is not None:
        rope, fraction = rope_args(cfg, t)
        if fraction != 1.0:
            raise unsupported(t, "partial_rotary_factor")
        position = {"pos": "rope", **rope}
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
        "GatedDeltaNet": {
            # OlmoHybridGatedDeltaNet's output norm: a fixed eps, not rms_norm_eps
            **_deltanet_args(cfg, eps=1e-5),
            "neg_eigval": bool(cfg.linear_allow_neg_eigval),
        },
        "Attn": {
            "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.hidden_size // cfg.num_attention_heads,
            **position,
            "bias": bool(cfg.attention_bias),
            "qk_norm": True,
            "qk_norm_over": "all",
            "qk_norm_eps": cfg.rms_norm_eps,
        },
        "MLP": {"hidden": cfg.intermediate_size, "act": act, "gated": True},
    }
    blocks = {
        "linear": "Norm->GatedDeltaNet->+->Norm->MLP->+",
        "full": "Attn->Norm->+->MLP->Norm->+",
    }
    return model_config(
        cfg,
        layers=compress_layers(names),
        blocks={name: blocks[name] for name in dict.fromkeys(names)},
        defaults=defaults,
    )


def _either(m: WeightMapper, in_memory: str, on_disk: str) -> str:
    """The name a tensor has in this checkpoint: transformers renames OLMo Hybrid's saved
    names (OLMo-core's) when it loads them, and back when it saves."""
    return in_memory if m.has(f"{in_memory}.weight") else on_disk


def _weights_olmo_hybrid(cfg: Any, m: WeightMapper) -> None:
    Hk, Hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    key_dim, value_dim = Hk * cfg.linear_key_head_dim, Hv * cfg.linear_value_head_dim
    bias = bool(cfg.attention_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i, kind in enumerate(cfg.layer_types):
        p, q = f"model.layers.{i}", f"layers.{i}"
        post_attention = _either(m, f"{p}.post_attention_layernorm", f"{p}.feedforward_layer_norm")
        if kind == "linear_attention":
            pre = _either(m, f"{p}.input_layernorm", f"{p}.attention_layer_norm")
            m.norm(f"{q}.norm", pre, bias=False)
            g, src = f"{q}.gated_delta_net", f"{p}.linear_attn"
            for n in ("q_proj", "k_proj", "v_proj"):
                m.put(f"{g}.{n}.weight", f"{src}.{n}.weight")
            m.put(
                f"{g}.in_proj_ba.weight",
                f"{src}.b_proj.weight",
                f"{src}.a_proj.weight",
                fn=partial(_grouped_ba, heads=Hk),
            )
            m.put(f"{g}.slots.gate.linear.weight", f"{src}.g_proj.weight")
            convs = [f"{g}.slots.{n}.conv.weight" for n in "qkv"]
            split = partial(split_qkv_conv, key_dim=key_dim, value_dim=value_dim)
            if m.has(f"{src}.conv1d.weight"):  # in memory: one conv over [q | k | v]
                m.split(convs, f"{src}.conv1d.weight", split)
            else:  # on disk: three whose concatenation is that conv (transformers' save cuts
                # it in equal thirds, not at the q/k/v boundaries)
                parts = [m.get(f"{src}.{n}_conv1d.weight") for n in "qkv"]
                if all(part is not None for part in parts):
                    m.out.update(zip(convs, split(torch.cat(parts))))
            m.put(f"{g}.slots.o.norm.weight", f"{src}.o_norm.weight")
            m.put(f"{g}.out_proj.weight", f"{src}.o_proj.weight")
            for n in ("dt_bias", "A_log"):
                m.put(f"{g}.{n}", f"{src}.{n}")
            m.norm(f"{q}.norm_1", post_attention, bias=False)
            llama_mlp_weights(cfg, m, p, q)
        else:
            for n in "qkvo":
                m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", bias)
            for n in "qk":
                m.norm(f"{q}.attn.slots.{n}.norm", f"{p}.self_attn.{n}_norm", bias=False)
            m.norm(f"{q}.norm", post_attention, bias=False)
            llama_mlp_weights(cfg, m, p, q)
            m.norm(f"{q}.norm_1", f"{p}.post_feedforward_layernorm", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture(
        "olmo_hybrid",
        "OlmoHybridForCausalLM",
        "model",
        config=_config_olmo_hybrid,
        weights=_weights_olmo_hybrid,
    )
)


# --------------------------------------------------------------------------- lara_mini


def _config_lara_mini(cfg: Any) -> dict:
    """LaraMini: Gated DeltaNet layers (Qwen3.5's: separate ``q/k/v``, ``z``, ``b`` and ``a``
    projections) and Qwen3 attention layers (per-head q/k RMSNorms) from ``layer_types``: the
    sliding-window ones rotate, the full ones have no positions; experts on every layer, a
    softmax top-k router and an always-on shared expert added in full (no gate); plain
    RMSNorms (no unit offset)."""
    t = "lara_mini"
    act = activation(cfg.hidden_act, t)
    if act != "silu":  # the DeltaNet conv and gate are hard-wired SiLU in blockdsl
        raise unsupported(t, f"hidden_act '{cfg.hidden_act}' (GatedDeltaNet uses SiLU)")
    theta, fraction = default_rope(cfg, t)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kinds = {"linear_attention": "linear", "sliding_attention": "local", "full_attention": "global"}
    names = layer_kinds(cfg, t, kinds)
    mixers = {
        "linear": "GatedDeltaNet",
        "local": f"Attn(window={int(cfg.sliding_window)})",
        "global": "Attn(pos=none)",
    }
    blocks = {name: f"Norm->{mixers[name]}->+->Norm->MoE->+" for name in dict.fromkeys(names)}
    shared = shared_expert_args(cfg.shared_expert_intermediate_size, cfg.moe_intermediate_size)
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
        "GatedDeltaNet": _deltanet_args(cfg, eps=cfg.rms_norm_eps),
        "Attn": {
            "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": head_dim,
            "pos": "rope",
            "rope_theta": theta,
            "rope_fraction": rotary_fraction(int(head_dim * fraction), head_dim),
            "qk_norm": True,
            "qk_norm_eps": cfg.rms_norm_eps,
            "bias": bool(getattr(cfg, "attention_bias", False)),
        },
        "MoE": {
            "experts": cfg.num_experts,
            "k": cfg.num_experts_per_tok,
            "hidden": cfg.moe_intermediate_size,
            "act": act,
            "gated": True,
            **shared,
            "norm_topk": bool(cfg.norm_topk_prob),
            "aux_loss": float(cfg.router_aux_loss_coef),
        },
    }
    return model_config(
        cfg, layers=compress_layers(names), blocks=blocks, defaults=defaults, tied_by_default=True
    )


def _weights_lara_mini(cfg: Any, m: WeightMapper) -> None:
    """Its checkpoints fuse each DeltaNet's input projections into one ``in_proj`` (rows
    ``[q | k | v | z | b | a]``) and name its gated norm ``out_norm``; transformers splits and
    renames them on load (``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``, ``in_proj_a``,
    ``norm``). blockdsl keeps ``b`` and ``a`` grouped per key head (``in_proj_ba``)."""
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    bias = bool(getattr(cfg, "attention_bias", False))
    Hk, Hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    key_dim, value_dim = Hk * cfg.linear_key_head_dim, Hv * cfg.linear_value_head_dim
    r = Hv // Hk

    def grouped_ba(b: Tensor, a: Tensor) -> Tensor:  # per key head: [b (r) | a (r)] rows
        return torch.cat([b.reshape(Hk, r, -1), a.reshape(Hk, r, -1)], dim=1).reshape(2 * Hv, -1)

    for i, kind in enumerate(cfg.layer_types):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        if kind == "linear_attention":
            g, src = f"{q}.gated_delta_net", f"{p}.linear_attn"
            projections = [f"{g}.{n}.weight" for n in ("q_proj", "k_proj", "v_proj")]
            if m.has(f"{src}.in_proj.weight"):  # as saved

                def split_in_proj(w: Tensor) -> list[Tensor]:
                    *qkvz, b, a = w.split([key_dim, key_dim, value_dim, value_dim, Hv, Hv])
                    return [*qkvz, grouped_ba(b, a)]

                gate, ba = f"{g}.slots.gate.linear.weight", f"{g}.in_proj_ba.weight"
                m.split([*projections, gate, ba], f"{src}.in_proj.weight", split_in_proj)
            else:  # in memory
                m.split(
                    projections,
                    f"{src}.in_proj_qkv.weight",
                    lambda w: list(w.split([key_dim, key_dim, value_dim])),
                )
                m.put(f"{g}.slots.gate.linear.weight", f"{src}.in_proj_z.weight")
                m.put(
                    f"{g}.in_proj_ba.weight",
                    f"{src}.in_proj_b.weight",
                    f"{src}.in_proj_a.weight",
                    fn=grouped_ba,
                )
            m.split(
                [f"{g}.slots.{n}.conv.weight" for n in "qkv"],
                f"{src}.conv1d.weight",
                partial(split_qkv_conv, key_dim=key_dim, value_dim=value_dim),
            )
            norm = (
                f"{src}.out_norm.weight"
                if m.has(f"{src}.out_norm.weight")
                else f"{src}.norm.weight"
            )
            m.put(f"{g}.slots.o.norm.weight", norm)
            m.put(f"{g}.out_proj.weight", f"{src}.out_proj.weight")
            for n in ("dt_bias", "A_log"):
                m.put(f"{g}.{n}", f"{src}.{n}")
        else:
            a, src = f"{q}.attn", f"{p}.self_attn"
            for n in "qkvo":
                m.linear(f"{a}.{n}", f"{src}.{n}_proj", bias)
            for n in "qk":
                m.norm(f"{a}.slots.{n}.norm", f"{src}.{n}_norm", bias=False)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        e, src = f"{q}.moe", f"{p}.mlp"
        m.put(f"{e}.router.weight", f"{src}.gate.weight")
        inter = cfg.moe_intermediate_size
        expert_weights(m, f"{src}.experts", e, experts=cfg.num_experts, inter=inter)
        if cfg.shared_expert_intermediate_size:
            for n in ("gate", "up", "down"):
                m.linear(f"{e}.shared.{n}", f"{src}.shared_expert.{n}_proj", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", True))


register_architecture(
    Architecture(
        "lara_mini",
        "LaraMiniForCausalLM",
        "model",
        config=_config_lara_mini,
        weights=_weights_lara_mini,
    )
)
