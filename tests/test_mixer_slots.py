"""The slots of the non-attention mixers (language v3): Gated DeltaNet's short convolutions,
output norm and gate are its slots' default contents. Written out they are the same module;
replaced, the mixer still trains and decodes exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

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
