"""The slots of the non-attention mixers (language v3): Gated DeltaNet's and Mamba2's short
convolutions, output norms and gates, RWKV-7's output norm and gate, are their slots' default
contents (MLA's slots are empty). Written out they are the same module; replaced, the mixer
still trains and decodes exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import blockdsl
from blockdsl.errors import BlockDSLError
from blockdsl.graph import build_graph
from blockdsl.lower import compile_block
from blockdsl.parser import parse
from blockdsl.printer import unparse
from blockdsl.testing import slotted_calls

D = 32
GDN = "GatedDeltaNet(heads=2, v_heads=4, head_dim=8, v_head_dim=6, chunk=4)"
#: Qwen3-Next's anatomy written out: what the defaults of GDN's slots mean
WRITTEN_OUT = (
    f"{GDN}[q=Conv(kernel=4, bias=false)->Act(silu), k=Conv(kernel=4, bias=false)->Act(silu), "
    "v=Conv(kernel=4, bias=false)->Act(silu), o=Norm(kind=rms, eps=1e-6), "
    "gate=Linear(bias=false)->Act(silu)]"
)
NO_SHORT_CONV = f"{GDN}[q=Act(silu), k=Act(silu), v=Act(silu)]"


def _pair(a: str, b: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    first = compile_block(a, d_model=D).eval()
    second = compile_block(b, d_model=D).eval()
    second.load_state_dict(first.state_dict())
    return first, second


def _lm(block: str) -> blockdsl.Model:
    torch.manual_seed(0)
    model = blockdsl.build_model(
        {
            "model": {"vocab": 37, "d_model": D, "context": 32, "layers": "b*2"},
            "blocks": {"b": f"Norm->{block}->+->Norm->MLP->+"},
        }
    )
    for p in model.parameters():  # away from the init, so that every part matters
        p.data.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_the_default_contents_written_out_are_the_same_module() -> None:
    default, written = _pair(GDN, WRITTEN_OUT)
    assert default.state_dict().keys() == written.state_dict().keys()
    x = torch.randn(2, 11, D)
    torch.testing.assert_close(written(x), default(x), rtol=0, atol=0)


def test_kernel_zero_is_the_mixer_without_its_short_convolution() -> None:
    no_conv, kernel_zero = _pair(NO_SHORT_CONV, GDN.replace("chunk=4", "chunk=4, kernel=0"))
    assert not any("conv" in name for name in no_conv.state_dict())
    x = torch.randn(2, 9, D)
    torch.testing.assert_close(kernel_zero(x), no_conv(x), rtol=0, atol=0)


def test_a_written_slot_replaces_its_default_and_the_printer_keeps_the_text() -> None:
    src = f"Norm->{NO_SHORT_CONV}->+"
    assert unparse(parse(src)) == src
    build_graph(src, d_model=D)
    gdn = compile_block(NO_SHORT_CONV, d_model=D)
    mixer = next(m for m in gdn.modules() if type(m).__name__ == "GatedDeltaNet")
    assert [type(m).__name__ for m in mixer.slots.q.children()] == ["Act"]
    assert {"o", "gate"} <= set(mixer.slots)  # the other slots keep their defaults


def test_a_negative_kernel_is_refused_by_name() -> None:
    with pytest.raises(BlockDSLError, match=r"kernel must be 0 \(no short conv\) or positive"):
        build_graph("GatedDeltaNet(kernel=-1)", d_model=D)


@pytest.mark.slow
def test_without_its_short_convolution_it_trains_a_step_and_decodes_exactly() -> None:
    model = _lm(NO_SHORT_CONV).train()
    ids = torch.randint(0, 37, (2, 12))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(
        model(ids[:, :-1]).logits.flatten(0, 1), ids[:, 1:].flatten()
    )
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    model.eval()
    prompt = torch.randint(0, 37, (2, 5))
    cached = model.generate(prompt, 8, greedy=True)
    assert torch.equal(cached, model.generate(prompt, 8, greedy=True, use_cache=False))


@pytest.mark.slow
@pytest.mark.parametrize(
    "block",
    [
        GDN,
        f"{GDN}[q=Conv(kernel=2)->Norm, v=Shift->Act(silu), o=Norm(per_head=true)]",
        f"{GDN}[gate=Linear->Act(sigmoid)]",  # one gate value per value head
    ],
)
def test_cached_generation_equals_uncached(block: str) -> None:
    model = _lm(block)
    prompt = torch.randint(0, 37, (2, 6))
    cached = model.generate(prompt, 8, greedy=True)
    assert torch.equal(cached, model.generate(prompt, 8, greedy=True, use_cache=False))


@pytest.mark.slow
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(slotted_calls(mixers=["GatedDeltaNet"], d_model=16))
def test_random_slot_contents_build_run_and_decode(call) -> None:
    """Gated DeltaNet with random slot contents: it builds, runs forward and backward, and
    decodes with its state exactly as without."""
    model = blockdsl.build_model(
        {
            "model": {"vocab": 19, "d_model": 16, "context": 16, "layers": "b"},
            "blocks": {"b": f"Norm->{unparse(call)}->+"},
        }
    )
    ids = torch.randint(0, 19, (2, 9))
    model(ids).logits.float().sum().backward()
    model.eval()
    with torch.no_grad():
        full = model(ids).logits
        assert torch.isfinite(full).all()
        if model.cache_blocker() is not None:
            return
        state = model.init_state(2, 9)
        steps = [model(ids[:, :4], positions=torch.arange(4)[None], state=state).logits]
        for t in range(4, 9):
            steps.append(
                model(ids[:, t : t + 1], positions=torch.tensor([[t]]), state=state).logits
            )
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_qwen3_next_deltanet_weights_export_back_exactly() -> None:
    """The import splits HF's fused ``in_proj_qkvz`` and ``conv1d`` into the projections and
    the slots' blocks; the export (the mapping run backwards) gives every tensor back."""
    pytest.importorskip("transformers")
    from blockdsl import hf
    from blockdsl.hf.exporter import hf_state_dict
    from tests.test_hf_hybrid import _qwen3_next, _random

    hf_model = _random(_qwen3_next, layer_types=["linear_attention"] * 4)
    exported = hf_state_dict(hf.from_hf(hf_model), "qwen3_next", hf_model.config)
    original = hf_model.state_dict()
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[name], original[name]) for name in original)


# ---------------------------------------------------------------- Mamba2, RWKV-7, MLA
MAMBA2 = "Mamba2(state=4, head_dim=8, groups=2, chunk=4)"
MAMBA2_CONV = "Conv(kernel=4, bias=true)->Act(silu)"
#: Mamba2's anatomy written out: what the defaults of its slots mean
MAMBA2_WRITTEN_OUT = (
    f"{MAMBA2}[q={MAMBA2_CONV}, k={MAMBA2_CONV}, v={MAMBA2_CONV}, "
    "o=Norm(kind=rms, eps=1e-5, per_head=true), gate=Linear(bias=false)->Act(silu)]"
)
MAMBA2_NO_SHORT_CONV = f"{MAMBA2}[q=Act(silu), k=Act(silu), v=Act(silu)]"


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _mixer(block: torch.nn.Module, name: str) -> torch.nn.Module:
    return next(m for m in block.modules() if type(m).__name__ == name)


@pytest.mark.parametrize(
    ("default", "written"),
    [
        (MAMBA2, MAMBA2_WRITTEN_OUT),
        (  # Falcon-H1's order, o before the gate, and Mamba2 without its norm
            MAMBA2.replace("chunk=4", "chunk=4, norm_before_gate=true"),
            MAMBA2_WRITTEN_OUT.replace("chunk=4", "chunk=4, norm_before_gate=true"),
        ),
        (
            MAMBA2.replace("chunk=4", "chunk=4, norm=false"),
            MAMBA2_WRITTEN_OUT.replace("chunk=4", "chunk=4, norm=false").replace(
                "o=Norm(kind=rms, eps=1e-5, per_head=true), ", ""
            ),
        ),
    ],
)
def test_mamba2_default_slots_written_out_are_the_same_module(default: str, written: str) -> None:
    first, second = _pair(default, written)
    assert first.state_dict().keys() == second.state_dict().keys()
    x = torch.randn(2, 11, D)
    torch.testing.assert_close(second(x), first(x), rtol=0, atol=0)


def test_mamba2_without_its_short_convolution_loses_exactly_the_convs() -> None:
    torch.manual_seed(0)
    default = compile_block(MAMBA2, d_model=D)
    no_conv = compile_block(MAMBA2_NO_SHORT_CONV, d_model=D)
    mixer = _mixer(default, "Mamba2")
    convs = sum(_params(mixer.slots[n].conv) for n in "qkv")
    assert convs == (64 + 2 * 2 * 4) * (4 + 1)  # x, B, C channels: kernel 4 and a bias each
    assert _params(default) - _params(no_conv) == convs
    declared = (build_graph(b, d_model=D).params() for b in (MAMBA2, MAMBA2_NO_SHORT_CONV))
    assert next(declared) - next(declared) == convs
    assert not any("conv" in name for name in no_conv.state_dict())
    y = no_conv(torch.randn(2, 9, D))
    assert y.shape == (2, 9, D) and torch.isfinite(y).all()


def test_mamba2_loads_the_transformers_layout() -> None:
    """transformers' ``in_proj`` (with z), ``conv1d`` and ``norm`` split into the mixer's
    ``in_proj`` and its slots' blocks on load (old checkpoints keep loading)."""
    from blockdsl.components.ssm import Mamba2

    torch.manual_seed(0)
    mixer = Mamba2(D, state=4, head_dim=8, groups=2, chunk=4).eval()
    E, GN = 64, 8
    fused = {
        "in_proj.weight": torch.cat(
            [mixer.slots.gate.linear.weight, mixer.in_proj.weight]
        ),  # [z | x B C | Δ]
        "conv1d.weight": torch.cat([mixer.slots[n].conv.weight for n in "vkq"]),
        "conv1d.bias": torch.cat([mixer.slots[n].conv.bias for n in "vkq"]),
        "norm.weight": mixer.slots.o.norm.weight.flatten(),
        **{n: getattr(mixer, n).detach() for n in ("dt_bias", "A_log", "D")},
        "out_proj.weight": mixer.out_proj.weight.detach(),
    }
    assert fused["in_proj.weight"].shape[0] == E + E + 2 * GN + 8
    again = Mamba2(D, state=4, head_dim=8, groups=2, chunk=4).eval()
    again.load_state_dict(fused, strict=True)
    x = torch.randn(2, 7, D)
    torch.testing.assert_close(again(x), mixer(x), rtol=0, atol=0)


RWKV7 = "RWKV7(head_dim=8, gate_rank=8, chunk=4)"
#: BlinkDL's anatomy written out: what the defaults of RWKV-7's slots mean
RWKV7_WRITTEN_OUT = (
    f"{RWKV7}[o=Norm(kind=layer, eps=0.00064, bias=true, per_head=true), "
    "gate=Linear(out=8, bias=false)->Act(sigmoid)->Linear(bias=false)]"
)


def test_rwkv7_default_slots_written_out_are_the_same_module() -> None:
    first, second = _pair(RWKV7, RWKV7_WRITTEN_OUT)
    assert first.state_dict().keys() == second.state_dict().keys()
    x = torch.randn(2, 11, D)
    torch.testing.assert_close(second(x), first(x), rtol=0, atol=0)


def test_rwkv7_a_short_convolution_on_k_adds_exactly_its_parameters() -> None:
    with_conv = compile_block(f"{RWKV7}[k=Conv(kernel=3)]", d_model=D)
    assert _params(with_conv) - _params(compile_block(RWKV7, d_model=D)) == D * (3 + 1)
    y = with_conv(torch.randn(2, 9, D))
    assert y.shape == (2, 9, D) and torch.isfinite(y).all()


def test_rwkv7_loads_blinkdl_names_and_keeps_its_init() -> None:
    """Weights saved before the slots (``g1``, ``g2``, ``ln_x``) load into the slots' blocks;
    a fresh mixer starts its default o norm at BlinkDL's ``0.5 ** 0.7``."""
    from blockdsl.components.linear_attention import RWKV7 as RWKV7Mixer

    torch.manual_seed(0)
    mixer = RWKV7Mixer(D, head_dim=8, gate_rank=8, chunk=4).eval()
    assert torch.all(mixer.slots.o.norm.weight == 0.5**0.7)
    old = {k: v for k, v in mixer.state_dict().items() if not k.startswith("slots.")}
    old["g1"] = mixer.slots.gate.linear.weight.T
    old["g2"] = mixer.slots.gate.linear_1.weight.T
    old["ln_x.weight"] = mixer.slots.o.norm.weight.flatten() + 0.25
    old["ln_x.bias"] = mixer.slots.o.norm.bias.flatten() - 0.5
    again = RWKV7Mixer(D, head_dim=8, gate_rank=8, chunk=4).eval()
    again.load_state_dict(old, strict=True)
    mixer.slots.o.norm.weight.data += 0.25
    mixer.slots.o.norm.bias.data -= 0.5
    x = torch.randn(2, 7, D)
    torch.testing.assert_close(again(x), mixer(x), rtol=0, atol=0)


MLA = "MLA(heads=2, kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=6)"


@pytest.mark.slow
def test_mla_rope_written_where_it_goes_by_default_changes_nothing() -> None:
    first, second = _pair(MLA, f"{MLA}[q=Rope, k=Rope]")
    x = torch.randn(2, 11, D)
    # the same arithmetic up to float rounding: the key's rope part is rotated once per head
    # in the slot, once for all heads without it (and SDPA sees other memory layouts)
    torch.testing.assert_close(second(x), first(x), rtol=0, atol=1e-6)
    rotate_first, rotate_last = _pair(f"{MLA}[q=Rope->Linear]", f"{MLA}[q=Linear->Rope]")
    assert not torch.allclose(rotate_first(x), rotate_last(x))  # where the Rope step is matters


def test_mla_a_short_convolution_on_k_adds_exactly_its_parameters() -> None:
    with_conv = compile_block(f"{MLA}[k=Conv(kernel=3)]", d_model=D)
    heads, qk = 2, 4 + 4
    assert _params(with_conv) - _params(compile_block(MLA, d_model=D)) == heads * qk * (3 + 1)
    y = with_conv(torch.randn(2, 9, D))
    assert y.shape == (2, 9, D) and torch.isfinite(y).all()


_CACHED_CASES = [
    f"{MAMBA2}[v=Conv(kernel=2)->Norm, o=Norm(per_head=true), gate=Linear->Act(sigmoid)]",
    MAMBA2_NO_SHORT_CONV,
    f"{MAMBA2.replace('chunk=4', 'chunk=4, norm_before_gate=true')}[k=Shift->Act(silu)]",
    f"{RWKV7}[k=Conv(kernel=3), o=Norm(per_head=true), gate=Linear->Act(sigmoid)]",
    f"{RWKV7}[q=Shift, v=Conv(kernel=2)->Act(silu)]",
    f"{MLA}[q=Conv(kernel=2)->Norm, o=Norm(per_head=true), scores=Sink]",  # the absorbed step
    f"{MLA}[q=Rope->Norm, k=Conv(kernel=2)->Rope, v=Norm, scores=Softcap(cap=5.0)]",
]


@pytest.mark.slow
@pytest.mark.parametrize("block", _CACHED_CASES)
def test_other_mixers_cached_generation_equals_uncached(block: str) -> None:
    model = _lm(block)
    prompt = torch.randint(0, 37, (2, 6))
    cached = model.generate(prompt, 8, greedy=True)
    assert torch.equal(cached, model.generate(prompt, 8, greedy=True, use_cache=False))


@pytest.mark.slow
@pytest.mark.parametrize("mixer", ["Mamba2", "RWKV7", "MLA"])
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_other_mixers_random_slot_contents_build_run_and_decode(mixer: str, data) -> None:
    """Mamba2, RWKV-7 and MLA with random slot contents drawn from every built-in component
    that fits: they build, run forward and backward, stay causal, and decode with their state
    exactly as without."""
    call = data.draw(slotted_calls(mixers=[mixer], d_model=16))
    model = blockdsl.build_model(
        {
            "model": {"vocab": 19, "d_model": 16, "context": 16, "layers": "b"},
            "blocks": {"b": f"Norm->{unparse(call)}->+"},
        }
    )
    ids = torch.randint(0, 19, (2, 9))
    model(ids).logits.float().sum().backward()
    model.eval()
    with torch.no_grad():
        full = model(ids).logits
        assert torch.isfinite(full).all()
        changed = ids.clone()
        changed[:, -1] = (changed[:, -1] + 1) % 19
        torch.testing.assert_close(model(changed).logits[:, :-1], full[:, :-1])
        if model.cache_blocker() is not None:
            return
        state = model.init_state(2, 9)
        steps = [model(ids[:, :4], positions=torch.arange(4)[None], state=state).logits]
        for t in range(4, 9):
            steps.append(
                model(ids[:, t : t + 1], positions=torch.tensor([[t]]), state=state).logits
            )
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("src", "message"),
    [
        (f"{MAMBA2}[scores=Softcap(cap=5.0)]", "slot"),
        (f"{MAMBA2}[gate=Linear(out=5)]", "gate"),
        (f"{RWKV7}[scores=Sink]", "slot"),
        (f"{RWKV7}[o=Linear(out=3)]", "o"),
        (f"{MLA}[gate=Linear]", "slot"),
        (f"{MLA}[v=Rope]", "Rope"),
    ],
)
def test_other_mixers_misfits_are_errors(src: str, message: str) -> None:
    with pytest.raises(BlockDSLError, match=message):
        build_graph(src, d_model=D)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["mamba2", "bamba"])
def test_mamba2_weights_export_back_exactly(model_type: str) -> None:
    """The import splits transformers' ``in_proj``, ``conv1d`` and ``norm`` into Mamba2's
    ``in_proj`` and its slots' blocks; the export (the mapping run backwards) gives every
    tensor back."""
    pytest.importorskip("transformers")
    from blockdsl import hf
    from blockdsl.hf.exporter import hf_state_dict
    from tests.hf_configs import random_model
    from tests.test_hf_ssm import _cfg

    hf_model = random_model(*_cfg(model_type))
    exported = hf_state_dict(hf.from_hf(hf_model), model_type, hf_model.config)
    original = hf_model.state_dict()
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[name], original[name]) for name in original)


@pytest.mark.parametrize("mixer", [MAMBA2, RWKV7, MLA])
def test_every_component_in_every_slot_fits_or_is_a_blockdsl_error(mixer: str) -> None:
    """Each registered component, alone with its defaults, in each slot of the mixer: it
    validates, or it is refused with a BlockDSLError (never a foreign exception)."""
    component = blockdsl.REGISTRY.get(mixer.split("(")[0])
    fitted = refused = 0
    for slot in component.slots:
        for name in blockdsl.REGISTRY.names():
            try:
                build_graph(f"{mixer}[{slot}={name}]", d_model=D)
            except BlockDSLError:
                refused += 1
            else:
                fitted += 1
    assert fitted and refused  # norms, convs, linears fit; Embed, Head, MoE ... do not
