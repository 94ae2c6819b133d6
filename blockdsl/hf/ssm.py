"""State-space and hybrid architectures for the Hugging Face import: Mamba, FalconMamba,
Mamba2, RecurrentGemma, Jamba, Bamba, Falcon-H1 and Nemotron-H (one ``Architecture`` record each).

Their layer-pattern fields (Jamba's attention/expert periods and offsets, RecurrentGemma's
``block_types``, Bamba's ``attn_layer_indices``) become ``layers`` chains over named blocks
(``(mamba->mamba_moe->...)*4``), so an imported config reads as the architecture it is. The
mixers' parameter names are transformers' own, so their weights are renamed, not reshaped.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from blockdsl.components.ssm import mamba2_norm_weight, split_mamba2_conv, split_mamba2_in_proj
from blockdsl.hf.base import (
    Architecture,
    HFImportError,
    WeightMapper,
    activation,
    compress_layers,
    deepseek_v3_routing,
    default_rope,
    expert_weights,
    mamba2_weights,
    model_config,
    register_architecture,
    rotary_fraction,
    shared_expert_args,
    unsupported,
)

#: The context of a model without attention: nothing depends on positions, so it only bounds
#: how long a sequence may be.
RECURRENT_CONTEXT = 1 << 20


def _rename(m: WeightMapper, src: str, dst: str) -> None:
    """Every checkpoint tensor under ``src.`` as the same name under ``dst.``."""
    for name in [k for k in m.source if k.startswith(src + ".")]:
        m.put(dst + name[len(src) :], name)


def _layers(kinds: list[str]) -> str:
    return compress_layers(kinds)


# --------------------------------------------------------------------------- mamba


def _mamba_args(cfg: Any, t: str) -> dict:
    if cfg.hidden_act != "silu":
        raise unsupported(t, f"hidden_act '{cfg.hidden_act}' in the mixer")
    return {
        "state": cfg.state_size,
        "inner": cfg.intermediate_size,
        "dt_rank": int(cfg.time_step_rank),
        "conv": cfg.conv_kernel,
        "bias": bool(cfg.use_bias),
        "conv_bias": bool(cfg.use_conv_bias),
        "dt_min": cfg.time_step_min,
        "dt_max": cfg.time_step_max,
    }


def config_mamba(cfg: Any) -> dict:
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": "Norm->Mamba->+"},
        defaults={
            "Norm": {"kind": "rms", "eps": cfg.layer_norm_epsilon},
            "Mamba": _mamba_args(cfg, "mamba"),
        },
        context=RECURRENT_CONTEXT,
        tied_by_default=True,
    )


def _weights_pure_ssm(cfg: Any, m: WeightMapper, label: str) -> None:
    m.put("embed.embed.tok.weight", "backbone.embeddings.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"backbone.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.norm", bias=False)
        _rename(m, f"{p}.mixer", f"{q}.{label}")
    m.norm("head.norm", "backbone.norm_f", bias=False)
    m.head(cfg, "backbone.embeddings.weight", getattr(cfg, "tie_word_embeddings", True))


def weights_mamba(cfg: Any, m: WeightMapper) -> None:
    _weights_pure_ssm(cfg, m, "mamba")


def config_falcon_mamba(cfg: Any) -> dict:
    """FalconMamba: Mamba with RMSNorms on Δ, B and C inside the mixer (Jamba's inner norms,
    ``mixer_rms_eps``). Those norms have no weight in transformers; blockdsl's ``inner_norms``
    have one, which the import sets to ones (the same function; a fine-tuning may move it)."""
    config = config_mamba(cfg)
    config["defaults"]["Mamba"].update(inner_norms=True, eps=float(cfg.mixer_rms_eps))
    return config


def weights_falcon_mamba(cfg: Any, m: WeightMapper) -> None:
    _weights_pure_ssm(cfg, m, "mamba")
    sizes = {"dt_layernorm": int(cfg.time_step_rank), "b_layernorm": cfg.state_size}
    sizes["c_layernorm"] = cfg.state_size
    for i in range(cfg.num_hidden_layers):
        for name, size in sizes.items():  # transformers' weightless norms: unit weights
            m.out[f"layers.{i}.mamba.{name}.weight"] = torch.ones(size)


# --------------------------------------------------------------------------- mamba2


def _mamba2_args(
    t: str,
    *,
    hidden: int,
    inner: int,
    heads: int,
    head_dim: int,
    groups: int,
    state: int,
    conv: int,
    chunk: int,
    bias: bool,
    conv_bias: bool,
    eps: float,
    act: str,
    limit: Any,
    norm: bool = True,
) -> dict:
    if act != "silu":
        raise unsupported(t, f"hidden_act '{act}' in the mixer")
    if heads * head_dim != inner:
        raise HFImportError(
            f"{t}: num_heads * head_dim = {heads * head_dim} differs from the inner width "
            f"{inner} (expand * hidden_size); transformers' mixer cannot run this config either"
        )
    if limit is not None and tuple(limit) != (0.0, float("inf")):
        raise unsupported(t, f"time_step_limit {tuple(limit)} (Δ clamping)")
    args = {
        "state": state,
        "inner": inner,
        "head_dim": head_dim,
        "groups": groups,
        "conv": conv,
        "chunk": chunk,
        "bias": bias,
        "conv_bias": conv_bias,
        "eps": eps,
    }
    if not norm:
        args["norm"] = False
    return args


def config_mamba2(cfg: Any) -> dict:
    t = "mamba2"
    mamba2 = _mamba2_args(
        t,
        hidden=cfg.hidden_size,
        inner=int(cfg.expand * cfg.hidden_size),
        heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        groups=cfg.n_groups,
        state=cfg.state_size,
        conv=cfg.conv_kernel,
        chunk=cfg.chunk_size,
        bias=bool(cfg.use_bias),
        conv_bias=bool(cfg.use_conv_bias),
        eps=cfg.layer_norm_epsilon,
        act=cfg.hidden_act,
        limit=cfg.time_step_limit,
    )
    mamba2["dt_min"], mamba2["dt_max"] = cfg.time_step_min, cfg.time_step_max
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": "Norm->Mamba2->+"},
        defaults={"Norm": {"kind": "rms", "eps": cfg.layer_norm_epsilon}, "Mamba2": mamba2},
        context=RECURRENT_CONTEXT,
    )


def weights_mamba2(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "backbone.embeddings.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"backbone.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.norm", bias=False)
        mamba2_weights(
            m,
            f"{p}.mixer",
            f"{q}.mamba2",
            inner=int(cfg.expand * cfg.hidden_size),
            groups=cfg.n_groups,
            state=cfg.state_size,
            bias=bool(cfg.use_bias),
            conv_bias=bool(cfg.use_conv_bias),
        )
    m.norm("head.norm", "backbone.norm_f", bias=False)
    m.head(cfg, "backbone.embeddings.weight", getattr(cfg, "tie_word_embeddings", True))


# --------------------------------------------------------------------------- recurrent gemma


#: RecurrentGemma has no position limit; its rotary table covers the published training length.
RECURRENT_GEMMA_CONTEXT = 8192

#: RecurrentGemma's block types, old spelling (``block_types``) and new (``layer_types``).
_GRIFFIN_KINDS = {
    "recurrent": "recurrent",
    "linear_attention": "recurrent",
    "attention": "attention",
    "sliding_attention": "attention",
}


def _recurrent_gemma_kinds(cfg: Any) -> list[str]:
    kinds = []
    for kind in cfg.layers_block_type:
        if kind not in _GRIFFIN_KINDS:
            raise unsupported("recurrent_gemma", f"block type '{kind}'")
        kinds.append(_GRIFFIN_KINDS[kind])
    return kinds


def config_recurrent_gemma(cfg: Any) -> dict:
    t = "recurrent_gemma"
    theta, fraction = default_rope(cfg, t)
    head_dim = cfg.head_dim
    kinds = _recurrent_gemma_kinds(cfg)
    act = activation(cfg.hidden_activation, t)
    # transformers keeps sqrt(hidden_size) as a bfloat16 buffer: the same rounded value here
    normalizer = float(torch.tensor(cfg.hidden_size**0.5, dtype=torch.bfloat16))
    config = model_config(
        cfg,
        layers=_layers(kinds),
        blocks={
            "recurrent": "Norm->RGLRU->+->Norm->MLP->+",
            "attention": "Norm->Attn->Bias->+->Norm->MLP->+",
        },
        defaults={
            "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps, "unit_offset": True},
            "RGLRU": {
                "width": cfg.lru_width,
                "heads": cfg.num_attention_heads,
                "conv": cfg.conv1d_width,
                "act": act,
            },
            "Attn": {
                "heads": cfg.num_attention_heads,
                "kv_heads": cfg.num_key_value_heads,
                "head_dim": head_dim,
                "pos": "rope",
                "rope_theta": theta,
                "rope_fraction": rotary_fraction(int(head_dim * fraction), head_dim),
                "window": cfg.attention_window_size,
                "bias": bool(cfg.attention_bias),
            },
            "MLP": {"hidden": cfg.intermediate_size // 2, "act": act, "gated": True, "bias": True},
        },
        embed=f"Embed(scale={normalizer!r})",
        # no position limit (local attention, recurrence): the rotary table's length
        context=RECURRENT_GEMMA_CONTEXT,
        tied_by_default=True,
    )
    if cfg.logits_soft_cap:
        tie = "tie=true, " if getattr(cfg, "tie_word_embeddings", True) else ""
        config["model"]["head"] = f"Norm->Head({tie}softcap={float(cfg.logits_soft_cap)!r})"
    return config


def weights_recurrent_gemma(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i, kind in enumerate(_recurrent_gemma_kinds(cfg)):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.temporal_pre_norm", bias=False)
        if kind == "recurrent":
            _rename(m, f"{p}.temporal_block", f"{q}.rglru")
        else:
            for n in "qkvo":
                m.linear(f"{q}.attn.{n}", f"{p}.temporal_block.{n}_proj", bool(cfg.attention_bias))
            m.put(f"{q}.bias.bias", f"{p}.temporal_block.o_proj.bias")
        m.norm(f"{q}.norm_1", f"{p}.channel_pre_norm", bias=False)
        for n in ("gate", "up", "down"):
            m.linear(f"{q}.mlp.{n}", f"{p}.mlp_block.{n}_proj", True)
    m.norm("head.norm", "model.final_norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", True))


# --------------------------------------------------------------------------- jamba


def config_jamba(cfg: Any) -> dict:
    t = "jamba"
    mamba = {
        "state": cfg.mamba_d_state,
        "expand": float(cfg.mamba_expand),
        "dt_rank": int(cfg.mamba_dt_rank),
        "conv": cfg.mamba_d_conv,
        "bias": bool(cfg.mamba_proj_bias),
        "conv_bias": bool(cfg.mamba_conv_bias),
        "inner_norms": True,
        "eps": cfg.rms_norm_eps,
    }
    if cfg.hidden_act != "silu":
        raise unsupported(t, f"hidden_act '{cfg.hidden_act}'")
    ffn = {"hidden": cfg.intermediate_size, "act": "silu", "gated": True}
    kinds = []
    for mixer, experts in zip(cfg.layers_block_type, cfg.layers_num_experts):
        name = "attention" if mixer == "attention" else "mamba"
        kinds.append(name + ("_moe" if experts > 1 else ""))
    blocks = {}
    for kind in dict.fromkeys(kinds):
        mixer = "Attn" if kind.startswith("attention") else "Mamba"
        ffn_name = "MoE" if kind.endswith("_moe") else "MLP"
        blocks[kind] = f"Norm->{mixer}->+->Norm->{ffn_name}->+"
    defaults: dict[str, Any] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
        "Mamba": mamba,
        "Attn": {
            "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "pos": "none",
        },
        "MLP": ffn,
        "MoE": {
            **ffn,
            "experts": cfg.num_experts,
            "k": cfg.num_experts_per_tok,
            "norm_topk": False,
            "aux_loss": cfg.router_aux_loss_coef,
        },
    }
    return model_config(cfg, layers=_layers(kinds), blocks=blocks, defaults=defaults)


def weights_jamba(cfg: Any, m: WeightMapper) -> None:
    inter = cfg.intermediate_size
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i, (mixer, experts) in enumerate(zip(cfg.layers_block_type, cfg.layers_num_experts)):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        if mixer == "attention":
            for n in "qkvo":
                m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", False)
        else:
            _rename(m, f"{p}.mamba", f"{q}.mamba")
        m.norm(f"{q}.norm_1", f"{p}.pre_ff_layernorm", bias=False)
        if experts > 1:
            m.put(f"{q}.moe.router.weight", f"{p}.feed_forward.router.weight")
            expert_weights(m, f"{p}.feed_forward.experts", f"{q}.moe", experts=experts, inter=inter)
        else:
            for n in ("gate", "up", "down"):
                m.linear(f"{q}.mlp.{n}", f"{p}.feed_forward.{n}_proj", False)
    m.norm("head.norm", "model.final_layernorm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


# --------------------------------------------------------------------------- bamba


def config_bamba(cfg: Any) -> dict:
    t = "bamba"
    theta, fraction = default_rope(cfg, t)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    inner = int(cfg.mamba_expand * cfg.hidden_size)
    mamba2 = _mamba2_args(
        t,
        hidden=cfg.hidden_size,
        inner=inner,
        heads=cfg.mamba_n_heads,
        head_dim=cfg.mamba_d_head,
        groups=cfg.mamba_n_groups,
        state=cfg.mamba_d_state,
        conv=cfg.mamba_d_conv,
        chunk=cfg.mamba_chunk_size,
        bias=bool(cfg.mamba_proj_bias),
        conv_bias=bool(cfg.mamba_conv_bias),
        eps=cfg.rms_norm_eps,
        act=cfg.hidden_act,
        limit=getattr(cfg, "time_step_limit", None),
    )
    kinds = ["attention" if k == "full_attention" else "mamba" for k in cfg.layers_block_type]
    return model_config(
        cfg,
        layers=_layers(kinds),
        blocks={
            "mamba": "Norm->Mamba2->+->Norm->MLP->+",
            "attention": "Norm->Attn->+->Norm->MLP->+",
        },
        defaults={
            "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
            "Mamba2": mamba2,
            "Attn": {
                "heads": cfg.num_attention_heads,
                "kv_heads": cfg.num_key_value_heads,
                "head_dim": head_dim,
                "pos": "rope",
                "rope_theta": theta,
                "rope_fraction": rotary_fraction(int(head_dim * fraction), head_dim),
                "bias": bool(cfg.attention_bias),
            },
            "MLP": {
                "hidden": cfg.intermediate_size,
                "act": activation(cfg.hidden_act, t),
                "gated": True,
                "bias": bool(cfg.mlp_bias),
            },
        },
    )


def weights_bamba(cfg: Any, m: WeightMapper) -> None:
    attn_bias, mlp_bias = bool(cfg.attention_bias), bool(cfg.mlp_bias)
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i, kind in enumerate(cfg.layers_block_type):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        if kind == "full_attention":
            for n in "qkvo":
                m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", attn_bias)
        else:
            mamba2_weights(
                m,
                f"{p}.mamba",
                f"{q}.mamba2",
                inner=int(cfg.mamba_expand * cfg.hidden_size),
                groups=cfg.mamba_n_groups,
                state=cfg.mamba_d_state,
                bias=bool(cfg.mamba_proj_bias),
                conv_bias=bool(cfg.mamba_conv_bias),
            )
        m.norm(f"{q}.norm_1", f"{p}.pre_ff_layernorm", bias=False)
        for n in ("gate", "up", "down"):
            m.linear(f"{q}.mlp.{n}", f"{p}.feed_forward.{n}_proj", mlp_bias)
    m.norm("head.norm", "model.final_layernorm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


# --------------------------------------------------------------------------- falcon-h1


def _falcon_h1_sizes(cfg: Any) -> tuple[int, int, int]:
    """``(inner, heads, head_dim)`` of Falcon-H1's Mamba2 mixer."""
    inner = (
        cfg.mamba_d_ssm if cfg.mamba_d_ssm is not None else int(cfg.mamba_expand * cfg.hidden_size)
    )
    return inner, cfg.mamba_n_heads, cfg.mamba_d_head


def config_falcon_h1(cfg: Any) -> dict:
    """Falcon-H1: Mamba2 and attention in parallel on one normed input (``Norm#ln->Mamba2->+ |
    Norm#ln->Attn->+``, one label per layer), then a SwiGLU MLP block. Its µP multipliers are
    constants in front of or behind linear maps, so the import folds them into those weights
    (``weights_falcon_h1``): the same function with plain components."""
    t = "falcon_h1"
    theta, fraction = default_rope(cfg, t)
    if fraction != 1.0:
        raise unsupported(t, "partial_rotary_factor")
    if bool(cfg.mamba_proj_bias) != bool(cfg.projectors_bias):
        raise unsupported(t, "mamba_proj_bias differing from projectors_bias")
    if cfg.tie_word_embeddings and (cfg.embedding_multiplier != 1 or cfg.lm_head_multiplier != 1):
        raise unsupported(t, "tied embeddings with embedding or lm_head multipliers")
    inner, heads, head_dim = _falcon_h1_sizes(cfg)
    mamba2 = _mamba2_args(
        t,
        hidden=cfg.hidden_size,
        inner=inner,
        heads=heads,
        head_dim=head_dim,
        groups=cfg.mamba_n_groups,
        state=cfg.mamba_d_state,
        conv=cfg.mamba_d_conv,
        chunk=cfg.mamba_chunk_size,
        bias=bool(cfg.mamba_proj_bias),
        conv_bias=bool(cfg.mamba_conv_bias),
        eps=cfg.rms_norm_eps,
        act=cfg.hidden_act,
        limit=getattr(cfg, "time_step_limit", None),
        norm=bool(cfg.mamba_rms_norm),
    )
    if cfg.mamba_rms_norm and cfg.mamba_norm_before_gate:
        mamba2["norm_before_gate"] = True
    attn_head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    # Each Falcon-H1 layer is two blocks: the parallel mixers, whose residual closes before
    # the MLP reads the sum (a group would leave the outer residual tap behind), then the MLP.
    # One norm feeds both mixers: a label per layer, as for GPT-J (a label is one module in the
    # whole model, so each layer needs its own).
    L = cfg.num_hidden_layers
    blocks = {f"mixer{i}": f"Norm#ln{i}->Mamba2->+ | Norm#ln{i}->Attn->+" for i in range(L)}
    blocks["mlp"] = "Norm->MLP->+"
    return model_config(
        cfg,
        layers="->".join(f"mixer{i}->mlp" for i in range(L)),
        blocks=blocks,
        defaults={
            "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
            "Mamba2": mamba2,
            "Attn": {
                "heads": cfg.num_attention_heads,
                "kv_heads": cfg.num_key_value_heads,
                "head_dim": attn_head_dim,
                "pos": "rope",
                "rope_theta": theta,
                "bias": bool(cfg.attention_bias),
            },
            "MLP": {
                "hidden": cfg.intermediate_size,
                "act": activation(cfg.hidden_act, t),
                "gated": True,
                "bias": bool(cfg.mlp_bias),
            },
        },
    )


def _scaled(c: float) -> Any:
    return lambda w: w * c


def weights_falcon_h1(cfg: Any, m: WeightMapper) -> None:
    inner, heads, _ = _falcon_h1_sizes(cfg)
    gn = cfg.mamba_n_groups * cfg.mamba_d_state
    zxbcdt = list(cfg.ssm_multipliers or [1.0] * 5)
    # one multiplier per output row of in_proj: z, x, B, C, dt (compute_mup_vector)
    mup = torch.cat(
        [torch.full((n,), float(c)) for n, c in zip((inner, inner, gn, gn, heads), zxbcdt)]
    )
    gate_mult, down_mult = cfg.mlp_multipliers or (1.0, 1.0)
    attn_in, key_mult = cfg.attention_in_multiplier, cfg.key_multiplier
    attn_bias, mlp_bias = bool(cfg.attention_bias), bool(cfg.mlp_bias)
    m.put(
        "embed.embed.tok.weight", "model.embed_tokens.weight", fn=_scaled(cfg.embedding_multiplier)
    )
    for i in range(cfg.num_hidden_layers):
        p, q, q_mlp = f"model.layers.{i}", f"layers.{2 * i}", f"layers.{2 * i + 1}"
        m.norm(f"{q}.ln{i}", f"{p}.input_layernorm", bias=False)
        mix, dst = f"{p}.mamba", f"{q}.mamba2"
        if m.has(f"{mix}.mup_vector"):  # a saved copy of the multipliers folded below
            saved = m.get(f"{mix}.mup_vector").flatten()
            if not torch.allclose(saved.float(), mup):
                raise HFImportError(f"falcon_h1: {mix}.mup_vector differs from ssm_multipliers")
        scale_in = mup * cfg.ssm_in_multiplier
        # in_proj's rows scaled first (z, x, B, C, Δ), then split: z is the gate slot's
        m.split(
            [f"{dst}.slots.gate.linear.weight", f"{dst}.in_proj.weight"],
            f"{mix}.in_proj.weight",
            lambda w, s=scale_in: split_mamba2_in_proj(w * s[:, None].to(w), inner),
        )
        if cfg.mamba_proj_bias:
            m.split(
                [f"{dst}.slots.gate.linear.bias", f"{dst}.in_proj.bias"],
                f"{mix}.in_proj.bias",
                lambda b: split_mamba2_in_proj(b * mup.to(b), inner),
            )
        for kind, present in (("weight", True), ("bias", bool(cfg.mamba_conv_bias))):
            if present:
                m.split(
                    [f"{dst}.slots.{n}.conv.{kind}" for n in "qkv"],
                    f"{mix}.conv1d.{kind}",
                    partial(split_mamba2_conv, inner=inner, group_state=gn),
                )
        for n in ("dt_bias", "A_log", "D"):
            m.put(f"{dst}.{n}", f"{mix}.{n}")
        if cfg.mamba_rms_norm:
            m.put(
                f"{dst}.slots.o.norm.weight",
                f"{mix}.norm.weight",
                fn=partial(mamba2_norm_weight, groups=cfg.mamba_n_groups),
            )
        m.put(
            f"{dst}.out_proj.weight", f"{mix}.out_proj.weight", fn=_scaled(cfg.ssm_out_multiplier)
        )
        if cfg.projectors_bias:
            m.put(
                f"{dst}.out_proj.bias", f"{mix}.out_proj.bias", fn=_scaled(cfg.ssm_out_multiplier)
            )
        a = f"{p}.self_attn"
        m.put(f"{q}.attn.q.weight", f"{a}.q_proj.weight", fn=_scaled(attn_in))
        m.put(f"{q}.attn.k.weight", f"{a}.k_proj.weight", fn=_scaled(attn_in * key_mult))
        m.put(f"{q}.attn.v.weight", f"{a}.v_proj.weight", fn=_scaled(attn_in))
        m.put(f"{q}.attn.o.weight", f"{a}.o_proj.weight", fn=_scaled(cfg.attention_out_multiplier))
        if attn_bias:
            m.put(f"{q}.attn.q.bias", f"{a}.q_proj.bias")
            m.put(f"{q}.attn.k.bias", f"{a}.k_proj.bias", fn=_scaled(key_mult))
            m.put(f"{q}.attn.v.bias", f"{a}.v_proj.bias")
            m.put(f"{q}.attn.o.bias", f"{a}.o_proj.bias", fn=_scaled(cfg.attention_out_multiplier))
        m.norm(f"{q_mlp}.norm", f"{p}.pre_ff_layernorm", bias=False)
        f = f"{p}.feed_forward"
        for n, c in (("gate", gate_mult), ("up", 1.0), ("down", down_mult)):
            m.put(f"{q_mlp}.mlp.{n}.weight", f"{f}.{n}_proj.weight", fn=_scaled(c))
            if mlp_bias:
                m.put(f"{q_mlp}.mlp.{n}.bias", f"{f}.{n}_proj.bias", fn=_scaled(c))
    m.norm("head.norm", "model.final_layernorm", bias=False)
    if cfg.tie_word_embeddings:
        m.head(cfg, "model.embed_tokens.weight", True)
    else:
        m.put("head.head.weight", "lm_head.weight", fn=_scaled(cfg.lm_head_multiplier))


# --------------------------------------------------------------------------- nemotron-h

#: Nemotron-H's layer kinds (``layers_block_type``) -> block names: one mixer per layer.
_NEMOTRON_H_KINDS = {
    "linear_attention": "mamba",
    "full_attention": "attention",
    "mlp": "mlp",
    "moe": "moe",
}


def config_nemotron_h(cfg: Any) -> dict:
    """Nemotron-H: every layer is one pre-norm residual block around one mixer, as
    ``layers_block_type`` says: Mamba2 (grouped gated norm), attention without positions,
    a squared-ReLU MLP, or DeepSeek-V3-style routed squared-ReLU experts (sigmoid scores with
    ``e_score_correction_bias`` within ``topk_group`` groups) beside one shared expert."""
    t = "nemotron_h"
    kinds = _nemotron_h_kinds(cfg)
    if getattr(cfg, "moe_latent_size", None) is not None and "moe" in kinds:
        raise unsupported(t, "moe_latent_size (experts in a projected latent space)")
    if cfg.mlp_bias and "moe" in kinds:  # blockdsl's shared expert has no biases
        raise unsupported(t, "mlp_bias with MoE layers")
    act = activation(cfg.mlp_hidden_act, t)
    defaults: dict[str, Any] = {"Norm": {"kind": "rms", "eps": cfg.layer_norm_epsilon}}
    if "mamba" in kinds:
        defaults["Mamba2"] = _mamba2_args(
            t,
            hidden=cfg.hidden_size,
            inner=cfg.mamba_num_heads * cfg.mamba_head_dim,
            heads=cfg.mamba_num_heads,
            head_dim=cfg.mamba_head_dim,
            groups=cfg.n_groups,
            state=cfg.ssm_state_size,
            conv=cfg.conv_kernel,
            chunk=cfg.chunk_size,
            bias=bool(cfg.use_bias),
            conv_bias=bool(cfg.use_conv_bias),
            eps=cfg.layer_norm_epsilon,
            act=cfg.mamba_hidden_act,
            limit=cfg.time_step_limit,
        )
    if "attention" in kinds:  # q/k/v/o have no biases whatever attention_bias says
        defaults["Attn"] = {
            "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "pos": "none",
        }
    if "mlp" in kinds:
        defaults["MLP"] = {"hidden": cfg.intermediate_size, "act": act, "bias": bool(cfg.mlp_bias)}
    if "moe" in kinds:
        defaults["MoE"] = {
            "experts": cfg.n_routed_experts,
            "k": cfg.num_experts_per_tok,
            "hidden": cfg.moe_intermediate_size,
            "act": act,
            "gated": False,
            **shared_expert_args(
                cfg.moe_shared_expert_intermediate_size, cfg.moe_intermediate_size
            ),
            **deepseek_v3_routing(cfg),
            "aux_loss": 0.0,  # transformers adds no load-balancing loss for Nemotron-H
        }
    mixer_of = {"mamba": "Mamba2", "attention": "Attn", "mlp": "MLP", "moe": "MoE"}
    return model_config(
        cfg,
        layers=_layers(kinds),
        blocks={kind: f"Norm->{mixer_of[kind]}->+" for kind in dict.fromkeys(kinds)},
        defaults=defaults,
    )


def _nemotron_h_kinds(cfg: Any) -> list[str]:
    """Nemotron-H's block name per layer, from ``layers_block_type``."""
    kinds = list(cfg.layers_block_type)
    if not set(kinds) <= set(_NEMOTRON_H_KINDS):
        raise unsupported("nemotron_h", f"layers_block_type {kinds}")
    return [_NEMOTRON_H_KINDS[kind] for kind in kinds]


def weights_nemotron_h(cfg: Any, m: WeightMapper) -> None:
    # transformers renames the checkpoints' ``backbone.`` to ``model.`` when it loads them, so
    # a saved folder has ``backbone.`` (which the importer, seeing no ``model.``, prefixes)
    root = "model.backbone" if m.has("model.backbone.embeddings.weight") else "model"
    bias = bool(cfg.mlp_bias)
    m.put("embed.embed.tok.weight", f"{root}.embeddings.weight")
    for i, kind in enumerate(_nemotron_h_kinds(cfg)):
        p, q = f"{root}.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.norm", bias=False)
        mixer = f"{p}.mixer"
        if kind == "mamba":
            mamba2_weights(
                m,
                mixer,
                f"{q}.mamba2",
                inner=cfg.mamba_num_heads * cfg.mamba_head_dim,
                groups=cfg.n_groups,
                state=cfg.ssm_state_size,
                bias=bool(cfg.use_bias),
                conv_bias=bool(cfg.use_conv_bias),
            )
        elif kind == "attention":
            for n in "qkvo":
                m.linear(f"{q}.attn.{n}", f"{mixer}.{n}_proj", False)
        elif kind == "mlp":
            for n in ("up", "down"):
                m.linear(f"{q}.mlp.{n}", f"{mixer}.{n}_proj", bias)
        else:
            e = f"{q}.moe"
            m.put(f"{e}.router.weight", f"{mixer}.gate.weight")
            m.put(f"{e}.score_bias", f"{mixer}.gate.e_score_correction_bias")
            experts = f"{mixer}.experts"
            for n in ("up", "down"):
                if m.has(f"{experts}.{n}_proj"):  # in memory: stacked
                    m.put(f"{e}.w_{n}", f"{experts}.{n}_proj")
                else:  # on disk: one Linear per expert
                    per_expert = [
                        f"{experts}.{x}.{n}_proj.weight" for x in range(cfg.n_routed_experts)
                    ]
                    m.put(f"{e}.w_{n}", *per_expert, fn=lambda *ws: torch.stack(ws))
                m.linear(f"{e}.shared.{n}", f"{mixer}.shared_experts.{n}_proj", False)
    m.norm("head.norm", f"{root}.norm_f", bias=False)
    m.head(cfg, f"{root}.embeddings.weight", getattr(cfg, "tie_word_embeddings", False))


for _record in (
    Architecture("mamba", "MambaForCausalLM", "backbone", config_mamba, weights_mamba),
    Architecture("mamba2", "Mamba2ForCausalLM", "backbone", config_mamba2, weights_mamba2),
    Architecture(
        "falcon_mamba",
        "FalconMambaForCausalLM",
        "backbone",
        config_falcon_mamba,
        weights_falcon_mamba,
    ),
    Architecture(
        "recurrent_gemma",
        "RecurrentGemmaForCausalLM",
        "model",
        config_recurrent_gemma,
        weights_recurrent_gemma,
    ),
    Architecture("jamba", "JambaForCausalLM", "model", config_jamba, weights_jamba),
    Architecture("bamba", "BambaForCausalLM", "model", config_bamba, weights_bamba),
    Architecture("falcon_h1", "FalconH1ForCausalLM", "model", config_falcon_h1, weights_falcon_h1),
    Architecture(
        "nemotron_h",
        "NemotronHForCausalLM",
        "model",
        config_nemotron_h,
        weights_nemotron_h,
        buffers=("e_score_correction_bias",),
    ),
):
    register_architecture(_record)
