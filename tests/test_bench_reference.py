"""The benchmark's weight copying must not rot: blockdsl's ``llama`` preset, the hand-written
reference (``bench/reference_llama.py``) and ``transformers.LlamaForCausalLM`` loaded with the
same weights compute the same logits (tiny sizes, CPU, float32)."""

from __future__ import annotations

import pytest
import torch

from bench.models import Config, build_blockdsl, hf_from_reference, reference_from_blockdsl

TINY = Config(vocab=64, d_model=32, layers=2, heads=4, kv_heads=2, hidden=48, seq=16, batch=2)


@pytest.fixture(scope="module")
def blockdsl_llama():
    torch.manual_seed(0)
    model = build_blockdsl(TINY)
    with torch.no_grad():  # non-trivial norm weights, so a swapped norm would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_1.weight"):
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def idx():
    return torch.randint(
        0, TINY.vocab, (TINY.batch, TINY.seq), generator=torch.Generator().manual_seed(1)
    )


@pytest.mark.parametrize("gqa", ["sdpa", "repeat"])
def test_reference_matches_blockdsl(blockdsl_llama, idx, gqa):
    ref = reference_from_blockdsl(TINY, blockdsl_llama, gqa=gqa)
    assert sum(p.numel() for p in ref.parameters()) == blockdsl_llama.num_params()
    with torch.no_grad():
        expected = blockdsl_llama(idx).logits
        got = ref(idx)
    assert got.shape == (TINY.batch, TINY.seq, TINY.vocab)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_reference_gradients_match_blockdsl(blockdsl_llama, idx):
    ref = reference_from_blockdsl(TINY, blockdsl_llama)
    targets = idx.roll(-1, dims=1)
    for model, logits_of in ((ref, lambda out: out), (blockdsl_llama, lambda out: out.logits)):
        model.zero_grad(set_to_none=True)
        logits = logits_of(model(idx))
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    torch.testing.assert_close(
        ref.blocks[0].attn.wk.weight.grad,
        blockdsl_llama.layers[0].attn.k.weight.grad,
        atol=1e-5,
        rtol=1e-4,
    )
    torch.testing.assert_close(
        ref.tok_emb.weight.grad, blockdsl_llama.embed.embed.tok.weight.grad, atol=1e-5, rtol=1e-4
    )


def test_transformers_matches_reference(blockdsl_llama, idx):
    pytest.importorskip("transformers")
    ref = reference_from_blockdsl(TINY, blockdsl_llama)
    hf = hf_from_reference(TINY, ref)
    with torch.no_grad():
        torch.testing.assert_close(hf(idx), ref(idx), atol=1e-5, rtol=1e-5)
