"""Hugging Face import of OPT, BLOOM, MPT, Falcon (old and new decoder architecture,
multi-query, ALiBi), Phi and GPT-BigCode. Small random configs with every parameter
re-randomised (float32): logits within 1e-4 and the same greedy continuations; each imports
as one named block repeated (``block*2``); every unsupported option is refused by name; the
``compile --from-hf`` output is golden (``BLOCKDSL_REGEN=1`` rewrites the files in
``tests/fixtures/hf_classic/``)."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import blockdsl  # noqa: E402
from blockdsl import hf  # noqa: E402
from blockdsl.cli import main  # noqa: E402
from tests.hf_configs import V, random_model, token_ids  # noqa: E402

T, TOL = 24, 1e-4
FIXTURES = Path(__file__).parent / "fixtures" / "hf_classic"
REGEN = os.environ.get("BLOCKDSL_REGEN") == "1"
EAGER = {"attn_implementation": "eager"}

# variant -> (transformers class, config class, config kwargs)
VARIANTS = {
    "opt": ("OPTForCausalLM", "OPTConfig", dict(
        hidden_size=64, num_hidden_layers=2, ffn_dim=96, num_attention_heads=4,
        max_position_embeddings=64, **EAGER,
    )),
    # OPT-350m's post-norm layout, here without norm weights and with an untied head
    "opt_post_norm": ("OPTForCausalLM", "OPTConfig", dict(
        hidden_size=64, num_hidden_layers=2, ffn_dim=96, num_attention_heads=4,
        max_position_embeddings=64, do_layer_norm_before=False,
        layer_norm_elementwise_affine=False, enable_bias=False, tie_word_embeddings=False,
        **EAGER,
    )),
    "bloom": ("BloomForCausalLM", "BloomConfig", dict(
        hidden_size=64, n_layer=2, n_head=4, **EAGER,
    )),
    "bloom_post_ln_residual": ("BloomForCausalLM", "BloomConfig", dict(
        hidden_size=48, n_layer=2, n_head=3, apply_residual_connection_post_layernorm=True,
        **EAGER,
    )),
    "mpt": ("MptForCausalLM", "MptConfig", dict(
        d_model=64, n_layers=2, n_heads=4, max_seq_len=64,
        attn_config={"clip_qkv": 0.6, "softmax_scale": 0.3}, **EAGER,
    )),
    # Falcon-7B: old decoder architecture, multi-query, one norm for parallel attention/MLP
    "falcon": ("FalconForCausalLM", "FalconConfig", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_hidden_size=96,
        max_position_embeddings=64, **EAGER,
    )),
    # Falcon-40B: new decoder architecture, grouped kv heads, two norms
    "falcon_new": ("FalconForCausalLM", "FalconConfig", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
        new_decoder_architecture=True, bias=True, max_position_embeddings=64, **EAGER,
    )),
    # Falcon-RW: ALiBi, sequential, no multi-query. transformers' eager path adds ALiBi twice
    # (once in the scores, once in the mask); SDPA, its default, computes the model.
    "falcon_rw_alibi": ("FalconForCausalLM", "FalconConfig", dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, alibi=True,
        multi_query=False, parallel_attn=False, bias=True, max_position_embeddings=64,
        attn_implementation="sdpa",
    )),
    "phi": ("PhiForCausalLM", "PhiConfig", dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, **EAGER,
    )),
    "gpt_bigcode": ("GPTBigCodeForCausalLM", "GPTBigCodeConfig", dict(
        n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0, **EAGER,
    )),
    "gpt_bigcode_mha": ("GPTBigCodeForCausalLM", "GPTBigCodeConfig", dict(
        n_embd=64, n_layer=2, n_head=4, n_positions=64, multi_query=False,
        scale_attn_weights=False, bos_token_id=0, eos_token_id=0, **EAGER,
    )),
}  # fmt: skip


def _config(name: str, **extra):
    _, config_class, kwargs = VARIANTS[name]
    return getattr(transformers, config_class)(**{"vocab_size": V, **kwargs, **extra})


def _hf_model(name: str, seed: int = 0):
    """A random transformers model with every parameter re-randomised (norms and biases too)."""
    return random_model(getattr(transformers, VARIANTS[name][0]), _config(name), seed)


_ids = partial(token_ids, length=T)


@torch.no_grad()
def _max_diff(hf_model, model) -> float:
    ids = _ids()
    return (hf_model(ids).logits - model(ids).logits).abs().max().item()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VARIANTS))
@torch.no_grad()
def test_logits_and_greedy_match(name):
    hf_model = _hf_model(name)
    model = hf.from_hf(hf_model)
    diff = _max_diff(hf_model, model)
    assert diff <= TOL, f"{name}: max abs diff {diff:.3g}"
    prompt = _ids(seed=2, batch=1, length=8)
    ids = prompt  # both pick the same token at every step
    for _ in range(12):
        ours = model(ids).logits[:, -1].argmax(-1)
        assert torch.equal(ours, hf_model(ids).logits[:, -1].argmax(-1)), ids.shape[1]
        ids = torch.cat([ids, ours[:, None]], dim=1)
    assert torch.equal(model.generate(prompt, 12, greedy=True), ids)  # and with the cache


def test_the_features_are_exercised():
    """The parity above depends on each mapped option: without MPT's clipping, Falcon's ALiBi
    scale or OPT's position offset the logits differ."""
    mpt = _hf_model("mpt")
    config = hf.to_config(mpt.config)
    assert config["defaults"]["Attn"]["clip_qkv"] == 0.6
    del config["defaults"]["Attn"]["clip_qkv"]
    unclipped = blockdsl.build_model(config)
    hf.load_weights(unclipped, hf.convert_weights(mpt.config, mpt.state_dict()))
    assert _max_diff(mpt, unclipped.eval()) > 1e-2

    falcon = _hf_model("falcon_rw_alibi")
    config = hf.to_config(falcon.config)
    assert config["defaults"]["Attn"]["alibi_scale"] == pytest.approx(16**-0.5)
    config["defaults"]["Attn"]["alibi_scale"] = 1.0
    unscaled = blockdsl.build_model(config)
    hf.load_weights(unscaled, hf.convert_weights(falcon.config, falcon.state_dict()))
    assert _max_diff(falcon, unscaled.eval()) > 1e-2

    opt = hf.from_hf(_hf_model("opt"))
    table = opt.embed.embed.pos.weight
    assert table.shape == (64 + 2, 64)  # HF's rows, the first two never read
    assert opt.embed.embed.pos_offset == 2


def test_from_pretrained_dir(tmp_path):
    hf_model = _hf_model("opt")
    hf_model.save_pretrained(tmp_path)
    model = hf.from_pretrained_dir(tmp_path)
    assert _max_diff(hf_model, model) <= TOL
    assert model.head.head.weight is model.embed.embed.tok.weight  # tied: one parameter


# --------------------------------------------------------------------------- configs

SEQUENTIAL = "Norm->Attn->+->Norm->MLP->+"
PARALLEL_SHARED = "Norm#ln->Attn->+ | Norm#ln->MLP->+"
OPT_EMBED = "Embed(pos=learned, pos_offset=2)"
TIED = "Norm->Head(tie=true)"
BLOCKS = {
    "opt": (SEQUENTIAL, OPT_EMBED, TIED),
    "opt_post_norm": ("(Attn->+)->Norm->(MLP->+)->Norm", OPT_EMBED, "Head"),
    "bloom": (SEQUENTIAL, "Embed->Norm", TIED),
    "bloom_post_ln_residual": ("Norm->(Attn->+)->Norm->(MLP->+)", "Embed->Norm", TIED),
    "mpt": (SEQUENTIAL, "Embed", TIED),
    "falcon": (PARALLEL_SHARED, "Embed", TIED),
    "falcon_new": ("Norm->Attn->+ | Norm->MLP->+", "Embed", TIED),
    "falcon_rw_alibi": (SEQUENTIAL, "Embed", TIED),
    "phi": (PARALLEL_SHARED, "Embed", "Norm->Head"),
    "gpt_bigcode": (SEQUENTIAL, "Embed(pos=learned)", TIED),
    "gpt_bigcode_mha": (SEQUENTIAL, "Embed(pos=learned)", TIED),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_block_strings(name):
    config = hf.to_config(_config(name))
    block, embed, head = BLOCKS[name]
    assert config["blocks"] == {"block": block}
    assert config["model"]["layers"] == "block*2"
    assert (config["model"]["embed"], config["model"]["head"]) == (embed, head)
    blockdsl.build_model(config, device="meta")  # valid as it stands


def test_config_details():
    attn = hf.to_config(_config("falcon"))["defaults"]["Attn"]
    assert (attn["kv_heads"], attn["pos"]) == (1, "rope")  # multi-query
    assert hf.to_config(_config("falcon_new"))["defaults"]["Attn"]["kv_heads"] == 2
    one_norm = hf.to_config(_config("falcon_new", num_ln_in_parallel_attn=1))
    assert one_norm["blocks"]["block"] == "Norm#ln->Attn->+ | Norm#ln->MLP->+"
    phi = hf.to_config(_config("phi"))["defaults"]
    assert phi["Attn"]["rope_fraction"] == 0.5 and phi["Head"] == {"bias": True}
    mpt = hf.to_config(_config("mpt"))["defaults"]
    assert mpt["Attn"]["scale"] == 0.3 and mpt["Norm"]["bias"] is False
    assert hf.to_config(_config("bloom"))["model"]["context"] == 2048  # BLOOM has no length
    opt = hf.to_config(_config("opt_post_norm"))["defaults"]["Norm"]
    assert opt["affine"] is False and opt["bias"] is False


@pytest.mark.parametrize("name", ["falcon_new", "bloom", "opt_post_norm"])
def test_compile_from_hf_golden(name, tmp_path, capsys):
    """``blockdsl compile --from-hf DIR`` reads config.json alone: the summary (the block
    strings a person would write) and the shape table (every resolved argument)."""
    _config(name).save_pretrained(tmp_path)
    outputs = []
    for extra in ([], ["--show-shapes"]):
        assert main(["compile", "--from-hf", str(tmp_path), *extra]) == 0
        captured = capsys.readouterr()
        assert not captured.err
        outputs.append(captured.out)
    text = "\n".join(outputs)
    path = FIXTURES / f"{name}.txt"
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; run with BLOCKDSL_REGEN=1"
    assert text == path.read_text()


# --------------------------------------------------------------------------- refusals


def _rope(**params) -> dict:
    return {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, **params}}


REFUSALS = [
    ("opt", {"word_embed_proj_dim": 32}, "opt: word_embed_proj_dim=32 different from"),
    ("mpt", {"expansion_ratio": 2}, "mpt: expansion_ratio=2"),
    ("mpt", {"no_bias": False}, "mpt: no_bias=False"),
    ("mpt", {"logit_scale": 0.5}, "mpt: logit_scale=0.5"),
    ("mpt", {"embedding_fraction": 0.1}, "mpt: embedding_fraction=0.1"),
    ("mpt", {"norm_type": "rmsnorm"}, "mpt: norm_type 'rmsnorm'"),
    ("mpt", {"attn_config": {"alibi": False}}, "mpt: attn_config.alibi=False"),
    ("mpt", {"attn_config": {"alibi_bias_max": 6}}, "mpt: attn_config.alibi_bias_max=6"),
    ("mpt", {"attn_config": {"qk_ln": True}}, "mpt: attn_config.qk_ln=True"),
    ("mpt", {"attn_config": {"prefix_lm": True}}, "mpt: attn_config.prefix_lm=True"),
    (
        "mpt",
        {"attn_config": {"attn_type": "multiquery_attention"}},
        "mpt: attn_config.attn_type='multiquery_attention'",
    ),
    (
        "mpt",
        {"attn_config": {"attn_uses_sequence_id": True}},
        "mpt: attn_config.attn_uses_sequence_id=True",
    ),
    ("falcon_new", {"parallel_attn": False}, "falcon: new_decoder_architecture with parallel"),
    ("falcon", {"num_ln_in_parallel_attn": 2}, "falcon: num_ln_in_parallel_attn=2 without"),
    (
        "falcon",
        {"multi_query": False, "num_kv_heads": 2},
        "falcon: num_kv_heads=2 without multi_query",
    ),
    (
        "falcon",
        _rope(rope_type="linear", factor=2.0),
        "falcon: rope_type 'linear'",
    ),
    (
        "falcon",
        _rope(partial_rotary_factor=0.5),
        "falcon: partial_rotary_factor",
    ),
    ("falcon", {"activation": "tanh"}, "falcon: activation 'tanh' has no blockdsl equivalent"),
    ("phi", {"qk_layernorm": True}, "phi: qk_layernorm"),
    (
        "phi",
        _rope(partial_rotary_factor=0.1875),
        r"phi: an odd number of rotary dims \(3",
    ),
    ("gpt_bigcode", {"add_cross_attention": True, "multi_query": False}, "add_cross_attention"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "extra", "message"), REFUSALS, ids=lambda v: str(v)[:40])
def test_unsupported_options_are_refused(name, extra, message):
    with pytest.raises(hf.HFImportError, match=message) as info:
        hf.to_config(_config(name, **extra))
    assert "is not supported" in str(info.value) or "no blockdsl equivalent" in str(info.value)
