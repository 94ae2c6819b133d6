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
"""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import keyword
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from hypothesis import assume
from hypothesis import strategies as st
from torch import nn

from blockdsl import ast
from blockdsl.registry import MODEL_GLOBALS, REGISTRY, Component, Param, Registry

__all__ = [
    "INVARIANTS",
    "ArchitectureCheckError",
    "block_asts",
    "block_strings",
    "check_architecture",
    "model_configs",
    "usable_components",
]

#: Default model-level values for blocks drawn without a model (``vocab``, ``context``).
DEFAULT_GLOBALS: dict[str, int] = {"vocab": 32, "context": 64}
#: Every invariant ``check_architecture`` knows, in the order it checks them.
INVARIANTS = ("forward", "shape", "finite", "determinism", "causality", "gradient", "state_dict")


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
    max_args: int = 3
    child_names: tuple[str, ...] = ()
    label_calls: dict[str, ast.Call] = field(default_factory=dict)
    label_ids: itertools.count = field(default_factory=itertools.count)
    current_children: int = 0
    current_defaults: dict[str, Any] = field(default_factory=dict)


_VALID_CACHE: dict[tuple, str | None] = {}


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
    label = None
    if ctx.labels and draw(st.integers(0, 3)) == 3:
        label = f"l{next(ctx.label_ids)}"
    call = ast.Call(name, label, args, children)
    if label is not None:
        ctx.label_calls[label] = call
    return call


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
        steps.append(_term(draw, ctx, depth, in_children))
        since_add += 1
        if draw(st.booleans()):
            steps.append(ast.Residual())
            since_add = 0
    if must_end_in_add and since_add:
        steps.append(ast.Residual())
    return ast.Chain(tuple(steps))


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
        if component.tokens_in:
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
    groups: bool = True,
    positional: bool = True,
    registry: Registry | None = None,
    model_globals: Mapping[str, Any] | None = None,
) -> st.SearchStrategy[ast.Block]:
    """Valid blocks (``blockdsl.ast.Block``) over ``components`` at width ``d_model``.

    ``max_depth`` bounds nesting (groups, parallel branches, children), ``max_length`` the
    steps of a chain (not counting ``+``). ``model_globals`` are the ``vocab``/``context``
    values components see (pass the same to ``compile_block``; default
    ``DEFAULT_GLOBALS``). Every drawn block validates and compiles at ``d_model``.
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
        groups=groups,
        positional=positional,
    )
    # resolve once up front so that bad component names fail when the strategy is made
    template = _context(registry, components, d_model, model_globals, **options)

    @st.composite
    def draw_block(draw: Callable) -> ast.Block:
        ctx = dataclasses.replace(template, label_calls={}, label_ids=itertools.count())
        return _block(draw, ctx, max_depth)

    return draw_block()


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
    groups: bool = True,
    vocab: int = 32,
    context: int = 16,
    registry: Registry | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """Model configs (the dict form of a TOML file) for ``blockdsl.build_model``: named blocks
    drawn like ``block_strings`` (labels consistent across the whole model), a ``layers`` chain
    over them, and an embedding and head when ``Embed``/``Head``/``Norm`` are registered."""
    from blockdsl.printer import unparse

    registry = registry or REGISTRY
    components = None if components is None else tuple(components)
    globals_ = {"vocab": vocab, "context": context}
    for d in d_models:
        _resolve_names(components, registry, d, globals_)

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
            groups=groups,
            positional=True,
        )
        blocks = {}
        for i in range(draw(st.integers(1, max_blocks))):
            blocks[f"b{i}"] = unparse(_block(draw, ctx, max_depth))
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
class ArchitectureCheckError(AssertionError):
    """An invariant does not hold. ``invariant`` is one of ``INVARIANTS``; ``node`` the
    submodule path at fault (``layers.1.attn``, ``leak``) or None when it cannot be
    narrowed down; ``architecture`` the block string or config, when known."""

    def __init__(
        self,
        invariant: str,
        message: str,
        node: str | None = None,
        architecture: Any = None,
    ) -> None:
        self.invariant = invariant
        self.node = node
        self.detail = message
        self.architecture = architecture
        super().__init__(self._render())

    def _render(self) -> str:
        where = f" at {self.node}" if self.node else ""
        text = f"invariant '{self.invariant}' violated{where}: {self.detail}"
        if self.architecture is not None:
            text += f"\n  architecture: {self.architecture}"
        return text

    def with_architecture(self, architecture: Any) -> ArchitectureCheckError:
        self.architecture = architecture
        self.args = (self._render(),)
        return self


@dataclass
class _Subject:
    """How to feed and rebuild the module under test."""

    module: nn.Module
    tokens: bool
    width: int | None  # input feature size (features in)
    out_width: int | None
    vocab: int | None
    context: tuple[str, ...]
    is_model: bool


def _describe(module: nn.Module, d_model: int | None, vocab: int | None) -> _Subject:
    from blockdsl.lower import BlockModule
    from blockdsl.model import LanguageModel

    if isinstance(module, LanguageModel):
        needs = set()
        for block in [module.embed, *module.layers, module.head]:
            needs |= set(block.context)
        return _Subject(
            module,
            True,
            None,
            module.config.vocab,
            module.config.vocab,
            tuple(sorted(needs)),
            True,
        )
    if isinstance(module, BlockModule):
        graph = module.block_graph
        role = graph.role
        out_size = graph.nx.nodes[graph.output]["size"]
        tokens = role == "embed"
        width = None if tokens else graph.d_model
        vocab = vocab or (DEFAULT_GLOBALS["vocab"] if tokens else None)
        return _Subject(module, tokens, width, out_size, vocab, tuple(module.context), False)
    if d_model is None and vocab is None:
        raise TypeError("check_architecture needs d_model= (features in) or vocab= (ids in)")
    tokens = d_model is None
    return _Subject(module, tokens, d_model, d_model, vocab, (), False)


def _split(out: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A forward's result as (main tensor, auxiliary tensors)."""
    if isinstance(out, torch.Tensor):
        return out, []
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        auxes: list[torch.Tensor] = []
        for extra in out[1:]:
            if isinstance(extra, torch.Tensor):
                auxes.append(extra)
            elif isinstance(extra, (tuple, list)):
                auxes.extend(t for t in extra if isinstance(t, torch.Tensor))
        return out[0], auxes
    raise ArchitectureCheckError("forward", f"returned {type(out).__name__}, not a tensor")


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    if a.shape != b.shape:
        return False
    return bool(torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol, equal_nan=True))


def _component_modules(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that stand for components (direct children of a compiled block), with their
    paths; for a plain module, its leaf modules."""
    from blockdsl.lower import BlockModule

    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    for path, module in root.named_modules():
        if isinstance(module, BlockModule):
            for name, child in module.named_children():
                if id(child) not in seen and not isinstance(child, BlockModule):
                    seen.add(id(child))
                    found.append((f"{path}.{name}" if path else name, child))
    if not found and not isinstance(root, BlockModule):
        found = [(p, m) for p, m in root.named_modules() if p and not list(m.children())]
    return found


def _owner(root: nn.Module, param_name: str) -> str:
    """The component path that owns a parameter (``layers.0.attn.q.weight`` -> the
    ``layers.0.attn`` component), else the parameter's module path."""
    best = ""
    for path, _ in _component_modules(root):
        if (param_name.startswith(path + ".") or param_name == path) and len(path) > len(best):
            best = path
    return best or param_name.rpartition(".")[0] or param_name


def check_architecture(
    module: nn.Module,
    *,
    d_model: int | None = None,
    vocab: int | None = None,
    batch: int = 2,
    seq: int = 6,
    invariants: Iterable[str] = INVARIANTS,
    seed: int = 0,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    allow_zero_grad: bool = True,
    threads: int | None = 1,
    architecture: Any = None,
) -> None:
    """Check the invariants of a compiled block or model; raise ``ArchitectureCheckError``.

    ``module``: a ``BlockModule`` from ``compile_block`` (input ``(batch, seq, d_model)``
    features), a ``LanguageModel`` from ``build_model`` (input ``(batch, seq)`` token ids), or
    any ``nn.Module`` with ``d_model=`` (features in and out) or ``vocab=`` (token ids in,
    any width out) given. Components
    that read ``memory`` get a random one. ``invariants`` selects a subset of ``INVARIANTS``;
    ``allow_zero_grad=False`` also rejects parameters whose gradient is exactly zero (not
    just missing). ``threads``: torch's intra-op threads while checking (default 1: the
    tensors are tiny, and threads only add synchronisation; None leaves the setting alone).
    The module is left in the training mode it had, with no gradients.
    """
    wanted = set(invariants)
    unknown = wanted - set(INVARIANTS)
    if unknown:
        raise ValueError(f"unknown invariants {sorted(unknown)}; choose from {INVARIANTS}")
    subject = _describe(module, d_model, vocab)
    old_threads = torch.get_num_threads()
    if threads is not None and threads != old_threads:
        torch.set_num_threads(threads)
    try:
        _check(subject, wanted, batch, seq, seed, rtol, atol, allow_zero_grad)
    except ArchitectureCheckError as err:
        if architecture is not None:
            err.with_architecture(architecture)
        raise
    finally:
        if torch.get_num_threads() != old_threads:
            torch.set_num_threads(old_threads)


def _inputs(subject: _Subject, batch: int, seq: int, gen: torch.Generator) -> dict[str, Any]:
    param = next(itertools.chain(subject.module.parameters(), subject.module.buffers()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    if subject.tokens:
        x = torch.randint(0, subject.vocab, (batch, seq), generator=gen)
    else:
        x = torch.randn(batch, seq, subject.width, generator=gen, dtype=torch.float32)
    feed: dict[str, Any] = {"x": x.to(device=device, dtype=None if subject.tokens else dtype)}
    if "memory" in subject.context:
        width = subject.width or subject.module.config.d_model
        memory = torch.randn(batch, max(seq // 2, 1), width, generator=gen).to(device, dtype)
        feed["memory"] = memory
    return feed


def _perturb_after(
    subject: _Subject, feed: dict[str, Any], t: int, gen: torch.Generator
) -> dict[str, Any]:
    x = feed["x"].clone()
    if subject.tokens:
        shift = torch.randint(1, subject.vocab, x[:, t + 1 :].shape, generator=gen)
        x[:, t + 1 :] = (x[:, t + 1 :] + shift.to(x.device)) % subject.vocab
    else:
        noise = torch.randn(x[:, t + 1 :].shape, generator=gen).to(x.device, x.dtype)
        x[:, t + 1 :] = x[:, t + 1 :] + 3.0 * noise
    return {**feed, "x": x}


def _forward(subject: _Subject, feed: Mapping[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    kwargs = {k: v for k, v in feed.items() if k != "x" and k in subject.context}
    try:
        if subject.is_model:
            out = subject.module(feed["x"], return_aux=True, **kwargs)
        else:
            out = subject.module(feed["x"], **kwargs)
    except ArchitectureCheckError:
        raise
    except Exception as exc:
        node = _crash_site(exc)
        raise ArchitectureCheckError(
            "forward", f"forward raised {type(exc).__name__}: {exc}", node
        ) from exc
    return _split(out)


def _crash_site(exc: BaseException) -> str | None:
    tb = exc.__traceback__
    site = None
    while tb is not None:
        frame_self = tb.tb_frame.f_locals.get("self")
        if isinstance(frame_self, nn.Module):
            site = type(frame_self).__name__
        tb = tb.tb_next
    return site


def _check(
    subject: _Subject,
    wanted: set[str],
    batch: int,
    seq: int,
    seed: int,
    rtol: float,
    atol: float,
    allow_zero_grad: bool,
) -> None:
    module = subject.module
    was_training = module.training
    gen = torch.Generator().manual_seed(seed)
    feed = _inputs(subject, batch, seq, gen)
    try:
        module.eval()
        with torch.no_grad():
            out, auxes = _forward(subject, feed)
        _check_output(subject, wanted, out, auxes, batch, seq)
        if "determinism" in wanted:
            with torch.no_grad():
                again, _ = _forward(subject, feed)
            if not torch.equal(out, again):
                diff = (out.float() - again.float()).abs().max().item()
                raise ArchitectureCheckError(
                    "determinism", f"two eval-mode runs differ by up to {diff:.3g}"
                )
        if "causality" in wanted and seq > 1:
            _check_causality(subject, feed, out, seq, gen, rtol, atol)
        if "gradient" in wanted or "finite" in wanted:
            _check_gradients(subject, feed, gen, wanted, allow_zero_grad)
        if "state_dict" in wanted:
            _check_state_dict(subject, feed, out, rtol, atol)
    finally:
        module.train(was_training)
        module.zero_grad(set_to_none=True)


def _check_output(
    subject: _Subject,
    wanted: set[str],
    out: torch.Tensor,
    auxes: list[torch.Tensor],
    batch: int,
    seq: int,
) -> None:
    if "shape" in wanted:
        expected = (batch, seq, subject.out_width) if subject.out_width else None
        ok = out.shape == expected if expected else out.shape[:2] == (batch, seq)
        if not ok:
            want = expected or (batch, seq, "*")
            raise ArchitectureCheckError(
                "shape", f"output has shape {tuple(out.shape)}, expected {want}"
            )
    if "finite" in wanted:
        if not torch.isfinite(out).all():
            raise ArchitectureCheckError("finite", "output has NaN or inf values")
        for i, aux in enumerate(auxes):
            if aux.is_floating_point() and not torch.isfinite(aux).all():
                raise ArchitectureCheckError("finite", f"auxiliary output {i} is not finite")


def _check_causality(
    subject: _Subject,
    feed: dict[str, Any],
    out: torch.Tensor,
    seq: int,
    gen: torch.Generator,
    rtol: float,
    atol: float,
) -> None:
    t = max(seq // 2 - 1, 0)
    perturbed = _perturb_after(subject, feed, t, gen)
    with torch.no_grad():
        out_b, _ = _forward(subject, perturbed)
    scale = atol * max(1.0, out.abs().max().item())
    if _close(out[:, : t + 1], out_b[:, : t + 1], rtol, scale):
        return
    diff = (out[:, : t + 1].float() - out_b[:, : t + 1].float()).abs().max().item()
    node = _locate_leak(subject, feed, perturbed, t, rtol, atol)
    raise ArchitectureCheckError(
        "causality",
        f"changing positions > {t} changed the output at positions <= {t} "
        f"(by up to {diff:.3g}): a future-token leak",
        node,
    )


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _record(subject: _Subject, feed: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    calls: list[tuple[str, Any, Any]] = []
    handles = []
    for path, mod in _component_modules(subject.module):

        def hook(_m: nn.Module, inputs: Any, output: Any, path: str = path) -> None:
            calls.append((path, _first_tensor(inputs), _first_tensor(output)))

        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            _forward(subject, feed)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _locate_leak(
    subject: _Subject,
    feed: dict[str, Any],
    perturbed: dict[str, Any],
    t: int,
    rtol: float,
    atol: float,
) -> str | None:
    """The first component whose output at positions <= t changes although its input there
    did not."""
    clean, dirty = _record(subject, feed), _record(subject, perturbed)
    for (path, in_a, out_a), (_, in_b, out_b) in zip(clean, dirty):
        if in_a is None or out_a is None or in_b is None or out_b is None:
            continue
        if in_a.dim() < 2 or out_a.dim() < 2:
            continue
        same_in = _close(in_a[:, : t + 1], in_b[:, : t + 1], rtol, atol)
        same_out = _close(out_a[:, : t + 1], out_b[:, : t + 1], rtol, atol)
        if same_in and not same_out:
            return path
    return None


def _check_gradients(
    subject: _Subject,
    feed: dict[str, Any],
    gen: torch.Generator,
    wanted: set[str],
    allow_zero_grad: bool,
) -> None:
    module = subject.module
    module.train()
    module.zero_grad(set_to_none=True)
    out, auxes = _forward(subject, feed)
    weights = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
    loss = (out * weights).sum()
    for aux in auxes:  # a random projection too: a plain sum can be constant (sum of probs)
        if aux.is_floating_point() and aux.requires_grad:
            loss = loss + (aux.float() * torch.randn(aux.shape, generator=gen)).sum()
    if not loss.requires_grad:
        params = [n for n, p in module.named_parameters() if p.requires_grad]
        if params and "gradient" in wanted:
            raise ArchitectureCheckError(
                "gradient",
                f"the output does not depend on any parameter (e.g. '{params[0]}')",
                _owner(module, params[0]),
            )
        return
    loss.backward()
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        grad = param.grad
        if "gradient" in wanted:
            if grad is None:
                raise ArchitectureCheckError(
                    "gradient",
                    f"parameter '{name}' receives no gradient (it does not reach the output)",
                    _owner(module, name),
                )
            if not allow_zero_grad and not grad.any():
                raise ArchitectureCheckError(
                    "gradient", f"parameter '{name}' has an all-zero gradient", _owner(module, name)
                )
        if "finite" in wanted and grad is not None and not torch.isfinite(grad).all():
            raise ArchitectureCheckError(
                "finite", f"parameter '{name}' has a non-finite gradient", _owner(module, name)
            )
    module.eval()


def _rebuild(module: nn.Module) -> nn.Module:
    """A freshly initialised module of the same architecture (rebuilt from its source when
    blockdsl made it, else a deep copy with every parameter and buffer re-randomised)."""
    from blockdsl.lower import BlockModule, lower
    from blockdsl.model import LanguageModel, build_model

    try:
        if isinstance(module, LanguageModel):
            return build_model(module.config)
        if isinstance(module, BlockModule):
            return lower(module.block_graph)
    except Exception:  # e.g. built from another registry: fall back to a copy
        pass
    fresh = copy.deepcopy(module)
    with torch.no_grad():
        for tensor in itertools.chain(fresh.parameters(), fresh.buffers()):
            if tensor.is_floating_point():
                tensor.normal_()
    return fresh


def _check_state_dict(
    subject: _Subject, feed: dict[str, Any], out: torch.Tensor, rtol: float, atol: float
) -> None:
    buffer = io.BytesIO()
    torch.save(subject.module.state_dict(), buffer)
    buffer.seek(0)
    fresh = _rebuild(subject.module)
    param = next(itertools.chain(subject.module.parameters(), subject.module.buffers()), None)
    if param is not None:
        fresh.to(param.device)
    try:
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
    except Exception as exc:
        raise ArchitectureCheckError(
            "state_dict", f"loading the saved state_dict failed: {exc}"
        ) from exc
    fresh.eval()
    other = _Subject(fresh, *[getattr(subject, f) for f in _SUBJECT_FIELDS])
    with torch.no_grad():
        out_b, _ = _forward(other, feed)
    if not _close(out, out_b, rtol, atol):
        diff = (out.float() - out_b.float()).abs().max().item()
        node = _locate_state_difference(subject, other, feed, rtol, atol)
        raise ArchitectureCheckError(
            "state_dict",
            f"after a state_dict save/load round trip the output differs by up to {diff:.3g} "
            "(state not saved, or not restored by load_state_dict)",
            node,
        )


_SUBJECT_FIELDS = ("tokens", "width", "out_width", "vocab", "context", "is_model")


def _locate_state_difference(
    a: _Subject, b: _Subject, feed: dict[str, Any], rtol: float, atol: float
) -> str | None:
    """The first component whose output differs between the original and the reloaded copy
    although its input does not."""
    first, second = _record(a, feed), _record(b, feed)
    for (path, in_a, out_a), (_, in_b, out_b) in zip(first, second):
        if any(v is None for v in (in_a, out_a, in_b, out_b)):
            continue
        same_in = in_a.shape == in_b.shape and _close(in_a, in_b, rtol, atol)
        if same_in and not _close(out_a, out_b, rtol, atol):
            return path
    return None
