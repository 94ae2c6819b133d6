"""The classic decoder architectures for the Hugging Face import: GPT-2, GPT-NeoX, GPT-J, OPT,
BLOOM, MPT, Falcon (old and new decoder architecture, rotary or ALiBi), Phi (phi-1, phi-1.5,
phi-2), GPT-BigCode (SantaCoder, StarCoder), CodeGen, GPT-Neo, GPT-1 (``openai-gpt``) and
BioGPT: one ``Architecture`` record each.

What they need beyond the GPT-2/Llama family is all in components: ALiBi with MPT's slope
schedule and Falcon's scaled slopes (``Attn(alibi_max, alibi_scale)``), MPT's ``clip_qkv``,
OPT's learned positions offset by two rows (``Embed(pos_offset=2)``), BLOOM's embedding
LayerNorm (an ``Embed->Norm`` embed chain), post-norm blocks (``(Attn->+)->Norm->...``) and
parallel attention/MLP blocks (``|``). Options transformers' own modelling code ignores (MPT's
``logit_scale``, ``no_bias=False``, ...) are refused rather than silently dropped: the original
code would have honoured them.
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
    model_config,
    register_architecture,
    rotary_fraction,
    unsupported,
)

Tensor = torch.Tensor


# ---------------------------------------------------------------- gpt2


def _config_gpt2(cfg: Any) -> dict:
    return _gpt2_like_config(cfg, "gpt2")


def _gpt2_like_config(cfg: Any, t: str, kv_heads: int | None = None) -> dict:
    """GPT-2's layout (learned positions, biased LayerNorms and linears, ungated MLP), also
    GPT-BigCode's, whose multi-query attention sets ``kv_heads``."""
    if getattr(cfg, "add_cross_attention", False):
        raise unsupported(t, "add_cross_attention")
    d, heads, L = cfg.n_embd, cfg.n_head, cfg.n_layer
    hd = d // heads
    block = "Norm->Attn->+->Norm->MLP->+"
    attn: dict[str, Any] = {"heads": heads}
    if kv_heads is not None:
        attn["kv_heads"] = kv_heads
    attn.update(pos="none", bias=True)
    scale = hd**-0.5 if getattr(cfg, "scale_attn_weights", True) else 1.0
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        # one block per layer: layer i divides the scores by (i + 1)
        blocks = {
            f"layer{i}": f"Norm->Attn(scale={scale / (i + 1)!r})->+->Norm->MLP->+" for i in range(L)
        }
        layers = "->".join(blocks)
    else:
        if scale != hd**-0.5:
            attn["scale"] = scale
        blocks, layers = {"block": block}, f"block*{L}"
    return model_config(
        cfg,
        layers=layers,
        blocks=blocks,
        defaults={
            "Norm": {"kind": "layer", "eps": cfg.layer_norm_epsilon, "bias": True},
            "Attn": attn,
            "MLP": {
                "hidden": cfg.n_inner if cfg.n_inner is not None else 4 * d,
                "act": activation(cfg.activation_function, t),
                "gated": False,
                "bias": True,
            },
        },
        d_model=d,
        context=cfg.n_positions,
        embed="Embed(pos=learned)",
        tied_by_default=True,
    )


def _conv1d_layer(m: WeightMapper, p: str, q: str, d: int) -> None:
    """A GPT-2-style layer's tensors (``ln_1``, ``attn.c_attn``/``c_proj``, ``ln_2``,
    ``mlp.c_fc``/``c_proj``) under ``p`` as blockdsl's ``norm``, ``attn``, ``norm_1``, ``mlp``
    under ``q``: the first norm is the pre-attention norm (GPT-2) or the post-attention one
    (GPT-1), by position in the block, so both name it ``norm``. Conv1D stores ``[in, out]``;
    ``c_attn``'s outputs are ``[q | k | v]``, ``d`` wide each."""
    m.norm(f"{q}.norm", f"{p}.ln_1", bias=True)
    m.split(
        [f"{q}.attn.{n}.weight" for n in "qkv"],
        f"{p}.attn.c_attn.weight",
        lambda w: [t.t() for t in w.split(d, dim=1)],
    )
    m.split(
        [f"{q}.attn.{n}.bias" for n in "qkv"], f"{p}.attn.c_attn.bias", lambda b: list(b.split(d))
    )
    m.put(f"{q}.attn.o.weight", f"{p}.attn.c_proj.weight", fn=lambda w: w.t())
    m.put(f"{q}.attn.o.bias", f"{p}.attn.c_proj.bias")
    m.norm(f"{q}.norm_1", f"{p}.ln_2", bias=True)
    for ours, theirs in (("up", "c_fc"), ("down", "c_proj")):
        m.put(f"{q}.mlp.{ours}.weight", f"{p}.mlp.{theirs}.weight", fn=lambda w: w.t())
        m.put(f"{q}.mlp.{ours}.bias", f"{p}.mlp.{theirs}.bias")


def _weights_gpt2(cfg: Any, m: WeightMapper) -> None:
    d = cfg.n_embd
    m.put("embed.embed.tok.weight", "transformer.wte.weight")
    m.put("embed.embed.pos.weight", "transformer.wpe.weight")
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}", f"layers.{i}"
        _conv1d_layer(m, p, q, d)
    m.norm("head.norm", "transformer.ln_f", bias=True)
    m.head(cfg, "transformer.wte.weight", getattr(cfg, "tie_word_embeddings", True))


register_architecture(
    Architecture(
        "gpt2", "GPT2LMHeadModel", "transformer", config=_config_gpt2, weights=_weights_gpt2
    )
)


# ---------------------------------------------------------------- gpt_neox


def _config_gpt_neox(cfg: Any) -> dict:
    t = "gpt_neox"
    theta, fraction = default_rope(cfg, t)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    rotary = int(head_dim * fraction)  # odd counts too: Attn follows transformers' arithmetic
    parallel = bool(getattr(cfg, "use_parallel_residual", True))
    block = "Norm->Attn->+ | Norm->MLP->+" if parallel else "Norm->Attn->+->Norm->MLP->+"
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": block},
        defaults={
            "Norm": {"kind": "layer", "eps": cfg.layer_norm_eps, "bias": True},
            "Attn": {
                "heads": cfg.num_attention_heads,
                "pos": "rope",
                "rope_theta": theta,
                "rope_fraction": rotary_fraction(rotary, head_dim),
                "bias": bool(getattr(cfg, "attention_bias", True)),
            },
            "MLP": {
                "hidden": cfg.intermediate_size,
                "act": activation(cfg.hidden_act, t),
                "gated": False,
                "bias": True,
            },
        },
    )


def _weights_gpt_neox(cfg: Any, m: WeightMapper) -> None:
    H = cfg.num_attention_heads
    d = cfg.hidden_size
    bias = bool(getattr(cfg, "attention_bias", True))
    m.put("embed.embed.tok.weight", "gpt_neox.embed_in.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"gpt_neox.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=True)
        # fused per head: rows are [q_0 | k_0 | v_0 | q_1 | k_1 | v_1 | ...]
        m.split(
            [f"{q}.attn.{n}.weight" for n in "qkv"],
            f"{p}.attention.query_key_value.weight",
            lambda w: [t.reshape(d, d) for t in w.reshape(H, 3, -1, d).unbind(1)],
        )
        if bias:
            m.split(
                [f"{q}.attn.{n}.bias" for n in "qkv"],
                f"{p}.attention.query_key_value.bias",
                lambda b: [t.reshape(d) for t in b.reshape(H, 3, -1).unbind(1)],
            )
        m.linear(f"{q}.attn.o", f"{p}.attention.dense", bias)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=True)
        m.linear(f"{q}.mlp.up", f"{p}.mlp.dense_h_to_4h", bias=True)
        m.linear(f"{q}.mlp.down", f"{p}.mlp.dense_4h_to_h", bias=True)
    m.norm("head.norm", "gpt_neox.final_layer_norm", bias=True)
    name = "embed_out" if m.has("embed_out.weight") and not m.has("lm_head.weight") else "lm_head"
    m.head(cfg, "gpt_neox.embed_in.weight", getattr(cfg, "tie_word_embeddings", False), name=name)


register_architecture(
    Architecture(
        "gpt_neox",
        "GPTNeoXForCausalLM",
        "gpt_neox",
        config=_config_gpt_neox,
        weights=_weights_gpt_neox,
        outside=("lm_head", "embed_out"),
    )
)


# ---------------------------------------------------------------- gptj


def _config_gptj(cfg: Any) -> dict:
    return _gptj_like_config(cfg, "gptj")


def _gptj_like_config(cfg: Any, t: str) -> dict:
    """GPT-J's layout (one LayerNorm feeding parallel attention and MLP, interleaved partial
    rotary, a biased head), also CodeGen's."""
    d, heads, L = cfg.n_embd, cfg.n_head, cfg.n_layer
    head_dim = d // heads
    rotary = cfg.rotary_dim if cfg.rotary_dim is not None else head_dim
    # One LayerNorm feeds both parallel branches: a #label is one module per layer.
    return model_config(
        cfg,
        layers=f"block*{L}",
        blocks={"block": "Norm#ln->Attn->+ | Norm#ln->MLP->+"},
        defaults={
            "Norm": {"kind": "layer", "eps": cfg.layer_norm_epsilon, "bias": True},
            "Attn": {
                "heads": heads,
                "pos": "rope",
                "rope_theta": 10000.0,
                "rope_fraction": rotary_fraction(rotary, head_dim),
                "rope_interleaved": True,
                "bias": False,
            },
            "MLP": {
                "hidden": cfg.n_inner if cfg.n_inner is not None else 4 * d,
                "act": activation(cfg.activation_function, t),
                "gated": False,
                "bias": True,
            },
            "Head": {"bias": True},
        },
        d_model=d,
        context=cfg.n_positions,
    )


def _weights_gptj(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "transformer.wte.weight")
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}", f"layers.{i}"
        m.norm(f"{q}.ln", f"{p}.ln_1", bias=True)
        for n, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
            m.linear(f"{q}.attn.{n}", f"{p}.attn.{hf}", bias=False)
        m.linear(f"{q}.mlp.up", f"{p}.mlp.fc_in", bias=True)
        m.linear(f"{q}.mlp.down", f"{p}.mlp.fc_out", bias=True)
    m.norm("head.norm", "transformer.ln_f", bias=True)
    m.head(cfg, "transformer.wte.weight", getattr(cfg, "tie_word_embeddings", False), bias=True)


register_architecture(
    Architecture(
        "gptj", "GPTJForCausalLM", "transformer", config=_config_gptj, weights=_weights_gptj
    )
)


#: BLOOM's config has no length: its pretraining length (ALiBi extrapolates past it; raise
#: ``[model] context`` to go further).
BLOOM_CONTEXT = 2048


def _layer_norm(eps: float, bias: bool = True) -> dict:
    return {"kind": "layer", "eps": eps, "bias": bias}


def _per_head_qkv(heads: int) -> Any:
    """Split a fused projection laid out per head, ``[q_0 | k_0 | v_0 | q_1 | ...]`` (BLOOM,
    GPT-BigCode without multi-query, Falcon without multi-query), into ``q``, ``k``, ``v``
    (weights ``[3D, D]`` or biases ``[3D]``)."""

    def split(w: Tensor) -> list[Tensor]:
        return [
            t.reshape(-1, *w.shape[1:]) for t in w.reshape(heads, 3, -1, *w.shape[1:]).unbind(1)
        ]

    return split


def _qkv(m: WeightMapper, dst: str, src: str, split: Any, bias: bool) -> None:
    m.split([f"{dst}.{n}.weight" for n in "qkv"], f"{src}.weight", split)
    if bias:
        m.split([f"{dst}.{n}.bias" for n in "qkv"], f"{src}.bias", split)


def _tied(cfg: Any, default: bool) -> bool:
    return bool(getattr(cfg, "tie_word_embeddings", default))


# ---------------------------------------------------------------- opt


def _config_opt(cfg: Any) -> dict:
    """OPT: learned positions offset by 2, pre-norm (or post-norm with
    ``do_layer_norm_before=false``, OPT-350m), ReLU MLP, biases everywhere by default."""
    t = "opt"
    if cfg.word_embed_proj_dim != cfg.hidden_size:
        raise unsupported(
            t,
            f"word_embed_proj_dim={cfg.word_embed_proj_dim} different from "
            f"hidden_size={cfg.hidden_size} (project_in/project_out)",
        )
    pre_norm = bool(cfg.do_layer_norm_before)
    affine = bool(cfg.layer_norm_elementwise_affine)
    bias = bool(cfg.enable_bias)
    block = "Norm->Attn->+->Norm->MLP->+" if pre_norm else "(Attn->+)->Norm->(MLP->+)->Norm"
    config = model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": block},
        defaults={
            "Norm": {"kind": "layer", "eps": 1e-5, "affine": affine, "bias": affine},
            "Attn": {"heads": cfg.num_attention_heads, "pos": "none", "bias": bias},
            "MLP": {
                "hidden": cfg.ffn_dim,
                "act": activation(cfg.activation_function, t),
                "gated": False,
                "bias": bias,
            },
        },
        embed="Embed(pos=learned, pos_offset=2)",
        tied_by_default=True,
    )
    if not _opt_final_norm(cfg):  # post-norm: the last block ends in its own norm
        config["model"]["head"] = config["model"]["head"].removeprefix("Norm->")
    return config


def _opt_final_norm(cfg: Any) -> bool:
    return bool(cfg.do_layer_norm_before) and not getattr(cfg, "_remove_final_layer_norm", False)


def _weights_opt(cfg: Any, m: WeightMapper) -> None:
    affine, bias = bool(cfg.layer_norm_elementwise_affine), bool(cfg.enable_bias)
    d = "model.decoder"
    m.put("embed.embed.tok.weight", f"{d}.embed_tokens.weight")
    m.put("embed.embed.pos.weight", f"{d}.embed_positions.weight")

    def norm(dst: str, src: str) -> None:
        if affine:
            m.norm(dst, src, bias=True)

    for i in range(cfg.num_hidden_layers):
        p, q = f"{d}.layers.{i}", f"layers.{i}"
        # pre-norm: norm, attn, norm_1, mlp; post-norm: attn, norm, mlp, norm_1 (same names)
        norm(f"{q}.norm", f"{p}.self_attn_layer_norm")
        for n, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{hf}", bias)
        norm(f"{q}.norm_1", f"{p}.final_layer_norm")
        m.linear(f"{q}.mlp.up", f"{p}.fc1", bias)
        m.linear(f"{q}.mlp.down", f"{p}.fc2", bias)
    if _opt_final_norm(cfg):
        norm("head.norm", f"{d}.final_layer_norm")
    m.head(cfg, f"{d}.embed_tokens.weight", _tied(cfg, True))


# ---------------------------------------------------------------- bloom


def _config_bloom(cfg: Any) -> dict:
    """BLOOM: ALiBi, a LayerNorm on the embeddings, fused per-head qkv, tanh GELU; with
    ``apply_residual_connection_post_layernorm`` the residuals start after the norms."""
    t = "bloom"
    post = bool(cfg.apply_residual_connection_post_layernorm)
    block = "Norm->(Attn->+)->Norm->(MLP->+)" if post else "Norm->Attn->+->Norm->MLP->+"
    d = cfg.hidden_size
    return model_config(
        cfg,
        layers=f"block*{cfg.n_layer}",
        blocks={"block": block},
        defaults={
            "Norm": _layer_norm(cfg.layer_norm_epsilon),
            "Attn": {"heads": cfg.n_head, "pos": "alibi", "bias": True},
            # BloomGelu is the tanh approximation (Megatron's bias GELU)
            "MLP": {
                "hidden": 4 * d,
                "act": activation("gelu_new", t),
                "gated": False,
                "bias": True,
            },
        },
        context=BLOOM_CONTEXT,
        embed="Embed->Norm",
        tied_by_default=True,
    )


def _weights_bloom(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "transformer.word_embeddings.weight")
    m.norm("embed.norm", "transformer.word_embeddings_layernorm", bias=True)
    split = _per_head_qkv(cfg.n_head)
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=True)
        _qkv(m, f"{q}.attn", f"{p}.self_attention.query_key_value", split, bias=True)
        m.linear(f"{q}.attn.o", f"{p}.self_attention.dense", bias=True)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=True)
        m.linear(f"{q}.mlp.up", f"{p}.mlp.dense_h_to_4h", bias=True)
        m.linear(f"{q}.mlp.down", f"{p}.mlp.dense_4h_to_h", bias=True)
    m.norm("head.norm", "transformer.ln_f", bias=True)
    m.head(cfg, "transformer.word_embeddings.weight", _tied(cfg, True))


# ---------------------------------------------------------------- mpt

# MPT options transformers' MptForCausalLM does not implement (the original MosaicML code
# does): refused, with the value that is supported.
_MPT_FIXED = {
    "expansion_ratio": 4,
    "no_bias": True,
    "logit_scale": None,
    "embedding_fraction": 1.0,
}
_MPT_ATTN_FIXED = {
    "alibi": True,
    "attn_type": "multihead_attention",
    "qk_ln": False,
    "prefix_lm": False,
    "attn_uses_sequence_id": False,
    "alibi_bias_max": 8,
}


def _config_mpt(cfg: Any) -> dict:
    """MPT: ALiBi, bias-free LayerNorms and linears, fused ``Wqkv`` clamped to ``clip_qkv``,
    exact GELU."""
    t = "mpt"
    attn_cfg = cfg.attn_config
    for name, value in _MPT_FIXED.items():
        if getattr(cfg, name) != value:
            raise unsupported(
                t,
                f"{name}={getattr(cfg, name)!r} (transformers' MptForCausalLM implements only "
                f"{value!r})",
            )
    for name, value in _MPT_ATTN_FIXED.items():
        if getattr(attn_cfg, name) != value:
            raise unsupported(
                t,
                f"attn_config.{name}={getattr(attn_cfg, name)!r} (transformers' "
                f"MptForCausalLM implements only {value!r})",
            )
    if cfg.norm_type not in ("low_precision_layernorm", "layernorm"):
        raise unsupported(t, f"norm_type '{cfg.norm_type}' (transformers uses a LayerNorm)")
    attn: dict[str, Any] = {"heads": cfg.n_heads, "pos": "alibi", "bias": False}
    if attn_cfg.softmax_scale is not None:
        attn["scale"] = float(attn_cfg.softmax_scale)
    if attn_cfg.clip_qkv:
        attn["clip_qkv"] = float(attn_cfg.clip_qkv)
    return model_config(
        cfg,
        layers=f"block*{cfg.n_layers}",
        blocks={"block": "Norm->Attn->+->Norm->MLP->+"},
        defaults={
            "Norm": _layer_norm(cfg.layer_norm_epsilon, bias=False),
            "Attn": attn,
            "MLP": {"hidden": 4 * cfg.d_model, "act": "gelu", "gated": False, "bias": False},
        },
        d_model=cfg.d_model,
        context=cfg.max_seq_len,
        tied_by_default=True,
    )


def _weights_mpt(cfg: Any, m: WeightMapper) -> None:
    d = cfg.d_model
    m.put("embed.embed.tok.weight", "transformer.wte.weight")
    for i in range(cfg.n_layers):
        p, q = f"transformer.blocks.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.norm_1", bias=False)
        _qkv(m, f"{q}.attn", f"{p}.attn.Wqkv", lambda w: list(w.split(d)), bias=False)
        m.linear(f"{q}.attn.o", f"{p}.attn.out_proj", bias=False)
        m.norm(f"{q}.norm_1", f"{p}.norm_2", bias=False)
        m.linear(f"{q}.mlp.up", f"{p}.ffn.up_proj", bias=False)
        m.linear(f"{q}.mlp.down", f"{p}.ffn.down_proj", bias=False)
    m.norm("head.norm", "transformer.norm_f", bias=False)
    m.head(cfg, "transformer.wte.weight", _tied(cfg, True))


# ---------------------------------------------------------------- falcon


def _falcon_layout(cfg: Any) -> tuple[str, int]:
    """``(block kind, kv heads)``: ``two_norms`` (new decoder architecture, ``ln_attn`` and
    ``ln_mlp``), ``shared_norm`` (one ``input_layernorm`` feeding both parallel branches) or
    ``sequential``; the kv heads of the fused ``query_key_value``."""
    t = "falcon"
    heads = cfg.num_attention_heads
    norms = cfg.num_ln_in_parallel_attn
    if cfg.new_decoder_architecture:
        if not cfg.parallel_attn:
            raise unsupported(
                t, "new_decoder_architecture with parallel_attn=False (transformers cannot run it)"
            )
        return ("shared_norm" if norms == 1 else "two_norms"), cfg.num_kv_heads
    if norms not in (None, 1) and cfg.parallel_attn:
        raise unsupported(
            t,
            f"num_ln_in_parallel_attn={norms} without new_decoder_architecture "
            "(transformers cannot run it)",
        )
    if cfg.multi_query:
        kv = 1
    elif cfg.num_kv_heads != heads:
        raise unsupported(
            t,
            f"num_kv_heads={cfg.num_kv_heads} without multi_query or new_decoder_architecture "
            "(transformers cannot run it)",
        )
    else:
        kv = heads
    return ("shared_norm" if cfg.parallel_attn else "sequential"), kv


_FALCON_BLOCKS = {
    "two_norms": "Norm->Attn->+ | Norm->MLP->+",
    "shared_norm": "Norm#ln->Attn->+ | Norm#ln->MLP->+",
    "sequential": "Norm->Attn->+->Norm->MLP->+",
}


def _config_falcon(cfg: Any) -> dict:
    """Falcon: parallel attention and MLP (one shared norm, or two with the new decoder
    architecture) or sequential, multi-query or grouped kv heads, rotary or ALiBi (its slopes
    scaled by ``head_dim ** -0.5``: Falcon adds ALiBi before scaling the scores)."""
    t = "falcon"
    kind, kv = _falcon_layout(cfg)
    heads = cfg.num_attention_heads
    head_dim = cfg.hidden_size // heads
    attn: dict[str, Any] = {"heads": heads, "kv_heads": kv, "bias": bool(cfg.bias)}
    if cfg.alibi:
        attn.update(pos="alibi", alibi_scale=head_dim**-0.5)
    else:
        theta, fraction = default_rope(cfg, t)
        if fraction != 1.0:
            raise unsupported(t, "partial_rotary_factor")
        attn.update(pos="rope", rope_theta=theta)
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": _FALCON_BLOCKS[kind]},
        defaults={
            "Norm": _layer_norm(cfg.layer_norm_epsilon),
            "Attn": attn,
            "MLP": {
                "hidden": cfg.ffn_hidden_size,
                "act": activation(cfg.activation, t),
                "gated": False,
                "bias": bool(cfg.bias),
            },
        },
        tied_by_default=True,
    )


def _falcon_qkv(cfg: Any, kv: int) -> Any:
    """Split Falcon's fused ``query_key_value``: per kv head ``[q (G heads) | k | v]`` (new
    decoder architecture), ``[q (all heads) | k | v]`` (multi-query) or per head."""
    heads, d = cfg.num_attention_heads, cfg.hidden_size
    hd = d // heads
    if cfg.new_decoder_architecture:
        groups = heads // kv

        def split(w: Tensor) -> list[Tensor]:
            fused = w.reshape(kv, groups + 2, hd, *w.shape[1:])
            q, k, v = fused[:, :groups], fused[:, groups], fused[:, groups + 1]
            return [t.reshape(-1, *w.shape[1:]) for t in (q, k, v)]

        return split
    if kv == 1:
        return lambda w: list(w.split([d, hd, hd]))
    return _per_head_qkv(heads)


def _weights_falcon(cfg: Any, m: WeightMapper) -> None:
    kind, kv = _falcon_layout(cfg)
    bias = bool(cfg.bias)
    split = _falcon_qkv(cfg, kv)
    m.put("embed.embed.tok.weight", "transformer.word_embeddings.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"transformer.h.{i}", f"layers.{i}"
        if kind == "two_norms":
            m.norm(f"{q}.norm", f"{p}.ln_attn", bias=True)
            m.norm(f"{q}.norm_1", f"{p}.ln_mlp", bias=True)
        elif kind == "shared_norm":
            m.norm(f"{q}.ln", f"{p}.input_layernorm", bias=True)
        else:
            m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=True)
            m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=True)
        _qkv(m, f"{q}.attn", f"{p}.self_attention.query_key_value", split, bias)
        m.linear(f"{q}.attn.o", f"{p}.self_attention.dense", bias)
        m.linear(f"{q}.mlp.up", f"{p}.mlp.dense_h_to_4h", bias)
        m.linear(f"{q}.mlp.down", f"{p}.mlp.dense_4h_to_h", bias)
    m.norm("head.norm", "transformer.ln_f", bias=True)
    m.head(cfg, "transformer.word_embeddings.weight", _tied(cfg, True))


# ---------------------------------------------------------------- phi


def _config_phi(cfg: Any) -> dict:
    """Phi (phi-1, phi-1.5, phi-2): one LayerNorm feeding parallel attention and MLP, partial
    rotary, biases on every linear and on the head."""
    t = "phi"
    if cfg.qk_layernorm:
        raise unsupported(t, "qk_layernorm (a LayerNorm of queries and keys)")
    theta, fraction = default_rope(cfg, t)
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rotary = int(head_dim * fraction)
    if rotary % 2:
        raise unsupported(t, f"an odd number of rotary dims ({rotary}; transformers cannot run it)")
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": "Norm#ln->Attn->+ | Norm#ln->MLP->+"},
        defaults={
            "Norm": _layer_norm(cfg.layer_norm_eps),
            "Attn": {
                "heads": heads,
                "kv_heads": cfg.num_key_value_heads or heads,
                "head_dim": head_dim,
                "pos": "rope",
                "rope_theta": theta,
                "rope_fraction": rotary_fraction(rotary, head_dim),
                "bias": True,
            },
            "MLP": {
                "hidden": cfg.intermediate_size,
                "act": activation(cfg.hidden_act, t),
                "gated": False,
                "bias": True,
            },
            "Head": {"bias": True},
        },
    )


def _weights_phi(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.ln", f"{p}.input_layernorm", bias=True)
        for n, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "dense")):
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{hf}", bias=True)
        m.linear(f"{q}.mlp.up", f"{p}.mlp.fc1", bias=True)
        m.linear(f"{q}.mlp.down", f"{p}.mlp.fc2", bias=True)
    m.norm("head.norm", "model.final_layernorm", bias=True)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, False), bias=True)


# ---------------------------------------------------------------- gpt_bigcode


def _config_gpt_bigcode(cfg: Any) -> dict:
    """GPT-BigCode (SantaCoder, StarCoder): GPT-2 with multi-query attention and ``nn.Linear``
    layers."""
    return _gpt2_like_config(cfg, "gpt_bigcode", kv_heads=1 if cfg.multi_query else cfg.n_head)


def _weights_gpt_bigcode(cfg: Any, m: WeightMapper) -> None:
    d, heads = cfg.n_embd, cfg.n_head
    hd = d // heads
    if cfg.multi_query:  # rows [q (all heads) | k | v]

        def split(w: Tensor) -> list[Tensor]:
            return list(w.split([d, hd, hd]))
    else:
        split = _per_head_qkv(heads)
    m.put("embed.embed.tok.weight", "transformer.wte.weight")
    m.put("embed.embed.pos.weight", "transformer.wpe.weight")
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.ln_1", bias=True)
        _qkv(m, f"{q}.attn", f"{p}.attn.c_attn", split, bias=True)
        m.linear(f"{q}.attn.o", f"{p}.attn.c_proj", bias=True)
        m.norm(f"{q}.norm_1", f"{p}.ln_2", bias=True)
        m.linear(f"{q}.mlp.up", f"{p}.mlp.c_fc", bias=True)
        m.linear(f"{q}.mlp.down", f"{p}.mlp.c_proj", bias=True)
    m.norm("head.norm", "transformer.ln_f", bias=True)
    m.head(cfg, "transformer.wte.weight", _tied(cfg, True))


for _record in (
    Architecture("opt", "OPTForCausalLM", "model", config=_config_opt, weights=_weights_opt),
    Architecture(
        "bloom", "BloomForCausalLM", "transformer", config=_config_bloom, weights=_weights_bloom
    ),
    Architecture("mpt", "MptForCausalLM", "transformer", config=_config_mpt, weights=_weights_mpt),
    Architecture(
        "falcon", "FalconForCausalLM", "transformer", config=_config_falcon, weights=_weights_falcon
    ),
    Architecture("phi", "PhiForCausalLM", "model", config=_config_phi, weights=_weights_phi),
    Architecture(
        "gpt_bigcode",
        "GPTBigCodeForCausalLM",
        "transformer",
        config=_config_gpt_bigcode,
        weights=_weights_gpt_bigcode,
    ),
):
    register_architecture(_record)


# ---------------------------------------------------------------- codegen


def _config_codegen(cfg: Any) -> dict:
    """CodeGen: GPT-J with one fused ``qkv_proj`` (split on import)."""
    if cfg.rotary_dim is None:  # transformers then rotates by a table wider than a head
        raise unsupported("codegen", "rotary_dim=None")
    return _gptj_like_config(cfg, "codegen")


#: CodeGen's fused ``qkv_proj`` is laid out for 4 model-parallel shards.
CODEGEN_SHARDS = 4


def _weights_codegen(cfg: Any, m: WeightMapper) -> None:
    d = cfg.n_embd

    def split(w: Tensor) -> list[Tensor]:
        # rows per shard [q | v | k], each d / 4 rows; a projection is its shards in order
        q, v, k = w.reshape(CODEGEN_SHARDS, 3, d // CODEGEN_SHARDS, d).unbind(1)
        return [t.reshape(d, d) for t in (q, k, v)]

    m.put("embed.embed.tok.weight", "transformer.wte.weight")
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}", f"layers.{i}"
        m.norm(f"{q}.ln", f"{p}.ln_1", bias=True)
        m.split([f"{q}.attn.{n}.weight" for n in "qkv"], f"{p}.attn.qkv_proj.weight", split)
        m.linear(f"{q}.attn.o", f"{p}.attn.out_proj", bias=False)
        m.linear(f"{q}.mlp.up", f"{p}.mlp.fc_in", bias=True)
        m.linear(f"{q}.mlp.down", f"{p}.mlp.fc_out", bias=True)
    m.norm("head.norm", "transformer.ln_f", bias=True)
    m.head(cfg, "transformer.wte.weight", _tied(cfg, False), bias=True)


# ---------------------------------------------------------------- gpt_neo


def _config_gpt_neo(cfg: Any) -> dict:
    """GPT-Neo: GPT-2 with unscaled attention scores, global and local (``window_size``)
    layers from ``attention_layers``, bias only on the attention's output projection."""
    t = "gpt_neo"
    kinds = list(cfg.attention_layers)
    if len(kinds) != cfg.num_layers or not set(kinds) <= {"global", "local"}:
        raise unsupported(t, f"attention_layers {kinds}")
    block = "Norm->Attn{}->+->Norm->MLP->+"
    blocks = {
        kind: block.format(f"(window={int(cfg.window_size)})" if kind == "local" else "")
        for kind in dict.fromkeys(kinds)
    }
    d = cfg.hidden_size
    return model_config(
        cfg,
        layers=compress_layers(kinds),
        blocks=blocks,
        defaults={
            "Norm": _layer_norm(cfg.layer_norm_epsilon),
            "Attn": {
                "heads": cfg.num_heads,
                "pos": "none",
                "scale": 1.0,
                "bias": False,
                "o_bias": True,
            },
            "MLP": {
                "hidden": cfg.intermediate_size if cfg.intermediate_size is not None else 4 * d,
                "act": activation(cfg.activation_function, t),
                "gated": False,
                "bias": True,
            },
        },
        embed="Embed(pos=learned)",
        tied_by_default=True,
    )


def _weights_gpt_neo(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "transformer.wte.weight")
    m.put("embed.embed.pos.weight", "transformer.wpe.weight")
    for i in range(cfg.num_layers):
        p, q = f"transformer.h.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.ln_1", bias=True)
        for n in "qkv":
            m.linear(f"{q}.attn.{n}", f"{p}.attn.attention.{n}_proj", bias=False)
        m.linear(f"{q}.attn.o", f"{p}.attn.attention.out_proj", bias=True)
        m.norm(f"{q}.norm_1", f"{p}.ln_2", bias=True)
        m.linear(f"{q}.mlp.up", f"{p}.mlp.c_fc", bias=True)
        m.linear(f"{q}.mlp.down", f"{p}.mlp.c_proj", bias=True)
    m.norm("head.norm", "transformer.ln_f", bias=True)
    m.head(cfg, "transformer.wte.weight", _tied(cfg, True))


# ---------------------------------------------------------------- openai-gpt

#: GPT-1's own activation table (``afn``): its "gelu" is the tanh approximation.
_OPENAI_GPT_ACTIVATIONS = {"relu": "relu", "silu": "silu", "swish": "silu", "gelu": "gelu_new"}


def _config_openai_gpt(cfg: Any) -> dict:
    """GPT-1 (``openai-gpt``): post-norm blocks (the norm after each residual sum), learned
    positions, biased Conv1D layers, no final norm, a tied head."""
    t = "openai-gpt"
    if cfg.afn not in _OPENAI_GPT_ACTIVATIONS:
        raise unsupported(t, f"afn '{cfg.afn}'")
    d = cfg.n_embd
    config = model_config(
        cfg,
        layers=f"block*{cfg.n_layer}",
        blocks={"block": "(Attn->+)->Norm->(MLP->+)->Norm"},
        defaults={
            "Norm": _layer_norm(cfg.layer_norm_epsilon),
            "Attn": {"heads": cfg.n_head, "pos": "none", "bias": True},
            "MLP": {
                "hidden": 4 * d,
                "act": activation(_OPENAI_GPT_ACTIVATIONS[cfg.afn], t),
                "gated": False,
                "bias": True,
            },
        },
        d_model=d,
        context=cfg.n_positions,
        embed="Embed(pos=learned)",
        tied_by_default=True,
    )
    config["model"]["head"] = config["model"]["head"].removeprefix("Norm->")
    return config


def _weights_openai_gpt(cfg: Any, m: WeightMapper) -> None:
    d = cfg.n_embd
    m.put("embed.embed.tok.weight", "transformer.tokens_embed.weight")
    m.put("embed.embed.pos.weight", "transformer.positions_embed.weight")
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}", f"layers.{i}"
        _conv1d_layer(m, p, q, d)
    m.head(cfg, "transformer.tokens_embed.weight", _tied(cfg, True))


# ---------------------------------------------------------------- biogpt

#: BioGPT's LayerNorms are built with PyTorch's default eps (``layer_norm_eps`` is unused).
BIOGPT_NORM_EPS = 1e-5


def _config_biogpt(cfg: Any) -> dict:
    """BioGPT: OPT's pre-norm layout (learned positions offset by two rows, biases
    everywhere) with token embeddings times ``sqrt(d_model)`` (``scale_embedding``)."""
    t = "biogpt"
    embed = "Embed(pos=learned, pos_offset=2{})".format(
        ", scale=sqrt_d" if cfg.scale_embedding else ""
    )
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": "Norm->Attn->+->Norm->MLP->+"},
        defaults={
            "Norm": _layer_norm(BIOGPT_NORM_EPS),
            "Attn": {"heads": cfg.num_attention_heads, "pos": "none", "bias": True},
            "MLP": {
                "hidden": cfg.intermediate_size,
                "act": activation(cfg.hidden_act, t),
                "gated": False,
                "bias": True,
            },
        },
        embed=embed,
        tied_by_default=True,
    )


def _weights_biogpt(cfg: Any, m: WeightMapper) -> None:
    b = "biogpt"
    m.put("embed.embed.tok.weight", f"{b}.embed_tokens.weight")
    m.put("embed.embed.pos.weight", f"{b}.embed_positions.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"{b}.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.self_attn_layer_norm", bias=True)
        for n, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
            m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{hf}", bias=True)
        m.norm(f"{q}.norm_1", f"{p}.final_layer_norm", bias=True)
        m.linear(f"{q}.mlp.up", f"{p}.fc1", bias=True)
        m.linear(f"{q}.mlp.down", f"{p}.fc2", bias=True)
    m.norm("head.norm", f"{b}.layer_norm", bias=True)
    m.head(cfg, f"{b}.embed_tokens.weight", _tied(cfg, True), name="output_projection")


for _record in (
    Architecture(
        "codegen",
        "CodeGenForCausalLM",
        "transformer",
        config=_config_codegen,
        weights=_weights_codegen,
    ),
    Architecture(
        "gpt_neo",
        "GPTNeoForCausalLM",
        "transformer",
        config=_config_gpt_neo,
        weights=_weights_gpt_neo,
    ),
    Architecture(
        "openai-gpt",
        "OpenAIGPTLMHeadModel",
        "transformer",
        config=_config_openai_gpt,
        weights=_weights_openai_gpt,
    ),
    Architecture(
        "biogpt",
        "BioGptForCausalLM",
        "biogpt",
        config=_config_biogpt,
        weights=_weights_biogpt,
        outside=("output_projection",),
    ),
):
    register_architecture(_record)


# ---------------------------------------------------------------- gpt_neox_japanese


def _config_gpt_neox_japanese(cfg: Any) -> dict:
    """GPT-NeoX-Japanese: GPT-NeoX's sequential pre-norm layers without biases, except one on
    the last layer's attention output (``dense_bias``: its own block, ``last``), and an MLP
    ``intermediate_multiple_size`` times the width."""
    t = "gpt_neox_japanese"
    theta, fraction = default_rope(cfg, t)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    rotary = int(head_dim * fraction)
    L = cfg.num_hidden_layers
    block = "Norm->Attn->+->Norm->MLP->+"
    blocks = {"block": block, "last": block.replace("Attn", "Attn(o_bias=true)", 1)}
    names = ["block"] * (L - 1) + ["last"]
    return model_config(
        cfg,
        layers=compress_layers(names),
        blocks={name: blocks[name] for name in dict.fromkeys(names)},
        defaults={
            "Norm": _layer_norm(cfg.layer_norm_eps),
            "Attn": {
                "heads": cfg.num_attention_heads,
                "pos": "rope",
                "rope_theta": theta,
                "rope_fraction": rotary_fraction(rotary, head_dim),
                "bias": False,
            },
            "MLP": {
                "hidden": int(cfg.hidden_size * cfg.intermediate_multiple_size),
                "act": activation(cfg.hidden_act, t),
                "gated": False,
                "bias": False,
            },
        },
        tied_by_default=True,
    )


def _weights_gpt_neox_japanese(cfg: Any, m: WeightMapper) -> None:
    H, d, b = cfg.num_attention_heads, cfg.hidden_size, "gpt_neox_japanese"
    m.put("embed.embed.tok.weight", f"{b}.embed_in.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"{b}.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=True)
        # fused per head, as GPT-NeoX: rows [q_0 | k_0 | v_0 | q_1 | ...]
        m.split(
            [f"{q}.attn.{n}.weight" for n in "qkv"],
            f"{p}.attention.query_key_value.weight",
            lambda w: [t.reshape(d, d) for t in w.reshape(H, 3, -1, d).unbind(1)],
        )
        m.linear(f"{q}.attn.o", f"{p}.attention.dense", bias=False)
        if i == cfg.num_hidden_layers - 1:
            m.put(f"{q}.attn.o.bias", f"{p}.attention.dense_bias")
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=True)
        m.linear(f"{q}.mlp.up", f"{p}.mlp.dense_h_to_4h", bias=False)
        m.linear(f"{q}.mlp.down", f"{p}.mlp.dense_4h_to_h", bias=False)
    m.norm("head.norm", f"{b}.final_layer_norm", bias=True)
    m.head(cfg, f"{b}.embed_in.weight", _tied(cfg, True), name="embed_out")


# ---------------------------------------------------------------- xglm, ctrl, trocr


def _fairseq_layers(
    cfg: Any, t: str, *, heads: int, hidden: int, act: str, block: str, embed: str
) -> dict:
    """The fairseq decoder layout of XGLM and TrOCR: LayerNorms with bias (PyTorch's eps),
    attention and an ungated MLP with biases, positions added by the embedding."""
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": block},
        defaults={
            "Norm": _layer_norm(FAIRSEQ_NORM_EPS),
            "Attn": {"heads": heads, "pos": "none", "bias": True},
            "MLP": {"hidden": hidden, "act": activation(act, t), "gated": False, "bias": True},
        },
        embed=embed,
        tied_by_default=True,
    )


#: XGLM's and TrOCR's LayerNorms are built with PyTorch's default eps.
FAIRSEQ_NORM_EPS = 1e-5


def _fairseq_layer_weights(m: WeightMapper, p: str, q: str) -> None:
    """``self_attn.{q,k,v,out}_proj``, ``self_attn_layer_norm``, ``fc1``, ``fc2`` and
    ``final_layer_norm`` of a fairseq decoder layer ``p`` -> ``q`` (norms in block order)."""
    m.norm(f"{q}.norm", f"{p}.self_attn_layer_norm", bias=True)
    for n, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
        m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{hf}", bias=True)
    m.norm(f"{q}.norm_1", f"{p}.final_layer_norm", bias=True)
    m.linear(f"{q}.mlp.up", f"{p}.fc1", bias=True)
    m.linear(f"{q}.mlp.down", f"{p}.fc2", bias=True)


def _config_xglm(cfg: Any) -> dict:
    """XGLM: fairseq's pre-norm decoder with sinusoidal positions in fairseq's layout offset by
    two rows (``Embed(pos=sinusoidal, sinusoid=fairseq, pos_offset=2)``), token embeddings
    times ``sqrt(d_model)`` (``scale_embedding``), a final LayerNorm, a tied head."""
    t = "xglm"
    if cfg.pad_token_id is not None and cfg.pad_token_id >= 2:  # its zeroed row is then read
        raise unsupported(
            t, f"pad_token_id={cfg.pad_token_id} (it zeroes position {cfg.pad_token_id - 2})"
        )
    scale = ", scale=sqrt_d" if cfg.scale_embedding else ""
    return _fairseq_layers(
        cfg,
        t,
        heads=cfg.attention_heads,
        hidden=cfg.ffn_dim,
        act=cfg.activation_function,
        block="Norm->Attn->+->Norm->MLP->+",
        embed=f"Embed(pos=sinusoidal, sinusoid=fairseq, pos_offset=2{scale})",
    )


def _weights_xglm(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_layers):
        _fairseq_layer_weights(m, f"model.layers.{i}", f"layers.{i}")
    m.norm("head.norm", "model.layer_norm", bias=True)
    m.head(cfg, "model.embed_tokens.weight", _tied(cfg, True))


def _config_trocr(cfg: Any) -> dict:
    """TrOCR's decoder as a causal LM (``TrOCRForCausalLM``): fairseq's post-norm layers,
    learned positions offset by two rows, token embeddings times ``sqrt(d_model)``
    (``scale_embedding``), a LayerNorm on the embeddings (``layernorm_embedding``), no final
    norm, a tied head without bias. Its layers' cross-attention, which runs only on an image
    encoder's states, is not part of the language model (see ``_weights_trocr``)."""
    t = "trocr"
    if not cfg.use_learned_position_embeddings:  # counted from the padding token, per input
        raise unsupported(t, "use_learned_position_embeddings=false (positions from padding)")
    scale = ", scale=sqrt_d" if cfg.scale_embedding else ""
    embed = f"Embed(pos=learned, pos_offset=2{scale})"
    config = _fairseq_layers(
        cfg,
        t,
        heads=cfg.decoder_attention_heads,
        hidden=cfg.decoder_ffn_dim,
        act=cfg.activation_function,
        block="(Attn->+)->Norm->(MLP->+)->Norm",
        embed=f"{embed}->Norm" if cfg.layernorm_embedding else embed,
    )
    config["model"]["head"] = config["model"]["head"].removeprefix("Norm->")
    return config


def _weights_trocr(cfg: Any, m: WeightMapper) -> None:
    """A saved ``TrOCRForCausalLM`` holds each layer's cross-attention (``encoder_attn``,
    ``encoder_attn_layer_norm``: the class forces ``is_decoder``), which it runs only when
    given an encoder's hidden states, never as a language model: taken by name and dropped."""
    b = "model.decoder"
    m.put("embed.embed.tok.weight", f"{b}.embed_tokens.weight")
    m.put("embed.embed.pos.weight", f"{b}.embed_positions.weight")
    if cfg.layernorm_embedding:
        m.norm("embed.norm", f"{b}.layernorm_embedding", bias=True)
    for i in range(cfg.decoder_layers):
        p = f"{b}.layers.{i}"
        _fairseq_layer_weights(m, p, f"layers.{i}")
        cross = [
            f"{p}.encoder_attn.{n}_proj.{k}"
            for n in ("q", "k", "v", "out")
            for k in ("weight", "bias")
        ]
        for name in [
            *cross,
            f"{p}.encoder_attn_layer_norm.weight",
            f"{p}.encoder_attn_layer_norm.bias",
        ]:
            if m.has(name):
                m.get(name)
    m.head(cfg, f"{b}.embed_tokens.weight", _tied(cfg, True), name="output_projection")


def _config_ctrl(cfg: Any) -> dict:
    """CTRL: pre-norm layers (LayerNorms with eps 1e-6, whatever ``layer_norm_epsilon`` says:
    it sets the final norm's), biased attention and ReLU MLP, sinusoidal positions with every
    sine before every cosine (``sinusoid=halves``), token embeddings times ``sqrt(d_model)``,
    a tied head with a bias."""
    config = model_config(
        cfg,
        layers=f"block*{cfg.n_layer}",
        blocks={"block": "Norm->Attn->+->Norm->MLP->+"},
        defaults={
            "Norm": _layer_norm(CTRL_NORM_EPS),
            "Attn": {"heads": cfg.n_head, "pos": "none", "bias": True},
            "MLP": {"hidden": cfg.dff, "act": "relu", "gated": False, "bias": True},
            "Head": {"bias": True},
        },
        d_model=cfg.n_embd,
        context=cfg.n_positions,
        embed="Embed(pos=sinusoidal, sinusoid=halves, scale=sqrt_d)",
        tied_by_default=True,
    )
    if cfg.layer_norm_epsilon != CTRL_NORM_EPS:
        head = config["model"]["head"].removeprefix("Norm->")
        config["model"]["head"] = f"Norm(eps={cfg.layer_norm_epsilon!r})->{head}"
    return config


#: CTRL's layers build their LayerNorms with eps 1e-6 (``layer_norm_epsilon`` is the final's).
CTRL_NORM_EPS = 1e-6


def _weights_ctrl(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "transformer.w.weight")
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.layernorm1", bias=True)
        for n, hf in (("q", "Wq"), ("k", "Wk"), ("v", "Wv"), ("o", "dense")):
            m.linear(f"{q}.attn.{n}", f"{p}.multi_head_attention.{hf}", bias=True)
        m.norm(f"{q}.norm_1", f"{p}.layernorm2", bias=True)
        m.linear(f"{q}.mlp.up", f"{p}.ffn.0", bias=True)
        m.linear(f"{q}.mlp.down", f"{p}.ffn.2", bias=True)
    m.norm("head.norm", "transformer.layernorm", bias=True)
    m.head(cfg, "transformer.w.weight", _tied(cfg, True), bias=True)


for _record in (
    Architecture(
        "gpt_neox_japanese",
        "GPTNeoXJapaneseForCausalLM",
        "gpt_neox_japanese",
        config=_config_gpt_neox_japanese,
        weights=_weights_gpt_neox_japanese,
        outside=("embed_out",),
    ),
    Architecture("xglm", "XGLMForCausalLM", "model", config=_config_xglm, weights=_weights_xglm),
    Architecture(
        "trocr",
        "TrOCRForCausalLM",
        "model",
        config=_config_trocr,
        weights=_weights_trocr,
        outside=("output_projection",),
    ),
    Architecture(
        "ctrl", "CTRLLMHeadModel", "transformer", config=_config_ctrl, weights=_weights_ctrl
    ),
):
    register_architecture(_record)
