"""Hugging Face import: each supported class converts to a blockdsl model computing the same
logits (float32, max abs diff <= 1e-4), the same greedy continuations and, for Mixtral, the same
load-balancing loss; also after ``torch.compile(fullgraph=True)`` and from a saved folder."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import blockdsl  # noqa: E402
from blockdsl import hf  # noqa: E402
from blockdsl.hf.base import compress_layers  # noqa: E402
from tests.hf_configs import V, small_config, small_model, token_ids  # noqa: E402

TOL = 1e-4


@torch.no_grad()
def _max_diff(hf_model, model, ids) -> float:
    return (hf_model(ids).logits - model(ids).logits).abs().max().item()


@torch.no_grad()
def _greedy(hf_model, model, steps: int = 16) -> None:
    """Both models pick the same next token at every step of a growing sequence."""
    ids = token_ids(seed=2, batch=1, length=8)
    for _ in range(steps):
        ours = model(ids).logits[:, -1].argmax(-1)
        theirs = hf_model(ids).logits[:, -1].argmax(-1)
        assert torch.equal(ours, theirs), f"greedy continuations differ after {ids.shape[1]}"
        ids = torch.cat([ids, ours[:, None]], dim=1)


CLASSES = ["gpt2", "llama", "mistral", "mixtral", "gemma2", "gpt_neox", "gptj"]
VARIANTS = [
    ("gpt2", {}),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}),
    ("llama", {}),
    ("llama", {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
    ("mistral", {}),
    ("mixtral", {}),
    ("gemma2", {}),
    ("gpt_neox", {"use_parallel_residual": True}),
    ("gpt_neox", {"use_parallel_residual": False}),
    ("gptj", {}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=lambda v: str(v))
def test_logits_and_greedy_match(name, extra):
    hf_model = small_model(name, **extra)
    model = hf.from_hf(hf_model)
    assert not model.training
    diff = _max_diff(hf_model, model, token_ids())
    assert diff <= TOL, f"{name}: max abs diff {diff:.3g}"
    if not extra or name == "gpt_neox":  # the greedy check once per class and residual kind
        _greedy(hf_model, model)


@pytest.mark.slow
def test_mixtral_aux_loss_matches():
    hf_model = small_model("mixtral")
    model = hf.from_hf(hf_model)
    ids = token_ids()
    with torch.no_grad():
        theirs = hf_model(ids, output_router_logits=True).aux_loss  # unscaled, all layers
        ours = model(ids).aux  # scaled by router_aux_loss_coef
    coef = hf_model.config.router_aux_loss_coef
    torch.testing.assert_close(ours / coef, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSES)
def test_compiled_matches(name):
    torch._dynamo.reset()
    hf_model = small_model(name)
    model = hf.from_hf(hf_model)
    compiled = torch.compile(model, fullgraph=True)
    ids = token_ids()
    with torch.no_grad():
        expected = hf_model(ids, output_router_logits=name == "mixtral")
        if name == "mixtral":
            logits, _, aux = compiled(ids)
            coef = hf_model.config.router_aux_loss_coef
            torch.testing.assert_close(aux / coef, expected.aux_loss, rtol=1e-5, atol=1e-6)
        else:
            logits = compiled(ids).logits
    diff = (expected.logits - logits).abs().max().item()
    assert diff <= TOL, f"{name} compiled: max abs diff {diff:.3g}"
    torch._dynamo.reset()


@pytest.mark.parametrize("name", CLASSES)
def test_from_pretrained_dir(name, tmp_path):
    hf_model = small_model(name)
    hf_model.save_pretrained(tmp_path)
    model = hf.from_pretrained_dir(tmp_path)
    assert _max_diff(hf_model, model, token_ids()) <= TOL


# --------------------------------------------------------------------------- configs


def test_to_config_block_strings():
    expected = {
        "gpt2": ({"block": "Norm->Attn->+->Norm->MLP->+"}, "block*2"),
        "llama": ({"block": "Norm->Attn->+->Norm->MLP->+"}, "block*2"),
        "mistral": ({"block": "Norm->Attn->+->Norm->MLP->+"}, "block*2"),
        "mixtral": ({"block": "Norm->Attn->+->Norm->MoE->+"}, "block*2"),
        "gpt_neox": ({"block": "Norm->Attn->+ | Norm->MLP->+"}, "block*2"),
        "gptj": ({"block": "Norm#ln->Attn->+ | Norm#ln->MLP->+"}, "block*2"),
        "gemma2": (
            {
                "local": "Norm->Attn(window=8)->Norm->+->Norm->MLP->Norm->+",
                "global": "Norm->Attn->Norm->+->Norm->MLP->Norm->+",
            },
            "local->global",
        ),
    }
    for name, (blocks, layers) in expected.items():
        config = hf.to_config(small_config(name)[1])
        assert config["blocks"] == blocks, name
        assert config["model"]["layers"] == layers, name
        blockdsl.build_model(config, device="meta")  # valid as it stands


def test_to_config_details():
    gemma = hf.to_config(small_config("gemma2")[1])
    assert gemma["defaults"]["Norm"]["unit_offset"] is True
    assert gemma["defaults"]["Attn"]["scale"] == pytest.approx(24**-0.5)
    assert gemma["defaults"]["Attn"]["softcap"] == 5.0
    assert gemma["defaults"]["Head"]["softcap"] == 3.0
    assert gemma["defaults"]["Embed"]["scale"] == "sqrt_d"
    assert gemma["model"]["head"] == "Norm->Head(tie=true)"
    gpt2 = hf.to_config(small_config("gpt2")[1])
    assert gpt2["defaults"]["MLP"]["act"] == "gelu_tanh"  # gelu_new
    assert gpt2["model"]["embed"] == "Embed(pos=learned)"
    neox = hf.to_config(small_config("gpt_neox")[1])
    assert neox["defaults"]["Attn"]["rope_fraction"] == 0.5
    sequential = hf.to_config(small_config("gpt_neox", use_parallel_residual=False)[1])
    assert sequential["blocks"]["block"] == "Norm->Attn->+->Norm->MLP->+"
    gptj = hf.to_config(small_config("gptj")[1])
    assert gptj["defaults"]["Attn"]["rope_interleaved"] is True
    assert gptj["defaults"]["Head"] == {"bias": True}
    # a config.json dict works as well as a config object
    as_dict = small_config("llama")[1].to_dict()
    assert hf.to_config(as_dict) == hf.to_config(small_config("llama")[1])


def test_gemma2_layer_types_are_read():
    # the default: sliding window on layers 0, 2, 4, ...
    assert hf.to_config(small_config("gemma2", num_hidden_layers=6)[1])["model"]["layers"] == (
        "(local->global)*3"
    )
    kinds = ["full_attention", "sliding_attention"] * 2
    cfg = small_config("gemma2", num_hidden_layers=4, layer_types=kinds)[1]
    assert hf.to_config(cfg)["model"]["layers"] == "(global->local)*2"
    kinds = ["sliding_attention"] * 3 + ["full_attention"]
    cfg = small_config("gemma2", num_hidden_layers=4, layer_types=kinds)[1]
    assert hf.to_config(cfg)["model"]["layers"] == "local*3->global"


def test_compress():
    assert compress_layers(["b"] * 3) == "b*3"
    assert compress_layers(["a", "b", "a", "b"]) == "(a->b)*2"
    assert compress_layers(["a", "a", "b", "a", "a", "b"]) == "(a*2->b)*2"
    assert compress_layers(["a", "b", "b"]) == "a->b*2"


# --------------------------------------------------------------------------- errors


def test_unsupported_model_type():
    with pytest.raises(hf.HFImportError, match="model_type 'bert' is not supported"):
        hf.to_config(transformers.BertConfig())


def test_unsupported_rope_scaling():
    cfg = small_config("llama")[1]
    cfg.rope_parameters = {"rope_type": "proportional", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(hf.HFImportError, match="rope_type 'proportional'"):
        hf.to_config(cfg)


def test_missing_and_unused_weights_are_named():
    hf_model = small_model("llama")
    state = dict(hf_model.state_dict())
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.0.mlp.extra.weight"] = torch.zeros(3)
    with pytest.raises(hf.HFImportError) as info:
        hf.convert_weights(hf_model.config, state)
    message = str(info.value)
    assert "missing weights: model.layers.1.mlp.up_proj.weight" in message
    assert "unused weights: model.layers.0.mlp.extra.weight" in message
    assert isinstance(info.value, blockdsl.BlockDSLError)


def test_tied_head_must_equal_embedding():
    hf_model = small_model("gpt2")
    state = dict(hf_model.state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    with pytest.raises(hf.HFImportError, match="differs from the tied embedding"):
        hf.convert_weights(hf_model.config, state)


def test_tied_weights_are_one_parameter():
    model = hf.from_hf(small_model("gpt2"))
    assert model.head.head.weight is model.embed.embed.tok.weight


@pytest.mark.slow
def test_import_blockdsl_does_not_import_transformers():
    code = (
        "import sys, blockdsl\n"
        "assert 'blockdsl.hf' not in sys.modules\n"
        "assert callable(blockdsl.hf.to_config)  # loaded on first use\n"
        "assert 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_transformers_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(hf.HFImportError, match=r"pip install 'blockdsl\[hf\]'"):
        hf.from_pretrained_dir(tmp_path)


def test_base_model_keys_without_prefix():
    """Old GPT-2 checkpoints hold the base model's names ("h.0...", no "transformer.") and no
    lm_head (tied); old causal-mask buffers ("attn.bias") are not weights."""
    hf_model = small_model("gpt2")
    state = {
        k.removeprefix("transformer."): v
        for k, v in hf_model.state_dict().items()
        if k != "lm_head.weight"
    }
    state["h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    weights = hf.convert_weights(hf_model.config, state)
    model = blockdsl.build_model(hf.to_config(hf_model.config))
    hf.load_weights(model, weights)
    assert _max_diff(hf_model, model.eval(), token_ids()) <= TOL


@pytest.mark.parametrize("rotary_pct", [0.25, 0.75, 0.6])
def test_gpt_neox_odd_rotary_dims_match(rotary_pct):
    """Head size 12: 0.25, 0.75 and 0.6 give odd rotary sizes (3, 9, and 7.1999... truncated to
    7, as transformers truncates it). Attn follows transformers' arithmetic: frequencies over
    n, n + 1 rotated dims."""
    torch.manual_seed(0)
    cfg = transformers.GPTNeoXConfig(
        vocab_size=V,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        rotary_pct=rotary_pct,
        rotary_emb_base=300.0,
        attn_implementation="eager",
    )
    hf_model = transformers.GPTNeoXForCausalLM(cfg).eval()
    model = hf.from_hf(hf_model)
    attn = model.layers[0].attn
    assert attn.rotary_size == int(12 * rotary_pct) and attn.rotary_size % 2 == 1
    assert _max_diff(hf_model, model, token_ids()) < 1e-5
