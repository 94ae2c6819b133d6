"""The ``gptalpha`` preset: GPT Core's GPT Alpha written in the language only. It has each of
its parts, trains, and decodes with the cache exactly as without."""

from __future__ import annotations

import pytest
import torch

import blockdsl
from blockdsl.config import load_config
from blockdsl.model import ModelPlan

VOCAB = 61
SMALL = {
    "d_model": 32,
    "vocab": VOCAB,
    "context": 32,
    "layers": "block*2",
    "defaults": {"Attn": {"heads": 2, "head_dim": 8, "v_head_dim": 16}},
}


def _small() -> blockdsl.LanguageModel:
    torch.manual_seed(0)
    return blockdsl.build_model("gptalpha", **SMALL)


def test_gptalpha_has_every_part_of_gpt_alpha() -> None:
    plan = ModelPlan(load_config("gptalpha"))
    (graph,) = {id(graph): graph for _, graph in plan.layers}.values()  # one named block
    specs = dict(graph.modules)
    attn = next(s for s in specs.values() if s.component.name == "Attn")
    assert attn.args["v_head_dim"] > attn.args["head_dim"]  # value heads wider than q/k heads
    assert set(attn.slots) == {"q", "k", "v", "o", "gate"}
    norms = [s for s in specs.values() if s.component.name == "Norm"]
    assert norms and all(not s.args["affine"] for s in norms)  # RMSNorm without weights
    o_norm = next(iter(attn.slots["o"].modules.values()))
    assert o_norm.args["per_head"] and o_norm.args["affine"]  # a norm per head on the output
    residuals = [s for s in specs.values() if s.component.name == "Residual"]
    assert [s.args["mix"] for s in residuals] == ["lerp", "lerp"]
    names = [s.component.name for s in specs.values()]
    assert "Shift" in names and "RWKV7ChannelMix" in names
    model = _small()
    assert model.head.head.weight is model.embed.embed.tok.weight  # tied


@pytest.mark.slow
def test_gptalpha_trains_20_steps_with_falling_loss() -> None:
    model = _small()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        starts = torch.randint(0, VOCAB, (4, 1), generator=generator)
        ids = (starts + torch.arange(17)) % VOCAB  # counting: each token is the previous + 1
        loss = model(ids[:, :-1], ids[:, 1:]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


@pytest.mark.slow
def test_gptalpha_generates_with_the_cache_exactly() -> None:
    model = _small().eval()
    assert model.cache_blocker() is None
    prompt = torch.randint(0, VOCAB, (2, 5))
    cached = model.generate(prompt, 8, greedy=True)
    assert torch.equal(cached, model.generate(prompt, 8, greedy=True, use_cache=False))
