"""Hugging Face import of the dense decoders (blockdsl/interop/hf_dense.py) and the features
they need: each class converts to a blockdsl model with the same logits (float32, max abs diff
<= 1e-4) and greedy continuations; RoPE scalings match transformers'; every unsupported option
is refused by name."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from blockdsl import hf  # noqa: E402

V = 97
T = 24  # longer than the windows and the LongRoPE original context below
TOL = 1e-4

BASE = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    attn_implementation="eager",
)


def _config(name: str, **extra):
    """``(model class, config)`` of a tiny model of each class, its options switched on."""
    t = transformers
    rope = {"rope_type": "default", "rope_theta": 500.0}
    configs = {
        "qwen2": (
            t.Qwen2ForCausalLM,
            t.Qwen2Config,
            dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),
        ),
        "qwen3": (t.Qwen3ForCausalLM, t.Qwen3Config, dict(head_dim=16, rope_parameters=rope)),
        "gemma": (t.GemmaForCausalLM, t.GemmaConfig, dict(head_dim=16)),
        "gemma3_text": (
            t.Gemma3ForCausalLM,
            t.Gemma3TextConfig,
            dict(
                head_dim=16,
                query_pre_attn_scalar=24,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                attn_logit_softcapping=5.0,
                final_logit_softcapping=3.0,
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                    "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
                },
            ),
        ),
        "olmo": (t.OlmoForCausalLM, t.OlmoConfig, dict(clip_qkv=0.5)),
        "olmo2": (t.Olmo2ForCausalLM, t.Olmo2Config, {}),
        "cohere": (
            t.CohereForCausalLM,
            t.CohereConfig,
            dict(use_qk_norm=True, logit_scale=0.5, num_key_value_heads=4),
        ),
        "stablelm": (
            t.StableLmForCausalLM,
            t.StableLmConfig,
            dict(qk_layernorm=True, use_qkv_bias=True, partial_rotary_factor=0.5),
        ),
        "phi3": (
            t.Phi3ForCausalLM,
            t.Phi3Config,
            dict(
                pad_token_id=0,
                bos_token_id=0,
                eos_token_id=0,
                original_max_position_embeddings=16,
                partial_rotary_factor=0.5,
                rope_parameters={
                    "rope_type": "longrope",
                    "rope_theta": 500.0,
                    "short_factor": [1.0, 1.5],
                    "long_factor": [2.0, 4.0],
                    "partial_rotary_factor": 0.5,
                },
            ),
        ),
        "granite": (
            t.GraniteForCausalLM,
            t.GraniteConfig,
            dict(
                embedding_multiplier=2.0,
                residual_multiplier=0.5,
                attention_multiplier=0.2,
                logits_scaling=4.0,
            ),
        ),
        "starcoder2": (
            t.Starcoder2ForCausalLM,
            t.Starcoder2Config,
            dict(sliding_window=8, use_bias=True),
        ),
        "persimmon": (
            t.PersimmonForCausalLM,
            t.PersimmonConfig,
            dict(qk_layernorm=True, partial_rotary_factor=0.5, num_key_value_heads=4),
        ),
        "nemotron": (
            t.NemotronForCausalLM,
            t.NemotronConfig,
            dict(partial_rotary_factor=0.5, attention_bias=True, mlp_bias=True),
        ),
        "llama": (t.LlamaForCausalLM, t.LlamaConfig, {}),
    }
    model_cls, config_cls, own = configs[name]
    return model_cls, config_cls(**{**BASE, **own, **extra})


CLASSES = [
    "qwen2",
    "qwen3",
    "gemma",
    "gemma3_text",
    "olmo",
    "olmo2",
    "cohere",
    "stablelm",
    "phi3",
    "granite",
    "starcoder2",
    "persimmon",
    "nemotron",
]


def _hf_model(name: str, seed: int = 0, **extra):
    """A random HF model with every parameter re-randomised (norm weights and biases too)."""
    torch.manual_seed(seed)
    cls, cfg = _config(name, **extra)
    model = cls(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.ndim == 1 else 0.15))
    return model.eval()


def _ids(seed: int = 1, batch: int = 2, length: int = T) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _check_parity(hf_model, model, length: int = T) -> None:
    ids = _ids(length=length)
    diff = (hf_model(ids).logits - model(ids)).abs().max().item()
    assert diff <= TOL, f"max abs diff {diff:.3g}"
    ids = _ids(seed=2, batch=1, length=8)  # greedy: the same next token at every step
    for _ in range(length - 8):
        ours = model(ids)[:, -1].argmax(-1)
        theirs = hf_model(ids).logits[:, -1].argmax(-1)
        assert torch.equal(ours, theirs), f"greedy continuations differ after {ids.shape[1]}"
        ids = torch.cat([ids, ours[:, None]], dim=1)


@pytest.mark.parametrize("name", CLASSES)
def test_logits_and_greedy_match(name):
    hf_model = _hf_model(name)
    model = hf.from_hf(hf_model)
    assert not model.training
    _check_parity(hf_model, model)
