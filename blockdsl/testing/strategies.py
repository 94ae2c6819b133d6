"""Hypothesis strategies that draw valid architectures from the registered components.

``block_asts`` draws parsed blocks (``blockdsl.ast.Block``), valid by construction;
``block_strings`` the same printed with ``blockdsl.unparse``; ``model_configs`` config dicts for
``blockdsl.build_model``. See ``blockdsl.testing`` (the package docstring) and docs/fuzzing.md.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import keyword
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hypothesis import assume
from hypothesis import strategies as st
from torch import nn

from blockdsl import ast
from blockdsl.errors import BlockDSLError
from blockdsl.registry import (
    MODEL_GLOBALS,
    REGISTRY,
    SLOT_CONTEXT_ARGS,
    Component,
    Param,
    Registry,
)
from blockdsl.testing.invariants import DEFAULT_GLOBALS

__all__ = [
    "argument_values",
    "block_asts",
    "block_strings",
    "hostile_labels",
    "model_configs",
    "slotted_calls",
    "usable_components",
]


# ==================================================================== argument drawing
def _divisors(n: int, limit: int = 8) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _values_of_type(tp: Any, default: Any) -> list[Any]:
    """Candidate values of a type, small ones first (Hypothesis shrinks towards the start)."""
    if tp is Any:
        return []
    origin = typing.get_origin(tp)
    if origin is Literal:
        return list(typing.get_args(tp))
    if _is_union(tp):
        out: list[Any] = []
        for option in typing.get_args(tp):
            for value in _values_of_type(option, default):
                if value not in out or type(value) is not type(out[out.index(value)]):
                    out.append(value)
        return out
    if tp is bool:
        return [False, True]
    if tp is int:
        base = [1, 2, 3, 4]
        if isinstance(default, int) and not isinstance(default, bool) and 0 < default <= 16:
            base.append(default)
        return sorted(set(base))
    if tp is float:
        base = [0.5, 1.0, 2.0]
        if isinstance(default, float) and default not in base:
            base.insert(0, default)
        return base
    return []  # strings without choices, lists, modules: left at their default


def _named_values(name: str, so_far: Mapping[str, Any], ctx: _Context) -> list[Any] | None:
    """Values that fit for well-known argument names (built-in conventions), or None."""
    d = ctx.d_model
    if name == "heads":
        return _divisors(d)
    if name == "kv_heads":
        heads = so_far.get("heads") or ctx.current_defaults.get("heads") or 1
        return _divisors(heads) if isinstance(heads, int) else None
    if name == "head_dim":
        return [4, 8]
    if name == "hidden":
        return [8, 16, 24]
    if name == "mult":
        return [1.0, 2.0, 0.5]
    if name == "experts":
        return [] if ctx.current_children else [2, 1, 3, 4]
    if name == "k":
        limit = ctx.current_children or so_far.get("experts") or 2
        return list(range(1, min(limit, 4) + 1))
    if name == "shared":
        return [0, 1]
    if name == "window":
        return [1, 2, 3, 8]
    if name == "kernel":
        return [1, 2, 3, 4]
    if name == "rope_fraction":
        return [1.0, 0.5, 0.0]
    if name == "rope_theta":
        return [10000.0, 100.0]
    if name == "softcap":
        return [30.0, 5.0]
    if name in ("p", "dropout", "jitter"):
        return [0.0, 0.1]
    if name == "aux_loss":
        return [0.01, 0.0]
    if name == "eps":
        return [1e-5, 1e-6]
    if name == "init":
        return [0.0, 0.5, 1.0]
    if name in ("causal", "out", "d_memory", "d_out", "out_features"):
        # causal=false is legitimately non-causal; size-changing arguments break the stream
        return []
    return None


def _candidates(param: Param, so_far: Mapping[str, Any], ctx: _Context) -> list[Any]:
    named = _named_values(param.name, so_far, ctx)
    values = named if named is not None else _values_of_type(param._effective_type, param.default)
    # keep only values the parameter accepts (names are matched regardless of the schema)
    return [v for v in values if param.check(v)[0]]


@dataclass
class _Context:
    """What a draw of one architecture knows: sizes, the registry and the labels so far."""

    registry: Registry
    names: tuple[str, ...]
    d_model: int
    model_globals: Mapping[str, Any]
    max_depth: int
    max_length: int
    max_branches: int
    parallel: bool
    repeats: bool
    labels: bool
    children: bool
    groups: bool
    positional: bool
    prenorm: bool = False
    slots: bool = True
    max_args: int = 3
    child_names: tuple[str, ...] = ()
    label_calls: dict[str, ast.Call] = field(default_factory=dict)
    label_ids: itertools.count = field(default_factory=itertools.count)
    current_children: int = 0
    current_defaults: dict[str, Any] = field(default_factory=dict)


_VALID_CACHE: dict[tuple, str | None] = {}


def argument_values(
    param: Param,
    *,
    d_model: int,
    chosen: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    n_children: int = 0,
) -> list[Any]:
    """The values the strategies draw for ``param`` of a component at width ``d_model``
    (``chosen``: the call's other written arguments, e.g. ``heads`` for ``kv_heads``;
    ``defaults``: its resolved defaults), small ones first. Empty when the strategies leave
    the argument at its default (sizes that would change the stream, free strings)."""
    ctx = _Context(
        registry=REGISTRY,
        names=(),
        d_model=d_model,
        model_globals=DEFAULT_GLOBALS,
        max_depth=0,
        max_length=1,
        max_branches=1,
        parallel=False,
        repeats=False,
        labels=False,
        children=False,
        groups=False,
        positional=False,
        current_children=n_children,
        current_defaults=dict(defaults or {}),
    )
    return _candidates(param, chosen or {}, ctx)


def _why_invalid(
    component: Component,
    alias_args: Mapping[str, Any],
    args: Mapping[str, Any],
    n_children: int,
    d_model: int,
    model_globals: Mapping[str, Any],
) -> str | None:
    """Why these written arguments do not make a size-preserving module, or None."""
    key = (
        component.name,
        id(component.cls),
        d_model,
        repr(sorted(alias_args.items())),
        repr(sorted(args.items())),
        n_children,
        repr(sorted(model_globals.items())),
    )
    if key in _VALID_CACHE:
        return _VALID_CACHE[key]
    reason: str | None = None
    resolved, issues = component.bind(
        (), args, defaults=alias_args, model_globals=model_globals, d_in=d_model
    )
    if issues:
        reason = issues[0].message
    if reason is None and component.declarations.per_head and resolved.get("heads") is not None:
        reason = "heads is set by a per-head slot"
    if reason is None:
        verdict = component.check_args(d_model, resolved, n_children)
        reason = verdict[0] if verdict else None
    if reason is None:
        try:
            # a real (tiny) build: the meta device's dispatch costs ~50x more at these sizes
            module = component.build(resolved, [nn.Identity() for _ in range(n_children)])
        except Exception as exc:  # the constructor rejected the combination
            reason = str(exc) or type(exc).__name__
        else:
            # Record its size and parameters, so that neither the strategy nor the compiler
            # pays for a meta-device probe of an undeclared component.
            component.measure(module, d_model, resolved)
            try:
                d_out = component.out_features(d_model, resolved)
            except Exception as exc:  # a size hook rejecting its arguments
                d_out, reason = None, str(exc) or type(exc).__name__
            if reason is None and d_out != d_model:
                reason = "changes the feature size"
    _VALID_CACHE[key] = reason
    return reason


def _value_node(value: Any) -> ast.Value:
    if isinstance(value, bool):
        return ast.Value("bool", value)
    if isinstance(value, int):
        return ast.Value("int", value)
    if isinstance(value, float):
        return ast.Value("float", value)
    if isinstance(value, str):
        bare = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) and not keyword.iskeyword(value)
        plain = value not in ("true", "false")
        return ast.Value("name" if bare and plain else "string", value)
    raise TypeError(f"no literal for {value!r}")


def _draw_args(
    draw: Callable, ctx: _Context, component: Component, alias_args: Mapping[str, Any]
) -> tuple[ast.Arg, ...]:
    """Arguments for one call: each settable parameter is either left out (its default) or
    given a drawn value; combinations the component rejects are redrawn."""
    settable = [
        p
        for p in component.user_params.values()
        if p.name not in MODEL_GLOBALS and p.name not in alias_args
    ]
    ctx.current_defaults = {p.name: p.default for p in settable if not p.required}
    optional = [p.name for p in settable if not p.required]
    for _attempt in range(6):
        # which optional arguments to write (few: most calls use their defaults), then their
        # values in declared order (``kv_heads`` sees the ``heads`` drawn before it)
        picked: set[str] = set()
        for _ in range(draw(st.integers(0, min(ctx.max_args, len(optional))))):
            picked.add(draw(st.sampled_from(optional)))
        chosen: dict[str, Any] = {}
        for param in settable:
            if not (param.required or param.name in picked):
                continue
            values = _candidates(param, chosen, ctx)
            if values:
                chosen[param.name] = draw(st.sampled_from(values))
        reason = _why_invalid(
            component, alias_args, chosen, ctx.current_children, ctx.d_model, ctx.model_globals
        )
        if reason is None:
            break
    else:
        assume(False)  # no valid arguments found (rare: a schema with few valid corners)
    order = list(component.user_params)
    ordered = sorted(chosen.items(), key=lambda item: order.index(item[0]))
    n_positional = 0
    if ctx.positional and ordered:
        prefix = 0
        while prefix < len(ordered) and ordered[prefix][0] == order[prefix]:
            prefix += 1
        if prefix:
            n_positional = draw(st.integers(0, prefix))
    return tuple(
        ast.Arg(None if i < n_positional else name, _value_node(value))
        for i, (name, value) in enumerate(ordered)
    )


# ==================================================================== structure drawing
def _call(draw: Callable, ctx: _Context, depth: int, in_children: bool) -> ast.Call:
    labels = ctx.label_calls
    if in_children:
        labels = {k: v for k, v in labels.items() if _fits_children(ctx, v)}
    if ctx.labels and labels and draw(st.integers(0, 3)) == 3:
        return draw(st.sampled_from(sorted(labels.items())))[1]
    names = ctx.child_names if in_children else ctx.names
    if not names:
        assume(False)
    name = draw(st.sampled_from(names))
    component, alias_args = ctx.registry.resolve(name)
    children: tuple[ast.Block, ...] = ()
    if component.takes_children and ctx.children and depth > 0 and draw(st.booleans()):
        n = draw(st.integers(1, 2))
        saved = ctx.current_children
        children = tuple(_block(draw, ctx, depth - 1, in_children=True) for _ in range(n))
        ctx.current_children = saved
    ctx.current_children = len(children)
    args = _draw_args(draw, ctx, component, alias_args)
    ctx.current_children = 0
    if component.slots and ctx.slots and depth > 0 and draw(st.integers(0, 2)) == 2:
        fills = _draw_slots(draw, ctx, ast.Call(name, None, args))
        if fills:
            return ast.Call(name, None, args, children, fills)
    label, global_label = None, False
    if ctx.labels and draw(st.integers(0, 3)) == 3:
        # Hostile names half of the time: keywords and attributes of the modules that will
        # hold the call (lowering must rename them); ``##`` (model-global) a third.
        label = draw(st.one_of(st.none(), st.sampled_from(hostile_labels())))
        if label is None or label in ctx.label_calls:
            label = f"l{next(ctx.label_ids)}"
        global_label = draw(st.integers(0, 2)) == 2
    call = ast.Call(name, label, args, children, global_label=global_label)
    if label is not None:
        ctx.label_calls[label] = call
    return call


_SLOT_CANDIDATES: dict[tuple, tuple[str, ...]] = {}


def _slot_candidates(ctx: _Context, call: ast.Call, slot: str) -> tuple[str, ...]:
    """The names that, alone and with their defaults, fit ``slot`` of ``call``: every drawable
    component (a user's registered ones included) whose shapes the slot accepts, and ``Rope``
    where the mixer has rotary positions."""
    from blockdsl.graph import build_graph
    from blockdsl.printer import unparse

    key = (unparse(call), slot, ctx.d_model, id(ctx.registry), ctx.names)
    if key not in _SLOT_CANDIDATES:
        fitting = []
        for name in (*ctx.names, *(["Rope"] if "Rope" in ctx.registry else [])):
            step = ast.Block((ast.Chain((ast.Call(name),)),))
            text = unparse(ast.Call(call.name, None, call.args, (), (ast.SlotFill(slot, step),)))
            try:
                build_graph(
                    text, d_model=ctx.d_model, registry=ctx.registry,
                    model_globals=ctx.model_globals,
                )  # fmt: skip
            except BlockDSLError:
                continue
            fitting.append(name)
        _SLOT_CANDIDATES[key] = tuple(sorted(set(fitting)))
    return _SLOT_CANDIDATES[key]


def _draw_slots(draw: Callable, ctx: _Context, call: ast.Call) -> tuple[ast.SlotFill, ...]:
    """One or two of ``call``'s slots, each filled with a chain of one or two fitting steps;
    () when the drawn combination does not validate (a shorthand argument fills that slot)."""
    from blockdsl.graph import build_graph
    from blockdsl.printer import unparse

    component = ctx.registry.resolve(call.name)[0]
    names = sorted(component.slots)
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True))
    fills = []
    for slot in chosen:
        candidates = _slot_candidates(ctx, call, slot)
        if not candidates:
            continue
        steps = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=2))
        chain = ast.Chain(tuple(ast.Call(step) for step in steps))
        fills.append(ast.SlotFill(slot, ast.Block((chain,))))
    filled = ast.Call(call.name, None, call.args, (), tuple(fills))
    try:
        build_graph(
            unparse(filled), d_model=ctx.d_model, registry=ctx.registry,
            model_globals=ctx.model_globals,
        )  # fmt: skip
    except BlockDSLError:
        return ()
    return tuple(fills)


@functools.cache
def hostile_labels() -> tuple[str, ...]:
    """Labels that Python or ``nn.Module`` already use: every keyword, and every attribute of
    the module class that holds a block's calls (``training``, ``forward``, ``_modules``...)
    that the label grammar can write."""
    from blockdsl.lower import reserved_names

    return tuple(sorted(n for n in reserved_names() if re.fullmatch(r"[A-Za-z0-9_]+", n)))


def _term(draw: Callable, ctx: _Context, depth: int, in_children: bool) -> ast.Step:
    kinds = ["call"]
    if ctx.groups and depth > 0:
        kinds.append("group")
    if ctx.repeats:
        kinds.append("repeat")
    kind = draw(st.sampled_from(kinds))
    if kind == "call":
        return _call(draw, ctx, depth, in_children)
    if kind == "group":
        return ast.Group(_block(draw, ctx, depth - 1, in_children))
    body: ast.Call | ast.Group
    if ctx.groups and depth > 0 and draw(st.booleans()):
        body = ast.Group(_block(draw, ctx, depth - 1, in_children))
    else:
        body = _call(draw, ctx, depth, in_children)
    return ast.Repeat(body, draw(st.integers(1, 2)))


def _chain(
    draw: Callable, ctx: _Context, depth: int, must_end_in_add: bool, in_children: bool
) -> ast.Chain:
    """A chain whose every '+' follows at least one step (so it always has something to add);
    parallel branches end in '+'."""
    steps: list[ast.Step] = []
    since_add = 0
    for _ in range(draw(st.integers(1, ctx.max_length))):
        term = _term(draw, ctx, depth, in_children)
        steps.extend(_prenormed(ctx, term) if ctx.prenorm else (term,))
        since_add += 1
        if draw(st.booleans()):
            steps.append(ast.Residual())
            since_add = 0
    if must_end_in_add and since_add:
        steps.append(ast.Residual())
    return ast.Chain(tuple(steps))


def _prenormed(ctx: _Context, term: ast.Step) -> tuple[ast.Step, ...]:
    """``term`` with a ``Norm`` in front of each call it repeats or makes: ``X`` becomes
    ``Norm->X`` and ``X*2`` becomes ``(Norm->X)*2`` (groups hold prenormed chains already)."""
    if isinstance(term, ast.Call) and ctx.registry.resolve(term.name)[0].name != "Norm":
        return (ast.Call("Norm"), term)
    if isinstance(term, ast.Repeat) and isinstance(term.body, ast.Call):
        inner = _prenormed(ctx, term.body)
        if len(inner) > 1:
            body = ast.Group(ast.Block((ast.Chain(inner),)))
            return (dataclasses.replace(term, body=body),)
    return (term,)


def _fits_children(ctx: _Context, call: ast.Call) -> bool:
    """Whether a call (and everything under it) may stand inside a combinator's child."""
    return all(
        node.name in ctx.child_names for node in ast.walk(call) if isinstance(node, ast.Call)
    )


def _child_safe(registry: Registry, name: str) -> bool:
    """Known limitation of combinators: a child block is called as ``child(x)``, so it gets no
    call-time ``memory`` and cannot return an auxiliary loss. Such components are kept out of
    children (they work everywhere else)."""
    component = registry.resolve(name)[0]
    return not component.aux_loss and "memory" not in component.context


def _block(draw: Callable, ctx: _Context, depth: int, in_children: bool = False) -> ast.Block:
    if ctx.parallel and depth > 0 and ctx.max_branches > 1 and draw(st.booleans()):
        n = draw(st.integers(2, ctx.max_branches))
        return ast.Block(tuple(_chain(draw, ctx, depth - 1, True, in_children) for _ in range(n)))
    return ast.Block((_chain(draw, ctx, depth, False, in_children),))


# ==================================================================== public strategies
def usable_components(
    registry: Registry | None = None,
    *,
    d_model: int = 16,
    model_globals: Mapping[str, Any] | None = None,
) -> list[str]:
    """Names (components and aliases) that can stand in a block: they read features and, with
    their default arguments (or some drawable ones), keep the feature size."""
    registry = registry or REGISTRY
    model_globals = {**DEFAULT_GLOBALS, **(model_globals or {})}
    names = []
    for name in registry.names():
        component, alias_args = registry.resolve(name)
        if component.tokens_in or component.residual:  # a residual is written '+(...)'
            continue
        if component.required_context & set(SLOT_CONTEXT_ARGS):  # Rope: in a mixer's slot
            continue
        required = [
            p for p in component.user_params.values() if p.required and p.name not in alias_args
        ]
        if required and all(p.name not in MODEL_GLOBALS for p in required):
            names.append(name)  # validity decided when its arguments are drawn
            continue
        if _why_invalid(component, alias_args, {}, 0, d_model, model_globals) is None:
            names.append(name)
    return names


def _resolve_names(
    components: Iterable[str] | None, registry: Registry, d_model: int, globals_: Mapping
) -> tuple[str, ...]:
    if components is None:
        names = usable_components(registry, d_model=d_model, model_globals=globals_)
    else:
        names = list(components)
        for name in names:
            if name not in registry:
                raise ValueError(f"unknown component '{name}'")
            if registry.resolve(name)[0].tokens_in:
                raise ValueError(f"{name} reads token ids: it cannot stand in a block")
    if not names:
        raise ValueError("no components to draw from")
    return tuple(sorted(names))


def _context(
    registry: Registry | None,
    components: Iterable[str] | None,
    d_model: int,
    model_globals: Mapping[str, Any] | None,
    **options: Any,
) -> _Context:
    registry = registry or REGISTRY
    globals_ = {**DEFAULT_GLOBALS, **(model_globals or {})}
    names = _resolve_names(components, registry, d_model, globals_)
    child_names = tuple(n for n in names if _child_safe(registry, n))
    return _Context(registry, names, d_model, globals_, child_names=child_names, **options)


def block_asts(
    components: Iterable[str] | None = None,
    *,
    d_model: int = 16,
    max_depth: int = 2,
    max_length: int = 3,
    max_branches: int = 2,
    parallel: bool = True,
    repeats: bool = True,
    labels: bool = True,
    children: bool = True,
    slots: bool = True,
    groups: bool = True,
    positional: bool = True,
    registry: Registry | None = None,
    model_globals: Mapping[str, Any] | None = None,
    prenorm: bool = True,
) -> st.SearchStrategy[ast.Block]:
    """Valid blocks (``blockdsl.ast.Block``) over ``components`` at width ``d_model``.

    ``max_depth`` bounds nesting (groups, parallel branches, children, slots), ``max_length``
    the steps of a chain (not counting ``+``). With ``slots`` a mixer that declares slots
    (``Attn``) sometimes has one or two of them filled with a chain of steps drawn from the
    components that fit there (``Attn[q=Norm->Conv, scores=Sink]``). ``model_globals`` are
    the ``vocab``/``context`` values components see (pass the same to ``compile_block``;
    default ``DEFAULT_GLOBALS``). Every drawn block validates and compiles at ``d_model``.

    With ``prenorm`` (the default; when ``Norm`` is one of the components drawn, as it is
    with the default of every usable component) every drawn call but a ``Norm`` reads a
    normalised input: ``X`` is drawn as ``Norm->X`` and a repeat ``X*2`` as
    ``(Norm->X)*2``, like ``model_configs``' ``prenorm_layers``. Without it a deep chain of
    multiplicative mixers (BaseConv, Hyena, gated MLPs: each roughly squares the size of
    its input) overflows float32 at initialisation by construction, which no invariant
    should blame on a component. ``prenorm=False`` draws the raw chains.
    """
    components = None if components is None else tuple(components)
    options = dict(
        max_depth=max_depth,
        max_length=max_length,
        max_branches=max_branches,
        parallel=parallel,
        repeats=repeats,
        labels=labels,
        children=children,
        slots=slots,
        groups=groups,
        positional=positional,
    )
    # resolve once up front so that bad component names fail when the strategy is made
    template = _context(registry, components, d_model, model_globals, **options)
    if prenorm:
        drawn = {template.registry.resolve(n)[0].name for n in template.names}
        template = dataclasses.replace(template, prenorm="Norm" in drawn)

    @st.composite
    def draw_block(draw: Callable) -> ast.Block:
        ctx = dataclasses.replace(template, label_calls={}, label_ids=itertools.count())
        return _block(draw, ctx, max_depth)

    return draw_block()


def slotted_calls(
    components: Iterable[str] | None = None,
    *,
    mixers: Iterable[str] | None = None,
    d_model: int = 16,
    registry: Registry | None = None,
    model_globals: Mapping[str, Any] | None = None,
) -> st.SearchStrategy[ast.Call]:
    """Calls of a mixer that declares slots (``Attn``, ``CrossAttn``, ...) with drawn
    arguments and one or two slots filled with chains drawn from ``components`` (default:
    every usable one, a user's registered components included) that fit there:
    ``Attn(kv_heads=2)[v=Conv->Norm, scores=Sink]``; ``mixers`` limits the mixers drawn.
    Every drawn call validates at ``d_model``."""
    components = None if components is None else tuple(components)
    template = _context(
        registry, components, d_model, model_globals, max_depth=1, max_length=2,
        max_branches=1, parallel=False, repeats=False, labels=False, children=False,
        groups=False, positional=False,
    )  # fmt: skip
    declared = [n for n in template.registry.names() if template.registry.get(n).slots]
    mixers = sorted(declared if mixers is None else set(mixers) & set(declared))
    if not mixers:
        raise ValueError("no registered component declares slots")

    @st.composite
    def draw_call(draw: Callable) -> ast.Call:
        ctx = dataclasses.replace(template, label_calls={}, label_ids=itertools.count())
        name = draw(st.sampled_from(mixers))
        args = _draw_args(draw, ctx, ctx.registry.get(name), {})
        fills = _draw_slots(draw, ctx, ast.Call(name, None, args))
        assume(fills)
        return ast.Call(name, None, args, (), fills)

    return draw_call()


def block_strings(components: Iterable[str] | None = None, **kwargs: Any) -> st.SearchStrategy[str]:
    """``block_asts(...)`` printed with ``blockdsl.unparse``: valid block strings."""
    from blockdsl.printer import unparse

    return block_asts(components, **kwargs).map(unparse)


def model_configs(
    components: Iterable[str] | None = None,
    *,
    d_models: Sequence[int] = (8, 16, 24),
    max_blocks: int = 2,
    max_layers: int = 3,
    max_depth: int = 1,
    max_length: int = 3,
    parallel: bool = True,
    repeats: bool = True,
    labels: bool = True,
    children: bool = True,
    slots: bool = True,
    groups: bool = True,
    vocab: int = 32,
    context: int = 16,
    prenorm_layers: bool = True,
    registry: Registry | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """Model configs (the dict form of a TOML file) for ``blockdsl.build_model``: named blocks
    drawn like ``block_strings`` (labels consistent across the whole model), a ``layers`` chain
    over them, and an embedding and head when ``Embed``/``Head``/``Norm`` are registered.

    With ``prenorm_layers`` (the default, when ``Norm`` is registered) each named block is a
    pre-norm residual layer around the drawn block, ``Norm->(drawn)->+``, as every published
    stack normalises between layers: without it, the residual stream of a deep stack of
    multiplicative mixers (Hyena, BaseConv, gated MLPs) grows polynomially from layer to layer
    and overflows float32 at initialisation by design, which no invariant should blame on a
    component. ``prenorm_layers=False`` draws the raw blocks."""
    from blockdsl.printer import unparse

    registry = registry or REGISTRY
    components = None if components is None else tuple(components)
    globals_ = {"vocab": vocab, "context": context}
    for d in d_models:
        _resolve_names(components, registry, d, globals_)
    prenorm = prenorm_layers and "Norm" in registry

    @st.composite
    def draw_config(draw: Callable) -> dict[str, Any]:
        d_model = draw(st.sampled_from(list(d_models)))
        ctx = _context(
            registry,
            components,
            d_model,
            globals_,
            max_depth=max_depth,
            max_length=max_length,
            max_branches=2,
            parallel=parallel,
            repeats=repeats,
            labels=labels,
            children=children,
            slots=slots,
            groups=groups,
            positional=True,
        )
        blocks = {}
        for i in range(draw(st.integers(1, max_blocks))):
            body = unparse(_block(draw, ctx, max_depth))
            blocks[f"b{i}"] = f"Norm->({body})->+" if prenorm else body
        layer_steps = []
        for _ in range(draw(st.integers(1, max_layers))):
            name = draw(st.sampled_from(sorted(blocks)))
            count = draw(st.integers(1, 2)) if repeats else 1
            layer_steps.append(name if count == 1 else f"{name}*{count}")
        model: dict[str, Any] = {
            "vocab": vocab,
            "d_model": d_model,
            "context": context,
            "layers": "->".join(layer_steps),
        }
        if "Embed" in registry:
            model["embed"] = draw(
                st.sampled_from(
                    ["Embed", "Embed(pos=learned)", "Embed(pos=sinusoidal)", "Embed(scale=sqrt_d)"]
                )
            )
        if "Head" in registry:
            heads = ["Head", "Head(bias=true)", "Head(tie=true)"]
            head = draw(st.sampled_from(heads))
            if "Norm" in registry and draw(st.booleans()):
                head = f"Norm->{head}"
            model["head"] = head
        return {"model": model, "blocks": blocks}

    return draw_config()


# ==================================================================== the checker
