"""Linear-attention and convolution mixers against their published equations, written out here
as plain loops (recurrences step by step, convolutions as sums), against HF transformers where
it has the layer, and their decoding state against the full-sequence path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from blockdsl.components.linear_attention import (
    RWKV7,
    GatedDeltaNet,
    RWKV7ChannelMix,
    chunked_delta_rule,
)
from blockdsl.components.long_conv import BaseConv, Hyena, ShortConv
from blockdsl.errors import BlockDSLError
from tests.conftest import resolve

LENGTHS = [1, 7, 16, 23, 50]  # around the chunk sizes used below (8, 16): not all divisible


def _randomise(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Every parameter re-drawn, so that no zero or unit init hides a term."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, scale)
    return module


# --------------------------------------------------------------------------- the recurrences


def gated_delta_loop(q, k, v, log_alpha, beta):
    """Gated DeltaNet (Yang et al. 2025, eq. 10), one token at a time, in float64:
    ``S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T``, ``o_t = S_t q_t``.
    Inputs (B, T, H, d); ``log_alpha``, ``beta`` (B, T, H)."""
    B, T, H, K = k.shape
    S = torch.zeros(B, H, v.shape[-1], K, dtype=torch.float64)
    eye = torch.eye(K, dtype=torch.float64)
    out = []
    for t in range(T):
        qt, kt, vt = (x[:, t].double() for x in (q, k, v))
        a, bt = log_alpha[:, t].double().exp()[..., None, None], beta[:, t].double()[..., None]
        outer = kt[..., :, None] * kt[..., None, :]  # (B, H, K, K)
        S = a * S @ (eye - bt[..., None] * outer) + (bt * vt)[..., :, None] * kt[..., None, :]
        out.append((S @ qt[..., None]).squeeze(-1))
    return torch.stack(out, dim=1)  # (B, T, H, V)


def rwkv7_loop(r, w, k, v, kk, a):
    """RWKV-7's state update (BlinkDL ``rwkv_v7_demo_rnn.py``), in float64:
    ``S = S diag(w) + S (-kk)(kk a)^T + v k^T``, ``o = S r``; inputs (B, T, H, N)."""
    B, T, H, N = k.shape
    S = torch.zeros(B, H, N, N, dtype=torch.float64)
    out = []
    for t in range(T):
        rt, wt, kt, vt, kkt, at = (x[:, t].double() for x in (r, w, k, v, kk, a))
        ab = (-kkt)[..., :, None] * (kkt * at)[..., None, :]
        S = S * wt[..., None, :] + S @ ab + vt[..., :, None] * kt[..., None, :]
        out.append((S @ rt[..., None]).squeeze(-1))
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("neg_eigval", [False, True])
@pytest.mark.parametrize("T", LENGTHS)
def test_gated_deltanet_equals_its_recurrence(T, neg_eigval):
    """The module's chunked form against the published recurrence on the same q, k, v, gates
    (taken from the module's own projections, so the whole layer is checked); with
    ``neg_eigval``, ``beta = 2 sigmoid(b)``."""
    m = GatedDeltaNet(
        32, heads=2, v_heads=4, head_dim=8, v_head_dim=6, chunk=8, neg_eigval=neg_eigval
    )
    m = _randomise(m)
    x = torch.randn(2, T, 32)
    q, k, v, z = m.q_proj(x), m.k_proj(x), m.v_proj(x), m.slots.gate.linear(x)
    b, a = m.in_proj_ba(x).view(2, T, 2, 4).split([2, 2], -1)  # per key head [b.., a..]
    b, a = b.reshape(2, T, 4), a.reshape(2, T, 4)
    z = z.view(2, T, 4, 6)
    conv = torch.cat([m.slots.get_submodule(f"{n}.conv").weight for n in "qkv"])
    mixed = F.silu(F.conv1d(F.pad(torch.cat((q, k, v), -1).transpose(1, 2), (3, 0)),
                            conv, groups=conv.shape[0])).transpose(1, 2)  # fmt: skip
    q, k, v = mixed.split([16, 16, 24], dim=-1)
    q, k = (t.reshape(2, T, 2, 8) for t in (q, k))
    q = (q / (q.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()).repeat_interleave(2, 2) / math.sqrt(8)
    k = (k / (k.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()).repeat_interleave(2, 2)
    v = v.reshape(2, T, 4, 6)
    log_alpha = -m.A_log.exp() * F.softplus(a + m.dt_bias)
    beta = b.sigmoid() * (2.0 if neg_eigval else 1.0)
    o = gated_delta_loop(q, k, v, log_alpha, beta).float()
    norm = m.slots.o.norm.weight
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + m.eps) * norm * F.silu(z)
    expected = m.out_proj(o.reshape(2, T, 24))
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", LENGTHS)
def test_rwkv7_equals_its_recurrence(T):
    m = _randomise(RWKV7(32, head_dim=8, chunk=8))
    x = torch.randn(2, T, 32)
    H, N = 4, 8
    xx = F.pad(x, (0, 0, 1, -1)) - x
    xr, xw, xk, xv, xa, xg = (x + xx * p for p in (m.x_r, m.x_w, m.x_k, m.x_v, m.x_a, m.x_g))
    r, k, v = m.receptance(xr), m.key(xk), m.value(xv)
    w = -F.softplus(-(m.w0 + torch.tanh(xw @ m.w1) @ m.w2)) - 0.5  # the demo's naive decay
    w = torch.exp(-torch.exp(w))
    a = torch.sigmoid(m.a0 + (xa @ m.a1) @ m.a2)
    g1, g2 = m.slots.gate.linear.weight.T, m.slots.gate.linear_1.weight.T  # BlinkDL's g1, g2
    g = torch.sigmoid(xg @ g1) @ g2
    kk = F.normalize((k * m.k_k).view(2, T, H, N), dim=-1)
    k = k * (1 + (a - 1) * m.k_a)
    heads = [t.view(2, T, H, N) for t in (r, w, k, v, kk, a.expand_as(k))]
    o = rwkv7_loop(*heads).float().reshape(2 * T, H * N)
    ln_x = m.slots.o.norm  # BlinkDL's ln_x: a weight and a bias per head feature
    o = F.group_norm(o, H, ln_x.weight.flatten(), ln_x.bias.flatten(), eps=64e-5).view(2, T, H * N)
    o = o + ((r * k * m.r_k.flatten()).view(2, T, H, N).sum(-1, keepdim=True)
             * v.view(2, T, H, N)).view(2, T, H * N)  # fmt: skip
    torch.testing.assert_close(m(x), m.output(o * g), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [1, 5, 16, 17, 40])
@pytest.mark.parametrize("per_channel", [False, True])
def test_chunked_delta_rule_from_a_state(T, per_channel):
    """The kernel itself, from a non-zero initial state: outputs and final state."""
    B, H, K, V = 2, 3, 8, 5
    r, k = torch.randn(B, H, T, K) / K**0.5, torch.randn(B, H, T, K) / K**0.5
    kk = F.normalize(torch.randn(B, H, T, K), dim=-1)
    a, b = -kk, kk * torch.rand(B, H, T, K)
    v = torch.randn(B, H, T, V)
    log_w = -0.6 * torch.rand(B, H, T, K) if per_channel else -2 * torch.rand(B, H, T, 1)
    S0 = torch.randn(B, H, V, K)
    seq_first = (t.transpose(1, 2) for t in (r, k, v, a, b, log_w))  # (B, T, H, d)
    o, S = chunked_delta_rule(*seq_first, S0, chunk=8)
    o = o.transpose(1, 2)
    S_ref, outs = S0.double(), []
    for t in range(T):
        St = S_ref * log_w[:, :, t].double().exp()[..., None, :]
        St = St + (S_ref @ a[:, :, t, :, None].double()) @ b[:, :, t, None, :].double()
        S_ref = St + v[:, :, t, :, None].double() * k[:, :, t, None, :].double()
        outs.append((S_ref @ r[:, :, t, :, None].double()).squeeze(-1))
    torch.testing.assert_close(o, torch.stack(outs, 2).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S, S_ref.float(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the convolutions


def direct_causal_conv(u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``y[t] = sum_{j <= t} h[j] u[t - j]`` as a sum, (B, D, T) with (D, T)."""
    T = u.shape[-1]
    y = torch.zeros_like(u, dtype=torch.float64)
    for t in range(T):
        for j in range(t + 1):
            y[..., t] += h[:, j].double() * u[..., t - j].double()
    return y.float()


@pytest.mark.parametrize("T", [1, 6, 19])
def test_hyena_equals_direct_convolution(T):
    m = _randomise(Hyena(16, filter_order=8, context=32), scale=0.2)
    x = torch.randn(2, T, 16)
    u = m.short_filter(m.in_proj(x).transpose(1, 2))[..., :T]  # nn.Conv1d pads both sides
    x1, x2, v = u.split(16, dim=1)
    v = v * x1
    y = (direct_causal_conv(v, m.filter(T)) + v * m.bias[:, None]) * x2
    torch.testing.assert_close(m(x), m.out_proj(y.transpose(1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T", [1, 6, 19])
def test_baseconv_equals_direct_convolution(T):
    m = _randomise(BaseConv(16, filter_order=8, context=32), scale=0.2)
    x = torch.randn(2, T, 16)
    u = x.transpose(1, 2)
    conv = (direct_causal_conv(u, m.filter(T)) + u).transpose(1, 2)
    torch.testing.assert_close(m(x), conv * m.projection(x) + x, rtol=1e-5, atol=1e-5)


def test_hyena_filter_is_the_prefix_of_the_context_filter():
    """A sequence uses the first T taps of one filter: outputs do not depend on T."""
    f = Hyena(16, context=32).filter
    torch.testing.assert_close(f(10), f(32)[:, :10])
    assert torch.all(f(32).abs()[:, -1] < f(32).abs().amax(-1))  # decays with the lag


def test_sequences_longer_than_the_filter_are_refused():
    with pytest.raises(BlockDSLError, match="longer than the long filter"):
        Hyena(16, context=8)(torch.randn(1, 9, 16))
    m = BaseConv(16, context=8)
    state = m.init_state(1, 8)
    m(torch.randn(1, 8, 16), state=state)
    with pytest.raises(BlockDSLError, match="state holds 8 positions"):
        m(torch.randn(1, 1, 16), state=state)


# --------------------------------------------------------------------------- decoding state

MIXERS = [
    ("GatedDeltaNet", {"heads": 2, "v_heads": 4, "chunk": 8}),
    ("RWKV7", {"head_dim": 8, "chunk": 8}),
    ("RWKV7ChannelMix", {}),
    ("Hyena", {"filter_order": 16}),
    ("BaseConv", {}),
    ("BaseConv", {"kernel": 4}),
    ("ShortConv", {}),
]


def _leaves(state, path: str = "") -> dict:
    """The tensors of a decoding state by path: a mixer with slots nests its slots' blocks'
    states (lists of dicts) under ``slots`` (GatedDeltaNet's short convs)."""
    if isinstance(state, torch.Tensor):
        return {path: state}
    items = state.items() if isinstance(state, dict) else enumerate(state)
    return {p: t for key, value in items for p, t in _leaves(value, f"{path}{key}.").items()}


def _row(state, row: int):
    """The state of one row of the batch: views of every tensor, nesting kept."""
    if isinstance(state, torch.Tensor):
        return state[row : row + 1]
    if isinstance(state, dict):
        return {key: _row(value, row) for key, value in state.items()}
    return [_row(value, row) for value in state]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs"), MIXERS, ids=[n for n, _ in MIXERS])
def test_state_continues_the_sequence(name, kwargs):
    """Prefill pieces and single decode steps through the state equal the full-sequence
    outputs (the decoding contract), and the state's tensors keep their identity."""
    component, args = resolve(name, kwargs)
    module = _randomise(component.build(args), scale=0.2).eval()
    x = torch.randn(3, 30, 32)
    full = module(x)
    state = module.init_state(3, 64)
    assert all(t.shape[0] == 3 for t in _leaves(state).values())
    ids = {k: id(t) for k, t in _leaves(state).items()}
    pieces, start = [], 0
    for n in (6, 1, 1, 9, 1, 12):
        positions = torch.arange(start, start + n).expand(3, n)
        pieces.append(module(x[:, start : start + n], positions=positions, state=state))
        start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert {k: id(t) for k, t in _leaves(state).items()} == ids


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs"), MIXERS, ids=[n for n, _ in MIXERS])
def test_rows_of_a_state_are_independent(name, kwargs):
    """A row prefilled alone (through a view of its row of the batch state) decodes as if it
    had been alone: rows at different positions do not mix."""
    component, args = resolve(name, kwargs)
    module = _randomise(component.build(args), scale=0.2).eval()
    prompts = [torch.randn(1, 5, 32), torch.randn(1, 11, 32)]
    state = module.init_state(2, 64)
    for row, prompt in enumerate(prompts):
        module(prompt, state=_row(state, row))
    step = torch.randn(2, 1, 32)
    together = module(step, state=state)
    for row, prompt in enumerate(prompts):
        alone = module(torch.cat((prompt, step[row : row + 1]), dim=1))[:, -1:]
        torch.testing.assert_close(together[row : row + 1], alone, rtol=1e-5, atol=1e-5)


def test_declared_state_sizes_count_the_state():
    for name, kwargs in MIXERS:
        component, args = resolve(name, kwargs)
        state = component.build(args).init_state(1, 64)
        state.pop("slots", None)  # the slots' blocks declare their own (the model adds them)
        assert component.stateful, name
        assert component.state_size(32, args, 64) == sum(t.numel() for t in state.values()), name


def test_recurrent_state_size_does_not_grow_with_context():
    for name in ("GatedDeltaNet", "RWKV7", "RWKV7ChannelMix", "ShortConv", "Hyena"):
        component, args = resolve(name)
        small, large = (component.state_size(32, args, c) for c in (64, 4096))
        assert (small == large) == (name != "Hyena"), name


# --------------------------------------------------------------------------- against HF


def test_gated_deltanet_matches_transformers_qwen3_next():
    """The same weights (loaded by name) give HF Qwen3NextGatedDeltaNet's outputs, chunked and
    decoded."""
    cfg_mod = pytest.importorskip("transformers.models.qwen3_next.configuration_qwen3_next")
    modeling = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    config = cfg_mod.Qwen3NextConfig(
        hidden_size=32,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=8,
        linear_value_head_dim=6,
        linear_conv_kernel_dim=4,
        num_hidden_layers=1,
        layer_types=["linear_attention"],
        rms_norm_eps=1e-6,
    )
    ref = _randomise(modeling.Qwen3NextGatedDeltaNet(config, 0)).eval()
    ours = GatedDeltaNet(32, heads=2, v_heads=4, head_dim=8, v_head_dim=6, kernel=4, chunk=16)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 37, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_shortconv_matches_transformers_lfm2():
    cfg_mod = pytest.importorskip("transformers.models.lfm2.configuration_lfm2")
    modeling = pytest.importorskip("transformers.models.lfm2.modeling_lfm2")
    config = cfg_mod.Lfm2Config(
        hidden_size=32, num_hidden_layers=1, layer_types=["conv"], conv_L_cache=3, conv_bias=True
    )
    ref = _randomise(modeling.Lfm2ShortConv(config, 0)).eval()
    ours = ShortConv(32, kernel=3, bias=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 13, 32, requires_grad=True)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    w = torch.randn(2, 13, 32)
    names = sorted(dict(ref.named_parameters()))
    mine = torch.autograd.grad((ours(x) * w).sum(), [x, *(ours.get_parameter(n) for n in names)])
    theirs = torch.autograd.grad((ref(x) * w).sum(), [x, *(ref.get_parameter(n) for n in names)])
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kernel", "seq", "bias"), [(3, 7, True), (4, 2, False), (1, 5, True)])
def test_gated_short_conv_has_the_exact_gradient(kernel, seq, bias):
    """ShortConv's (B, T, 3D)-layout kernel, shifted multiply-adds with a written-out
    backward, against finite differences (including sequences shorter than the kernel)."""
    from blockdsl.components.long_conv import _GatedShortConv

    torch.manual_seed(3)
    bch = torch.randn(2, seq, 12, dtype=torch.float64, requires_grad=True)
    taps = torch.randn(4, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    assert torch.autograd.gradcheck(_GatedShortConv.apply, (bch, taps, b))


def test_channel_mix_is_the_reference_formula():
    m = _randomise(RWKV7ChannelMix(32, hidden=48))
    x = torch.randn(2, 9, 32)
    xk = x + (F.pad(x, (0, 0, 1, -1)) - x) * m.x_k
    torch.testing.assert_close(m(x), m.value(torch.relu(m.key(xk)) ** 2))


MODEL_BLOCKS = [
    "Norm->GatedDeltaNet(heads=2, chunk=4)->+->Norm->RWKV7ChannelMix->+",
    ["Norm->RWKV7(head_dim=8, chunk=4)->+", "Norm->Hyena(filter_order=8)->+"],
    "Norm->BaseConv->Norm->ShortConv->+->Norm->BaseConv(kernel=3)->MLP->+",
    "Norm->MoE(k=1)[ShortConv, GatedDeltaNet(heads=2)]->+",
]


@pytest.mark.slow
@pytest.mark.parametrize("block", MODEL_BLOCKS, ids=str)
def test_model_with_linear_mixers_decodes_as_the_full_sequence(block):
    """Through the model's lowering: per-call-site states, prefill pieces then steps."""
    import blockdsl

    model = blockdsl.build_model(block, d_model=32, vocab=50, context=32, layers="block*2")
    model.eval()
    assert model.cache_blocker() is None
    idx = torch.randint(0, 50, (2, 15))
    with torch.no_grad():
        full = model(idx).logits
        state = model.init_state(2, 32)
        pieces, start = [], 0
        for n in (5, 3, 1, 1, 4, 1):
            positions = torch.arange(start, start + n).expand(2, n)
            pieces.append(model(idx[:, start : start + n], positions=positions, state=state).logits)
            start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("block", MODEL_BLOCKS[:3], ids=str)
def test_generate_with_linear_mixers_equals_the_plain_loop(block):
    """``model.generate`` through the states (prompts of different lengths, batched) gives
    the greedy continuation of rerunning the whole sequence for every token."""
    import blockdsl

    torch.manual_seed(0)
    model = blockdsl.build_model(block, d_model=32, vocab=50, context=32, layers="block*2").eval()
    prompts = [torch.randint(0, 50, (n,)) for n in (3, 9, 1)]
    batched = model.generate(prompts, 8, greedy=True)
    with torch.no_grad():
        for prompt, out in zip(prompts, batched):
            idx = prompt[None]
            for _ in range(8):
                idx = torch.cat([idx, model(idx).logits[:, -1:].argmax(-1)], dim=1)
            assert torch.equal(out, idx[0])


@pytest.mark.parametrize(("name", "kwargs"), MIXERS, ids=[n for n, _ in MIXERS])
def test_depth_2_steps_add_up_to_the_declared_flops(name, kwargs):
    """``--show-shapes --depth 2`` lists steps whose FLOPs are the component's declared FLOPs
    (of one sequence; a long filter is generated once per batch, whatever its size)."""
    component, args = resolve(name, kwargs)
    steps = component.shape_steps_fn(
        d_in=32, seq=24, batch=1, **{k: v for k, v in args.items() if k != "d_model"}
    )
    assert sum(s[3] for s in steps) == component.count_flops(32, args, seq=24)
    assert all(len(s[1]) == len(s[2]) for s in steps)


def test_cached_filter_follows_the_weights():
    """Decoding reuses the generated filter until a weight changes."""
    f = Hyena(16, filter_order=8, context=32).filter
    with torch.no_grad():
        first = f.taps(32)
        assert f.taps(10).data_ptr() == first.data_ptr()  # a view of the cache
        f.out.weight.mul_(2.0)
        torch.testing.assert_close(f.taps(32), f(32))
        torch.testing.assert_close(f.taps(32), 2 * first)
    assert f.taps(32).requires_grad  # with gradients: computed, not cached
