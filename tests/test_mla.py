"""MLA (multi-head latent attention) and the MoE routing variants as components: the latent
decoding cache gives the full-sequence outputs, its declared size is what ``init_state``
allocates, the declared parameter count is the module's, and bad arguments are refused."""

from __future__ import annotations

import pytest
import torch

import blockdsl
from blockdsl.components.mla import MLA
from blockdsl.components.mlp import MoE
from blockdsl.registry import REGISTRY

MLA_CASES = [
    {},
    {"q_lora_rank": 12, "rope_interleaved": True, "bias": True},
    {"qk_nope_head_dim": 0, "scale": 0.3},
]
SIZES = {"heads": 3, "kv_lora_rank": 10, "qk_nope_head_dim": 6, "qk_rope_head_dim": 4}


def _mla(**args) -> MLA:
    torch.manual_seed(0)
    return MLA(24, **{**SIZES, "v_head_dim": 5, **args}, context=32).eval()


@pytest.mark.parametrize("args", MLA_CASES, ids=str)
def test_latent_cache_gives_the_full_outputs(args):
    mla = _mla(**args)
    x = torch.randn(2, 14, 24)
    with torch.no_grad():
        full = mla(x)
        state = mla.init_state(2, 20)
        spans = [(0, 5), (5, 8)] + [(t, t + 1) for t in range(8, 14)]
        steps = [mla(x[:, a:b], torch.arange(a, b).expand(2, -1), state) for a, b in spans]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)
    assert set(state) == {"latent", "k_rope"}


def test_rows_at_different_positions():
    """Row 0 has 6 tokens, row 1 has 3: each row's step sees its own cache only."""
    mla = _mla(q_lora_rank=8)
    x = torch.randn(2, 7, 24)
    with torch.no_grad():
        state = mla.init_state(2, 16)
        mla(x[:1, :6], torch.arange(6)[None], {k: v[:1] for k, v in state.items()})
        mla(x[1:, :3], torch.arange(3)[None], {k: v[1:] for k, v in state.items()})
        step = torch.stack([x[0, 6], x[1, 3]])[:, None]  # (2, 1, D)
        out = mla(step, torch.tensor([[6], [3]]), state)
        alone = [mla(x[:1, :7])[0, 6], mla(torch.cat([x[1:, :3], step[1:]], 1))[0, 3]]
    torch.testing.assert_close(out[:, 0], torch.stack(alone), rtol=0, atol=1e-5)


@pytest.mark.parametrize("args", MLA_CASES, ids=str)
def test_declared_params_and_cache_size(args):
    component = REGISTRY.get("MLA")
    full = {n: p.default for n, p in component.user_params.items()}
    full.update(SIZES, v_head_dim=5, **args)
    mla = _mla(**args)
    assert component.count_params(24, full) == sum(p.numel() for p in mla.parameters())
    cache = sum(t[0].numel() for t in mla.init_state(1, 32).values())
    assert component.state_size(24, full, 32) == cache == (10 + 4) * 32


@pytest.mark.slow
def test_model_with_mla_generates_with_its_cache():
    model = blockdsl.build_model(
        {
            "model": {"vocab": 50, "d_model": 32, "context": 32, "layers": "block*2"},
            "blocks": {"block": "Norm->MLA->+->Norm->MLP->+"},
            "defaults": {"MLA": {"heads": 2, "kv_lora_rank": 8, "qk_rope_head_dim": 4}},
        }
    ).eval()
    assert model.cache_blocker() is None
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    cached = model.generate(prompts, 6, greedy=True)
    uncached = model.generate(prompts, 6, greedy=True, use_cache=False)
    assert all(torch.equal(a, b) for a, b in zip(cached, uncached))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"qk_rope_head_dim": 5}, "qk_rope_head_dim must be positive and even"),
        ({"kv_lora_rank": 0}, "kv_lora_rank must be positive"),
        ({"q_lora_rank": 0}, "q_lora_rank must be positive"),
        ({"v_head_dim": 0}, "v_head_dim must be positive"),
    ],
)
def test_mla_refuses_bad_sizes(args, match):
    with pytest.raises(blockdsl.BlockDSLError, match=match):
        blockdsl.build_model(
            {
                "model": {"vocab": 50, "d_model": 32, "layers": "block"},
                "blocks": {"block": "Norm->MLA->+"},
                "defaults": {"MLA": args},
            },
            device="meta",
        )


# --------------------------------------------------------------------------- MoE routing


def test_group_limited_sigmoid_routing_by_hand():
    """Sigmoid scores, a selection-only bias, 2 groups of 2 (scored by their best 2), one
    group kept, renormalised and scaled: the weights and experts computed by hand."""
    moe = MoE(4, experts=4, k=2, hidden=4, score="sigmoid", score_bias=True, groups=2,
              topk_groups=1, group_top=2, routed_scale=2.0)  # fmt: skip
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4))
        moe.score_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))
    x = torch.tensor([[2.0, 1.0, 0.0, -3.0]])  # group 0 wins unbiased, group 1 with the bias
    probs, weights, experts = moe.route(x)
    assert sorted(experts[0].tolist()) == [2, 3]
    s = torch.sigmoid(x[0, 2:])
    torch.testing.assert_close(weights[0].sort().values, (2 * s / s.sum()).sort().values)
    torch.testing.assert_close(probs, torch.sigmoid(x))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"groups": 3}, "groups=3 must divide the 4 experts"),
        ({"groups": 2, "topk_groups": 3}, "topk_groups must be in 1..2"),
        ({"groups": 4, "topk_groups": 1, "k": 2}, "exceeds the 1 experts"),
        ({"groups": 2, "group_top": 3}, "group_top must be in 1..2"),
        ({"jitter": 1.5}, "jitter must be in"),
    ],
)
def test_moe_refuses_bad_routing(args, match):
    with pytest.raises(blockdsl.BlockDSLError, match=match):
        MoE(8, **{"experts": 4, "hidden": 4, **args})
