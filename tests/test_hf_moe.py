"""Hugging Face import of the mixture-of-experts classes (Qwen2-MoE, OLMoE, DBRX, DeepSeek-V2,
DeepSeek-V3): float32 logits within 1e-4 of transformers and the same greedy continuations,
every parameter re-randomised (DeepSeek-V3's correction bias too); Mixtral's and DBRX's jitter
in training, seeded; each refused option named."""

from __future__ import annotations

from functools import partial

import pytest
import torch

transformers = pytest.importorskip("transformers")

import blockdsl  # noqa: E402
from blockdsl import hf  # noqa: E402
from blockdsl.registry import REGISTRY  # noqa: E402
from tests.hf_configs import V, random_model, randomised, token_ids  # noqa: E402

T = 20
TOL = 1e-4


def _has_attn_arg(name: str) -> bool:
    return name in REGISTRY.get("Attn").user_params


# Attention features of the dense-model work (issue 22): q/k/v biases without an o bias, q/k norm
# over the whole projection, clip_qkv. Their importers' parity runs where Attn has them.
needs_qkv_bias = pytest.mark.skipif(
    not _has_attn_arg("qkv_bias"), reason="needs Attn(qkv_bias) (separate q/k/v and o biases)"
)
needs_qk_norm_over = pytest.mark.skipif(
    not _has_attn_arg("qk_norm_over"), reason="needs Attn(qk_norm_over=all) (whole-projection)"
)
needs_clip_qkv = pytest.mark.skipif(not _has_attn_arg("clip_qkv"), reason="needs Attn(clip_qkv)")

_COMMON = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=64,
    rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    attn_implementation="eager",
    experts_implementation="eager",
)


def _cfg(name: str, **extra):
    if name == "qwen2_moe":
        kwargs = dict(
            _COMMON,
            num_key_value_heads=2,
            intermediate_size=48,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
            mlp_only_layers=[0],
            qkv_bias=False,
        )
        return transformers.Qwen2MoeForCausalLM, transformers.Qwen2MoeConfig(**{**kwargs, **extra})
    if name == "olmoe":
        kwargs = dict(
            _COMMON,
            num_hidden_layers=2,
            num_key_value_heads=2,
            intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
        )
        return transformers.OlmoeForCausalLM, transformers.OlmoeConfig(**{**kwargs, **extra})
    if name == "dbrx":
        ffn = {"ffn_hidden_size": 16, "moe_num_experts": 4, "moe_top_k": 2}
        cfg = transformers.DbrxConfig(
            d_model=32,
            n_heads=4,
            n_layers=2,
            max_seq_len=64,
            vocab_size=V,
            attn_config={"kv_n_heads": 2, "rope_theta": 500.0, "clip_qkv": 0.3},
            ffn_config={**ffn, **extra.pop("ffn_config", {})},
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
            attn_implementation="eager",
            experts_implementation="eager",
            **extra,
        )
        return transformers.DbrxForCausalLM, cfg
    deepseek = dict(
        **_COMMON,
        num_key_value_heads=4,
        intermediate_size=48,
        moe_intermediate_size=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=1,
        kv_lora_rank=12,
        q_lora_rank=20,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=6,
        routed_scaling_factor=1.5,
    )
    if name == "deepseek_v2":
        cfg = transformers.DeepseekV2Config(
            **{
                **deepseek,
                "q_lora_rank": None,
                "topk_method": "group_limited_greedy",
                "n_group": 2,
                "topk_group": 1,
                **extra,
            }
        )
        return transformers.DeepseekV2ForCausalLM, cfg
    if name == "deepseek_v3":
        cfg = transformers.DeepseekV3Config(
            **{**deepseek, "n_group": 2, "topk_group": 1, "norm_topk_prob": True, **extra}
        )
        return transformers.DeepseekV3ForCausalLM, cfg
    raise KeyError(name)


def _hf_model(name: str, seed: int = 0, **extra):
    """A random HF model of a class above."""
    return random_model(*_cfg(name, **extra), seed)


_ids = partial(token_ids, length=T)


@torch.no_grad()
def _check_parity(hf_model, model) -> None:
    diff = (hf_model(_ids()).logits - model(_ids()).logits).abs().max().item()
    assert diff <= TOL, f"max abs diff {diff:.3g}"
    prompt = _ids(seed=2, batch=1, length=6)
    theirs = hf_model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False)
    ours = model.generate(prompt, 10, greedy=True)  # cached decoding (MLA: its latent cache)
    assert torch.equal(theirs, ours)


CASES = [
    ("qwen2_moe", {}),
    ("qwen2_moe", {"qkv_bias": True, "tie_word_embeddings": True}),
    ("olmoe", {}),
    ("dbrx", {}),
    ("deepseek_v2", {}),
    ("deepseek_v2", {"topk_method": "greedy", "q_lora_rank": 20, "n_shared_experts": 2}),
    ("deepseek_v3", {}),
    ("deepseek_v3", {"rope_interleave": False, "norm_topk_prob": False, "n_group": 1}),
]
# transformers' DBRX cannot run without clip_qkv (it clamps with both bounds None)
_NEEDS = {"olmoe": [needs_qk_norm_over], "dbrx": [needs_clip_qkv]}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "extra"),
    [
        pytest.param(
            n, e, marks=[*_NEEDS.get(n, []), *([needs_qkv_bias] * bool(e.get("qkv_bias")))]
        )
        for n, e in CASES
    ],
    ids=lambda v: str(v),
)
def test_logits_and_greedy_match(name, extra):
    hf_model = _hf_model(name, **extra)
    model = hf.from_hf(hf_model)
    _check_parity(hf_model, model)
    if name == "deepseek_v3":  # a persistent buffer that is a weight: imported, not dropped
        theirs = hf_model.model.layers[1].mlp.gate.e_score_correction_bias
        assert torch.equal(model.layers[1].moe.score_bias, theirs) and theirs.abs().sum() > 0


# --------------------------------------------------------------------------- jitter


def _mixtral(jitter: float):
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(
        **{**_COMMON, "num_hidden_layers": 2},
        num_key_value_heads=2,
        intermediate_size=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        router_jitter_noise=jitter,
    )
    return randomised(transformers.MixtralForCausalLM(cfg))


@pytest.mark.slow
def test_mixtral_jitter_matches_in_training():
    """transformers multiplies the whole MoE input by the noise (the experts see it too): with
    the same seed, training-mode logits agree; router-only jitter (Switch) does not."""
    hf_model = _mixtral(0.1).train()
    model = hf.from_hf(hf_model)
    assert model.training
    moe = model.layers[0].moe
    assert (moe.jitter, moe.jitter_scope) == (0.1, "input")
    ids = _ids()
    with torch.no_grad():
        torch.manual_seed(5)
        theirs = hf_model(ids).logits
        torch.manual_seed(5)
        ours = model(ids).logits
        assert (theirs - ours).abs().max().item() <= TOL
        for layer in model.layers:
            layer.moe.jitter_scope = "router"
        torch.manual_seed(5)
        router_only = model(ids).logits
    assert (theirs - router_only).abs().max().item() > 100 * TOL


def test_no_jitter_leaves_mixtral_config_unchanged():
    config = hf.to_config(_mixtral(0.0).config)
    assert "jitter" not in config["defaults"]["MoE"]
    assert "jitter_scope" not in config["defaults"]["MoE"]


@needs_clip_qkv
def test_dbrx_jitter_matches_in_training():
    hf_model = _hf_model("dbrx", ffn_config={"moe_jitter_eps": 0.2}).train()
    model = hf.from_hf(hf_model)
    assert model.layers[0].moe.jitter_scope == "input"
    with torch.no_grad():
        torch.manual_seed(7)
        theirs = hf_model(_ids()).logits
        torch.manual_seed(7)
        ours = model(_ids()).logits
    assert (theirs - ours).abs().max().item() <= TOL


# --------------------------------------------------------------------------- configs


def test_imported_configs_read_as_named_blocks():
    expected = {
        "qwen2_moe": ("dense->moe*2", {"dense", "moe"}),
        "olmoe": ("moe*2", {"moe"}),
        "dbrx": ("block*2", {"block"}),
        "deepseek_v2": ("dense->moe*2", {"dense", "moe"}),
        "deepseek_v3": ("dense->moe*2", {"dense", "moe"}),
    }
    for name, (layers, blocks) in expected.items():
        config = hf.to_config(_cfg(name)[1])
        assert config["model"]["layers"] == layers, name
        assert set(config["blocks"]) == blocks, name
    v3 = hf.to_config(_cfg("deepseek_v3")[1])
    assert v3["blocks"]["moe"] == "Norm->MLA->+->Norm->MoE->+"
    assert v3["defaults"]["MoE"] == {
        "experts": 4,
        "k": 2,
        "hidden": 16,
        "act": "silu",
        "gated": True,
        "shared": 1,
        "aux_loss": 0.0,
        "score": "sigmoid",
        "score_bias": True,
        "norm_topk": True,
        "routed_scale": 1.5,
        "groups": 2,
        "topk_groups": 1,
        "group_top": 2,
    }
    sparse = _cfg("qwen2_moe", mlp_only_layers=[], decoder_sparse_step=2)[1]
    assert hf.to_config(sparse)["model"]["layers"] == "dense->moe->dense"
    v2 = hf.to_config(_cfg("deepseek_v2", first_k_dense_replace=0)[1])
    assert v2["model"]["layers"] == "moe*3"


def test_compile_from_hf_shows_the_architecture(tmp_path, capsys):
    from blockdsl.cli import main

    hf_cfg = _cfg("deepseek_v3")[1]
    hf_cfg.save_pretrained(tmp_path)
    assert main(["compile", "--from-hf", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    count = sum(p.numel() for p in _hf_model("deepseek_v3").parameters())
    assert out.splitlines() == [
        f"3 layers, d_model=32, vocab=97, context=64: {count:,} parameters, "
        "84.9 kFLOP per token at T=64",
        "  embed (embed): Embed",
        "    = Embed(x)",
        "  layers.0 (dense): Norm->MLA->+->Norm->MLP->+",
        "    = x + MLA(Norm(x)) + MLP(Norm(x + MLA(Norm(x))))",
        "  layers.1-2 (moe): Norm->MLA->+->Norm->MoE->+",
        "    = x + MLA(Norm(x)) + MoE(Norm(x + MLA(Norm(x))))",
        "  head (head): Norm->Head",
        "    = Head(Norm(x))",
    ]


# --------------------------------------------------------------------------- refusals

REFUSALS = [
    ("qwen2_moe", {"use_sliding_window": True}, "use_sliding_window"),
    ("olmoe", {"clip_qkv": 4.0}, "clip_qkv=4.0"),
    ("dbrx", {"ffn_config": {"moe_normalize_expert_weights": 2.0}}, "moe_normalize_expert_weights"),
    ("dbrx", {"ffn_config": {"ffn_act_fn": {"name": "silu", "alpha": 2}}}, "ffn_act_fn options"),
    ("deepseek_v2", {"mlp_bias": True}, "mlp_bias"),
    ("deepseek_v2", {"topk_method": "noaux_tc"}, "topk_method 'noaux_tc'"),
    ("deepseek_v2", {"num_key_value_heads": 2}, "num_key_value_heads=2"),
    (
        "deepseek_v3",
        {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 500.0}},
        "rope_type 'yarn'",
    ),
    ("deepseek_v3", {"hidden_act": "tanh"}, "activation 'tanh'"),
]


@pytest.mark.parametrize(("name", "extra", "match"), REFUSALS, ids=lambda v: str(v))
def test_unsupported_options_are_named(name, extra, match):
    with pytest.raises(hf.HFImportError, match=match) as info:
        hf.to_config(_cfg(name, **extra)[1])
    assert isinstance(info.value, blockdsl.BlockDSLError)
    assert name in str(info.value)
