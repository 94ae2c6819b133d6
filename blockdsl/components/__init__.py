"""The built-in components. Importing this package registers them in ``blockdsl.REGISTRY``.

Conventions shared by every module here (the contract with the compiler):

* the constructor's first argument is ``d_model``: the compiler passes the *input* feature size;
  model-level values ``vocab`` and ``context`` reach any constructor declaring them;
* ``forward(x)`` takes ``(B, T, D)``; call-time context is the keyword ``positions`` (``(T,)``
  or ``(B, T)``, default ``arange(T)``) or ``memory`` (``(B, S, D)``);
* ``params`` hooks give exact parameter counts; ``flops`` hooks give forward FLOPs of one
  sequence of length ``seq`` at batch 1, counting 2 per multiply-add and 1 per elementwise op
  where it is counted at all (activations, softmax and rotary are not: they are small next to
  the matmuls). Attention's ``QK^T`` and ``AV`` are counted over the full ``seq x seq`` square
  (an upper bound for causal attention; ``seq x min(seq, window)`` with a window);
* everything else a component declares (sizes, FLOPs, checks, decoding, help, shape steps) is a
  keyword of its ``@register(...)`` decorator: ``blockdsl.registry.Declarations`` lists them;
* modules built on the meta device can be materialised with ``module.to_empty(device=...)``
  followed by ``reset_parameters()`` on every submodule that has it: each component's
  ``reset_parameters`` re-initialises its own parameters and recomputes its non-persistent
  buffers (rotary tables, sinusoidal positions).
"""

from blockdsl.components import (
    attention,
    basic,
    embed,
    linear_attention,
    long_conv,
    mla,
    mlp,
    norm,
    ssm,
)

__all__ = [
    "attention",
    "basic",
    "embed",
    "linear_attention",
    "long_conv",
    "mla",
    "mlp",
    "norm",
    "ssm",
]
