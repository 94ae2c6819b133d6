"""Grouped matrix multiply for mixture-of-experts: rows sorted by expert, each group of rows
times its own expert's matrix, with static shapes (so ``torch.compile`` keeps it in one graph).

``grouped_linear(x, w, offs)`` is ``cat([x[s_g:e_g] @ w[g].T for g])`` where group ``g`` is the
rows ``offs[g-1]:offs[g]`` (``offs`` the int32 running ends, ``offs[-1] == len(x)``), and ``w``
is ``(G, out, in)`` in ``F.linear`` layout. Only the rows of a group meet its matrix: the cost
is that of the tokens actually routed, whatever the routing.

Two implementations, chosen per call by dtype and device:

* ``torch.nn.functional.grouped_mm`` (the fused ATen op ``_grouped_mm``) wherever torch can
  also *trace* it: bfloat16 on CPU, bfloat16 on CUDA with compute capability 8.0 or newer and
  16-byte aligned rows. Under ``torch.compile`` inductor keeps it (on CUDA, its Triton grouped
  GEMM template).
* otherwise the custom op ``blockdsl::grouped_mm``, opaque to the compiler (its fake kernel
  gives the output shape; its backward is two more grouped products). Inside, the fused ATen
  op where it runs eagerly (float32/float16/bfloat16 on CPU: torch 2.13's ``_grouped_mm`` runs
  there, but its meta function accepts only bfloat16, so it cannot be traced directly), else a
  loop over groups (float64, other devices). Either way no host-device synchronisation is
  traced and no graph break happens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_FUSED_EAGER_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _fused_runs_eagerly(a: torch.Tensor) -> bool:
    return a.device.type == "cpu" and a.dtype in _FUSED_EAGER_DTYPES


@torch.library.custom_op("blockdsl::grouped_mm", mutates_args=())
def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``(M, K)`` rows in groups ending at ``offs`` times ``b[g]`` ``(K, N)`` -> ``(M, N)``."""
    if _fused_runs_eagerly(a):
        return torch._grouped_mm(a.contiguous(), b, offs=offs)
    out = a.new_zeros(a.shape[0], b.shape[-1])
    start = 0
    for g, end in enumerate(offs.tolist()):
        if end > start:
            torch.mm(a[start:end], b[g], out=out[start:end])
        start = end
    return out


@grouped_mm.register_fake
def _(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return a.new_empty(a.shape[0], b.shape[-1])


@torch.library.custom_op("blockdsl::grouped_mm_weight_grad", mutates_args=())
def grouped_mm_weight_grad(a: torch.Tensor, g: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """Per group ``a[rows].T @ g[rows]``: ``(M, K)``, ``(M, N)`` -> ``(G, K, N)`` (zero for an
    empty group): the gradient of ``grouped_mm``'s right operand."""
    if _fused_runs_eagerly(a):
        return torch._grouped_mm(a.t(), g.contiguous(), offs=offs)
    out = a.new_zeros(offs.shape[0], a.shape[1], g.shape[1])
    start = 0
    for i, end in enumerate(offs.tolist()):
        if end > start:
            torch.mm(a[start:end].t(), g[start:end], out=out[i])
        start = end
    return out


@grouped_mm_weight_grad.register_fake
def _(a: torch.Tensor, g: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return a.new_empty(offs.shape[0], a.shape[1], g.shape[1])


def _setup_context(ctx, inputs, output) -> None:
    a, b, offs = inputs
    ctx.save_for_backward(a, b, offs)


def _backward(ctx, grad: torch.Tensor):
    a, b, offs = ctx.saved_tensors
    grad = grad.contiguous()
    grad_a = grouped_mm(grad, b.transpose(-2, -1), offs) if ctx.needs_input_grad[0] else None
    grad_b = grouped_mm_weight_grad(a, grad, offs) if ctx.needs_input_grad[1] else None
    return grad_a, grad_b, None


grouped_mm.register_autograd(_backward, setup_context=_setup_context)


def _fused_traceable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether ``F.grouped_mm`` both runs and traces for these operands (see the module doc)."""
    if x.dtype != torch.bfloat16 or w.dtype != torch.bfloat16:
        return False
    if x.device.type == "cpu":
        return True
    if x.device.type == "cuda":
        aligned = x.shape[-1] % 8 == 0 and w.shape[-2] % 8 == 0  # 16-byte rows in bf16
        return aligned and torch.cuda.get_device_capability(x.device) >= (8, 0)
    return False


def grouped_linear(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``x`` ``(M, in)`` rows grouped by ``offs`` (int32 ends), ``w`` ``(G, out, in)`` ->
    ``(M, out)``: row ``i`` of group ``g`` is ``F.linear(x[i], w[g])``."""
    if _fused_traceable(x, w):
        return F.grouped_mm(x, w.transpose(-2, -1), offs=offs)
    return grouped_mm(x, w.transpose(-2, -1), offs)
