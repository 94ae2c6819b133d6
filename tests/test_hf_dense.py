"""Hugging Face import of the dense decoders (blockdsl/hf/dense.py) and the features
they need: each class converts to a blockdsl model with the same logits (float32, max abs diff
<= 1e-4) and greedy continuations; RoPE scalings match transformers'; every unsupported option
is refused by name."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import blockdsl  # noqa: E402
from blockdsl import hf  # noqa: E402
from tests.hf_configs import V, random_model, token_ids  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
REGEN = bool(os.environ.get("BLOCKDSL_REGEN"))
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
            dict(qk_layernorm=True, partial_rotary_factor=0.5),
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
    return random_model(*_config(name, **extra), seed)


_ids = partial(token_ids, length=T)


@torch.no_grad()
def _check_parity(hf_model, model, length: int = T) -> None:
    ids = _ids(length=length)
    diff = (hf_model(ids).logits - model(ids).logits).abs().max().item()
    assert diff <= TOL, f"max abs diff {diff:.3g}"
    ids = _ids(seed=2, batch=1, length=8)  # greedy: the same next token at every step
    for _ in range(length - 8):
        ours = model(ids).logits[:, -1].argmax(-1)
        theirs = hf_model(ids).logits[:, -1].argmax(-1)
        assert torch.equal(ours, theirs), f"greedy continuations differ after {ids.shape[1]}"
        ids = torch.cat([ids, ours[:, None]], dim=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSES)
def test_logits_and_greedy_match(name):
    hf_model = _hf_model(name)
    model = hf.from_hf(hf_model)
    assert not model.training
    _check_parity(hf_model, model)


# --------------------------------------------------------------------------- RoPE scaling

SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 4.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
    "yarn": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 16,
        "beta_fast": 8.0,
        "beta_slow": 1.0,
    },
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SCALINGS))
def test_rope_scaling_matches(kind):
    """Llama with each scaled RoPE (Phi-3 above covers longrope). Dynamic NTK only departs from
    the plain rotary past max_position_embeddings (16 here), so the blockdsl model is built
    with a longer context and compared on 24 positions: every call reaching past 16 grows
    the base, as transformers grows it."""
    rope = {**SCALINGS[kind], "rope_theta": 500.0}
    extra = {"rope_parameters": rope, "max_position_embeddings": 16 if kind == "dynamic" else 64}
    hf_model = _hf_model("llama", **extra)
    config = hf.to_config(hf_model.config)
    assert config["defaults"]["Attn"]["rope_scaling"] == kind
    if kind == "dynamic":
        config["model"]["context"] = 64
    model = blockdsl.build_model(config)
    hf.load_weights(model, hf.convert_weights(hf_model.config, hf_model.state_dict()))
    _check_parity(hf_model, model.eval())


@pytest.mark.slow
def test_longrope_generation_matches_transformers():
    """Longrope switches to its long factors once a call reaches past the original context
    (16) for every position, so generation without a cache is the full forward, as
    transformers' Phi-3 generation (which recomputes its cache at the switch); with a cache,
    decoding within the original context is the full forward too."""
    from blockdsl.generate import generate

    hf_model = _hf_model("phi3")
    model = hf.from_hf(hf_model)
    prompt = _ids(seed=3, batch=1, length=10)
    theirs = hf_model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert torch.equal(generate(model, prompt, 12, greedy=True, use_cache=False), theirs)
    assert torch.equal(generate(model, prompt, 6, greedy=True), theirs[:, :16])


# --------------------------------------------------------------------------- configs


def test_configs_read_as_named_blocks():
    expected = {
        "qwen2": ({"global": "Norm->Attn->+->Norm->MLP->+"}, "global->local"),
        "gemma3_text": (None, "local->global"),
        "olmo2": ({"block": "Attn->Norm->+->MLP->Norm->+"}, "block*2"),
        "cohere": ({"block": "Norm#ln->Attn->+ | Norm#ln->MLP->+"}, "block*2"),
        "granite": ({"block": "Norm->Attn->Scale->+->Norm->MLP->Scale->+"}, "block*2"),
        "nemotron": ({"block": "Norm->Attn->+->Norm->MLP->+"}, "block*2"),
    }
    for name, (blocks, layers) in expected.items():
        config = hf.to_config(_config(name)[1])
        if blocks is not None:
            assert blocks.items() <= config["blocks"].items(), name
        assert config["model"]["layers"] == layers, name
    deep = hf.to_config(_config("qwen3", num_hidden_layers=12)[1])
    assert deep["model"]["layers"] == "block*12"
    qwen2 = hf.to_config(_config("qwen2")[1])
    assert qwen2["blocks"]["local"] == "Norm->Attn(window=8)->+->Norm->MLP->+"
    assert qwen2["defaults"]["Attn"]["qkv_bias"] is True
    gemma3 = hf.to_config(_config("gemma3_text")[1])
    assert gemma3["blocks"]["local"] == (
        "Norm->Attn(window=8, rope_theta=100.0, rope_scaling=none)->Norm->+->Norm->MLP->Norm->+"
    )
    attn = gemma3["defaults"]["Attn"]
    assert (attn["rope_scaling"], attn["rope_factor"], attn["qk_norm_unit_offset"]) == (
        "linear",
        2.0,
        True,
    )
    granite = hf.to_config(_config("granite")[1])["defaults"]
    assert granite["Scale"] == {"by": 0.5}
    assert granite["Embed"] == {"scale": 2.0}
    assert granite["Head"] == {"scale": 0.25}
    assert granite["Attn"]["scale"] == 0.2
    olmo2 = hf.to_config(_config("olmo2")[1])["defaults"]["Attn"]
    assert olmo2["qk_norm_over"] == "all"
    olmo = hf.to_config(_config("olmo")[1])["defaults"]
    assert olmo["Attn"]["clip_qkv"] == 0.5 and olmo["Norm"]["affine"] is False
    stablelm = hf.to_config(_config("stablelm", use_parallel_residual=True)[1])
    assert stablelm["blocks"]["block"] == "Norm#ln->Attn->+ | Norm#ln->MLP->+"


@pytest.mark.parametrize("name", ["cohere", "gemma3_text", "granite", "olmo2"])
def test_compile_from_hf_golden(name, tmp_path, capsys):
    """``blockdsl compile --from-hf DIR`` (config.json only) prints the architecture as named
    blocks; golden files in tests/fixtures/hf/ (``BLOCKDSL_REGEN=1`` rewrites them)."""
    from blockdsl.cli import main

    _config(name)[1].save_pretrained(tmp_path)
    code = main(["compile", "--from-hf", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    path = FIXTURES / f"compile_{name}.txt"
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(out)
    assert path.exists(), f"missing golden {path}; run with BLOCKDSL_REGEN=1"
    assert out == path.read_text()


def test_stablelm_parallel_residual_matches():
    hf_model = _hf_model("stablelm", use_parallel_residual=True)
    _check_parity(hf_model, hf.from_hf(hf_model), length=12)


# --------------------------------------------------------------------------- refusals

REFUSALS = [
    ("llama", {"rope_parameters": {"rope_type": "proportional", "rope_theta": 1e4}}, "rope_type"),
    ("qwen3", {"rope_parameters": {"rope_type": "bogus", "rope_theta": 1e4}}, "'bogus'"),
    (
        "qwen2",
        {
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e4,
                "partial_rotary_factor": 0.5,
            }
        },
        "partial_rotary_factor",
    ),
    ("gemma3_text", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ("gemma", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ("qwen2", {"layer_types": ["full_attention", "chunked_attention"]}, "layer_types"),
    ("olmo", {"hidden_act": "tanh"}, "activation 'tanh'"),
    ("persimmon", {"hidden_act": "tanh"}, "activation 'tanh'"),
]


@pytest.mark.parametrize(("name", "extra", "match"), REFUSALS, ids=lambda v: str(v)[:40])
def test_unsupported_options_are_refused_by_name(name, extra, match):
    cfg = _config(name)[1]
    for key, value in extra.items():
        setattr(cfg, key, value)
    with pytest.raises(hf.HFImportError, match=match) as info:
        hf.to_config(cfg)
    assert isinstance(info.value, blockdsl.BlockDSLError)
    assert name.split("_")[0] in str(info.value)


BAD_ATTN = [
    ("rope_scaling=ntk", r"rope_scaling.*\"ntk\""),
    ("rope_scaling=yarn, rope_factor=2.0", "needs rope_original_context"),
    (
        "rope_scaling=longrope, rope_original_context=4, rope_short_factor=[1.0],"
        " rope_long_factor=[1.0, 2.0, 3.0, 4.0]",
        r"rope_short_factor with one value per rotary pair \(4\), got 1 values",
    ),
    ("qk_norm=true, qk_norm_over=all, qk_norm_per_head=true", "qk_norm_per_head needs"),
    ("clip_qkv=0.0", "clip_qkv must be positive"),
]


@pytest.mark.parametrize(("args", "match"), BAD_ATTN)
def test_attn_rejects_bad_feature_arguments(args, match):
    config = {
        "model": {"vocab": 11, "d_model": 16, "context": 8, "layers": "b"},
        "blocks": {"b": f"Norm->Attn(heads=2, {args})->+"},
    }
    with pytest.raises(blockdsl.BlockDSLError, match=match):
        blockdsl.build_model(config)
