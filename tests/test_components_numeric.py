"""The built-ins against formulas written out here (and, where cheap, against HF transformers)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from blockdsl.components.attention import alibi_slopes, apply_rotary
from blockdsl.components.grouped import grouped_linear
from blockdsl.components.mlp import MoE
from tests.conftest import CONTEXT, D, build

DTYPES = [torch.float32, torch.bfloat16]

# --------------------------------------------------------------------------- norms


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_matches_llama_formula(dtype):
    norm = build("RMSNorm", {"eps": 1e-6}).module.to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 5, D, dtype=dtype)
    x32 = x.float()
    expected = norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
    assert torch.equal(norm(x), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_unit_offset_matches_gemma_formula(dtype):
    norm = build("Norm", {"unit_offset": True, "eps": 1e-6}).module.to(dtype)
    assert torch.equal(norm.weight, torch.zeros(D, dtype=dtype))  # (1 + 0): identity scale
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 5, D, dtype=dtype)
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.equal(norm(x), (normed * (1.0 + norm.weight.float())).to(dtype))


@pytest.mark.parametrize("unit_offset", [False, True])
def test_layernorm_matches_formula(unit_offset):
    norm = build("LayerNorm", {"unit_offset": unit_offset}).module
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 5, D) * 3 + 1
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased, as LayerNorm
    scale = 1 + norm.weight if unit_offset else norm.weight
    expected = (x - mean) / torch.sqrt(var + 1e-5) * scale + norm.bias
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)


def test_l2_norm_and_none():
    norm = build("Norm", {"kind": "l2"}).module
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(norm(x), x / x.norm(dim=-1, keepdim=True) * norm.weight)
    x = torch.randn(2, 5, D)
    assert build("Norm", {"kind": "none"}).module(x) is x


# --------------------------------------------------------------------------- rotary


def rotary_complex(x: torch.Tensor, pos: torch.Tensor, r: int, theta: float, interleaved: bool):
    """Reference rotary: each rotated pair is a complex number turned by ``pos * theta^(-2i/r)``.
    Pairs are (i, i + r/2) (half) or (2i, 2i + 1) (interleaved); dims >= r pass through."""
    x = x.double()
    freqs = theta ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)  # (r/2,)
    turn = torch.polar(torch.ones(len(pos), r // 2, dtype=torch.float64), pos[:, None] * freqs)
    if interleaved:
        z = torch.complex(x[..., 0:r:2], x[..., 1:r:2]) * turn
        out = x.clone()
        out[..., 0:r:2], out[..., 1:r:2] = z.real, z.imag
    else:
        z = torch.complex(x[..., : r // 2], x[..., r // 2 : r]) * turn
        out = torch.cat([z.real, z.imag, x[..., r:]], dim=-1)
    return out


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("r", [8, 4])
def test_apply_rotary_matches_complex_formula(interleaved, r):
    x = torch.randn(2, 3, 7, 8)  # (B, H, T, hd)
    pos = torch.arange(7) * 3 + 1
    angles = pos[:, None].double() * 10000.0 ** (-torch.arange(0, r, 2).double() / r)
    y = apply_rotary(x, angles.cos().float(), angles.sin().float(), interleaved)
    torch.testing.assert_close(y.double(), rotary_complex(x, pos, r, 10000.0, interleaved))


def test_rope_tables():
    attn = build("Attn", {"head_dim": 16, "rope_fraction": 0.25, "rope_theta": 500.0}).module
    assert attn.rotary_dims == 4 and attn.rope_cos.shape == (CONTEXT, 2)
    t = torch.arange(CONTEXT).double()[:, None]
    angles = t * 500.0 ** (-torch.tensor([0.0, 2.0]).double() / 4)
    torch.testing.assert_close(attn.rope_cos.double(), angles.cos(), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- attention


def _slot_norm(attn, slot: str):
    """The norm that ``qk_norm=true`` puts in attention's q or k slot, or None."""
    return attn.slots[slot].norm if slot in attn.slots else None


def reference_attention(attn, x: torch.Tensor, positions: torch.Tensor | None = None):
    """Attention spelled out: per-head projections, rotary via complex numbers, HF repeat_kv,
    explicit scores, soft-capping, ALiBi, causal / window mask, softmax."""
    B, T, _ = x.shape
    H, K, hd = attn.heads, attn.kv_heads, attn.head_dim
    q = attn.q(x).view(B, T, H, hd).transpose(1, 2)
    k = attn.k(x).view(B, T, K, hd).transpose(1, 2)
    v = attn.v(x).view(B, T, K, hd).transpose(1, 2)
    q_norm, k_norm = _slot_norm(attn, "q"), _slot_norm(attn, "k")
    if q_norm is not None:
        q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6) * q_norm.weight
        k = k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + 1e-6) * k_norm.weight
    pos = torch.arange(T) if positions is None else positions
    if attn.pos == "rope":
        r = attn.rotary_dims
        q = rotary_complex(q, pos, r, attn.rope_theta, attn.rope_interleaved).float()
        k = rotary_complex(k, pos, r, attn.rope_theta, attn.rope_interleaved).float()
    n_rep = H // K  # HF repeat_kv: (B, K, T, hd) -> (B, K, n_rep, T, hd) -> (B, H, T, hd)
    k = k[:, :, None].expand(B, K, n_rep, T, hd).reshape(B, H, T, hd)
    v = v[:, :, None].expand(B, K, n_rep, T, hd).reshape(B, H, T, hd)
    scale = hd**-0.5 if attn.scale is None else attn.scale
    scores = q @ k.transpose(-1, -2) * scale
    cap = attn.slots["scores"].softcap.cap if "scores" in attn.slots else None
    if cap is not None:
        scores = cap * torch.tanh(scores / cap)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    if attn.pos == "alibi":
        scores = scores - alibi_slopes(H)[:, None, None] * (i - j).abs()
    allowed = torch.ones(T, T, dtype=torch.bool)
    if attn.causal:
        allowed &= j <= i
    if attn.window is not None:
        allowed &= (i - j).abs() < attn.window
    scores = scores.masked_fill(~allowed, float("-inf"))
    y = scores.softmax(-1) @ v  # (B, H, T, hd)
    return attn.o(y.transpose(1, 2).reshape(B, T, H * hd))


ATTN_CASES = [
    {},
    {"rope_interleaved": True},
    {"rope_fraction": 0.5},
    {"rope_fraction": 0.5, "rope_interleaved": True, "head_dim": 12},
    {"kv_heads": 2},
    {"kv_heads": 1, "pos": "none"},
    {"heads": 4, "kv_heads": 2, "window": 3},
    {"window": 4, "causal": False, "pos": "none"},
    {"softcap": 5.0},
    {"softcap": 5.0, "window": 3, "kv_heads": 4},
    {"pos": "alibi"},
    {"pos": "alibi", "heads": 6, "head_dim": 8, "window": 5},
    {"pos": "alibi", "causal": False},
    {"qk_norm": True, "bias": True, "scale": 0.3},
    {"causal": False},
]


@pytest.mark.parametrize("kwargs", ATTN_CASES, ids=[str(c) for c in ATTN_CASES])
def test_attention_matches_explicit_math(kwargs):
    attn = build("Attn", kwargs).module.eval()
    if _slot_norm(attn, "q") is not None:
        with torch.no_grad():
            _slot_norm(attn, "q").weight.normal_()
            _slot_norm(attn, "k").weight.normal_()
    x = torch.randn(2, 9, D)
    torch.testing.assert_close(attn(x), reference_attention(attn, x), rtol=1e-4, atol=1e-5)


def test_attention_positions_argument():
    attn = build("Attn", {"kv_heads": 2}).module.eval()
    x = torch.randn(1, 6, D)
    pos = torch.tensor([3, 4, 5, 9, 10, 11])
    torch.testing.assert_close(attn(x, positions=pos), reference_attention(attn, x, pos))
    torch.testing.assert_close(attn(x, positions=pos[None]), attn(x, positions=pos))


def test_alibi_slopes():
    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]
    assert alibi_slopes(6).tolist() == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]


def test_gqa_query_head_uses_kv_head_h_over_group():
    attn = build("Attn", {"heads": 4, "kv_heads": 2, "pos": "none"}).module.eval()
    hd = attn.head_dim
    with torch.no_grad():  # kv head 1 values are zero: query heads 2, 3 must output zeros
        attn.v.weight[hd:] = 0
        attn.o.weight.copy_(torch.eye(D))
    y = attn(torch.randn(1, 5, D))
    assert y[..., : 2 * hd].abs().sum() > 0
    assert torch.equal(y[..., 2 * hd :], torch.zeros_like(y[..., 2 * hd :]))


def test_cross_attention_matches_explicit_math():
    cross = build("CrossAttn", {"kv_heads": 2, "softcap": 10.0}).module.eval()
    x, memory = torch.randn(2, 4, D), torch.randn(2, 7, D)
    H, K, hd = cross.heads, cross.kv_heads, cross.head_dim
    q = cross.q(x).view(2, 4, H, hd).transpose(1, 2)
    k = cross.k(memory).view(2, 7, K, hd).transpose(1, 2).repeat_interleave(H // K, 1)
    v = cross.v(memory).view(2, 7, K, hd).transpose(1, 2).repeat_interleave(H // K, 1)
    scores = 10.0 * torch.tanh(q @ k.transpose(-1, -2) / math.sqrt(hd) / 10.0)
    expected = cross.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 4, D))
    torch.testing.assert_close(cross(x, memory=memory), expected)


# --------------------------------------------------------------------------- MLP


def test_gated_mlp_and_activations():
    x = torch.randn(2, 5, D)
    mlp = build("MLP", {"gated": True, "act": "silu", "hidden": 40}).module
    g, u = x @ mlp.gate.weight.T, x @ mlp.up.weight.T
    torch.testing.assert_close(mlp(x), (g * torch.sigmoid(g) * u) @ mlp.down.weight.T)
    mlp = build("MLP", {"act": "relu2", "bias": True}).module
    h = torch.clamp(x @ mlp.up.weight.T + mlp.up.bias, min=0) ** 2
    torch.testing.assert_close(mlp(x), h @ mlp.down.weight.T + mlp.down.bias)
    mlp = build("MLP", {"act": "gelu_tanh", "gated": True}).module
    g, u = x @ mlp.gate.weight.T, x @ mlp.up.weight.T
    gelu = 0.5 * g * (1 + torch.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
    torch.testing.assert_close(mlp(x), (gelu * u) @ mlp.down.weight.T)
    assert build("MLP", {"mult": 2.5}).module.up.out_features == int(2.5 * D)


# --------------------------------------------------------------------------- MoE


def reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: softmax router, top-k, optional renormalisation, weighted experts."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            xt = x[b, t]
            probs = torch.softmax(moe.router.weight @ xt, dim=-1)
            weights, chosen = probs.topk(moe.k)
            if moe.norm_topk:
                weights = weights / weights.sum()
            for w, e in zip(weights, chosen.tolist()):
                up = moe.w_up[e] @ xt
                h = moe.act(moe.w_gate[e] @ xt) * up if moe.gated else moe.act(up)
                out[b, t] += w * (moe.w_down[e] @ h)
            if moe.shared is not None:
                out[b, t] += moe.shared(xt)
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        {"experts": 4, "norm_topk": True},
        {"experts": 4, "norm_topk": False},
        {"experts": 5, "k": 1, "norm_topk": False, "gated": False, "act": "gelu", "shared": 2},
    ],
)
def test_moe_routing_matches_reference(kwargs):
    moe = build("MoE", {"hidden": 16, **kwargs}).module.eval()
    x = torch.randn(2, 6, D)
    y, aux = moe(x)
    torch.testing.assert_close(y, reference_moe(moe, x), rtol=1e-4, atol=1e-5)
    E, k = moe.num_experts, moe.k
    f = aux[0] / (moe.aux_coef * E)
    assert torch.isclose(f.sum(), torch.tensor(float(k)))  # k assignments per token
    assert torch.isclose(aux[1].sum(), torch.tensor(1.0))


def test_moe_renormalisation_changes_weights():
    a = build("MoE", {"experts": 4, "hidden": 16}).module
    b = build("MoE", {"experts": 4, "hidden": 16, "norm_topk": False}).module
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4, D)
    _, wa, _ = a.route(x[0])
    _, wb, _ = b.route(x[0])
    torch.testing.assert_close(wa.sum(-1), torch.ones(4))
    assert (wb.sum(-1) < 1).all()
    torch.testing.assert_close(wa, wb / wb.sum(-1, keepdim=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_grouped_linear_equals_a_loop_over_groups_with_gradients(dtype):
    """Every implementation (F.grouped_mm for bfloat16, the custom op's fused ATen call for
    float32, its loop for float64) against slices and F.linear, empty groups included."""
    counts = [3, 0, 5, 2, 0]
    offs = torch.tensor(counts).cumsum(0).to(torch.int32)
    x = torch.randn(sum(counts), 8, dtype=dtype, requires_grad=True)
    w = torch.randn(len(counts), 16, 8, dtype=dtype, requires_grad=True)
    y = grouped_linear(x, w, offs)
    grad = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), grad)
    ends = offs.tolist()
    starts = [0, *ends[:-1]]
    ref = torch.cat([F.linear(x[s:e], w[g]) for g, (s, e) in enumerate(zip(starts, ends))])
    rx, rw = torch.autograd.grad(ref, (x, w), grad)
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(y, ref, **tol)
    torch.testing.assert_close(gx, rx, **tol)
    torch.testing.assert_close(gw, rw, **tol)
    assert (gw[1] == 0).all() and (gw[4] == 0).all()  # experts without tokens get no gradient


def test_moe_matches_hf_mixtral_block():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = MixtralConfig(
        hidden_size=D, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2
    )
    hf = MixtralSparseMoeBlock(config).eval()
    moe = build("MoE", {"experts": 4, "k": 2, "hidden": 16, "act": "silu"}).module.eval()
    with torch.no_grad():
        hf.gate.weight.copy_(moe.router.weight)
        hf.experts.gate_up_proj.copy_(torch.cat([moe.w_gate, moe.w_up], dim=1))
        hf.experts.down_proj.copy_(moe.w_down)
    x = torch.randn(2, 7, D)
    torch.testing.assert_close(moe(x)[0], hf(x.clone()), rtol=1e-4, atol=1e-5)


def test_moe_aux_loss_matches_hf_load_balancing_loss():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    E, k, coef = 4, 2, 0.02
    layers = [build("MoE", {"experts": E, "k": k, "aux_loss": coef}).module for _ in range(3)]
    xs = [torch.randn(2, 5, D) for _ in layers]
    auxes = [layer(x)[1] for layer, x in zip(layers, xs)]
    logits = tuple(layer.router(x.reshape(-1, D)) for layer, x in zip(layers, xs))
    expected = load_balancing_loss_func(logits, num_experts=E, top_k=k) * coef
    torch.testing.assert_close(MoE.combine_aux(auxes), expected)
    # one layer: coef * E * sum_e f_e p_e
    aux = auxes[0]
    probs = torch.softmax(logits[0], -1)
    f = F.one_hot(probs.topk(k).indices, E).sum((0, 1)).float() / probs.shape[0]
    torch.testing.assert_close(MoE.combine_aux([aux]), coef * E * (f * probs.mean(0)).sum())


def test_moe_jitter_only_in_training():
    moe = build("MoE", {"experts": 4, "jitter": 0.5}).module
    x = torch.randn(1, 8, D)
    moe.eval()
    torch.testing.assert_close(moe(x)[0], moe(x)[0])
    moe.train()
    probs = [moe.route(x[0])[0] for _ in range(2)]
    assert not torch.allclose(probs[0], probs[1])


# --------------------------------------------------------------------------- the rest


def test_embed_formulas():
    emb = build("Embed", {"pos": "sinusoidal", "scale": "sqrt_d"}).module
    idx = torch.randint(0, 50, (2, 6))
    t = torch.arange(6).double()[:, None]
    i = torch.arange(0, D, 2).double()
    table = torch.zeros(6, D, dtype=torch.float64)
    table[:, 0::2] = torch.sin(t / 10000 ** (i / D))
    table[:, 1::2] = torch.cos(t / 10000 ** (i / D))
    expected = emb.tok.weight[idx] * math.sqrt(D) + table.float()
    torch.testing.assert_close(emb(idx), expected, rtol=1e-5, atol=1e-5)
    learned = build("Embed", {"pos": "learned", "scale": 2.0}).module
    pos = torch.tensor([5, 1, 2, 3, 4, 0])
    expected = learned.tok.weight[idx] * 2.0 + learned.pos.weight[pos]
    torch.testing.assert_close(learned(idx, positions=pos), expected)


@pytest.mark.parametrize("sinusoid", ["halves", "fairseq"])
def test_embed_sinusoid_layouts_and_offset(sinusoid):
    """CTRL's layout (every sine, then every cosine of the Transformer's angles) and
    fairseq's (sines then cosines of ``t * 10000^(-k/(d/2-1))``), read ``pos_offset`` rows on."""
    args = {"pos": "sinusoidal", "sinusoid": sinusoid, "pos_offset": 2}
    emb = build("Embed", args).module
    idx = torch.randint(0, 50, (2, 6))
    t = torch.arange(2, 8).double()[:, None]  # positions 0..5 read rows 2..7
    k = torch.arange(D // 2).double()
    rates = 10000 ** (-2 * k / D) if sinusoid == "halves" else 10000 ** (-k / (D // 2 - 1))
    table = torch.cat([torch.sin(t * rates), torch.cos(t * rates)], dim=-1)
    torch.testing.assert_close(emb(idx), emb.tok.weight[idx] + table.float(), rtol=0, atol=1e-5)


def test_head_softcap_and_bias():
    head = build("Head", {"bias": True, "softcap": 3.0}).module
    x = torch.randn(2, 4, D)
    logits = x @ head.weight.T + head.bias
    torch.testing.assert_close(head(x), 3.0 * torch.tanh(logits / 3.0))


def test_shift_conv_scale_gate_formulas():
    x = torch.randn(2, 6, D)
    shift = build("Shift").module
    with torch.no_grad():
        shift.mix.uniform_()
    prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    torch.testing.assert_close(shift(x), shift.mix * prev + (1 - shift.mix) * x)

    conv = build("Conv", {"kernel": 3}).module
    w = conv.weight[:, 0]  # (D, K): tap K-1 multiplies the current token
    expected = torch.stack(
        [
            sum(w[:, conv.kernel - 1 - s] * x[:, t - s] for s in range(conv.kernel) if t - s >= 0)
            + conv.bias
            for t in range(6)
        ],
        dim=1,
    )
    torch.testing.assert_close(conv(x), expected)

    rezero = build("Scale", {"init": 0.0, "per_channel": False}).module
    assert rezero.weight.shape == (1,) and torch.equal(rezero(x), torch.zeros_like(x))
    layer_scale = build("Scale").module
    torch.testing.assert_close(layer_scale(x), x * 1e-5)

    gate = build("Gate").module
    torch.testing.assert_close(gate(x), x * 0.5)  # starts as a constant half gate
    with torch.no_grad():
        gate.proj.weight.normal_()
    torch.testing.assert_close(gate(x), x * torch.sigmoid(gate.proj(x)))
    static = build("Gate", {"per_token": False, "init": 2.0}).module
    torch.testing.assert_close(static(x), x * torch.sigmoid(torch.tensor(2.0)))


# --------------------------------------------------------------------------- compile / export

COMPILE_CASES = [
    ("Attn", {"kv_heads": 2, "window": 3}),
    ("Attn", {"pos": "alibi", "softcap": 20.0}),
    ("Attn", {"rope_fraction": 0.5, "rope_interleaved": True, "qk_norm": True}),
    ("MoE", {"experts": 4, "shared": 1}),
    ("Embed", {"pos": "sinusoidal", "scale": "sqrt_d"}),
    ("Conv", {}),
    ("Shift", {}),
    ("Norm", {"kind": "layer", "unit_offset": True}),
]


@pytest.mark.parametrize(("name", "kwargs"), COMPILE_CASES, ids=[n for n, _ in COMPILE_CASES])
def test_fullgraph_compile_matches_eager(name, kwargs):
    torch._dynamo.reset()
    b = build(name, kwargs).eval()
    x = b.inputs(batch=2, seq=8)
    compiled = torch.compile(b.module, fullgraph=True, backend="aot_eager")
    expected, got = b.module(x), compiled(x)
    if b.component.aux_loss:
        torch.testing.assert_close(got[1], expected[1])
        expected, got = expected[0], got[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "kwargs"), COMPILE_CASES[:5], ids=[n for n, _ in COMPILE_CASES[:5]]
)
def test_export(name, kwargs):
    b = build(name, kwargs).eval()
    x = b.inputs(batch=2, seq=8)
    exported = torch.export.export(b.module, (x,))
    expected, got = b.module(x), exported.module()(x)
    if b.component.aux_loss:
        expected, got = expected[0], got[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- HF rotary


def test_rotary_matches_hf_llama_and_gptj():
    """Half rotary equals HF Llama's ``apply_rotary_pos_emb``; interleaved partial rotary
    equals GPT-J's (which rotates ``rotary_dim`` dims of a (B, T, H, hd) tensor)."""
    from transformers.models.gptj import modeling_gptj
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k = torch.randn(2, 4, 7, 16), torch.randn(2, 4, 7, 16)  # (B, H, T, hd)
    attn = build("Attn", {"heads": 4, "head_dim": 16}).module
    cos, sin = attn.rope_cos[:7], attn.rope_sin[:7]
    hf_q, hf_k = apply_rotary_pos_emb(
        q, k, torch.cat([cos, cos], -1)[None], torch.cat([sin, sin], -1)[None]
    )
    torch.testing.assert_close(apply_rotary(q, cos, sin, interleaved=False), hf_q)
    torch.testing.assert_close(apply_rotary(k, cos, sin, interleaved=False), hf_k)

    attn = build("Attn", {"heads": 4, "head_dim": 16, "rope_fraction": 0.5}).module
    sincos = modeling_gptj.create_sinusoidal_positions(7, 8)[None]  # (1, T, r)
    hf_sin, hf_cos = torch.split(sincos, 4, dim=-1)
    x = q.transpose(1, 2)  # GPT-J rotates (B, T, H, hd)
    rotated = modeling_gptj.apply_rotary_pos_emb(x[..., :8], hf_sin, hf_cos)
    expected = torch.cat([rotated, x[..., 8:]], dim=-1).transpose(1, 2)
    ours = apply_rotary(q, attn.rope_cos[:7], attn.rope_sin[:7], interleaved=True)
    torch.testing.assert_close(ours, expected)
