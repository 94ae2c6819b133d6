"""Slots (language v3): block strings inside a mixer. Numerical identities, the shorthand
arguments, sizes, decoding and a property test over random slot contents."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch import nn

import blockdsl
from blockdsl.errors import BlockDSLError
from blockdsl.graph import build_graph
from blockdsl.lower import compile_block
from blockdsl.parser import parse
from blockdsl.printer import unparse
from blockdsl.testing import slotted_calls

D = 32


def _same_weights(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


def _pair(a: str, b: str, **kw) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    first = compile_block(a, d_model=D, **kw).eval()
    second = compile_block(b, d_model=D, **kw).eval()
    _same_weights(second, first)
    return first, second


# ---------------------------------------------------------------- syntax and printing
@pytest.mark.parametrize(
    "src",
    [
        "Norm->Attn(heads=8)[q=Norm, k=Norm]->+",
        "Norm->Attn[q=Rope->Norm, k=Rope->Norm]->+",
        "Norm->Attn[q=Conv(kernel=3), k=Conv(kernel=3), v=Conv(kernel=3)]->+",
        "Norm->Attn(v_head_dim=8)[o=Norm]->+",
        "Norm->Attn[q=Norm#n, k=Norm#n]->+",
        "Norm->Attn(qk_norm=true)->+",  # the printer keeps the shorthand as written
    ],
)
def test_slots_round_trip_through_the_printer(src: str) -> None:
    assert unparse(parse(src)) == src
    build_graph(src, d_model=64)


# ---------------------------------------------------------------- numerical identities
def test_a_linear_map_in_q_is_scaling_the_scores() -> None:
    # head_dim 8: the default scale is 8 ** -0.5; three times the queries is three times it
    scaled, plain = _pair("Attn(heads=4)[q=Scale(by=3.0)]", f"Attn(heads=4, scale={3 * 8**-0.5})")
    x = torch.randn(2, 7, D)
    torch.testing.assert_close(scaled(x), plain(x), rtol=1e-5, atol=1e-6)


def test_rope_written_where_it_goes_by_default_changes_nothing() -> None:
    explicit, implicit = _pair(
        "Attn(heads=4)[q=Norm->Rope, k=Norm->Rope]", "Attn(heads=4)[q=Norm, k=Norm]"
    )
    x = torch.randn(2, 9, D)
    torch.testing.assert_close(explicit(x), implicit(x), rtol=0, atol=0)


def test_rope_before_the_norm_is_another_model() -> None:
    after, before = _pair(
        "Attn(heads=4)[q=Rope->Norm, k=Rope->Norm]", "Attn(heads=4)[q=Norm, k=Norm]"
    )
    for module in (after, before):  # a uniform weight commutes with the rotation
        with torch.no_grad():
            for name, p in module.named_parameters():
                if "norm" in name:
                    p.copy_(torch.linspace(0.1, 2.0, p.numel()).view_as(p))
    x = torch.randn(2, 9, D)
    assert not torch.allclose(after(x), before(x), atol=1e-4)


@pytest.mark.parametrize(
    ("slots", "flags"),
    [
        ("q=Norm(eps=1e-6), k=Norm(eps=1e-6)", "qk_norm=true"),
        ("q=Norm, k=Norm", "qk_norm=true, qk_norm_eps=1e-5"),
        (
            "q=Norm(kind=layer, eps=1e-6, per_head=true), k=Norm(kind=layer, eps=1e-6, "
            "per_head=true)",
            "qk_norm=true, qk_norm_kind=layer, qk_norm_per_head=true",
        ),
        (
            "q=Norm(eps=1e-6, whole=true), k=Norm(eps=1e-6, whole=true)",
            "qk_norm=true, qk_norm_over=all",
        ),
        ("q=Clip(limit=0.5), k=Clip(limit=0.5), v=Clip(limit=0.5)", "clip_qkv=0.5"),
        ("gate=Linear(out=32)->Act(sigmoid)", "gate=true"),
        ("scores=Softcap(cap=2.0)", "softcap=2.0"),
    ],
)
def test_shorthand_is_its_slot(slots: str, flags: str) -> None:
    """The flags are compiled into the very blocks the slot form writes: same parameters
    (by name), same outputs."""
    slotted, flagged = _pair(
        f"Attn(heads=4, kv_heads=2)[{slots}]", f"Attn(heads=4, kv_heads=2, {flags})"
    )
    assert slotted.state_dict().keys() == flagged.state_dict().keys()
    for module in (slotted, flagged):  # move the norms off their initial ones
        with torch.no_grad():
            for name, p in module.named_parameters():
                if "slots" in name:
                    p.copy_(torch.linspace(0.5, 1.5, p.numel()).view_as(p))
    x = torch.randn(2, 9, D) * 3
    torch.testing.assert_close(slotted(x), flagged(x), rtol=0, atol=0)


def test_direct_construction_with_a_flag_gets_the_same_blocks() -> None:
    from blockdsl.components.attention import Attn

    torch.manual_seed(0)
    direct = Attn(D, heads=4, qk_norm=True, gate=True).eval()
    compiled = compile_block("Attn(heads=4, qk_norm=true, gate=true)", d_model=D).eval()
    attn = compiled.attn
    assert direct.state_dict().keys() == attn.state_dict().keys()
    attn.load_state_dict(direct.state_dict())
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(direct(x), attn(x))


def test_weights_saved_before_the_slots_still_load() -> None:
    attn = compile_block("Attn(heads=4, qk_norm=true, gate=true)", d_model=D).attn
    old = {
        k.replace("slots.q.norm.", "q_norm.")
        .replace("slots.k.norm.", "k_norm.")
        .replace("slots.gate.linear.", "gate."): v.clone() + 1
        for k, v in attn.state_dict().items()
    }
    attn.load_state_dict(old)
    assert torch.equal(attn.slots["q"].norm.weight, old["q_norm.weight"])
    assert torch.equal(attn.slots["gate"].linear.weight, old["gate.weight"])


def test_sink_logit_matches_the_gpt_oss_formula() -> None:
    block = compile_block("Attn(heads=2, pos=none)[scores=Sink(init=0.7)]", d_model=8).eval()
    attn = block.attn
    x = torch.randn(1, 5, 8)
    q = attn.q(x).view(1, 5, 2, 4).transpose(1, 2)
    k = attn.k(x).view(1, 5, 2, 4).transpose(1, 2)
    v = attn.v(x).view(1, 5, 2, 4).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / 2.0
    scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    sink = torch.full((1, 2, 5, 1), 0.7)
    probs = torch.softmax(torch.cat((scores, sink), -1), -1)[..., :5]  # gpt-oss: drop the sink
    expected = attn.o((probs @ v).transpose(1, 2).reshape(1, 5, 8))
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-6)


def test_temperature_scales_each_query_by_its_position() -> None:
    """``Temperature`` in the q slot is the attention of queries multiplied by ``1 + beta *
    log(1 + floor((position + offset) / period))`` (Llama 4, Ministral 3): the same as the
    plain attention with its q projection's rows so scaled, position by position."""
    text = "Attn(heads=2, pos=none)[q=Temperature(beta=0.5, period=2, offset=1)]"
    block = compile_block(text, d_model=8).eval()
    plain = compile_block("Attn(heads=2, pos=none)", d_model=8).eval()
    plain.load_state_dict(block.state_dict())
    x = torch.randn(1, 6, 8)
    scale = 1 + 0.5 * torch.log1p(torch.floor((torch.arange(6.0) + 1) / 2))  # 1, 1.35, ...
    for t in range(6):  # query t alone at its position: the keys 0..t, its query scaled
        scaled = plain.attn.q.weight.data.clone()
        with torch.no_grad():
            plain.attn.q.weight.mul_(scale[t])
            expected = plain(x[:, : t + 1])[:, t]
            plain.attn.q.weight.copy_(scaled)
        torch.testing.assert_close(block(x)[:, t], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(BlockDSLError, match="period must be positive"):
        build_graph("Attn[q=Temperature(period=0)]", d_model=8)


def test_value_heads_wider_than_query_heads() -> None:
    block = compile_block("Attn(heads=4, kv_heads=2, v_head_dim=16)[o=Norm]", d_model=D)
    attn = block.attn
    assert attn.v.out_features == 2 * 16 and attn.o.in_features == 4 * 16
    assert block(torch.randn(2, 5, D)).shape == (2, 5, D)
    graph = build_graph("Attn(heads=4, kv_heads=2, v_head_dim=16)[o=Norm]", d_model=D)
    assert graph.params() == sum(p.numel() for p in block.parameters())


@pytest.mark.parametrize("out", [4, 32])
def test_gate_per_head_or_per_head_feature(out: int) -> None:
    block = compile_block(f"Attn(heads=4)[gate=Linear(out={out})->Act(sigmoid)]", d_model=D)
    assert block.attn.slots["gate"].linear.out_features == out
    assert block(torch.randn(2, 5, D)).shape == (2, 5, D)


def test_the_gate_slot_sets_linear_out_itself() -> None:
    block = compile_block("Attn(heads=4, v_head_dim=4)[gate=Linear->Act(sigmoid)]", d_model=D)
    assert block.attn.slots["gate"].linear.out_features == 4 * 4


def test_per_head_conv_has_its_own_kernels_per_head() -> None:
    block = compile_block("Attn(heads=4)[v=Conv(kernel=3)]", d_model=D)
    assert block.attn.slots["v"].conv.weight.shape == (4 * 8, 1, 3)


def test_a_users_component_fits_a_slot_without_changing_attn() -> None:
    registry = blockdsl.REGISTRY.copy()

    @registry.register("HalfQ")
    class HalfQ(nn.Module):
        """Halves whatever it is given."""

        def __init__(self, d_model: int) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(d_model))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 0.5 + self.bias

    block = compile_block("Attn(heads=4)[q=HalfQ]", d_model=D, registry=registry)
    assert block.attn.slots["q"].halfq.bias.shape == (8,)
    assert block(torch.randn(2, 5, D)).shape == (2, 5, D)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("Norm->Attn[qq=Norm]->+", "Attn has no slot 'qq'"),
        ("Norm->MLP[q=Norm]->+", "MLP has no slot 'q'"),
        ("Norm->Attn[q=Linear(out=3)]->+", "the slot takes 8"),
        ("Norm->Attn[q=Attn]->+", "cannot go in Attn's q slot"),
        ("Norm->Attn(qk_norm=true)[q=Norm]->+", "slot 'q' is filled twice"),
        ("Norm->Rope->+", "Rope applies an attention's rotary positions"),
        ("Norm->Attn(pos=alibi)[k=Rope]->+", "Rope applies an attention's rotary positions"),
        ("Norm->Attn[scores=Linear]->+", "cannot go in Attn's scores slot"),
    ],
)
def test_misfits_are_errors_at_the_child(src: str, message: str) -> None:
    with pytest.raises(BlockDSLError) as info:
        build_graph(src, d_model=64)
    assert message in str(info.value)


# ---------------------------------------------------------------- decoding
def _lm(block: str, **model) -> blockdsl.LanguageModel:
    torch.manual_seed(0)
    config = {
        "model": {"vocab": 37, "d_model": 32, "context": 32, "layers": "b*2", **model},
        "blocks": {"b": block},
    }
    return blockdsl.build_model(config).eval()


@pytest.mark.parametrize(
    "block",
    [
        "Norm->Attn(heads=4)[v=Conv(kernel=3)]->+->Norm->MLP->+",
        "Norm->Attn(heads=4, kv_heads=2)[q=Rope->Norm, k=Shift->Rope->Norm, scores=Sink]->+",
        "Norm->Attn(heads=4, kv_heads=2, window=5, v_head_dim=4)[o=Norm(per_head=true), "
        "gate=Conv->Linear->Act(sigmoid)]->+",
        "Norm->Attn(heads=4, kv_heads=1, pos=alibi)[scores=Softcap(cap=3.0)->Sink]->+",
    ],
)
def test_cached_generation_equals_uncached(block: str) -> None:
    model = _lm(block)
    prompt = torch.randint(0, 37, (2, 6))
    cached = model.generate(prompt, 8, greedy=True)
    uncached = model.generate(prompt, 8, greedy=True, use_cache=False)
    assert torch.equal(cached, uncached)


# ---------------------------------------------------------------- property
USER_REGISTRY = blockdsl.REGISTRY.copy()


@USER_REGISTRY.register("Halve")
class Halve(nn.Module):
    """A user's component that knows nothing of slots: half its input plus a learned bias."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5 + self.bias


_SLOT_CONTENTS = sorted(
    n for n in blockdsl.testing.usable_components(USER_REGISTRY, d_model=16) if n != "MoE"
)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(slotted_calls(_SLOT_CONTENTS, mixers=["Attn"], d_model=16, registry=USER_REGISTRY))
def test_random_slot_contents_build_run_stay_causal_and_decode(call) -> None:
    """Random mixers with random slot contents, drawn from every built-in component that fits
    and a user's own (``Halve``): they build, run forward and backward, stay causal, and
    decode with a cache exactly as without."""
    model = blockdsl.build_model(
        {
            "model": {"vocab": 19, "d_model": 16, "context": 16, "layers": "b"},
            "blocks": {"b": f"Norm->{unparse(call)}->+"},
        },
        registry=USER_REGISTRY,
    )
    ids = torch.randint(0, 19, (2, 9))
    model(ids).logits.float().sum().backward()
    model.eval()  # no dropout from here on
    logits = model(ids).logits
    assert torch.isfinite(logits).all()
    # causal: changing the last token changes no earlier position
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 19
    torch.testing.assert_close(model(changed).logits[:, :-1], logits[:, :-1].detach())
    if model.cache_blocker() is None:
        with torch.no_grad():
            full = model(ids).logits
            state = model.init_state(2, 9)
            steps = [model(ids[:, :4], positions=torch.arange(4)[None], state=state).logits]
            for t in range(4, 9):
                pos = torch.tensor([[t]])
                steps.append(model(ids[:, t : t + 1], positions=pos, state=state).logits)
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_the_activation_estimate_counts_slots_the_same_at_every_depth() -> None:
    from blockdsl.config import load_config
    from blockdsl.model import ModelPlan
    from blockdsl.shapes import shape_table

    def estimate(block: str, depth: int) -> int:
        model = {"vocab": 64, "d_model": 32, "context": 16, "layers": "b*2"}
        config = load_config({"model": model, "blocks": {"b": block}})
        return shape_table(ModelPlan(config), seq=16, depth=depth).activation_bytes

    plain = estimate("Norm->Attn(heads=4)->+", 1)
    block = "Norm->Attn(heads=4)[q=Norm->Norm, v=Conv(kernel=3)]->+"
    slotted = [estimate(block, depth) for depth in (0, 1, 2)]
    assert slotted[0] == slotted[1] == slotted[2]
    # three per-head calls of head_dim 8 on 4 heads, per position, in each of the two layers
    assert slotted[0] - plain == 2 * 16 * 3 * 8 * 4 * 4
