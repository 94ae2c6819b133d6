"""Hugging Face import of the hybrid architectures: Qwen3-Next (Gated DeltaNet and gated
attention layers, MoE with a gated shared expert) and LFM2 (gated short convolutions and
attention). Small random configs, every parameter re-randomised, float32: logits within 1e-4,
equal greedy continuations, also decoding through the state."""

from __future__ import annotations

from functools import partial

import pytest
import torch

transformers = pytest.importorskip("transformers")

from blockdsl import hf  # noqa: E402
from tests.hf_configs import V, random_model, token_ids  # noqa: E402

T = 20
TOL = 1e-4


def _qwen3_next(**extra):
    config = dict(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5},
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=8,
        linear_conv_kernel_dim=4,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        mlp_only_layers=[2],
        max_position_embeddings=64,
        attn_implementation="eager",
        experts_implementation="eager",
    )
    config.update(extra)
    return transformers.Qwen3NextForCausalLM, transformers.Qwen3NextConfig(**config)


def _lfm2(**extra):
    config = dict(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        layer_types=["conv", "conv", "full_attention", "conv"],
        num_attention_heads=4,
        num_key_value_heads=2,
        conv_L_cache=3,
        block_multiple_of=16,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        attn_implementation="eager",
    )
    config.update(extra)
    return transformers.Lfm2ForCausalLM, transformers.Lfm2Config(**config)


def _random(make, seed: int = 0, **extra):
    return random_model(*make(**extra), seed)


_ids = partial(token_ids, length=T)


VARIANTS = [
    (_qwen3_next, {}),
    (_qwen3_next, {"decoder_sparse_step": 2, "mlp_only_layers": [], "tie_word_embeddings": True}),
    # head_dim 16 x 0.3125 = 5 rotary dims: odd, which transformers runs as GPT-NeoX does
    (_qwen3_next, {"rope_parameters": {"rope_theta": 500.0, "partial_rotary_factor": 0.3125}}),
    (_lfm2, {}),
    (_lfm2, {"conv_bias": True, "tie_word_embeddings": False, "block_auto_adjust_ff_dim": False}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("make", "extra"), VARIANTS, ids=lambda v: getattr(v, "__name__", v))
def test_logits_and_greedy_match(make, extra):
    hf_model = _random(make, **extra)
    model = hf.from_hf(hf_model)
    ids = _ids()
    with torch.no_grad():
        diff = (hf_model(ids).logits - model(ids).logits).abs().max().item()
        assert diff <= TOL, f"max abs diff {diff:.3g}"
        prompt = _ids(seed=2, batch=1, length=6)
        theirs = hf_model.generate(
            prompt, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    assert torch.equal(model.generate(prompt, 10, greedy=True), theirs)  # decoded with states


def test_layer_pattern_becomes_a_layers_chain():
    _, cfg = _qwen3_next()
    config = hf.to_config(cfg)
    assert config["model"]["layers"] == "linear_moe->full_moe->linear_mlp->full_moe"
    assert "GatedDeltaNet" in config["blocks"]["linear_moe"]
    assert config["defaults"]["Attn"]["gate"] is True
    _, cfg = _lfm2(layer_types=["conv", "full_attention"] * 2)
    assert hf.to_config(cfg)["model"]["layers"] == "(conv->attn)*2"


def test_unsupported_options_are_refused_by_name():
    _, cfg = _qwen3_next(hidden_act="gelu")
    with pytest.raises(hf.HFImportError, match="hidden_act"):
        hf.to_config(cfg)
    _, cfg = _lfm2()
    cfg.layer_types = ["conv", "sliding_attention", "conv", "conv"]
    with pytest.raises(hf.HFImportError, match="layer_types"):
        hf.to_config(cfg)
