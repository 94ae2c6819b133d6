"""Every registered component, built from its declarations: shapes, meta device, gradients,
declared parameter counts, FLOPs and causality. Parametrized over the whole registry."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import nn

from blockdsl.errors import ArgumentError, BlockDSLError
from blockdsl.graph import build_graph
from blockdsl.printer import format_value
from blockdsl.registry import REGISTRY, Registry
from tests.conftest import CONTEXT, GLOBALS, D, build, resolve

# Every name (components and aliases) with its defaults, plus non-default combinations.
EXTRA = [
    ("Attn", {"kv_heads": 2}),
    ("Attn", {"kv_heads": 1, "pos": "alibi"}),
    ("Attn", {"heads": 6, "head_dim": 8, "pos": "alibi", "window": 3}),
    ("Attn", {"rope_fraction": 0.5, "rope_interleaved": True, "qk_norm": True, "bias": True}),
    ("Attn", {"heads": 4, "kv_heads": 2, "window": 3, "softcap": 20.0, "dropout": 0.1}),
    ("Attn", {"pos": "none", "causal": False}),
    ("Attn", {"head_dim": 16, "scale": 0.5, "rope_theta": 500.0}),
    ("Attn", {"gate": True, "qk_norm": True, "qk_norm_eps": 1e-5, "kv_heads": 2, "bias": True}),
    ("Attn", {"pos": "alibi", "alibi_scale": 0.25, "clip_qkv": 0.5, "kv_heads": 1, "bias": True}),
    ("CrossAttn", {"kv_heads": 2, "qk_norm": True, "softcap": 30.0, "bias": True}),
    (
        "Attn",
        {
            "heads": 4,
            "kv_heads": 2,
            "qk_norm": True,
            "qk_norm_kind": "layer",
            "qk_norm_per_head": True,
            "qk_norm_bias": True,
            "qkv_bias": True,
            "clip_qkv": 0.5,
            "rope_scaling": "yarn",
            "rope_factor": 4.0,
            "rope_original_context": 4,
        },
    ),
    (
        "Attn",
        {
            "kv_heads": 2,
            "qk_norm": True,
            "qk_norm_over": "all",
            "qk_norm_unit_offset": True,
            "o_bias": True,
            "rope_scaling": "longrope",
            "rope_original_context": 4,
            "rope_short_factor": [1.0, 1.5],
            "rope_long_factor": [2.0, 3.0],
        },
    ),
    ("Attn", {"rope_scaling": "dynamic", "rope_factor": 2.0, "rope_original_context": 4}),
    ("Attn", {"rope_scaling": "llama3", "rope_factor": 8.0, "rope_original_context": 4}),
    ("Attn", {"rope_scaling": "linear", "rope_factor": 2.0, "bias": True, "o_bias": False}),
    ("MLP", {"gated": True, "act": "silu"}),
    ("MLP", {"act": "relu2", "bias": True, "hidden": 24}),
    ("MLP", {"act": "gelu_tanh", "mult": 2.0, "gated": True, "bias": True}),
    ("MLP", {"act": "relu"}),
    ("MoE", {"norm_topk": False, "experts": 4}),
    ("MoE", {"k": 1, "experts": 4, "hidden": 16}),
    ("MoE", {"shared": 1, "gated": False, "act": "gelu", "experts": 4, "jitter": 0.1}),
    ("MoE", {"shared": 2, "shared_gate": True, "experts": 4, "hidden": 8}),
    ("Norm", {"kind": "layer", "bias": True}),
    ("Norm", {"kind": "l2"}),
    ("Norm", {"unit_offset": True, "eps": 1e-6}),
    ("Norm", {"kind": "layer", "unit_offset": True}),
    ("Norm", {"kind": "none"}),
    ("Norm", {"affine": False}),
    ("Embed", {"pos": "learned"}),
    ("Embed", {"pos": "learned", "pos_offset": 2}),
    ("Embed", {"pos": "sinusoidal", "scale": "sqrt_d"}),
    ("Embed", {"pos": "sinusoidal", "sinusoid": "fairseq", "pos_offset": 2}),
    ("Head", {"tie": True}),
    ("Head", {"tie": True, "bias": True, "softcap": 30.0}),
    ("Head", {"scale": 0.25}),
    ("Linear", {"out": 48, "bias": True}),
    ("Scale", {"init": 0.0, "per_channel": False}),
    ("Scale", {"by": 0.5}),
    ("Gate", {"per_token": False}),
    ("Gate", {"bias": False, "init": 1.0}),
    ("Conv", {"kernel": 1, "bias": False}),
    ("Shift", {"init": 0.0}),
    ("Residual", {"mix": "scale", "per_channel": False, "init": 1.0}),
    ("GatedDeltaNet", {"heads": 2, "v_heads": 4, "head_dim": 8, "v_head_dim": 4, "chunk": 5}),
    ("GatedDeltaNet", {"kernel": 1, "eps": 1e-5}),
    ("RWKV7", {"head_dim": 8, "chunk": 3, "decay_rank": 4, "a_rank": 4, "gate_rank": 8}),
    ("RWKV7ChannelMix", {"hidden": 24}),
    ("Hyena", {"filter_order": 8, "kernel": 1}),
    ("BaseConv", {"kernel": 3, "act": True}),
    ("BaseConv", {"filter_order": 16, "act": True}),
    ("ShortConv", {"kernel": 1, "bias": True}),
    ("Mamba", {"state": 4, "dt_rank": 3, "conv": 2, "bias": True, "conv_bias": False}),
    ("Mamba", {"inner": 24, "conv": 1}),
    ("Mamba", {"inner_norms": True, "eps": 1e-5}),
    ("Bias", {"init": 0.5}),
    ("Mamba2", {"state": 8, "head_dim": 16, "groups": 2, "chunk": 5, "bias": True}),
    ("Mamba2", {"state": 4, "head_dim": 8, "groups": 4, "chunk": 3, "norm": False, "conv": 2}),
    ("Mamba2", {"inner": 48, "head_dim": 12, "conv_bias": False}),
    ("Mamba2", {"head_dim": 16, "groups": 2, "norm_before_gate": True, "state": 4}),
    ("RGLRU", {"heads": 4, "conv": 2}),
    ("RGLRU", {"width": 48, "heads": 3, "act": "silu"}),
]
CASES = [(name, {}) for name in REGISTRY.names()] + EXTRA
IDS = [f"{n}({','.join(f'{k}={v}' for k, v in a.items())})" for n, a in CASES]


def test_every_component_is_exercised():
    assert {n for n, _ in CASES} == set(REGISTRY.names())


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_builds_and_keeps_declared_size(name, kwargs):
    b = build(name, kwargs).eval()
    x = b.inputs()
    y, aux = b.run(x, **b.context(x))
    assert y.shape == (*x.shape[:2], b.component.out_features(D, b.args))
    assert torch.isfinite(y).all()
    if b.component.aux_loss:
        assert aux is not None and torch.isfinite(b.aux_scalar(aux))


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_builds_on_meta_device(name, kwargs):
    with torch.device("meta"):
        b = build(name, kwargs)
        x = b.inputs()
        y, _ = b.run(x, **b.context(x))
    assert all(p.is_meta for p in b.module.parameters())
    assert y.is_meta and y.shape == (*x.shape[:2], b.component.out_features(D, b.args))


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_declared_param_count(name, kwargs):
    b = build(name, kwargs, tie=False)  # a tied weight belongs to the embedding
    # a component counts its own parameters; the blocks in its slots count as their own calls
    own = [p for n, p in b.module.named_parameters() if not n.startswith("slots.")]
    assert b.component.count_params(D, b.args) == sum(p.numel() for p in own)
    if b.component.slots:  # and the compiler's count is the whole module's
        text = f"{name}({', '.join(f'{k}={format_value(v)}' for k, v in kwargs.items())})"
        graph = build_graph(text, d_model=D, model_globals=GLOBALS, supplies=("memory",))
        spec = next(iter(graph.modules.values()))
        assert spec.params == sum(p.numel() for p in b.module.parameters())


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_declared_flops(name, kwargs):
    component, args = resolve(name, kwargs)
    small, large = component.count_flops(D, args, seq=8), component.count_flops(D, args, seq=16)
    assert isinstance(small, int) and 0 <= small <= large
    if component.count_params(D, args) >= D * D and not component.tokens_in:
        assert small >= 2 * 8 * D * D  # at least one matrix-vector product per token


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_gradients_reach_every_parameter(name, kwargs):
    b = build(name, kwargs).train()
    x = b.inputs(batch=2, seq=16)
    if x.is_floating_point():
        x.requires_grad_(True)
    y, aux = b.run(x, **b.context(x))
    loss = (y * torch.randn_like(y)).sum()  # random projection: no symmetric zero gradients
    if aux is not None:
        loss = loss + b.aux_scalar(aux)
    loss.backward()
    for pname, p in b.module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {pname}"
    if x.is_floating_point():
        assert x.grad is not None


def _perturbed(b, x: torch.Tensor, t: slice) -> torch.Tensor:
    x2 = x.clone()
    if b.component.tokens_in:
        x2[:, t] = (x2[:, t] + 1) % GLOBALS["vocab"]
    else:
        x2[:, t] += torch.randn_like(x2[:, t])
    return x2


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_causality(name, kwargs):
    """Position-mixing components are causal (unless built with causal=false); the others do
    not mix positions at all."""
    b = build(name, kwargs).eval()
    T = 12
    x = b.inputs(batch=1, seq=T)
    ctx = b.context(x)
    y, _ = b.run(x, **ctx)
    for t in (0, 4, T - 2):
        if b.component.mixes_positions:
            x2 = _perturbed(b, x, slice(t + 1, None))  # change every token after t
            y2, _ = b.run(x2, **ctx)
            if b.component.is_causal(b.args):
                torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1])
            else:
                assert not torch.allclose(y2[:, : t + 1], y[:, : t + 1])
        else:
            x2 = _perturbed(b, x, slice(t, t + 1))  # change token t only
            y2, _ = b.run(x2, **ctx)
            others = [i for i in range(T) if i != t]
            torch.testing.assert_close(y2[:, others], y[:, others])


def test_positions_default_is_arange():
    for name, kwargs in [("Attn", {}), ("Attn", {"rope_interleaved": True}), ("Embed", {})]:
        b = build(name, {**kwargs, **({"pos": "learned"} if name == "Embed" else {})}).eval()
        x = b.inputs(batch=2, seq=8)
        y, _ = b.run(x)
        torch.testing.assert_close(b.run(x, positions=torch.arange(8))[0], y)
        torch.testing.assert_close(b.run(x, positions=torch.arange(8).expand(2, 8))[0], y)
        assert not torch.allclose(b.run(x, positions=torch.arange(8) * 2)[0], y)


# --------------------------------------------------------------------------- aliases, errors


def test_aliases_bind_their_kind():
    assert resolve("RMSNorm")[1]["kind"] == "rms"
    _, args = resolve("LayerNorm")
    assert args["kind"] == "layer" and args["bias"] is True
    assert resolve("LayerNorm", {"bias": False})[1]["bias"] is False


def test_block_string_values_are_typed():
    attn = REGISTRY.get("Attn")
    _, issues = attn.bind((), {"pos": "rotary"}, d_in=D)
    assert issues and "rope|alibi|none" in issues[0].message
    args, issues = attn.bind((), {"window": "none", "softcap": 30}, d_in=D)
    assert not issues and args["window"] is None and args["softcap"] == 30.0
    args, issues = REGISTRY.get("Embed").bind((), {"scale": "sqrt_d", "vocab": 10}, d_in=D)
    assert not issues and args["scale"] == "sqrt_d"


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("Attn", {"heads": 5}),  # 32 not divisible by 5
        ("Attn", {"heads": 8, "kv_heads": 3}),
        ("Attn", {"clip_qkv": 0.0}),
        ("Attn", {"alibi_scale": 0.5}),  # without pos=alibi
        ("Embed", {"pos_offset": 2}),  # without pos=learned
        ("Embed", {"pos": "learned", "pos_offset": -1}),
        ("Embed", {"sinusoid": "fairseq"}),  # without pos=sinusoidal
        ("MoE", {"experts": 2, "k": 3}),
        ("Conv", {"kernel": 0}),
        ("GatedDeltaNet", {"heads": 5}),
        ("GatedDeltaNet", {"heads": 4, "v_heads": 6}),
        ("RWKV7", {"head_dim": 12}),
        ("RWKV7", {"chunk": 64}),
        ("Hyena", {"kernel": 0}),
        ("BaseConv", {"kernel": 0}),
        ("ShortConv", {"kernel": 0}),
    ],
)
def test_invalid_combinations_raise_blockdsl_errors(name, kwargs):
    component, args = resolve(name, kwargs)
    with pytest.raises(ArgumentError):
        component.build(args)


def test_untied_head_says_so():
    b = build("Head", {"tie": True}, tie=False)
    with pytest.raises(RuntimeError, match="tie_to"):
        b.module(torch.randn(1, 2, D))


def test_tied_head_shares_the_embedding_weight():
    b = build("Head", {"tie": True}, tie=False)
    embed = build("Embed").module
    b.module.tie_to(embed)
    assert b.module.weight is embed.tok.weight
    both = nn.ModuleList([embed, b.module])
    assert sum(p.numel() for p in both.parameters()) == GLOBALS["vocab"] * D
    with pytest.raises(BlockDSLError):
        build("Head", {"tie": True, "vocab": 7}, tie=False).module.tie_to(embed)


def test_head_context_and_rope_cache_follow_model_globals():
    attn = build("Attn").module
    assert attn.rope_cos.shape == (CONTEXT, D // 8 // 2)
    assert "rope_cos" not in attn.state_dict()  # non-persistent


def test_meta_module_materialises_with_reset_parameters():
    with torch.device("meta"):
        meta = build("Attn", {"rope_fraction": 0.5}).module
    meta.to_empty(device="cpu")
    for m in meta.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    ref = build("Attn", {"rope_fraction": 0.5}).module
    torch.testing.assert_close(meta.rope_cos, ref.rope_cos)


# --------------------------------------------------------------------------- combinator


def _children():
    mlp = build("MLP").module
    gelu = build("MLP", {"act": "gelu", "gated": True}).module
    attn = build("Attn", {"kv_heads": 2}).module
    return [mlp, gelu, attn]


def test_moe_with_children():
    children = _children()
    b = build("MoE", {"k": 2}, children=children)
    moe = b.module
    assert moe.num_experts == 3 and moe.w_up is None
    own = sum(p.numel() for p in moe.parameters()) - sum(
        p.numel() for c in children for p in c.parameters()
    )
    assert b.component.count_params(D, b.args, n_children=3) == own
    assert b.component.count_flops(D, b.args, seq=8, n_children=3) > 0
    x = torch.randn(2, 16, D, requires_grad=True)
    y, aux = b.run(x)
    assert y.shape == x.shape and aux.shape == (2, 3)
    ((y * torch.randn_like(y)).sum() + b.aux_scalar(aux)).backward()
    for name, p in moe.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # causal because every child is: changing token t+1.. leaves outputs <= t alone
    moe.eval()
    y, _ = b.run(x)
    x2 = x.detach().clone()
    x2[:, 6:] += 1.0
    torch.testing.assert_close(b.run(x2)[0][:, :6], y[:, :6])


def test_moe_children_outputs_are_combined_with_routing_weights():
    children = _children()
    b = build("MoE", {"k": 2, "norm_topk": False}, children=children)
    x = torch.randn(1, 6, D)
    y, _ = b.run(x)
    _, top_w, top_i = b.module.route(x[0])
    outs = torch.stack([c(x)[0] for c in children], dim=1)  # (T, E, D)
    expected = torch.stack(
        [sum(top_w[t, j] * outs[t, top_i[t, j]] for j in range(2)) for t in range(6)]
    )
    torch.testing.assert_close(y[0], expected)


def test_moe_children_and_experts_must_agree():
    component, args = resolve("MoE", {"experts": 5})
    with pytest.raises(ArgumentError):
        component.build(args, _children())


def test_moe_shared_expert_of_its_own_width():
    """``shared_hidden``: one shared expert whose width is no multiple of the experts'
    (Qwen2-MoE's shared_expert_intermediate_size); the size hooks count what is built."""
    args = {"experts": 4, "hidden": 16, "shared": 1, "shared_hidden": 24, "shared_gate": True}
    b = build("MoE", args)
    assert b.module.shared.up.weight.shape == (24, D)
    assert b.component.count_params(D, b.args) == sum(p.numel() for p in b.module.parameters())
    plain = build("MoE", {**args, "shared_hidden": None})
    assert b.component.count_flops(D, b.args, seq=8) > plain.component.count_flops(
        D, plain.args, seq=8
    )
    component, bad = resolve("MoE", {"shared_hidden": 24})  # no shared experts to size
    with pytest.raises(ArgumentError, match="shared_hidden=24 needs shared experts"):
        component.build(bad)


def test_moe_gpt_oss_experts_biases_and_clamped_swiglu():
    """gpt-oss's experts: biases on the router and each expert's projections (counted by the
    size hooks), and the clamped SwiGLU ``(up' + 1) * gate' * sigmoid(alpha * gate')``."""
    args = {"experts": 4, "k": 2, "hidden": 8, "router_bias": True, "expert_bias": True}
    b = build("MoE", {**args, "glu_limit": 0.5, "glu_alpha": 1.5})
    moe = b.module
    assert moe.router.bias.shape == (4,) and moe.b_down.shape == (4, D)
    assert b.component.count_params(D, b.args) == sum(p.numel() for p in moe.parameters())
    gate, up = torch.randn(5, 8) * 3, torch.randn(5, 8) * 3
    g, u = gate.clamp(max=0.5), up.clamp(-0.5, 0.5)
    torch.testing.assert_close(moe._hidden(gate, up), (u + 1) * g * torch.sigmoid(1.5 * g))
    with torch.no_grad():
        for bias in (moe.b_gate, moe.b_up, moe.b_down):
            bias.normal_()
    x = torch.randn(2, 6, D)
    flat = x.reshape(-1, D)
    _, top_w, top_i = moe.route(flat)
    expected = torch.zeros_like(flat)
    for n in range(flat.shape[0]):  # each token through its experts, one by one
        for w, e in zip(top_w[n], top_i[n], strict=True):
            h = moe._hidden(
                moe.w_gate[e] @ flat[n] + moe.b_gate[e], moe.w_up[e] @ flat[n] + moe.b_up[e]
            )
            expected[n] += w * (moe.w_down[e] @ h + moe.b_down[e])
    torch.testing.assert_close(b.run(x)[0].reshape(-1, D), expected)
    component, bad = resolve("MoE", {"glu_limit": 7.0, "act": "gelu"})  # not a SwiGLU
    with pytest.raises(ArgumentError, match=r"glu_limit=7\.0 needs gated SwiGLU experts"):
        component.build(bad)


# --------------------------------------------------------------------------- user components


def test_user_component_on_fresh_registry():
    registry = Registry()

    @registry.register()
    class Double(nn.Module):
        """Multiply by a learned scalar, twice."""

        def __init__(self, d_model: int, mode: Literal["a", "b"] = "a", gain: float = 2.0):
            super().__init__()
            self.gain = nn.Parameter(torch.tensor(gain))

        def forward(self, x):
            return x * self.gain

    component, args = resolve("Double", {"mode": "b"}, registry=registry)
    assert component.description == "Multiply by a learned scalar, twice."
    assert args == {"d_model": D, "mode": "b", "gain": 2.0}
    assert component.count_params(D, args) == 1 and component.out_features(D, args) == D
    module = component.build(args)
    torch.testing.assert_close(module(torch.ones(1, 2, D)), torch.full((1, 2, D), 2.0))
    assert "Double" not in REGISTRY
