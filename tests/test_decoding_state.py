"""The decoding-state protocol (docs/generation.md): every stateful component, block and model
gives, decoding with a state, the outputs of the full-sequence path at the same positions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import blockdsl
from blockdsl.errors import RegistryError
from blockdsl.registry import Registry

TOL = 1e-5


def _split_points(T: int) -> list[tuple[int, int]]:
    """A prefill of 5 tokens, a prefill chunk of 3, then single steps."""
    spans, start = [], 0
    for size in (5, 3):
        spans.append((start, start + size))
        start += size
    spans += [(t, t + 1) for t in range(start, T)]
    return spans


def _decoded(call, x: torch.Tensor, state) -> torch.Tensor:
    """``call(x_chunk, positions, state)`` over prefill chunks then steps, concatenated."""
    B, T = x.shape[:2]
    outs = []
    for a, b in _split_points(T):
        positions = torch.arange(a, b).expand(B, -1)
        outs.append(call(x[:, a:b], positions, state))
    return torch.cat(outs, dim=1)


ATTN_CASES = [
    {},
    {"heads": 4, "kv_heads": 2},
    {"heads": 4, "kv_heads": 1, "qk_norm": True},
    {"pos": "alibi", "heads": 4},
    {"pos": "alibi", "heads": 4, "kv_heads": 2},
    {"pos": "alibi", "heads": 4, "kv_heads": 1, "window": 3, "softcap": 1.5},
    {"pos": "alibi", "heads": 3, "head_dim": 8, "window": 4},
    {"window": 3},
    {"softcap": 2.0, "heads": 4, "kv_heads": 2},
    {"softcap": 2.0, "pos": "alibi", "window": 5},
    {"rope_fraction": 0.5, "rope_interleaved": True},
    {"pos": "none", "bias": True},
    {"pos": "alibi", "heads": 4, "kv_heads": 2, "alibi_scale": 0.3, "clip_qkv": 0.5},
]


@pytest.mark.parametrize("args", ATTN_CASES, ids=str)
def test_attn_cached_equals_full(args: dict) -> None:
    torch.manual_seed(0)
    attn = blockdsl.components.attention.Attn(24, **{"heads": 2, **args}, context=32).eval()
    x = torch.randn(2, 14, 24)
    with torch.no_grad():
        full = attn(x)
        state = attn.init_state(2, 20)
        decoded = _decoded(lambda c, p, s: attn(c, positions=p, state=s), x, state)
    torch.testing.assert_close(decoded, full, rtol=0, atol=TOL)


def test_attn_rows_at_different_positions() -> None:
    """Rows of one state decode together while at different positions."""
    torch.manual_seed(0)
    attn = blockdsl.components.attention.Attn(16, heads=2, window=4, context=32).eval()
    short, long = torch.randn(1, 6, 16), torch.randn(1, 9, 16)
    with torch.no_grad():
        state = attn.init_state(2, 12)
        # views: prefilling writes into the batch (the slots keep no state here)
        row0 = {k: v[0:1] for k, v in state.items() if k != "slots"} | {"slots": {}}
        row1 = {k: v[1:2] for k, v in state.items() if k != "slots"} | {"slots": {}}
        attn(short[:, :5], positions=torch.arange(5)[None], state=row0)
        attn(long[:, :8], positions=torch.arange(8)[None], state=row1)
        step = torch.cat([short[:, 5:6], long[:, 8:9]])
        out = attn(step, positions=torch.tensor([[5], [8]]), state=state)
        torch.testing.assert_close(out[0:1], attn(short)[:, -1:], rtol=0, atol=TOL)
        torch.testing.assert_close(out[1:2], attn(long)[:, -1:], rtol=0, atol=TOL)


@pytest.mark.parametrize("name", ["Conv", "Shift"])
@pytest.mark.parametrize("kernel", [1, 2, 4])
def test_conv_and_shift_cached_equal_full(name: str, kernel: int) -> None:
    torch.manual_seed(0)
    component = blockdsl.REGISTRY.get(name)
    args = {"kernel": kernel} if name == "Conv" else {}
    module = component.build({"d_model": 8, **args})
    with torch.no_grad():
        nn.init.normal_(module.weight if name == "Conv" else module.mix)
        x = torch.randn(3, 12, 8)
        full = module(x)
        state = module.init_state(3, 12)
        decoded = _decoded(lambda c, p, s: module(c, state=s), x, state)
    torch.testing.assert_close(decoded, full, rtol=0, atol=TOL)


def test_state_sizes_are_declared() -> None:
    registry = blockdsl.REGISTRY
    assert registry.get("Attn").state_size(64, {"heads": 4, "kv_heads": 2, "head_dim": None}, 128)
    attn = registry.get("Attn")
    args, _ = attn.bind(keywords={"heads": 4, "kv_heads": 2}, d_in=64)
    assert attn.state_size(64, args, 128) == 2 * 2 * 16 * 128
    conv = registry.get("Conv")
    args, _ = conv.bind(keywords={"kernel": 4}, d_in=64)
    assert conv.state_size(64, args, 128) == 3 * 64
    assert registry.get("MLP").state_size(64, {}, 128) == 0


def test_plan_state_size_counts_every_call_site() -> None:
    from blockdsl.model import ModelPlan

    config = blockdsl.load_config(
        "Norm->Attn#a->+->Norm->Attn#a->+->Norm->Conv(kernel=3)->MLP->+",
        d_model=32,
        vocab=50,
        context=16,
        layers="block*2",
        defaults={"Attn": {"heads": 4, "kv_heads": 2}},
    )
    attn = 2 * 2 * 8 * 16  # k and v, kv_heads 2, head_dim 8, 16 positions
    expected = 2 * (2 * attn + 2 * 32)  # two layers of: the label twice, a Conv window
    assert ModelPlan(config).state_size() == expected
    model = blockdsl.build_model(config)
    measured = sum(
        t.numel() for t in _leaves(model.init_state(1, 16))
    )  # what init_state allocates is what the plan reports
    assert measured == expected


def _leaves(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _leaves(value)


def test_registry_requires_init_state_with_a_state_keyword() -> None:
    registry = Registry()

    class Leaky(nn.Module):
        def __init__(self, d_model: int) -> None:
            super().__init__()

        def forward(self, x, state=None):
            return x

    with pytest.raises(RegistryError, match="init_state"):
        registry.register("Leaky", mixes_positions=True)(Leaky)

    class Counted(Leaky):
        def init_state(self, batch_size: int, max_len: int) -> dict[str, torch.Tensor]:
            return {"n": torch.zeros(batch_size, 3)}

    registry.register("Counted", mixes_positions=True, decodes=True)(Counted)
    component = registry.get("Counted")
    assert component.stateful
    # counted from init_state on the meta device
    assert component.state_size(8, {"d_model": 8}, 16) == 3


# ---------------------------------------------------------------- blocks and models
BLOCKS = [
    "Norm->Attn->+->Norm->MLP->+",
    "Norm->Attn(pos=alibi, window=4)->+->Norm->Conv(kernel=3)->MLP->+",
    ["Norm->Attn(softcap=3.0, window=5)->+", "Norm->Shift->MLP->+"],
    "Norm->Attn#a->+->Norm->Attn#a->+->Norm->MLP->+",
    "Norm->MoE(k=2)[Attn(window=3), Shift->MLP, Conv->MLP]->+",
    "(Norm->Shift->Attn->+)*2",
]


def _model(block, **overrides):
    torch.manual_seed(0)
    overrides = {"layers": "block*2", "defaults": {}, **overrides}
    return blockdsl.build_model(block, d_model=32, vocab=50, context=32, **overrides).eval()


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_model_cached_logits_equal_full(block) -> None:
    model = _model(block)
    assert model.cache_blocker() is None
    idx = torch.randint(0, 50, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx).logits
        state = model.init_state(2, 16)

        def call(chunk, positions, state):
            return model(chunk, positions=positions, state=state).logits

        decoded = _decoded(call, idx, state)
    torch.testing.assert_close(decoded, full, rtol=0, atol=TOL)


def test_block_forward_takes_per_call_states() -> None:
    model = _model("Norm->Attn#a->+->Norm->Attn#a->+->Norm->Conv->MLP->+")
    layer = model.layers[0]
    assert layer.state_attrs == ("a", "a", "conv")
    assert "state = (None, None, None)" in layer.code
    assert "state[0]" in layer.code and "state[2]" in layer.code
    states = layer.init_state(2, 8)
    assert len(states) == 3 and states[0] is not states[1]  # one state per call site


def test_blocks_without_stateful_calls_take_no_state() -> None:
    model = _model("Norm->MLP->+")
    assert all(block.init_state(1, 4) is None for block in model.blocks())
    assert "state" not in model.layers[0].code


def test_cache_blocker_names_the_component() -> None:
    registry = blockdsl.REGISTRY.copy()

    class Mean(nn.Module):
        """Causal running mean, without the decoding protocol."""

        def __init__(self, d_model: int) -> None:
            super().__init__()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            steps = torch.arange(1, x.shape[1] + 1, device=x.device)[:, None]
            return x.cumsum(1) / steps

    registry.register("Mean", mixes_positions=True)(Mean)
    model = _model("Norm->Mean->+->Norm->MLP->+", registry=registry)
    assert "Mean" in model.cache_blocker()
    assert "not causal" in _model("Norm->Attn(causal=false)->+").cache_blocker()


@pytest.mark.slow
def test_compiled_decoding_compiles_once_per_shape() -> None:
    """The static cache keeps shapes fixed: one graph for the prefill, one for every decode
    step, whatever the positions; the compiled steps equal the eager ones."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = _model("Norm->Attn(window=4)->+->Norm->Conv->MLP->+")
    # dynamo's graphs are what recompile; the eager backend keeps the test short
    step = torch.compile(model, fullgraph=True, backend="eager")
    idx = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    state, eager_state = model.init_state(2, 16), model.init_state(2, 16)
    with torch.inference_mode():
        positions = torch.arange(6).expand(2, -1)
        out = step(idx, positions=positions, state=state).logits
        ref = model(idx, positions=positions, state=eager_state).logits
        for t in range(6, 14):
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            token = ref[:, -1:].argmax(-1)
            positions = torch.full((2, 1), t)
            out = step(token, positions=positions, state=state).logits
            ref = model(token, positions=positions, state=eager_state).logits
    assert counters["stats"]["unique_graphs"] == 2
    torch._dynamo.reset()
