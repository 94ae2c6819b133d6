"""Small Hugging Face models shared by the import, export and generation tests: the tiny
configs of the architectures in ``tests/test_hf.py`` (2 layers, width 64) and one way to make
a transformers model whose every weight is random (norms and biases too, so no agreement is
accidental)."""

from __future__ import annotations

from typing import Any

import torch

V = 97  # vocabulary
T = 24  # sequence length: longer than the sliding windows below


def randomised(model: torch.nn.Module, seed: int = 0) -> Any:
    """``model`` with every parameter (and the experts' selection biases, buffers: DeepSeek-V3's
    ``e_score_correction_bias``, LFM2-MoE's ``expert_bias``) re-randomised, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.ndim == 1 else 0.15))
        for name, buffer in model.named_buffers():
            if name.endswith(("e_score_correction_bias", "expert_bias")):
                buffer.copy_(torch.randn(buffer.shape, generator=gen) * 0.3)
    return model.eval()


def random_model(cls: Any, config: Any, seed: int = 0) -> Any:
    """A ``cls(config)`` built under ``seed``, every weight random."""
    torch.manual_seed(seed)
    return randomised(cls(config), seed)


def token_ids(seed: int = 1, batch: int = 2, length: int = T, vocab: int = V) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def small_config(name: str, **extra: Any) -> tuple[Any, Any]:
    """``(model class, config)``: a tiny (2 layers, d 64) config of GPT-2, Llama, Mistral,
    Mixtral, Gemma 2, GPT-NeoX or GPT-J, eager attention."""
    import transformers

    common = {"attn_implementation": "eager"}
    llama = dict(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    if name == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=V,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
            **common,
            **extra,
        )
        return transformers.GPT2LMHeadModel, cfg
    if name == "llama":
        return transformers.LlamaForCausalLM, transformers.LlamaConfig(**llama, **common, **extra)
    if name == "mistral":
        cfg = transformers.MistralConfig(**llama, sliding_window=8, **common, **extra)
        return transformers.MistralForCausalLM, cfg
    if name == "mixtral":
        cfg = transformers.MixtralConfig(
            **llama,
            sliding_window=8,
            num_local_experts=4,
            num_experts_per_tok=2,
            router_aux_loss_coef=0.02,
            experts_implementation="eager",
            **common,
            **extra,
        )
        return transformers.MixtralForCausalLM, cfg
    if name == "gemma2":
        gemma = dict(
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        )
        cfg = transformers.Gemma2Config(**{**llama, **gemma, **common, **extra})
        return transformers.Gemma2ForCausalLM, cfg
    if name == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(
            vocab_size=V,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            rotary_pct=0.5,
            rotary_emb_base=300.0,
            **common,
            **extra,
        )
        return transformers.GPTNeoXForCausalLM, cfg
    if name == "gptj":
        cfg = transformers.GPTJConfig(
            vocab_size=V,
            n_embd=64,
            n_layer=2,
            n_head=4,
            rotary_dim=8,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
            **common,
        )
        return transformers.GPTJForCausalLM, cfg
    raise KeyError(name)


def small_model(name: str, seed: int = 0, **extra: Any) -> Any:
    """A random transformers model of ``small_config(name, **extra)``."""
    return random_model(*small_config(name, **extra), seed)
