"""MoE under torch.compile: the sparse grouped dispatch compiles into one graph
(``fullgraph=True``) and gives eager's outputs, auxiliary statistics and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from blockdsl.components.mlp import MLP, MoE
from tests.conftest import D


def _loss(out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    y, aux = out
    return y.square().mean() + MoE.combine_aux([aux])


def _run(module: nn.Module, fn, x: torch.Tensor):
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = fn(x)
    _loss(out).backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out, x.grad, grads


def assert_compiled_equals_eager(moe: MoE, x: torch.Tensor, backend: str = "aot_eager") -> None:
    """``aot_eager`` traces the whole forward and backward exactly as inductor does (dynamo,
    then AOT autograd) and runs the traced graphs without code generation: seconds instead of
    a minute. One test below runs inductor itself."""
    torch._dynamo.reset()
    compiled = torch.compile(moe, fullgraph=True, dynamic=False, backend=backend)  # no breaks
    (y_c, aux_c), gx_c, grads_c = _run(moe, compiled, x)
    (y_e, aux_e), gx_e, grads_e = _run(moe, moe, x)
    torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aux_c, aux_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_c, gx_e, rtol=1e-5, atol=1e-5)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-5, atol=1e-5)


CASES = {
    "top1": {"experts": 4, "k": 1, "hidden": 24},
    "top2": {"experts": 4, "k": 2, "hidden": 24},
    "top2_shared_plain": {"experts": 4, "k": 2, "hidden": 24, "shared": 1, "gated": False},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_moe_equals_eager(name):
    moe = MoE(D, **CASES[name])
    assert_compiled_equals_eager(moe, torch.randn(2, 6, D))


@pytest.mark.slow
def test_inductor_compiled_moe_equals_eager():
    moe = MoE(D, experts=4, k=2, hidden=24, shared=1)
    assert_compiled_equals_eager(moe, torch.randn(2, 6, D), backend="inductor")


@pytest.mark.slow
def test_compiled_moe_equals_eager_when_experts_get_no_tokens():
    """Every token routed to experts 0 and 1: experts 2..5 see no token at all (empty groups),
    and their weights get no gradient, compiled or not."""
    moe = MoE(D, experts=6, k=2, hidden=24)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = moe.router.weight[1, 0] = 1.0
    x = torch.randn(2, 6, D)
    x[..., 0] = 5.0 + x[..., 0].abs()  # router logits 5+ for experts 0 and 1, 0 for the rest
    _, _, top_i = moe.route(x.reshape(-1, D))
    assert set(top_i.flatten().tolist()) == {0, 1}
    assert_compiled_equals_eager(moe, x)
    _, _, grads = _run(moe, moe, x)
    assert (grads["w_up"][2:] == 0).all() and (grads["w_up"][:2] != 0).any()


@pytest.mark.slow
def test_compiled_moe_with_heterogeneous_children_equals_eager():
    children = [MLP(D, hidden=16), MLP(D, hidden=24, act="relu", gated=True), nn.LayerNorm(D)]
    moe = MoE(D, k=2, children=children)
    assert_compiled_equals_eager(moe, torch.randn(2, 6, D))
