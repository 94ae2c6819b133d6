"""Hugging Face import of the state-space and hybrid architectures: Mamba, Mamba2,
RecurrentGemma, Jamba, Bamba and Falcon-H1. Small random configs with every parameter
re-randomised (float32), the hybrids with their real layer patterns: logits within 1e-4 and the
same greedy continuations; the layer-pattern fields become readable ``layers`` chains."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from blockdsl import hf  # noqa: E402
from tests.hf_configs import V, random_model  # noqa: E402

T, TOL = 20, 1e-4


def _cfg(name: str):
    t = transformers
    if name == "mamba":
        cfg = t.MambaConfig(
            vocab_size=V, hidden_size=32, state_size=8, num_hidden_layers=2, time_step_rank=4,
            intermediate_size=64, use_bias=True,
        )  # fmt: skip
        return t.MambaForCausalLM, cfg
    if name == "mamba2":
        cfg = t.Mamba2Config(
            vocab_size=V, hidden_size=32, state_size=8, num_hidden_layers=2, head_dim=16,
            num_heads=4, n_groups=2, expand=2, chunk_size=8,
        )  # fmt: skip
        return t.Mamba2ForCausalLM, cfg
    if name == "recurrent_gemma":
        cfg = t.RecurrentGemmaConfig(
            vocab_size=V, hidden_size=32, lru_width=32, num_attention_heads=4,
            num_key_value_heads=1, head_dim=8, num_hidden_layers=5, intermediate_size=96,
            attention_window_size=6, block_types=["recurrent", "recurrent", "attention"],
            attn_implementation="eager",
        )  # fmt: skip
        return t.RecurrentGemmaForCausalLM, cfg
    if name == "jamba":
        cfg = t.JambaConfig(
            vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=8,
            num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
            expert_layer_period=2, expert_layer_offset=1, attn_layer_period=4,
            attn_layer_offset=2, mamba_d_state=8, mamba_dt_rank=4, use_mamba_kernels=False,
            attn_implementation="eager", experts_implementation="eager",
        )  # fmt: skip
        return t.JambaForCausalLM, cfg
    if name == "bamba":
        cfg = t.BambaConfig(
            vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1, 3],
            mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=8,
            mamba_chunk_size=8, attn_implementation="eager",
        )  # fmt: skip
        return t.BambaForCausalLM, cfg
    if name == "falcon_h1":
        cfg = t.FalconH1Config(
            vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, mamba_d_ssm=64,
            mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=8,
            mamba_chunk_size=8, mamba_rms_norm=True, attn_implementation="eager",
            embedding_multiplier=1.7, lm_head_multiplier=0.6, mlp_multipliers=[0.8, 1.3],
            key_multiplier=0.7, attention_in_multiplier=1.2, attention_out_multiplier=0.9,
            ssm_multipliers=[1.1, 0.9, 1.2, 0.8, 1.05], ssm_in_multiplier=1.3,
            ssm_out_multiplier=0.75,
        )  # fmt: skip
        return t.FalconH1ForCausalLM, cfg
    raise KeyError(name)


def _hf_model(name: str):
    return random_model(*_cfg(name))


NAMES = ["mamba", "mamba2", "recurrent_gemma", "jamba", "bamba", "falcon_h1"]


@pytest.mark.parametrize("name", NAMES)
def test_logits_and_greedy_continuations_match(name):
    model = _hf_model(name)
    ours = hf.from_hf(model)
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(idx).logits
        got = ours(idx).logits
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    prompt = idx[:, :6]
    # an explicit mask: transformers would otherwise take every pad_token_id in it for padding
    mask = torch.ones_like(prompt)
    model.generation_config.eos_token_id = None  # run every row to the end, as blockdsl does
    hf_greedy = model.generate(prompt, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours.generate(prompt, 8, greedy=True), hf_greedy)


LAYERS = {
    "recurrent_gemma": "recurrent*2->attention->recurrent*2",
    "jamba": "(mamba->mamba_moe->attention->mamba_moe)*2",
    "bamba": "(mamba->attention)*2",
    "falcon_h1": "mixer0->mlp->mixer1->mlp",
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_patterns_become_layers_chains(name):
    config = hf.to_config(_cfg(name)[1])
    assert config["model"]["layers"] == LAYERS[name]


def test_jamba_published_layout_reads_as_jamba():
    config = hf.to_config(transformers.JambaConfig())  # the published Jamba v0.1 defaults
    unit = "mamba->mamba_moe->mamba->mamba_moe->attention->mamba_moe->mamba->mamba_moe"
    assert config["model"]["layers"] == f"({unit})*4"
    assert config["blocks"]["mamba_moe"] == "Norm->Mamba->+->Norm->MoE->+"


def test_unsupported_options_are_refused_with_a_reason():
    cfg = _cfg("mamba2")[1]
    cfg.time_step_limit = (0.0, 0.5)
    with pytest.raises(hf.HFImportError, match="time_step_limit"):
        hf.to_config(cfg)
    cfg = _cfg("falcon_h1")[1]
    cfg.projectors_bias = True
    with pytest.raises(hf.HFImportError, match="projectors_bias"):
        hf.to_config(cfg)


@pytest.mark.parametrize(
    ("preset", "name", "config"),
    [
        ("mamba2", "Mamba2ForCausalLM", dict(
            vocab_size=50288, hidden_size=768, num_hidden_layers=24, state_size=128,
            head_dim=64, num_heads=24, n_groups=1, expand=2, tie_word_embeddings=True)),
        # recurrentgemma-2b's config.json: the class defaults but for these two
        ("recurrentgemma", "RecurrentGemmaForCausalLM", dict(
            intermediate_size=15360, num_key_value_heads=1)),
        ("jamba", "JambaForCausalLM", {}),  # defaults: Jamba v0.1
        # Falcon-H1-0.5B-Base's config.json (its sizes are in transformers' FalconH1 docs table:
        # depth 36, dim 1024, 8/2 attention heads, 24 Mamba heads, d_head 64/64, d_state 128)
        ("falcon-h1", "FalconH1ForCausalLM", dict(
            vocab_size=32784, hidden_size=1024, intermediate_size=2048, num_hidden_layers=36,
            num_attention_heads=8, num_key_value_heads=2, head_dim=64, mamba_d_ssm=1536,
            mamba_n_heads=24, mamba_d_head=64, mamba_n_groups=1, mamba_d_state=128,
            mamba_d_conv=4, mamba_conv_bias=True, mamba_proj_bias=False, mamba_rms_norm=False,
            tie_word_embeddings=False)),
    ],
)  # fmt: skip
def test_presets_count_the_parameters_of_the_published_models(preset, name, config):
    import blockdsl

    cls = getattr(transformers, name)
    cfg_cls = getattr(transformers, name.replace("ForCausalLM", "Config"))
    with torch.device("meta"):
        reference = cls(cfg_cls(**config))
    expected = sum(p.numel() for p in reference.parameters())
    assert blockdsl.build_model(preset, device="meta").num_params() == expected
