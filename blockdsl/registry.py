"""The component registry: how names in block strings become ``nn.Module`` classes.

A component is an ``nn.Module`` class registered under a name. Its constructor signature is its
argument schema: names, annotations (``Literal[...]`` for choices) and defaults. Everything
else a compiler needs to know is declared once, as a keyword of ``register`` (the fields of
``Declarations``, whose hook signatures are the ``*Hook`` protocols below), and has a safe
default:

==================  =======================================================================
``out_features``    output feature size ``f(d_in=..., **args)``; default: unchanged, or probed
                    with a meta-device forward for classes that change it
``mixes_positions`` the module looks at other positions (attention, convolution, shift); it
                    must then be causal by default
``params``          parameter count ``f(d_in=..., **args)``; default: counted on the meta device
``flops``           forward FLOPs of one sequence ``f(d_in=..., seq=..., **args)``;
                    default: ``2 * params * seq`` (every weight used once per token)
``aux_loss``        ``forward`` returns ``(y, aux)``; the model adds ``aux`` to its loss
``input_size``      the constructor argument that receives the input feature size; default:
                    the first of ``d_model``, ``dim``, ``in_features``, ... it declares
``tokens_in``       the input is token ids ``(B, T)``, not features (embeddings)
``check``           ``f(d_in=..., **args)``: why these arguments cannot work (a reason, or a
                    reason and a hint), or None; without it, the module is built once on the
                    meta device to find out
``decodes``         the component keeps a decoding state (the ``Decoder`` protocol, below)
``state_size``      decoding-state elements per sequence ``f(d_in=..., context=..., **args)``
                    (stateful components only); default: counted from ``init_state`` on the
                    meta device
``arg_help``        ``{argument: one-line description}`` for ``blockdsl components NAME``
``shape_steps``     ``f(d_in=..., seq=..., batch=..., **args)``: the steps inside the module for
                    ``--show-shapes --depth 2``, as ``(name, symbolic shape, concrete shape,
                    FLOPs)`` tuples, optionally ``(..., FLOPs, saved[, workspace])``: how many
                    tensors of that shape the forward keeps for backward (default 1) and its
                    backward allocates transiently (default 0), for the training memory
                    estimate (``blockdsl/shapes.py``)
``combine_aux``     ``f(auxes)``: the model's auxiliary loss from every call's ``aux`` of this
                    component (default: their sum)
``embedding``       ``f(module)``: the ``nn.Embedding`` (or a module with ``.weight``) a head may
                    tie its weight to (token embeddings)
``slots``           ``{name: Slot(...)}``: named places inside the module where a block string
                    goes (language v3, "Slots"); the constructor receives the filled ones as
                    ``slots={name: module}``
``per_head``        the component accepts per-head inputs ``(B, T, H, F)`` (a mixer of positions
                    mixing along dim 1), so it fits an attention's q/k/v/o slot, and its
                    ``heads`` argument is the slot's (an error outside one)
``residual``        the component is a parameterised residual, written ``+(args)``:
                    ``forward(tap, h)`` returns the update that the chain adds to ``tap``
                    (docs/language.md, "Parameterised residuals"); never an ordinary step
``tie``             ``f(module, embedding)``: tie this module to the model's token embedding
                    (``embedding`` is None when the model has none); called once per built
                    module, after the whole model is built (heads)
``init_roles``      ``{parameter name pattern: role}``: what each parameter is to a model-level
                    initialisation scheme (``[init]``, ``blockdsl/initialisation.py``):
                    ``hidden``, ``output`` (a residual-branch output projection), ``embedding``,
                    ``position``, ``readout`` or ``router``; patterns are ``fnmatch`` patterns
                    over ``named_parameters`` names, the first match wins. A component that
                    declares none keeps its own initialisation under every scheme
==================  =======================================================================

Hooks of combinators (components with ``children``) also receive ``n_children``: the number of
child blocks, whose own parameters and FLOPs the compiler adds separately.

This table is the whole protocol between a component and the compiler: ``register`` reads every
declaration once into the ``Component`` (``Declarations.validate`` checks them against the
class), and nothing else inspects the class. Declarations are ``register`` keywords only, next
to the class they describe; attributes of the class are never read.

Call-time context is declared by the ``forward`` signature itself: a keyword parameter named
``positions`` (token positions, ``(T,)`` or ``(B, T)``) or ``memory`` (``(B, S, D)`` for
cross-attention) is passed by the compiler. A constructor parameter named ``children`` makes
the component a combinator: it receives its ``[child, ...]`` blocks as a list of modules.
A component declaring ``slots`` has a constructor parameter named ``slots``: a dict from slot
name to the module built from the block in that slot (only the filled ones; a shorthand
argument such as ``qk_norm=true`` fills its slot through ``Slot.shorthand``, so the component
sees one kind of input). A module in a slot is called with the slot's tensor and, where the
slot supplies them, the keywords ``positions`` and ``rotary`` (a function applying the mixer's
rotary positions to a ``(B, T, H, F)`` tensor: what the ``Rope`` step calls).

Decoding state (docs/generation.md). A component decodes one step at a time when it is
registered with ``decodes=True``; its ``forward`` then accepts a keyword ``state`` and its class
defines ``init_state(batch_size, max_len) -> dict[str, Tensor]`` (checked at registration):
zero tensors on the module's device and dtype, the batch as dim 0 of every one, sized for at
most ``max_len`` positions (attention: a preallocated K/V cache;
``Conv``/``Shift``: their last inputs; recurrent mixers: their fixed-size state).
``forward(x, positions=None, state=None)``: with ``state=None`` the ordinary full-sequence
path; with a state dict ``x`` is ``(B, T_new, D)``, the tokens following those the state has
seen, ``positions`` their absolute positions ``(B, T_new)`` (rows may differ), and the
component updates the state's tensors *in place* (``copy_``, ``scatter_``, slice assignment)
and returns the outputs for those tokens, equal to the full-sequence outputs at those
positions. ``T_new > 1`` is a prefill, ``T_new == 1`` a decode step. Each call site has its own
state: a label used twice has two. A combinator declared with ``decodes=True`` receives a
list with one entry per child, that child block's state (None for a child without stateful
calls), and passes it on as ``child(x, state=...)``; it should also accept ``positions`` and
pass them to the children that read them (``MoE`` does both). A component that mixes positions
without declaring ``decodes`` still generates, by the uncached fallback (the whole prefix recomputed
each step); ``LanguageModel.cache_blocker()`` names it.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from blockdsl.errors import BlockDSLError, RegistryError, did_you_mean, suggest
from blockdsl.printer import format_value

#: Keyword parameters of ``forward`` that the compiler knows how to supply.
CONTEXT_ARGS = ("positions", "memory")
#: Keyword parameters of ``forward`` that only a mixer's slot supplies (``Rope``'s ``rotary``).
SLOT_CONTEXT_ARGS = ("rotary",)
#: Keyword parameter of ``forward`` that receives a component's decoding state (see above).
STATE_ARG = "state"
#: Model-level values that reach every component declaring a parameter of that name.
MODEL_GLOBALS = ("vocab", "context")
#: Constructor parameters that receive the input feature size, in order of preference.
INPUT_SIZE_NAMES = (
    "d_model",
    "dim",
    "d_in",
    "in_features",
    "in_dim",
    "normalized_shape",
    "embed_dim",
    "hidden_size",
    "n_embd",
    "num_features",
)
#: The roles a parameter may play for an initialisation scheme (``init_roles``).
INIT_ROLES = ("hidden", "output", "embedding", "position", "readout", "router")
#: Constructor parameters never settable from a block string.
_HIDDEN = frozenset({"self", "device", "dtype", "children", "slots"})
_EMPTY = inspect.Parameter.empty


class ArgumentIssue(NamedTuple):
    """Why a call's arguments do not bind: ``where`` is the index of the offending argument
    in the call, or None when the call as a whole is at fault (e.g. a missing argument)."""

    message: str
    where: int | None
    hint: str | None


@dataclass(frozen=True)
class Param:
    """One constructor argument of a component."""

    name: str
    annotation: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is _EMPTY

    @cached_property
    def type_name(self) -> str:
        return _type_name(self._effective_type)

    @property
    def _effective_type(self) -> Any:
        if self.annotation is not _EMPTY and self.annotation is not Any:
            return self.annotation
        if self.default is not _EMPTY and self.default is not None:
            return type(self.default)
        return Any

    def check(self, value: Any) -> tuple[bool, Any]:
        """``(True, coerced)`` if ``value`` fits this parameter's type, else ``(False, None)``."""
        return _check(self._effective_type, value)

    def describe(self) -> str:
        default = "" if self.required else f" = {format_value(self.default)}"
        return f"{self.name}: {self.type_name}{default}"


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if tp is Any or tp is _EMPTY:
        return "any"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(format_value(c) for c in typing.get_args(tp))
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, Sequence):
        inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list[{_type_name(inner[0]) if inner else 'any'}]"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _check(tp: Any, value: Any) -> tuple[bool, Any]:
    if tp is Any or tp is _EMPTY:
        return True, value
    origin = typing.get_origin(tp)
    if origin is Literal:
        for choice in typing.get_args(tp):
            if value == choice and type(value) is type(choice):
                return True, choice
        return False, None
    if _is_union(tp):
        for option in typing.get_args(tp):
            ok, coerced = _check(option, value)
            if ok:
                return True, coerced
        return False, None
    if tp is type(None):
        return (True, None) if value is None or value in ("none", "None") else (False, None)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, None
        inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
        out = []
        for item in value:
            ok, coerced = _check(inner[0] if inner else Any, item)
            if not ok:
                return False, None
            out.append(coerced)
        return True, (tuple(out) if (origin is tuple or tp is tuple) else out)
    if tp is bool:
        return (True, value) if isinstance(value, bool) else (False, None)
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (True, value) if ok else (False, None)
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (True, float(value)) if ok else (False, None)
    if tp is str:
        return (True, value) if isinstance(value, str) else (False, None)
    # An annotation the language has no literal for (a module, a callable): accept as given.
    return True, value


def _constructor_parameters(cls: type) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return {}


def _parse_signature(cls: type) -> tuple[dict[str, Param], bool]:
    init = cls.__init__
    try:
        signature = inspect.signature(init)
    except (TypeError, ValueError) as exc:
        raise RegistryError(
            f"cannot read the constructor signature of {cls.__name__}: {exc}"
        ) from exc
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        hints = {}
    params: dict[str, Param] = {}
    takes_children = False
    for name, p in signature.parameters.items():
        if name == "children":
            takes_children = True
            continue
        if name in _HIDDEN or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        params[name] = Param(name, hints.get(name, p.annotation), p.default)
    return params, takes_children


def _forward_context(cls: type) -> tuple[frozenset[str], frozenset[str]]:
    """The context keywords ``forward`` accepts, and those it cannot do without."""
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return frozenset(), frozenset()
    accepted = frozenset(n for n in (*CONTEXT_ARGS, *SLOT_CONTEXT_ARGS) if n in params)
    required = frozenset(n for n in accepted if params[n].default is inspect.Parameter.empty)
    return accepted, required


def _forward_accepts_state(cls: type) -> bool:
    """Whether ``forward`` takes the decoding-state keyword: checked against the ``decodes``
    declaration at registration, never used to decide anything by itself."""
    try:
        return STATE_ARG in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- the protocol
# The hooks' call signatures. Every hook receives the component's resolved arguments as
# keywords (``**args``: a hook lists those it reads and ends with ``**_``), the input feature
# size as ``d_in`` and, for combinators, ``n_children``.


class SizeHook(typing.Protocol):
    """``out_features`` and ``params``: a size from the arguments."""

    def __call__(self, *, d_in: int, **args: Any) -> int: ...


class FlopsHook(typing.Protocol):
    """``flops``: forward FLOPs of one sequence of ``seq`` positions."""

    def __call__(self, *, d_in: int, seq: int, **args: Any) -> int: ...


class CheckHook(typing.Protocol):
    """``check``: why these arguments cannot work (a reason, or a reason and a hint), or
    None."""

    def __call__(self, *, d_in: int | None, **args: Any) -> str | tuple[str, str | None] | None: ...


class StateSizeHook(typing.Protocol):
    """``state_size``: decoding-state elements per sequence for ``context`` positions."""

    def __call__(self, *, d_in: int, context: int, **args: Any) -> int: ...


class ShapeStepsHook(typing.Protocol):
    """``shape_steps``: ``(name, symbolic shape, concrete shape, FLOPs[, saved[, workspace]])``
    for each step inside the module, for a batch of ``batch`` sequences of ``seq``."""

    def __call__(self, *, d_in: int, seq: int, batch: int, **args: Any) -> list[tuple]: ...


@typing.runtime_checkable
class Decoder(typing.Protocol):
    """What a component registered with ``decodes=True`` implements (the decoding-state
    protocol of the module docstring): ``init_state``, and a ``forward`` that takes the state
    as the keyword ``state`` (``forward(x, positions=None, state=None)``). A combinator passes
    its children's states on and needs no ``init_state`` of its own."""

    def init_state(self, batch_size: int, max_len: int) -> dict[str, torch.Tensor]: ...

    def forward(self, x: torch.Tensor, *, state: Any = None) -> Any: ...


SlotLayout = Literal["heads", "stream", "scores"]

#: Compiles the blocks that a component's shorthand arguments put in its slots: set by
#: ``blockdsl.lower`` when it is imported (it sits above the registry, which cannot import it),
#: so that a mixer built directly in Python (``Attn(64, qk_norm=True)``) gets the very blocks
#: the compiler gives ``Attn(qk_norm=true)``.
_shorthand_compiler: Callable[[Component, int, Mapping[str, Any]], dict[str, nn.Module]] | None = (
    None
)


def set_shorthand_compiler(
    compiler: Callable[[Component, int, Mapping[str, Any]], dict[str, nn.Module]],
) -> None:
    global _shorthand_compiler
    _shorthand_compiler = compiler


def shorthand_slots(name: str, d_in: int, args: Mapping[str, Any]) -> dict[str, nn.Module]:
    """The modules in the slots of the registered component ``name`` that its arguments
    ``args`` fill by shorthand (``qk_norm=true``: a ``Norm`` in q and k), compiled as the
    compiler compiles them. For constructors called outside the compiler (``slots=None``)."""
    if _shorthand_compiler is None:  # pragma: no cover - blockdsl/__init__ imports lower
        raise RegistryError("the compiler (blockdsl.lower) is not loaded")
    return _shorthand_compiler(REGISTRY.get(name), d_in, args)


def sized(sizes: Callable[..., Any], field: str | Callable[[Any], int]) -> SizeHook:
    """A slot hook reading a mixer's resolved sizes: ``sizes(d_in, **args)`` (a record such as
    ``AttnSizes``), then its attribute ``field`` (or ``field(record)``)."""
    if isinstance(field, str):
        return lambda d_in, **args: getattr(sizes(d_in, **args), field)
    return lambda d_in, **args: field(sizes(d_in, **args))


def head_slot(
    doc: str,
    sizes: Callable[..., Any],
    features: str | Callable[[Any], int],
    heads: str,
    **hooks: Any,
) -> Slot:
    """A per-head slot (layout ``heads``) whose feature and head counts are fields of the
    mixer's resolved sizes (see ``sized``); ``hooks``: the ``Slot``'s other hooks."""
    return Slot("heads", doc, features=sized(sizes, features), heads=sized(sizes, heads), **hooks)


@dataclass(frozen=True)
class Slot:
    """A named place inside a component where a block string goes (language v3, "Slots").

    ``layout`` is what the block reads and returns: ``heads`` a per-head tensor ``(B, T, H,
    F)`` (q, k, v, o: a component sees one head's ``F`` features as its last dimension),
    ``stream`` a ``(B, T, F)`` tensor (gate: the mixer's input), ``scores`` the attention
    logits ``(B, H, T, S)`` before the softmax (F = S keys, which vary with the sequence; a
    block may append columns: sink logits that take part in the softmax and are dropped after
    it). The hooks take the component's resolved arguments like every other hook:

    * ``features(d_in=..., **args)``: the feature size the block reads (``F``);
    * ``heads(d_in=..., **args)``: the mixer's heads, given to every component in the slot
      that declares a ``heads`` parameter and leaves it unset (a per-head norm's weight rows);
    * ``outputs(d_in=..., **args)``: the output sizes the slot accepts (default: ``F``);
      a component in the slot declaring ``out`` and leaving it unset gets the first;
    * ``shorthand(d_in=..., **args)``: the block the component's own arguments put in this
      slot when the user fills it with none (``qk_norm=true`` means ``q=Norm(...)``), or None;
      the user filling the slot too is an error (the slot would be filled twice);
    * ``default(d_in=..., **args)``: the block the slot holds when neither the user nor a
      shorthand argument fills it (Gated DeltaNet's short convolution), or None; a block the
      user writes replaces it (``GatedDeltaNet[q=Act(silu)]``: no convolution on q);
    * ``rotary`` (a bool, or ``f(d_in=..., **args)``): the slot supplies ``rotary`` (the
      ``Rope`` step applies the mixer's rotary positions there instead of after the slot).
    """

    layout: SlotLayout
    doc: str
    features: SizeHook
    heads: SizeHook | None = None
    outputs: Callable[..., Sequence[int]] | None = None
    shorthand: Callable[..., str | None] | None = None
    rotary: bool | Callable[..., bool] = False
    default: Callable[..., str | None] | None = None

    def supplies(self, d_in: int, args: Mapping[str, Any]) -> tuple[str, ...]:
        """The call-time keywords a block in this slot may read with these arguments."""
        rotary = self.rotary(d_in=d_in, **args) if callable(self.rotary) else self.rotary
        return ("positions", "rotary") if rotary else ("positions",)


@dataclass(frozen=True)
class Declarations:
    """Everything a component may declare, all optional: the keywords of ``register`` (the
    module docstring's table describes each), read once at registration and validated by
    ``Declarations.validate``. A new kind of declaration (named slots, issue 27) is one more
    field here, one more keyword of ``register`` and one more check in ``validate``."""

    out_features: SizeHook | None = None
    mixes_positions: bool = False
    params: SizeHook | None = None
    flops: FlopsHook | None = None
    aux_loss: bool = False
    input_size: str | None = None
    tokens_in: bool = False
    check: CheckHook | None = None
    description: str | None = None
    arg_help: Mapping[str, str] = field(default_factory=dict)
    shape_steps: ShapeStepsHook | None = None
    combine_aux: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None = None
    embedding: Callable[[nn.Module], nn.Module] | None = None
    tie: Callable[[nn.Module, nn.Module | None], None] | None = None
    decodes: bool = False
    state_size: StateSizeHook | None = None
    slots: Mapping[str, Slot] = field(default_factory=dict)
    per_head: bool = False
    residual: bool = False
    init_roles: Mapping[str, str] = field(default_factory=dict)

    def validate(
        self, key: str, cls: type, schema: Mapping[str, Param], takes_children: bool
    ) -> str | None:
        """Raise ``RegistryError`` where the class contradicts these declarations; return the
        constructor argument that receives the input size (declared, else found by name)."""
        size_arg = self.input_size or next((n for n in INPUT_SIZE_NAMES if n in schema), None)
        if size_arg is not None and size_arg not in schema:
            raise RegistryError(f"{key}: input_size '{size_arg}' is not a constructor argument")
        if self.mixes_positions and "causal" in schema and schema["causal"].default is not True:
            raise RegistryError(
                f"{key} mixes positions, so its 'causal' argument must default to true"
            )
        for hook in ("out_features", "params", "flops", "check", "shape_steps", "combine_aux"):
            value = getattr(self, hook)
            if value is not None and not callable(value):
                raise RegistryError(f"{key}: {hook} must be a function, got {value!r}")
        accepts_state = _forward_accepts_state(cls)
        guide = "docs/generation.md"
        if self.decodes:
            if not accepts_state:
                raise RegistryError(
                    f"{key} declares decodes=True but its forward takes no 'state' keyword",
                    hint=f"forward(self, x, positions=None, state=None) ({guide})",
                )
            if not takes_children and not callable(getattr(cls, "init_state", None)):
                raise RegistryError(
                    f"{key} declares decodes=True but the class defines no init_state",
                    hint="define init_state(self, batch_size, max_len) -> dict[str, Tensor] "
                    f"({guide})",
                )
        elif accepts_state:
            raise RegistryError(
                f"{key}: forward accepts 'state' but decodes=True is not declared",
                hint="register it with decodes=True and define init_state(self, batch_size, "
                f"max_len) -> dict[str, Tensor] ({guide}), or drop the 'state' keyword",
            )
        if self.state_size is not None and not self.decodes:
            raise RegistryError(f"{key}: state_size is declared but decodes=True is not")
        if self.residual and (self.mixes_positions or self.decodes or self.slots or takes_children):
            raise RegistryError(
                f"{key}: a residual (residual=True) is position-wise and has no state, slots or "
                "children",
                hint="forward(self, tap, h) returns the update the chain adds to tap",
            )
        takes_slots = "slots" in _constructor_parameters(cls)
        if bool(self.slots) != takes_slots:
            raise RegistryError(
                f"{key} declares slots but its constructor takes no 'slots' parameter"
                if self.slots
                else f"{key}'s constructor takes 'slots' but it declares none",
                hint="register(..., slots={'q': Slot(...)}) and __init__(self, ..., slots=None)",
            )
        for slot_name, slot in self.slots.items():
            if not isinstance(slot, Slot) or not slot_name.isidentifier():
                raise RegistryError(f"{key}: slot {slot_name!r} must be a Slot under a name")
        for pattern, role in self.init_roles.items():
            if role not in INIT_ROLES:
                raise RegistryError(
                    f"{key}: init_roles gives '{pattern}' the unknown role '{role}'",
                    hint=f"roles: {', '.join(INIT_ROLES)}",
                )
        return size_arg


@dataclass
class Component:
    """A registered component: its class, argument schema and declarations."""

    name: str
    cls: type[nn.Module]
    params: dict[str, Param]
    takes_children: bool
    context: frozenset[str]
    input_size: str | None
    required_context: frozenset[str] = frozenset()
    description: str = ""
    declarations: Declarations = field(default_factory=Declarations)
    _probe_cache: dict = field(default_factory=dict, repr=False)

    # The declarations under the names the compiler reads them by.
    @property
    def mixes_positions(self) -> bool:
        return self.declarations.mixes_positions

    @property
    def aux_loss(self) -> bool:
        return self.declarations.aux_loss

    @property
    def tokens_in(self) -> bool:
        return self.declarations.tokens_in

    @property
    def residual(self) -> bool:
        """Declared ``residual=True``: written ``+(args)``, called as ``forward(tap, h)``."""
        return self.declarations.residual

    @property
    def stateful(self) -> bool:
        """Declared ``decodes=True``: the component keeps a decoding state."""
        return self.declarations.decodes

    @property
    def arg_help(self) -> Mapping[str, str]:
        return self.declarations.arg_help

    @property
    def out_features_fn(self) -> SizeHook | None:
        return self.declarations.out_features

    @property
    def params_fn(self) -> SizeHook | None:
        return self.declarations.params

    @property
    def flops_fn(self) -> FlopsHook | None:
        return self.declarations.flops

    @property
    def check_fn(self) -> CheckHook | None:
        return self.declarations.check

    @property
    def shape_steps_fn(self) -> ShapeStepsHook | None:
        return self.declarations.shape_steps

    @property
    def combine_aux_fn(self) -> Callable[[Sequence[torch.Tensor]], torch.Tensor] | None:
        return self.declarations.combine_aux

    @property
    def embedding_fn(self) -> Callable[[nn.Module], nn.Module] | None:
        return self.declarations.embedding

    @property
    def tie_fn(self) -> Callable[[nn.Module, nn.Module | None], None] | None:
        return self.declarations.tie

    @property
    def state_size_fn(self) -> StateSizeHook | None:
        return self.declarations.state_size

    @property
    def init_roles(self) -> Mapping[str, str]:
        return self.declarations.init_roles

    @property
    def user_params(self) -> dict[str, Param]:
        """The parameters a block string may set (the input size is supplied by the compiler)."""
        return {n: p for n, p in self.params.items() if n != self.input_size}

    def signature_text(self, width: int = 88) -> str:
        """``heads: int = 8, kv_heads: int | none = none, ...``, wrapped between arguments."""
        lines: list[str] = []
        for item in (p.describe() for p in self.user_params.values()):
            if lines and len(lines[-1]) + len(item) + 2 <= width:
                lines[-1] += f", {item}"
            else:
                lines.append(item)
        return ",\n".join(lines) or "(none)"

    def valid_arguments(self) -> str:
        """The hint that lists this component's arguments, for error messages."""
        listing = self.signature_text().replace("\n", "\n  ")
        return f"valid arguments of {self.name}:\n  {listing}"

    # ---------------------------------------------------------------- argument binding
    def bind(
        self,
        positional: Sequence[Any] = (),
        keywords: Mapping[str, Any] | None = None,
        *,
        defaults: Mapping[str, Any] | None = None,
        model_globals: Mapping[str, Any] | None = None,
        d_in: int | None = None,
    ) -> tuple[dict[str, Any], list[ArgumentIssue]]:
        """Resolve a call's arguments: positional and keyword (the call's own, highest), then
        ``defaults`` (a config's ``[defaults]`` for this component), then model-level values,
        then the constructor's defaults. Returns every constructor argument by name, and the
        issues found (empty when the call binds). Positional arguments are numbered from 0 and
        keyword ones follow them in ``where``."""
        keywords = dict(keywords or {})
        issues: list[ArgumentIssue] = []
        settable = list(self.user_params)
        valid = self.valid_arguments()
        given: dict[str, tuple[Any, int | None]] = {}
        for index, value in enumerate(positional):
            if index >= len(settable):
                issues.append(
                    ArgumentIssue(
                        f"{self.name} takes at most {len(settable)} positional argument"
                        f"{'s' if len(settable) != 1 else ''}, got {len(positional)}",
                        index,
                        valid,
                    )
                )
                continue
            given[settable[index]] = (value, index)
        for offset, (name, value) in enumerate(keywords.items()):
            where = len(positional) + offset
            if name not in self.user_params:
                close = did_you_mean(name, self.user_params)
                hint = f"{close}\n{valid}" if close else valid
                issues.append(
                    ArgumentIssue(f"unknown argument '{name}' for {self.name}", where, hint)
                )
                continue
            if name in given:
                issues.append(
                    ArgumentIssue(f"argument '{name}' of {self.name} given twice", where, valid)
                )
                continue
            given[name] = (value, where)
        for name, value in (defaults or {}).items():
            if name not in self.params:
                close = suggest(name, self.user_params)
                hint = f"did you mean '{close}'?\n{valid}" if close else valid
                issues.append(
                    ArgumentIssue(f"unknown default '{name}' for {self.name}", None, hint)
                )
            elif name not in given:
                given[name] = (value, None)

        resolved: dict[str, Any] = {}
        for name, param in self.params.items():
            if name == self.input_size and d_in is not None:
                resolved[name] = d_in
                continue
            if name in given:
                value, where = given[name]
            elif model_globals and name in model_globals:
                value, where = model_globals[name], None
            elif not param.required:
                resolved[name] = param.default
                continue
            else:
                issues.append(
                    ArgumentIssue(f"{self.name} is missing required argument '{name}'", None, valid)
                )
                continue
            ok, coerced = param.check(value)
            if not ok:
                issues.append(
                    ArgumentIssue(
                        f"argument '{name}' of {self.name} must be {param.type_name}, "
                        f"got {format_value(value, quote=True)}",
                        where,
                        valid,
                    )
                )
                continue
            if name in MODEL_GLOBALS and isinstance(coerced, int) and coerced < 1:
                # a vocabulary or context of nothing builds, then fails inside torch
                issues.append(
                    ArgumentIssue(
                        f"{name} of {self.name} must be at least 1, got {coerced}", where, valid
                    )
                )
                continue
            resolved[name] = coerced
        return resolved, issues

    # ---------------------------------------------------------------- declarations
    def is_causal(self, args: Mapping[str, Any]) -> bool:
        """Whether a module built with ``args`` may only look at earlier positions."""
        return not self.mixes_positions or bool(args.get("causal", True))

    @property
    def slots(self) -> Mapping[str, Slot]:
        return self.declarations.slots

    def build(
        self,
        args: Mapping[str, Any],
        children: Sequence[nn.Module] = (),
        slots: Mapping[str, nn.Module] | None = None,
    ) -> nn.Module:
        kwargs = dict(args)
        if self.takes_children:
            kwargs["children"] = list(children)
        if self.slots:  # None: outside the compiler (the constructor fills its shorthand)
            kwargs["slots"] = None if slots is None else dict(slots)
        return self.cls(**kwargs)

    def check_args(
        self, d_in: int | None, args: Mapping[str, Any], n_children: int | None = None
    ) -> tuple[str, str | None] | None:
        """Why a module cannot be built with ``args`` at input size ``d_in`` (a reason and a
        hint), or None. Asks the ``check`` hook when the component declares one; otherwise
        builds the module once on the meta device (no memory; cached per arguments), so that
        whatever its constructor rejects is still reported before anything is allocated, at
        the call that wrote it."""
        if self.check_fn is not None:
            try:
                problem = self.check_fn(d_in=d_in, **args, **self._children_kw(n_children))
            except Exception as exc:  # a check that trips over odd values is still an answer
                problem = str(exc)
            if not problem:
                return None
            return (problem, None) if isinstance(problem, str) else (problem[0], problem[1])
        built = self._meta_build(args)
        if isinstance(built, BlockDSLError):
            return built.message, built.hint
        if isinstance(built, Exception):
            return str(built) or type(built).__name__, None
        return None

    def _meta_build(self, args: Mapping[str, Any]) -> nn.Module | Exception:
        """The module built once on the meta device for ``args`` (no memory), or what its
        constructor raised. Validation and the size probe of undeclared components share it."""
        key = ("build", repr(sorted(args.items())))
        if key not in self._probe_cache:
            try:
                with torch.device("meta"):
                    self._probe_cache[key] = self.build(args)
            except Exception as exc:
                self._probe_cache[key] = exc
        return self._probe_cache[key]

    def out_features(self, d_in: int, args: Mapping[str, Any]) -> int:
        if self.out_features_fn is not None:
            return int(self.out_features_fn(d_in=d_in, **args))
        return self._probe(d_in, args)[0]

    def _children_kw(self, n_children: int | None) -> dict[str, int]:
        # Combinators' hooks also receive ``n_children`` (the number of child blocks) when the
        # caller knows it; their counts exclude the children's own parameters and FLOPs.
        return {"n_children": n_children} if self.takes_children and n_children else {}

    def count_params(
        self, d_in: int, args: Mapping[str, Any], n_children: int | None = None
    ) -> int:
        if self.params_fn is not None:
            return int(self.params_fn(d_in=d_in, **args, **self._children_kw(n_children)))
        return self._probe(d_in, args)[1]

    def count_flops(
        self, d_in: int, args: Mapping[str, Any], seq: int, n_children: int | None = None
    ) -> int:
        if self.flops_fn is not None:
            kw = self._children_kw(n_children)
            return int(self.flops_fn(d_in=d_in, seq=seq, **args, **kw))
        return 2 * self.count_params(d_in, args, n_children) * seq

    def state_size(self, d_in: int, args: Mapping[str, Any], context: int) -> int:
        """Decoding-state elements one sequence needs at this call (0 for a stateless component;
        a combinator's children count their own): the ``state_size`` hook, else the tensors of
        ``init_state(1, context)`` of the module built on the meta device."""
        if not self.stateful or self.takes_children:
            return 0
        if self.state_size_fn is not None:
            return int(self.state_size_fn(d_in=d_in, **{**args, "context": context}))
        module = self._meta_build(args)
        if isinstance(module, Exception):
            raise module
        return sum(t.numel() for t in module.init_state(1, context).values())

    def _probe(self, d_in: int, args: Mapping[str, Any]) -> tuple[int, int]:
        """Output size and parameter count of an undeclared component, measured on the module
        built on the meta device."""
        key = (d_in, repr(sorted(args.items())))
        if key not in self._probe_cache:
            module = self._meta_build(args)
            if isinstance(module, Exception):
                raise module
            self.measure(module, d_in, args, device="meta")
        return self._probe_cache[key]

    def measure(
        self,
        module: nn.Module,
        d_in: int,
        args: Mapping[str, Any],
        device: torch.device | str | None = None,
    ) -> tuple[int, int]:
        """Output size and parameter count of ``module``, built from ``args`` for input size
        ``d_in``, remembered for those arguments so that ``out_features`` and
        ``count_params`` of an undeclared component need no build of their own (a caller that
        already has a small module on the CPU can pass it). A forward that fails keeps the
        size."""
        out = d_in
        if self.out_features_fn is None:
            try:
                with torch.no_grad():
                    probe = (
                        torch.zeros(1, 2, dtype=torch.long, device=device)
                        if self.tokens_in
                        else torch.zeros(1, 2, d_in, device=device)
                    )
                    result = module(probe)
                out = int((result[0] if self.aux_loss else result).shape[-1])
            except Exception:  # a forward that cannot run here keeps the size
                out = d_in
        measured = (out, sum(p.numel() for p in module.parameters()))
        self._probe_cache[(d_in, repr(sorted(args.items())))] = measured
        return measured


@dataclass(frozen=True)
class Alias:
    """``RMSNorm`` = ``Norm(kind=rms)``: a name for a component with some arguments bound."""

    name: str
    target: str
    args: Mapping[str, Any]


# a sentence ends at . ! or ? before a capital, a backtick or the end ("e.g. the" goes on)
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z`]|\s*$)")


def _first_sentence(doc: str | None) -> str:
    """A docstring's first sentence, whole and on one line (a description never stops
    mid-sentence where the docstring wraps its first line)."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    end = _SENTENCE_END.search(paragraph)
    return paragraph if end is None else paragraph[: end.end()]


class Registry:
    """Names → components. ``blockdsl.REGISTRY`` is the default one; tests may make their own."""

    def __init__(self, *, load_plugins: bool = False) -> None:
        self._components: dict[str, Component] = {}
        self._aliases: dict[str, Alias] = {}
        self._plugins_pending = load_plugins

    # ---------------------------------------------------------------- registration
    def register(
        self,
        name: str | None = None,
        aliases: Sequence[str] = (),
        replace: bool = False,
        *,
        out_features: SizeHook | None = None,
        mixes_positions: bool = False,
        params: SizeHook | None = None,
        flops: FlopsHook | None = None,
        aux_loss: bool = False,
        input_size: str | None = None,
        tokens_in: bool = False,
        check: CheckHook | None = None,
        description: str | None = None,
        arg_help: Mapping[str, str] | None = None,
        shape_steps: ShapeStepsHook | None = None,
        combine_aux: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None = None,
        embedding: Callable[[nn.Module], nn.Module] | None = None,
        tie: Callable[[nn.Module, nn.Module | None], None] | None = None,
        decodes: bool = False,
        state_size: StateSizeHook | None = None,
        slots: Mapping[str, Slot] | None = None,
        per_head: bool = False,
        residual: bool = False,
        init_roles: Mapping[str, str] | None = None,
    ) -> Callable[[type[nn.Module]], type[nn.Module]]:
        """Class decorator: ``@register("Attn", mixes_positions=True, decodes=True, ...)``.
        The keywords are the component's ``Declarations`` (the module docstring's table):
        the only place a component declares anything."""
        declarations = Declarations(
            out_features=out_features,
            mixes_positions=mixes_positions,
            params=params,
            flops=flops,
            aux_loss=aux_loss,
            input_size=input_size,
            tokens_in=tokens_in,
            check=check,
            description=description,
            arg_help=dict(arg_help or {}),
            shape_steps=shape_steps,
            combine_aux=combine_aux,
            embedding=embedding,
            tie=tie,
            decodes=decodes,
            state_size=state_size,
            slots=dict(slots or {}),
            per_head=per_head,
            residual=residual,
            init_roles=dict(init_roles or {}),
        )

        def decorate(cls: type[nn.Module]) -> type[nn.Module]:
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise RegistryError(f"only nn.Module classes can be registered, got {cls!r}")
            key = name or cls.__name__
            self._check_free(key, replace)
            schema, takes_children = _parse_signature(cls)
            size_arg = declarations.validate(key, cls, schema, takes_children)
            doc = description if description is not None else _first_sentence(inspect.getdoc(cls))
            context, required_context = _forward_context(cls)
            self._components[key] = Component(
                name=key,
                cls=cls,
                params=schema,
                takes_children=takes_children,
                context=context,
                required_context=required_context,
                input_size=size_arg,
                description=doc,
                declarations=declarations,
            )
            self._aliases.pop(key, None)
            for alias in aliases:
                self.register_alias(alias, key, replace=replace)
            return cls

        return decorate

    def register_alias(
        self, alias: str, target: str, *, replace: bool = False, **args: Any
    ) -> None:
        """``register_alias("RMSNorm", "Norm", kind="rms")``."""
        self._check_free(alias, replace)
        component, bound = self.resolve(target)
        unknown = [n for n in args if n not in component.user_params]
        if unknown:
            raise RegistryError(
                f"alias {alias}: {component.name} has no argument '{unknown[0]}'",
                hint=component.valid_arguments(),
            )
        self._components.pop(alias, None)
        self._aliases[alias] = Alias(alias, component.name, {**bound, **args})

    def unregister(self, name: str) -> None:
        self._components.pop(name, None)
        self._aliases.pop(name, None)

    def _check_free(self, name: str, replace: bool) -> None:
        if not replace and (name in self._components or name in self._aliases):
            raise RegistryError(
                f"component '{name}' is already registered",
                hint="pass replace=True to replace it",
            )

    # ---------------------------------------------------------------- lookup
    def resolve(self, name: str) -> tuple[Component, dict[str, Any]]:
        """The component a name refers to, and the arguments an alias binds (else ``{}``).
        Raises KeyError for unknown names (the graph builder turns it into an error with a
        position)."""
        self._load_plugins()
        if name in self._aliases:
            alias = self._aliases[name]
            return self._components[alias.target], dict(alias.args)
        return self._components[name], {}

    def get(self, name: str) -> Component:
        return self.resolve(name)[0]

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._components or name in self._aliases

    def names(self) -> list[str]:
        """Component names and aliases, sorted."""
        self._load_plugins()
        return sorted([*self._components, *self._aliases])

    def components(self) -> Iterator[Component]:
        self._load_plugins()
        for name in sorted(self._components):
            yield self._components[name]

    def aliases(self) -> dict[str, Alias]:
        self._load_plugins()
        return dict(self._aliases)

    def copy(self) -> Registry:
        other = Registry()
        self._load_plugins()
        other._components = dict(self._components)
        other._aliases = dict(self._aliases)
        return other

    def _load_plugins(self) -> None:
        """Import the ``blockdsl.components`` entry points of installed packages once."""
        if not self._plugins_pending:
            return
        self._plugins_pending = False
        from importlib.metadata import entry_points

        for entry_point in entry_points(group="blockdsl.components"):
            # A module registers its components on import; a callable receives the registry.
            try:
                loaded = entry_point.load()
                if callable(loaded) and not isinstance(loaded, type):
                    loaded(self)
            except BlockDSLError:
                raise
            except Exception as exc:
                raise RegistryError(
                    f"plugin '{entry_point.name}' ({entry_point.value}) failed to load: {exc}"
                ) from exc


REGISTRY = Registry(load_plugins=True)
register = REGISTRY.register
register_alias = REGISTRY.register_alias
