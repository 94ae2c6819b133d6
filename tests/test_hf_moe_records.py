"""Every mixture-of-experts import record, through the checkpoint a user meets: a tiny random
transformers model (every parameter re-randomised) is written with ``save_pretrained``, which
stores one tensor per expert as the Hub checkpoints do, and read back with
``hf.from_pretrained_dir`` (what ``blockdsl compile --from-hf`` and ``--init hf:`` use). Its
float32 logits must be within 1e-4 of the transformers model's, and its cached greedy
continuation equal to transformers' uncached one.

``MOE_RECORDS`` is the table: one row per (model_type, tiny config), run by one harness; a new
record costs a row. ``EXPORTS`` says what ``export_hf`` makes of each record added with it:
the transformers class it writes (``export_hf`` loads the folder back and compares logits), or
the words of its refusal."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402

from blockdsl import hf  # noqa: E402
from blockdsl.hf import HFExportError, export_hf  # noqa: E402
from blockdsl.hf.base import ARCHITECTURES  # noqa: E402
from tests.hf_configs import V, random_model, token_ids  # noqa: E402

TOL = 1e-4

#: What every row shares: the vocabulary and transformers' reference kernels.
COMMON: dict[str, Any] = dict(
    vocab_size=V, attn_implementation="eager", experts_implementation="eager"
)
#: A small Llama-like trunk (3 layers, width 32, GQA) most rows start from.
TRUNK: dict[str, Any] = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rope_parameters={"rope_type": "default", "rope_theta": 500.0},
)
#: DeepSeek-style experts: 4 routed (2 per token) in 2 groups, a shared one, a dense first layer.
DEEPSEEK_EXPERTS: dict[str, Any] = dict(
    intermediate_size=48,
    moe_intermediate_size=16,
    n_routed_experts=4,
    num_experts_per_tok=2,
    n_shared_experts=1,
    first_k_dense_replace=1,
    n_group=2,
    topk_group=1,
    routed_scaling_factor=1.5,
)
#: Multi-head latent attention sizes (DeepSeek-V2/V3 and the records that reuse it).
MLA: dict[str, Any] = dict(
    num_key_value_heads=4,
    kv_lora_rank=12,
    q_lora_rank=20,
    qk_nope_head_dim=8,
    qk_rope_head_dim=4,
    v_head_dim=6,
)

MOE_RECORDS: list[tuple[str, dict[str, Any]]] = [
    (
        "mixtral",
        dict(**TRUNK, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2),
    ),
    (
        "qwen2_moe",
        dict(
            **TRUNK,
            intermediate_size=48,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
            mlp_only_layers=[0],
            qkv_bias=True,
        ),
    ),
    # a shared expert whose width is no multiple of the experts' (24 next to 16)
    (
        "qwen2_moe",
        dict(
            **TRUNK,
            intermediate_size=48,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=24,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=2,
        ),
    ),
    (
        "olmoe",
        dict(**TRUNK, intermediate_size=16, num_experts=4, num_experts_per_tok=2),
    ),
    (
        "deepseek_v2",
        {
            **TRUNK,
            **MLA,
            **DEEPSEEK_EXPERTS,
            "q_lora_rank": None,
            "topk_method": "group_limited_greedy",
        },
    ),
    ("deepseek_v3", {**TRUNK, **MLA, **DEEPSEEK_EXPERTS, "norm_topk_prob": True}),
    (
        "jamba",
        dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            expert_layer_period=2,
            expert_layer_offset=1,
            attn_layer_period=4,
            attn_layer_offset=2,
            mamba_d_state=8,
            mamba_dt_rank=4,
            use_mamba_kernels=False,
        ),
    ),
    (
        "qwen3_next",
        dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 500.0,
                "partial_rotary_factor": 0.5,
            },
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            linear_conv_kernel_dim=4,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=24,  # no multiple of the experts' 16
            mlp_only_layers=[2],
            max_position_embeddings=64,
        ),
    ),
    # ---- softmax top-k experts on other blocks
    (
        "qwen3_moe",
        dict(
            **TRUNK,
            intermediate_size=48,
            moe_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            mlp_only_layers=[0],
            head_dim=16,
            attention_bias=True,
            norm_topk_prob=True,
        ),
    ),
    (
        "lfm2_moe",
        dict(
            hidden_size=32,
            intermediate_size=48,
            moe_intermediate_size=16,
            num_hidden_layers=4,
            layer_types=["conv", "full_attention", "conv", "conv"],
            num_attention_heads=4,
            num_key_value_heads=2,
            num_dense_layers=1,
            num_experts=4,
            num_experts_per_tok=2,
            routed_scaling_factor=1.5,
            max_position_embeddings=64,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        ),
    ),
    (
        "mellum",
        {
            **TRUNK,
            "head_dim": 8,
            "intermediate_size": 48,
            "moe_intermediate_size": 16,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            "mlp_layer_types": ["dense", "sparse", "sparse"],
            "rope_parameters": {  # a rotary base per layer type
                "full_attention": {"rope_type": "default", "rope_theta": 500.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
            },
        },
    ),
    (
        "ernie4_5_moe",
        dict(
            **TRUNK,
            intermediate_size=48,
            moe_intermediate_size=16,
            moe_num_experts=4,
            moe_k=2,
            moe_num_shared_experts=1,
            moe_layer_start_index=1,
            tie_word_embeddings=False,
        ),
    ),
    (
        "granitemoe",
        dict(
            **TRUNK,
            intermediate_size=16,
            num_local_experts=4,
            num_experts_per_tok=2,
            embedding_multiplier=1.7,
            residual_multiplier=0.6,
            attention_multiplier=0.3,
            logits_scaling=2.5,
        ),
    ),
    (
        "granitemoeshared",
        dict(
            **TRUNK,
            intermediate_size=16,
            shared_intermediate_size=24,  # no multiple of the experts' 16
            num_local_experts=4,
            num_experts_per_tok=2,
            embedding_multiplier=1.7,
            residual_multiplier=0.6,
        ),
    ),
    (
        "flex_olmo",
        dict(
            **TRUNK,
            intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            pad_token_id=0,  # its defaults lie outside the tiny vocabulary
            eos_token_id=0,
        ),
    ),
    # ---- DeepSeek-V3 routing after other attention
    (
        "dots1",
        {
            **TRUNK,
            **DEEPSEEK_EXPERTS,
            "sliding_window": 4,
            "max_window_layers": 2,  # layers 2.. have the window
            "norm_topk_prob": True,
        },
    ),
    (
        "glm4_moe",
        {
            **TRUNK,
            **DEEPSEEK_EXPERTS,
            "attention_bias": True,
            "use_qk_norm": True,
            "head_dim": 16,
            "partial_rotary_factor": 0.5,
        },
    ),
    (
        "exaone_moe",
        dict(
            **TRUNK,
            head_dim=8,
            intermediate_size=48,
            moe_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            num_shared_experts=1,
            n_group=2,
            topk_group=1,
            routed_scaling_factor=1.5,
            sliding_window=4,
            sliding_window_pattern=3,  # local, local, global (no positions)
            mlp_layer_types=["dense", "sparse", "sparse"],
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
    # Glm4MoeForCausalLM under other names: the full rotary is their default
    ("sarvam_moe", {**TRUNK, **DEEPSEEK_EXPERTS, "head_dim": 16, "attention_bias": True}),
    ("param2moe", {**TRUNK, **DEEPSEEK_EXPERTS, "head_dim": 16, "tie_word_embeddings": False}),
    ("solar_open", {**TRUNK, **DEEPSEEK_EXPERTS, "head_dim": 16, "attention_bias": True}),
    (
        "glm4_moe_lite",
        {**TRUNK, **MLA, **DEEPSEEK_EXPERTS, "mlp_layer_types": ["dense", "sparse", "dense"]},
    ),
    (
        "minimax_m2",
        dict(
            **TRUNK,
            head_dim=16,
            rotary_dim=8,
            intermediate_size=16,
            num_local_experts=4,
            num_experts_per_tok=2,
        ),
    ),
    # ---- added for the coverage of issue 32: other names, gated attention, stacked experts
    ("sarvam_mla", {**TRUNK, **MLA, **DEEPSEEK_EXPERTS, "norm_topk_prob": True}),
    (
        "minicpm5_moe",
        {
            **TRUNK,
            **DEEPSEEK_EXPERTS,
            "head_dim": 8,
            "attention_bias": True,
            "mlp_layer_types": ["dense", "sparse", "sparse"],
        },
    ),
    (
        "aria_text",
        dict(
            **TRUNK,
            intermediate_size=16,
            moe_num_experts=4,
            moe_topk=2,
            moe_num_shared_experts=2,
            pad_token_id=0,
        ),
    ),
    (
        "granitemoe_swa",
        dict(
            **TRUNK,
            intermediate_size=16,
            shared_intermediate_size=24,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            layer_rope_theta=[500.0, 0, 50.0],
            embedding_multiplier=1.7,
            residual_multiplier=0.6,
            attention_multiplier=0.3,
            logits_scaling=2.5,
        ),
    ),
    (
        "cohere2_moe",
        dict(
            **TRUNK,
            head_dim=8,
            intermediate_size=16,
            prefix_dense_intermediate_size=40,
            num_experts=4,
            num_experts_per_tok=2,
            num_shared_experts=1,  # averaged with the routed experts (the default strategy)
            expert_selection_fn="sigmoid",
            sliding_window=4,
            layer_types=["full_attention", "sliding_attention", "full_attention"],
            mlp_layer_types=["dense", "sparse", "sparse"],  # layer 0 rotates, layer 2 does not
            logit_scale=0.5,
            bos_token_id=0,  # its defaults lie outside the tiny vocabulary
            eos_token_id=0,
        ),
    ),
    (
        "afmoe",
        dict(
            **TRUNK,
            head_dim=8,
            intermediate_size=48,
            moe_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            num_shared_experts=1,
            num_dense_layers=1,
            route_scale=1.5,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            mup_enabled=True,
        ),
    ),
    (
        "axk1",
        {
            **TRUNK,
            **MLA,
            **{k: v for k, v in DEEPSEEK_EXPERTS.items() if k != "first_k_dense_replace"},
            "mlp_layer_types": ["dense", "sparse", "sparse"],
            "bos_token_id": 0,  # its defaults lie outside the tiny vocabulary
            "eos_token_id": 0,
        },
    ),
    (
        "lara_mini",
        dict(
            hidden_size=32,
            num_hidden_layers=3,
            layer_types=["linear_attention", "sliding_attention", "full_attention"],
            sliding_window=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            linear_conv_kernel_dim=4,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=24,
            max_position_embeddings=64,
            eos_token_id=0,
        ),
    ),
    # ---- attention-interior parts (slot contents)
    (
        "gpt_oss",
        {
            **TRUNK,
            "head_dim": 8,
            "intermediate_size": 16,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            "swiglu_limit": 0.5,  # small enough that random weights meet the clamps
            "rope_parameters": {  # its yarn, without truncation
                "rope_type": "yarn",
                "rope_theta": 500.0,
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
            },
        },
    ),
    (  # the norms of the rotated heads; softmax top-k experts beside an always-on shared MLP
        "hunyuan_v1_moe",
        {**TRUNK, "head_dim": 8, "intermediate_size": 16, "num_experts": 4, "moe_topk": 2},
    ),
    (  # sinks on windowed rotary and full NoPE layers (its default pattern), sigmoid experts
        "flint",
        {
            **TRUNK,
            "num_hidden_layers": 4,
            "head_dim": 8,
            "intermediate_size": 48,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 24,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": 5,
        },
    ),
    (  # Qwen3's attention, sigmoid routing with a selection bias, a dense first layer
        "hy_v3",
        {
            **TRUNK,
            "head_dim": 8,
            "intermediate_size": 48,
            "moe_intermediate_size": 16,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "num_shared_experts": 1,
            "router_scaling_factor": 1.5,
        },
    ),
    (  # narrower value heads scaled, sinks and twice the kv heads on the sliding layers, a
        # partial rotary of odd size (int(16 * 0.334) = 5) with a base per layer type, V3 routing
        "mimo_v2_flash",
        {
            **TRUNK,
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 5000.0},
                "sliding_attention": {
                    "rope_type": "default",
                    "rope_theta": 500.0,
                    "partial_rotary_factor": 0.5,
                },
            },
            "head_dim": 16,
            "v_head_dim": 8,
            "intermediate_size": 48,
            "moe_intermediate_size": 16,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "n_group": 2,
            "topk_group": 1,
            "routed_scaling_factor": 1.5,
            "sliding_window": 4,
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
            "mlp_layer_types": ["dense", "sparse", "sparse"],
        },
    ),
]


#: Records whose checkpoints store the experts stacked (``input_linear [E, 2I, D]``...).
STACKED_ON_DISK = {
    "granitemoe", "granitemoeshared", "granitemoe_swa", "aria_text", "lara_mini", "gpt_oss",
}  # fmt: skip


def _saved_names(folder) -> list[str]:
    names: list[str] = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            names.extend(f.keys())
    return names


def _hf_model(model_type: str, kwargs: dict[str, Any]) -> Any:
    # a copy: transformers writes into the rope_parameters dict it is given, which rows share
    config = transformers.AutoConfig.for_model(model_type, **copy.deepcopy({**COMMON, **kwargs}))
    cls = getattr(transformers, ARCHITECTURES[model_type].hf_class)
    return random_model(cls, config)


#: The rows of every run: softmax experts on another block, and gpt-oss (the only test of
#: sinks, router and expert biases and the clamped SwiGLU); the others (DeepSeek-V3's groups
#: after GQA, sigmoid with a selection bias, ...) run with -m long.
EVERY_RUN = ("qwen3_moe", "gpt_oss")


def _moe_rows() -> list:
    seen: set[str] = set()
    rows = []
    for model_type, kwargs in MOE_RECORDS:
        first = model_type in EVERY_RUN and model_type not in seen
        seen.add(model_type)
        marks = (pytest.mark.slow,) if first else (pytest.mark.slow, pytest.mark.long)
        rows.append(pytest.param(model_type, kwargs, id=model_type, marks=marks))
    return rows


@pytest.mark.parametrize(("model_type", "kwargs"), _moe_rows())
def test_saved_checkpoint_imports_with_parity(model_type, kwargs, tmp_path):
    hf_model = _hf_model(model_type, kwargs)
    hf_model.save_pretrained(tmp_path)
    # the layout under test: one tensor per expert, as save_pretrained and the Hub store them
    # (Granite-MoE's checkpoints stack them under names of their own)
    per_expert = any(re.search(r"\.experts\.0\.", name) for name in _saved_names(tmp_path))
    assert per_expert != (model_type in STACKED_ON_DISK)
    model = hf.from_pretrained_dir(tmp_path)
    ids = token_ids(length=16)
    with torch.no_grad():
        diff = (hf_model(ids).logits - model(ids).logits).abs().max().item()
        assert diff <= TOL, f"{model_type}: max abs diff {diff:.3g}"
        prompt = token_ids(seed=2, batch=1, length=6)
        theirs = hf_model.generate(
            prompt,
            max_new_tokens=8,
            do_sample=False,
            use_cache=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    assert torch.equal(model.generate(prompt, 8, greedy=True), theirs)  # decoded with the cache


#: model_type -> (changes to its MOE_RECORDS config, the class export_hf writes or the words
#: of its refusal). The changes keep layer patterns the export's search finds one field at a
#: time (windows from sliding_window alone, dense layers first).
EXPORTS: dict[str, tuple[dict[str, Any], str]] = {
    "qwen3_moe": ({}, "Qwen3MoeForCausalLM"),
    "lfm2_moe": ({}, "ShortConv has no counterpart in any transformers architecture"),
    "ernie4_5_moe": ({}, "Ernie4_5_MoeForCausalLM"),
    "flex_olmo": ({}, "FlexOlmoForCausalLM"),
    "granitemoe": ({}, "GraniteMoeForCausalLM"),
    "granitemoeshared": ({}, "GraniteMoeSharedForCausalLM"),
    # Qwen3's attention without biases is GLM-4.5's with use_qk_norm and a full rotary
    "dots1": ({"sliding_window": None}, "Glm4MoeForCausalLM"),
    "glm4_moe": ({}, "Glm4MoeForCausalLM"),
    "sarvam_moe": ({}, "Glm4MoeForCausalLM"),
    "param2moe": ({}, "Glm4MoeForCausalLM"),
    "solar_open": ({}, "SolarOpenForCausalLM"),
    "glm4_moe_lite": ({}, "Glm4MoeLiteForCausalLM"),
    "minimax_m2": ({}, "MiniMaxM2ForCausalLM"),
    "sarvam_mla": ({}, "DeepseekV3ForCausalLM"),  # its own class is DeepSeek-V3's
    "minicpm5_moe": ({}, "MiniCPM5MoeForCausalLM"),
    "aria_text": ({}, "AriaTextForCausalLM"),
    "granitemoe_swa": ({}, "no transformers architecture computes this model"),
    # Scale(by=0.5) averages the shared and routed experts: no transformers class has it
    "cohere2_moe": ({}, "no transformers architecture has all of .*Scale"),
    # the search keeps the class's default layer_types (every 4th layer full)
    "afmoe": ({"num_hidden_layers": 4, "layer_types": None}, "AfmoeForCausalLM"),
    "axk1": ({}, "AXK1ForCausalLM"),
    "lara_mini": ({"num_hidden_layers": 5, "layer_types": None}, "LaraMiniForCausalLM"),
    "gpt_oss": ({}, "GptOssForCausalLM"),
    "hunyuan_v1_moe": ({}, "HunYuanMoEV1ForCausalLM"),
    "flint": ({}, "FlintForCausalLM"),
    "hy_v3": ({}, "HYV3ForCausalLM"),
    # the search sets no per-layer-type field (kv heads doubled on the sliding layers, sinks)
    "mimo_v2_flash": ({}, "no transformers architecture computes this model"),
    "exaone_moe": (
        {
            "num_hidden_layers": 4,
            "sliding_window_pattern": 4,
            "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"],
        },
        "ExaoneMoeForCausalLM",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_type",
    [
        pytest.param(name, marks=() if name in EVERY_RUN else pytest.mark.long)
        for name in sorted(EXPORTS)
    ],
)  # an export search takes 5 to 60 s on two cores: the rows of every run, the rest -m long
def test_export_back_or_refusal_by_name(model_type, tmp_path):
    changes, expected = EXPORTS[model_type]
    kwargs = {**dict(MOE_RECORDS)[model_type], **changes}
    model = hf.from_hf(_hf_model(model_type, kwargs))
    if expected.endswith("ForCausalLM"):
        folder = export_hf(model, tmp_path / "hf")  # verified: loaded back, logits compared
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == [expected]
    else:
        with pytest.raises(HFExportError, match=expected):
            export_hf(model, tmp_path / "hf")
