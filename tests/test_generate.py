"""``model.generate``: the cache changes nothing but speed, batches equal prompts alone,
sampling is reproducible, and bad prompts, options and models get clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import blockdsl
from blockdsl.generate import GenerationError, sample, stream

V = 61


def _model(block="Norm->Attn->+->Norm->MLP->+", registry=None, **overrides):
    torch.manual_seed(0)
    overrides = {"layers": "block*2", "defaults": {}, **overrides}
    model = blockdsl.build_model(
        block, d_model=32, vocab=V, context=40, registry=registry, **overrides
    )
    return model.eval()


def _ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


class RunningMean(nn.Module):
    """Causal running mean over time, without the decoding-state protocol."""

    def __init__(self, d_model: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[:, None]
        return x.cumsum(1) / steps


def _fallback_model():
    registry = blockdsl.REGISTRY.copy()
    registry.register("RunningMean", mixes_positions=True)(RunningMean)
    return _model("Norm->Attn->+->Norm->RunningMean->MLP->+", registry=registry)


def _reference_greedy(model, idx: torch.Tensor, steps: int) -> torch.Tensor:
    """The plain loop: rerun the whole sequence for each token."""
    with torch.no_grad():
        for _ in range(steps):
            idx = torch.cat([idx, model(idx).logits[:, -1:].argmax(-1)], dim=1)
    return idx


@pytest.mark.parametrize(
    "block",
    ["Norm->Attn(window=4)->+->Norm->Conv->MLP->+", ["Norm->Attn(pos=alibi)->+", "Shift->MLP->+"]],
    ids=str,
)
def test_cached_greedy_equals_the_plain_loop(block) -> None:
    model = _model(block)
    idx = _ids(2, 6)
    expected = _reference_greedy(model, idx, 12)
    assert torch.equal(model.generate(idx, 12, greedy=True), expected)
    assert torch.equal(model.generate(idx, 12, greedy=True, use_cache=False), expected)


def test_components_without_the_protocol_fall_back() -> None:
    model = _fallback_model()
    assert "RunningMean" in model.cache_blocker()
    idx = _ids(2, 5)
    expected = _reference_greedy(model, idx, 8)
    assert torch.equal(model.generate(idx, 8, greedy=True), expected)


@pytest.mark.parametrize("fallback", [False, True])
def test_batched_prompts_of_different_lengths_equal_each_alone(fallback: bool) -> None:
    model = _fallback_model() if fallback else _model("Norm->Attn(window=5)->+->Norm->MLP->+")
    prompts = [[3, 4, 5], list(range(10, 19)), [7], [1, 2, 3], list(range(20, 32))]
    batched = model.generate(prompts, 9, greedy=True)
    for prompt, out in zip(prompts, batched):
        alone = model.generate(torch.tensor([prompt]), 9, greedy=True)[0]
        assert torch.equal(out, alone)
        assert torch.equal(out[: len(prompt)], torch.tensor(prompt))


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy() -> None:
    model = _model()
    idx = _ids(3, 4)

    def sampled(seed: int, **options):
        return model.generate(idx, 10, generator=torch.Generator().manual_seed(seed), **options)

    assert torch.equal(sampled(5), sampled(5))
    assert torch.equal(sampled(5, top_k=7, top_p=0.8), sampled(5, top_k=7, top_p=0.8))
    assert not torch.equal(sampled(5, temperature=2.0), sampled(6, temperature=2.0))
    greedy = model.generate(idx, 10, greedy=True)
    assert torch.equal(sampled(5, top_k=1), greedy)
    assert torch.equal(sampled(5, temperature=0.0), greedy)
    assert torch.equal(sampled(5, top_p=1e-6), greedy)


def test_sample_filters() -> None:
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample(logits, top_k=2, generator=gen)) for _ in range(200)}
    assert draws == {1, 2}
    # nucleus: token 1 has p = 0.64, tokens 1 and 2 reach 0.88 > 0.7
    draws = {int(sample(logits, top_p=0.7, generator=gen)) for _ in range(200)}
    assert draws == {1, 2}
    assert int(sample(logits, greedy=True)) == 1


def test_stop_tokens_end_rows() -> None:
    model = _model()
    idx = _ids(2, 4)
    free = model.generate(idx, 12, greedy=True)
    stop = int(free[0, 6])  # the third new token of row 0
    out = model.generate([row for row in idx], 12, greedy=True, stop=stop)
    first = (free[0, 4:] == stop).nonzero()[0].item()
    assert torch.equal(out[0], free[0, : 4 + first + 1])
    as_tensor = model.generate(idx, 12, greedy=True, stop=[stop])
    tail = as_tensor[0, 4 + first :]
    assert torch.all(tail == stop)  # a stopped row repeats its stop token


def test_stream_yields_one_token_per_row_per_step() -> None:
    model = _model()
    steps = list(stream(model, [[1, 2], [3, 4, 5]], 5, greedy=True))
    assert len(steps) == 5 and all(step.shape == (2,) for step in steps)
    assert list(stream(model, [[1]], 0)) == []


def test_generate_restores_training_mode_and_grads() -> None:
    model = _model().train()
    out = model.generate(torch.tensor([1, 2, 3]), 3, greedy=True)
    assert out.shape == (6,) and model.training
    assert not out.requires_grad


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("idx", "steps", "message"),
    [
        ([[]], 3, "prompt 0 is empty"),
        ([[1, 2], []], 3, "prompt 1 is empty"),
        ([], 3, "no prompt"),
        (torch.tensor([[1, V]]), 3, f"unknown token id {V} at position 1"),
        (torch.tensor([[-1]]), 3, "unknown token id -1"),
        (torch.zeros(1, 41, dtype=torch.long), 0, "longer than the model's context of 40"),
        (torch.zeros(1, 30, dtype=torch.long), 11, "exceed the model's context"),
        (torch.zeros(1, 3), 3, "token ids"),
        ("hello", 3, "not text"),
        (torch.tensor([[1]]), -1, "max_new_tokens"),
    ],
)
def test_bad_prompts_are_clear_errors(idx, steps, message) -> None:
    # learned absolute positions: past the context is refused (a rotary model crops instead)
    with pytest.raises(GenerationError, match=message):
        _model(defaults={"Embed": {"pos": "learned"}}).generate(idx, steps)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_options_are_clear_errors(options, message) -> None:
    with pytest.raises(GenerationError, match=message):
        _model().generate(torch.tensor([[1]]), 2, **options)


def test_models_that_cannot_decode_are_clear_errors() -> None:
    with pytest.raises(GenerationError, match="not causal"):
        _model("Norm->Attn(causal=false)->+").generate(torch.tensor([[1]]), 2)
    with pytest.raises(GenerationError, match="memory"):
        _model("Norm->CrossAttn->+").generate(torch.tensor([[1]]), 2)


def test_a_cached_decode_step_stays_lean():
    """Issue 33.10: the cached path's per-token cost is overhead around a few small kernels, so
    its operator count is a measure a busy machine does not blur. A two-layer Llama's decode
    step ran 137 ATen operators before the rotary angles were widened once per table and the
    unmasked step stopped building a key-distance tensor; it ran 123 then, and 127 with the
    finite-logits guard (isfinite, all, item: a NaN is an error naming its component) and
    ``LMOutput``'s zero ``aux`` (bench/generate.py records the speed)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = blockdsl.build_model(
        "llama", vocab=97, d_model=32, context=64, layers="block*2",
        defaults={"Attn": {"heads": 4, "kv_heads": 2}, "MLP": {"hidden": 48}},
    ).eval()  # fmt: skip
    steps = stream(model, torch.randint(0, 97, (1, 8)), 6, greedy=True)
    next(steps), next(steps)  # the prefill, then one step
    counter = CountOps()
    with counter:
        next(steps)
    steps.close()
    assert counter.count <= 127, counter.count
