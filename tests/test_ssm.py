"""Mamba, Mamba2 and RG-LRU: the chunked/parallel training form equals the step-by-step
recurrence with an explicit decoding state, the scan's hand-written gradient is exact, and each
mixer matches transformers' own module with the same weights."""

from __future__ import annotations

import random

import pytest
import torch

import blockdsl
from blockdsl.components.ssm import (
    RGLRU,
    Mamba,
    Mamba2,
    _LinearScan,
    _scan_forward,
    _SelectiveScan,
    linear_scan,
    ssd,
)
from blockdsl.errors import ArgumentError
from tests.conftest import D, resolve

MIXERS = [
    ("Mamba", {"state": 4, "dt_rank": 3}),
    ("Mamba", {"state": 8, "conv": 1, "bias": True}),
    ("Mamba2", {"state": 8, "head_dim": 16, "groups": 2, "chunk": 5}),
    ("Mamba2", {"state": 4, "head_dim": 8, "groups": 1, "chunk": 4, "norm": False, "conv": 2}),
    ("RGLRU", {"heads": 4}),
    ("RGLRU", {"width": 48, "heads": 3, "conv": 1}),
]
IDS = [f"{n}({','.join(f'{k}={v}' for k, v in a.items())})" for n, a in MIXERS]


def _build(name: str, kwargs: dict) -> torch.nn.Module:
    component, args = resolve(name, kwargs)
    torch.manual_seed(0)
    return component.build(args).eval()


def _own_state(state: dict) -> dict[str, torch.Tensor]:
    """The mixer's own state tensors: without ``slots``, the states of the blocks in its slots
    (Mamba2's short convs), which declare their own sizes (the model adds them)."""
    return {k: v for k, v in state.items() if k != "slots"}


def _run_in_pieces(module: torch.nn.Module, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Feed ``x`` piece by piece through one decoding state (prefills and single steps)."""
    state = module.init_state(x.shape[0], x.shape[1])
    tensors = _own_state(state)
    ids = {k: id(v) for k, v in tensors.items()}
    shapes = {k: v.shape for k, v in tensors.items()}
    outs, t = [], 0
    for n in sizes:
        kwargs = {}
        if isinstance(module, RGLRU):
            kwargs["positions"] = torch.arange(t, t + n).expand(x.shape[0], n)
        outs.append(module(x[:, t : t + n], state=state, **kwargs))
        t += n
    tensors = _own_state(state)
    assert {k: id(v) for k, v in tensors.items()} == ids, "state tensors must be updated in place"
    assert {k: v.shape for k, v in tensors.items()} == shapes
    return torch.cat(outs, dim=1)


def _random_split(T: int, rng: random.Random) -> list[int]:
    sizes = []
    while sum(sizes) < T:
        sizes.append(min(rng.choice([1, 1, 1, 2, 3, 7, 11]), T - sum(sizes)))
    return sizes


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs"), MIXERS, ids=IDS)
def test_state_path_equals_full_sequence(name, kwargs):
    module = _build(name, kwargs)
    rng = random.Random(0)
    for T in (1, 4, 13, 21):  # including lengths that are not multiples of the chunk
        x = torch.randn(2, T, D)
        with torch.no_grad():
            full = module(x)
            steps = _run_in_pieces(module, x, [1] * T)
            pieces = _run_in_pieces(module, x, _random_split(T, rng))
        torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pieces, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "kwargs"), MIXERS, ids=IDS)
def test_declared_state_size_is_the_state(name, kwargs):
    component, args = resolve(name, kwargs)
    module = component.build(args)
    state = _own_state(module.init_state(3, 50))
    assert all(v.shape[0] == 3 and not v.any() for v in state.values())
    assert sum(v[0].numel() for v in state.values()) == component.state_size(D, args, 50)
    assert component.state_size(D, args, 50) == component.state_size(D, args, 5000)
    assert all(v.dtype == module.out_proj.weight.dtype for v in state.values() if name != "RGLRU")


def test_state_must_come_from_init_state():
    module = _build("Mamba", {"state": 4})
    with pytest.raises(ValueError, match="init_state"):
        module(torch.randn(1, 2, D), state={})


def test_rglru_rows_at_different_positions():
    """A row whose position is 0 starts over; another row continues its own state."""
    module = _build("RGLRU", {"heads": 2})
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        full = module(x)
        state = module.init_state(2, 9)
        module(x[:1, :5], state={k: v[:1] for k, v in state.items()})  # row 0 sees 5 tokens
        # row 0 continues at position 5, row 1 starts at 0 with the same inputs as row 0's 5..8
        y = module(
            torch.stack([x[0, 5:], x[1, :4]]),
            positions=torch.tensor([[5, 6, 7, 8], [0, 1, 2, 3]]),
            state=state,
        )
    torch.testing.assert_close(y[0], full[0, 5:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[1], full[1, :4], atol=1e-5, rtol=1e-5)


def test_mamba2_result_does_not_depend_on_chunk():
    module = _build("Mamba2", {"state": 8, "head_dim": 8, "groups": 2, "chunk": 64})
    x = torch.randn(2, 29, D)
    with torch.no_grad():
        ref = module(x)
        for chunk in (1, 3, 8, 29, 30):
            module.chunk = chunk
            torch.testing.assert_close(module(x), ref, atol=1e-5, rtol=1e-5)


def test_ssd_equals_the_recurrence():
    torch.manual_seed(1)
    b, T, H, P, G, N = 2, 11, 4, 3, 2, 5
    x, B, C = torch.randn(b, T, H, P), torch.randn(b, T, G, N), torch.randn(b, T, G, N)
    a = -torch.rand(b, T, H)
    h0 = torch.randn(b, H, P, N)
    y, final = ssd(x, a, B, C, chunk=4, h0=h0)
    h, Bh, Ch = h0.clone(), B.repeat_interleave(2, dim=2), C.repeat_interleave(2, dim=2)
    for t in range(T):
        h = a[:, t].exp()[..., None, None] * h + x[:, t, ..., None] * Bh[:, t, :, None]
        torch.testing.assert_close(y[:, t], torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
    torch.testing.assert_close(final, h)


def test_ssd_within_chunk_product_has_the_exact_gradient():
    """The custom backward of SSD's within-chunk product (recomputed decays, in-place passes)
    against finite differences in float64."""
    from blockdsl.components.ssm import _ChunkMix

    torch.manual_seed(2)
    b, g, r, c, L, p = 1, 2, 2, 2, 5, 3
    scores = torch.randn(b, g, c, L, L, dtype=torch.float64, requires_grad=True)
    a_cum = (-torch.rand(b, g, r, c, L, dtype=torch.float64)).cumsum(-1).requires_grad_()
    x = torch.randn(b, g, r, c, L, p, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_ChunkMix.apply, (scores, a_cum, x))


def test_linear_scan_values_and_exact_gradient():
    torch.manual_seed(2)
    a = torch.rand(2, 9, 3, dtype=torch.double, requires_grad=True)
    u = torch.randn(2, 9, 3, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(_LinearScan.apply, (a, u, h0))
    h, prev = [], h0
    for t in range(9):
        prev = a[:, t] * prev + u[:, t]
        h.append(prev)
    torch.testing.assert_close(_scan_forward(a, u, h0), torch.stack(h, dim=1))
    assert linear_scan(a[:, :0], u[:, :0]).shape == (2, 0, 3)


def test_selective_scan_exact_gradient_across_chunks():
    torch.manual_seed(4)
    b, T, E, N = 2, 7, 3, 4
    x, B, C = torch.randn(b, T, E), torch.randn(b, T, N), torch.randn(b, T, N)
    dt, A, h0 = torch.rand(b, T, E), -torch.rand(E, N), torch.randn(b, E, N)
    inputs = [t.double().requires_grad_() for t in (x, dt, A, B, C, h0)]
    assert torch.autograd.gradcheck(lambda *a: _SelectiveScan.apply(*a, 3), inputs)


@pytest.mark.parametrize(
    ("name", "kwargs", "words"),
    [
        ("Mamba2", {"head_dim": 24}, "multiple of head_dim"),
        ("Mamba2", {"head_dim": 16, "groups": 3}, "groups"),
        ("Mamba2", {"chunk": 0}, "chunk"),
        ("Mamba", {"state": 0}, "state size"),
        ("Mamba", {"dt_min": 0.5, "dt_max": 0.1}, "dt_min"),
        ("RGLRU", {"heads": 5}, "multiple of heads"),
        ("RGLRU", {"conv": 0}, "conv"),
    ],
)
def test_invalid_arguments_say_why(name, kwargs, words):
    component, args = resolve(name, kwargs)
    with pytest.raises(ArgumentError, match=words):
        component.build(args)


# --------------------------------------------------------------------------- transformers parity


def _rerandomise(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def test_mamba_matches_transformers_mixer():
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    cfg = MambaConfig(
        hidden_size=D, state_size=8, intermediate_size=2 * D, time_step_rank=4, use_bias=True
    )
    hf = MambaMixer(cfg, 0).eval()
    _rerandomise(hf)
    ours = Mamba(D, state=8, dt_rank=4, bias=True).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    x = torch.randn(2, 19, D)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x), atol=1e-4, rtol=1e-4)


def test_mamba2_matches_transformers_mixer():
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    cfg = Mamba2Config(
        hidden_size=D, state_size=8, head_dim=16, n_groups=2, num_heads=4, chunk_size=8
    )
    hf = Mamba2Mixer(cfg, 0).eval()
    _rerandomise(hf)
    ours = Mamba2(D, state=8, head_dim=16, groups=2, chunk=5).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    x = torch.randn(2, 19, D)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x), atol=1e-4, rtol=1e-4)


def test_rglru_matches_transformers_recurrent_block():
    from transformers import RecurrentGemmaConfig
    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import (
        RecurrentGemmaRecurrentBlock,
    )

    cfg = RecurrentGemmaConfig(hidden_size=D, lru_width=D, num_attention_heads=4)
    hf = RecurrentGemmaRecurrentBlock(cfg, 0).eval()
    _rerandomise(hf)
    ours = RGLRU(D, heads=4).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    x = torch.randn(2, 19, D)
    positions = torch.arange(19).expand(2, 19)
    with torch.no_grad():
        expected = hf(x, positions, None, use_cache=False)[0]
        torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- whole models


@pytest.mark.parametrize(
    "block",
    [
        "Norm->Mamba(state=4)->+->Norm->MLP->+",
        ["Norm->Mamba2(state=8, head_dim=16, chunk=4)->+", "Norm->Attn->+->Norm->MLP->+"],
        ["Norm->RGLRU(heads=2)->+->Norm->MLP->+", "Norm->Attn(window=4)->+->Norm->MLP->+"],
    ],
    ids=str,
)
def test_model_generation_with_state_equals_the_plain_loop(block):
    torch.manual_seed(0)
    model = blockdsl.build_model(block, d_model=D, vocab=41, context=40, layers="block*2").eval()
    assert not model.cache_blocker()
    prompts = [[3, 4, 5], list(range(10, 19)), [7]]
    batched = model.generate(prompts, 6, greedy=True)
    for prompt, out in zip(prompts, batched):
        idx = torch.tensor([prompt])
        assert torch.equal(out, model.generate(idx, 6, greedy=True, use_cache=False)[0])


def test_mixer_benchmark_runs_every_row(capsys):
    from bench.mixers import main

    argv = ["--d-model", "32", "--seq", "8", "--steps", "1", "--min-time", "0", "--markdown"]
    assert main([*argv, "--mixers", "Mamba(state=4)", "Mamba2(head_dim=16)", "RGLRU"]) == 0
    out = capsys.readouterr().out
    for row in ("`Attn(heads=4)` | 8", "`Mamba(state=4)` | 8", "`Mamba2(head_dim=16)` | 8"):
        assert row in out
    assert out.count("×") >= 4 + 3  # every row vs attention, three vs transformers
