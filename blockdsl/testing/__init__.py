"""Property-based testing of architectures: Hypothesis strategies and an invariant checker.

The bugs people fear in a new component are the silent ones: a future-token leak, a parameter
that never receives a gradient, a shape that only breaks with grouped-query attention. This
module generates valid architectures from the registered components and checks the invariants
every architecture must keep, so that Hypothesis can shrink a failure to the smallest block
string that shows it::

    from hypothesis import given, settings
    from blockdsl.testing import block_strings, check_architecture
    import blockdsl

    @settings(max_examples=50, deadline=None)
    @given(block_strings(components=["Norm", "MyMixer"]))
    def test_my_mixer(src):
        check_architecture(blockdsl.compile_block(src, d_model=16), d_model=16)

Strategies
    ``block_asts(...)``     parsed blocks (``blockdsl.ast.Block``), valid by construction
    ``block_strings(...)``  the same, printed with ``blockdsl.unparse``
    ``model_configs(...)``  config dicts for ``blockdsl.build_model``

All three take the components to draw from (default: every registered component that maps
the residual stream to a stream of the same size), the maximum nesting ``max_depth`` and chain
length ``max_length``, and which constructs to use (``parallel``, ``repeats``, ``labels``,
``children``, ``groups``). Arguments are drawn from each component's constructor schema: choices
of ``Literal`` types, bools, small ints and floats, kept small so that an example runs in
milliseconds; a few well-known names get sizes that fit (``heads`` divides ``d_model``,
``kv_heads`` divides ``heads``, ``k`` is at most the number of experts). Drawn arguments are
checked against the component (binding, its ``check`` hook, its output size, and a build on
the meta device) and redrawn when they do not fit.

Checker
    ``check_architecture(module, ...)`` runs a compiled block (``BlockModule``, features in) or
    a ``LanguageModel`` (token ids in) and raises ``ArchitectureCheckError`` (an
    ``AssertionError``) naming the violated ``invariant`` and the ``node`` (submodule path) at
    fault. Invariants: ``forward`` (it runs), ``shape``, ``finite``, ``determinism`` (eval
    mode), ``causality`` (perturbing tokens after ``t`` changes nothing at ``<= t``),
    ``gradient`` (every parameter receives one), ``state_dict`` (save, load into a freshly
    built copy, identical outputs).

The strategies need Hypothesis (the ``dev`` extra); the checker does not:
``blockdsl.testing.invariants`` imports without it, and this package loads the strategies on
first use.
"""

from __future__ import annotations

from typing import Any

from blockdsl.testing.invariants import (
    DEFAULT_GLOBALS,
    INVARIANTS,
    ArchitectureCheckError,
    check_architecture,
)

_STRATEGIES = ("block_asts", "block_strings", "model_configs", "slotted_calls", "usable_components")

__all__ = [
    "DEFAULT_GLOBALS",
    "INVARIANTS",
    "ArchitectureCheckError",
    "block_asts",
    "block_strings",
    "check_architecture",
    "model_configs",
    "slotted_calls",
    "usable_components",
]


def __getattr__(name: str) -> Any:
    if name in _STRATEGIES:
        from blockdsl.testing import strategies

        return getattr(strategies, name)
    raise AttributeError(f"module 'blockdsl.testing' has no attribute {name!r}")
