"""Acceptance of generation (issue 15): over architectures drawn by blockdsl's own Hypothesis
strategies the cache changes neither tokens nor (beyond 1e-5) logits, batches equal prompts
alone, and every imported Hugging Face architecture continues exactly like transformers'
``generate(do_sample=False)``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import blockdsl
from blockdsl.generate import stream
from blockdsl.lower import noncausal_call
from blockdsl.testing import model_configs

TOL = 1e-5
VOCAB, CONTEXT = 32, 24
#: The drawn models' components: attention as drawn from its schema and, so that every kind
#: is drawn often, with a sliding window, ALiBi and soft-capping bound by aliases; Conv and
#: Shift; MoE (with children); and the per-token pieces around them.
REGISTRY = blockdsl.REGISTRY.copy()
REGISTRY.register_alias("WindowAttn", "Attn", window=3, heads=2)
REGISTRY.register_alias("AlibiAttn", "Attn", pos="alibi", heads=2)
REGISTRY.register_alias("CappedAttn", "Attn", softcap=2.0, heads=2, window=4)
COMPONENTS = [
    "Norm",
    "Attn",
    "WindowAttn",
    "AlibiAttn",
    "CappedAttn",
    "MLP",
    "MoE",
    "Conv",
    "Shift",
    "Scale",
]


def _causal(model) -> bool:
    return all(noncausal_call(block.block_graph) is None for block in model.blocks())


def _steps(model, prompts, n: int, use_cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens (B, n) and the logits they were chosen from (B, n, vocab)."""
    pairs = list(stream(model, prompts, n, greedy=True, use_cache=use_cache, with_logits=True))
    return torch.stack([t for t, _ in pairs], 1), torch.stack([lg for _, lg in pairs], 1)


@pytest.mark.slow
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    config=model_configs(
        COMPONENTS, vocab=VOCAB, context=CONTEXT, d_models=(8, 16), registry=REGISTRY
    ),
    seed=st.integers(0, 2**16),
)
def test_cache_is_exact_on_drawn_architectures(config, seed) -> None:
    torch.manual_seed(seed)
    model = blockdsl.build_model(config, registry=REGISTRY).eval()
    assume(_causal(model))
    assert model.cache_blocker() is None, model.cache_blocker()
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in (5, 2, 5, 9)]
    tokens, logits = _steps(model, prompts, 8, use_cache=True)
    ref_tokens, ref_logits = _steps(model, prompts, 8, use_cache=False)
    # within 1e-5, absolutely or relative to the logit (drawn models without norms reach
    # logits of a few units, where float32 rounding of a different summation order is ~1e-6)
    torch.testing.assert_close(logits, ref_logits, rtol=TOL, atol=TOL)
    assert torch.equal(tokens, ref_tokens)
    # batched equals alone: the same tokens (and logits up to the batch's summation order)
    for row, prompt in enumerate(prompts):
        alone, alone_logits = _steps(model, [prompt], 8, use_cache=True)
        assert torch.equal(alone[0], tokens[row])
        torch.testing.assert_close(alone_logits[0], logits[row], rtol=TOL, atol=TOL)


# ---------------------------------------------------------------- parity with transformers
transformers = pytest.importorskip("transformers")

from tests.hf_configs import V, small_model  # noqa: E402


def _import():
    from blockdsl import hf

    return hf


def _other_hf_model(name: str):
    """The imports whose tests keep their own small configs (state-space and hybrid, dense
    decoders, mixture-of-experts, classic decoders), built by those tests' factories."""
    from tests import (
        test_hf_classic,
        test_hf_dense,
        test_hf_hybrid,
        test_hf_moe,
        test_hf_moe_records,
        test_hf_records,
        test_hf_ssm,
    )

    if name in test_hf_ssm.NAMES:
        return test_hf_ssm._hf_model(name), test_hf_ssm.V
    makers = {"qwen3_next": test_hf_hybrid._qwen3_next, "lfm2": test_hf_hybrid._lfm2}
    if name in makers:
        return test_hf_hybrid._random(makers[name]), test_hf_hybrid.V
    if name in test_hf_dense.CLASSES:
        return test_hf_dense._hf_model(name), test_hf_dense.V
    if name in {case[0] for case in test_hf_moe.CASES}:
        return test_hf_moe._hf_model(name), test_hf_moe.V
    if name in test_hf_classic.VARIANTS:
        return test_hf_classic._hf_model(name), test_hf_classic.V
    records: dict[str, dict] = {}
    for model_type, kwargs in test_hf_moe_records.MOE_RECORDS:
        records.setdefault(model_type, kwargs)  # the first row of each model_type
    if name in records:
        return test_hf_moe_records._hf_model(name, records[name]), test_hf_moe_records.V
    for _, model_type, kwargs in test_hf_records.RECORDS:
        if model_type == name:
            return test_hf_records._hf_model(model_type, kwargs), V
    raise KeyError(f"no small config for the imported architecture '{name}': add one here")


def _record_types() -> set[str]:
    """Types whose record tests already compare greedy and cached greedy decoding with
    transformers (tests/test_hf_records.py, test_hf_moe_records.py): here with -m long."""
    from tests import test_hf_moe_records, test_hf_records

    return {r[1] for r in test_hf_records.RECORDS} | {r[0] for r in test_hf_moe_records.MOE_RECORDS}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.long if n in _record_types() else ())
        for n in sorted(_import().SUPPORTED)
    ],
)  # every imported architecture
def test_greedy_continuations_equal_transformers_generate(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    vocab = V
    try:
        hf_model = small_model(name)  # every weight random (norms too): no accidental agreement
    except KeyError:
        hf_model, vocab = _other_hf_model(name)
    hf_model.generation_config.eos_token_id = None  # run every step, as ours does
    hf_model.generation_config.pad_token_id = vocab - 1  # never inferred: the mask is given
    model = _import().from_hf(hf_model)
    ids = torch.randint(0, vocab, (2, 5), generator=gen)
    n = 16  # past the sliding windows
    with torch.no_grad():
        theirs = hf_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
        )
    ours = model.generate(ids, n, greedy=True)
    assert torch.equal(ours, theirs), f"{name}: ours {ours.tolist()} theirs {theirs.tolist()}"
