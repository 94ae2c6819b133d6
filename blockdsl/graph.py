"""Graph IR: a block's AST expanded into a networkx DAG of a closed set of node kinds.

=========  ==================================================================================
kind       meaning
=========  ==================================================================================
input      the block's input (the residual stream ``x``, or token ids for an embed chain)
call       one application of a module: ``h = module(h)``; a parameterised residual
           ``+(args)`` is a call with two inputs, ``u = Residual(tap, h)``
add        ``a + b`` (a residual ``+``, or one term of a parallel block's exact sum)
output     the block's result
=========  ==================================================================================

Every node has ``kind``, ``name`` (unique, readable: ``norm``, ``attn_1``, ``add``), ``inputs``
(ordered node ids; the edges mirror them), ``size`` (its output feature size; None for token
ids) and ``span``. Call nodes also carry ``component`` (the registered name), ``args`` (fully
resolved: inline > defaults > the component's own), ``label``, ``d_in`` and ``d_out``, and
``module``: a key into ``BlockGraph.modules``, where each distinct module (a label's shared one
counted once) is described with its owned child graphs, parameters and FLOPs.

Expansion follows docs/language.md ("Semantics") exactly: chains carry ``tap`` and ``h``; groups
have their own taps; ``X*N`` makes N distinct modules (unless labelled); parallel branches are
summed into the stream as ``input + s1 + s2 + ...`` without subtraction; a labelled module
applied twice to the same value is computed once.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import networkx as nx

from blockdsl import ast
from blockdsl.errors import (
    ArgumentError,
    BlockDSLError,
    BlockValidationError,
    ShapeError,
    Span,
    UnknownComponentError,
    did_you_mean,
)
from blockdsl.printer import format_value
from blockdsl.printer import unparse as printer_unparse
from blockdsl.registry import CONTEXT_ARGS, REGISTRY, Component, Registry

Role = Literal["block", "embed", "head", "slot"]
#: The component a parameterised residual ``+(args)`` calls (registered with residual=True).
RESIDUAL = "Residual"
NodeKind = Literal["input", "call", "add", "output"]


@dataclass
class ModuleSpec:
    """One module to instantiate. Nodes that share it (a label) point at the same spec.
    ``key`` identifies it in ``BlockGraph.modules`` (``#label`` for a label); ``name`` is the
    readable name it is known by (its label, else its component's name, in snake case), from
    which lowering derives the Python attribute."""

    key: str
    name: str
    component: Component
    written: str
    args: dict[str, Any]
    label: str | None
    d_in: int | None
    d_out: int | None
    children: tuple[BlockGraph, ...]
    span: Span
    call: ast.Call
    global_label: bool = False
    #: the block in each filled slot (the user's, or the one a shorthand argument means)
    slots: dict[str, BlockGraph] = field(default_factory=dict)
    #: the slots a shorthand argument filled (the printer shows what the user wrote)
    shorthand_slots: frozenset[str] = frozenset()

    @property
    def label_text(self) -> str:
        """``#ln`` (one module per block instance), ``##ln`` (model-global), or ``""``."""
        if self.label is None:
            return ""
        return f"{'##' if self.global_label else '#'}{self.label}"

    @property
    def own_params(self) -> int:
        """Parameters of this module itself, children excluded."""
        return self.component.count_params(self.d_in, self.args, len(self.children))

    @property
    def params(self) -> int:
        # a label shared by two slots (``q=Norm#n, k=Norm#n``) or children is one module
        inner = {
            id(spec): spec
            for graph in (*self.children, *self.slots.values())
            for spec in graph.modules.values()
        }
        return self.own_params + sum(spec.params for spec in inner.values())

    def flops(self, seq: int) -> int:
        own = self.component.count_flops(self.d_in, self.args, seq, len(self.children))
        slots = sum(
            slot_multiplier(self, name, spec) * spec.flops(seq)
            for name, graph in self.slots.items()
            for spec in graph.call_specs()
        )
        return own + sum(child.flops(seq) for child in self.children) + slots

    def describe(self) -> str:
        """``Attn(heads=8, kv_heads=2)``: the arguments that differ from the defaults."""
        shown = []
        for name, param in self.component.user_params.items():
            value = self.args.get(name)
            if param.required or value != param.default:
                shown.append(f"{name}={format_value(value)}")
        label = self.label_text
        return f"{self.written}{label}({', '.join(shown)})" if shown else f"{self.written}{label}"


class LabelTable:
    """The labels of one scope, each one module wherever it appears there: the model-global
    ``##label`` of one model (one table shared by all its blocks), or the ``#label`` of one
    block instance (a table per ``build_graph`` call, shared with its combinators' children)."""

    def __init__(self) -> None:
        self.specs: dict[str, ModuleSpec] = {}


@dataclass(eq=False)
class BlockGraph:
    """A validated block as a DAG (``nx``), with its modules and source. Compared (and
    hashed) by identity: later stages cache what they derive from a graph by the graph."""

    nx: nx.DiGraph
    source: str
    ast: ast.Block
    d_model: int | None
    role: Role
    input: int
    output: int
    modules: dict[str, ModuleSpec] = field(default_factory=dict)

    # ---------------------------------------------------------------- views
    def nodes(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """Nodes in execution order (a topological order that follows the source)."""
        for node in nx.lexicographical_topological_sort(self.nx):
            yield node, self.nx.nodes[node]

    def calls(self) -> Iterator[tuple[int, dict[str, Any]]]:
        return ((n, d) for n, d in self.nodes() if d["kind"] == "call")

    @property
    def context(self) -> frozenset[str]:
        """Call-time inputs (``positions``, ``memory``) some module in this block reads."""
        needed: set[str] = set()
        for spec in self.modules.values():
            needed |= spec.component.context
            for child in spec.children:
                needed |= child.context
        return frozenset(needed)

    @property
    def aux_modules(self) -> list[str]:
        """Keys of the call nodes' modules that return an auxiliary loss, in call order."""
        return [
            d["module"] for _, d in self.calls() if self.modules[d["module"]].component.aux_loss
        ]

    def params(self) -> int:
        """Parameters of the modules this block owns (shared labels once)."""
        return sum(spec.params for spec in self.modules.values())

    def call_specs(self) -> Iterator[ModuleSpec]:
        """The module of each call, in call order (a shared module once per use)."""
        return (self.modules[data["module"]] for _, data in self.calls())

    def flops(self, seq: int) -> int:
        """Forward FLOPs of one sequence of length ``seq`` (a shared module counts per use)."""
        total = 0
        for _, data in self.calls():
            total += self.modules[data["module"]].flops(seq)
        for _, data in self.nodes():
            if data["kind"] == "add" and data["size"]:
                total += seq * data["size"]
        return total

    def expression(self) -> str:
        """The block as one expression: ``x + Attn(Norm(x)) + MLP(Norm(x + Attn(Norm(x))))``.
        Adds associate to the left, as they are computed; a right operand that is itself a sum
        is parenthesised."""
        memo: dict[int, str] = {}
        for node, data in self.nodes():
            kind = data["kind"]
            if kind == "input":
                memo[node] = "x"
            elif kind == "call":
                spec = self.modules[data["module"]]
                label = spec.label_text
                operands = ", ".join(memo[source] for source in data["inputs"])
                memo[node] = f"{spec.written}{label}({operands})"
            elif kind == "add":
                left, right = data["inputs"]
                rhs = memo[right]
                if self.nx.nodes[right]["kind"] == "add":
                    rhs = f"({rhs})"
                memo[node] = f"{memo[left]} + {rhs}"
            else:
                memo[node] = memo[data["inputs"][0]]
        return memo[self.output]


# ==================================================================== building
def build_graph(
    src: str | Sequence[str] | ast.Block,
    *,
    d_model: int,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
    registry: Registry | None = None,
    model_globals: Mapping[str, Any] | None = None,
    labels: LabelTable | None = None,
    role: Role = "block",
    source: str | None = None,
    supplies: Iterable[str] = CONTEXT_ARGS,
    supplier: str = "the model",
) -> BlockGraph:
    """Expand and validate a block. ``src`` is block text, a list of texts (parallel
    branches) or a parsed ``Block`` (pass ``source`` too so errors can show it).

    ``defaults`` maps component names to default arguments (a config's ``[defaults]``);
    ``model_globals`` holds model-level values (``vocab``, ``context``) for components that
    declare them; ``labels`` holds the model-global ``##labels`` and is shared by all blocks of
    one model so that such a label means one module everywhere, while each call starts a fresh
    scope for the block's own ``#labels`` (each instance of the block gets its own modules when
    lowered). ``role`` relaxes the size rule for the embedding (token ids in) and the
    head (any size out). ``supplies`` names the call-time inputs (``positions``, ``memory``)
    that ``supplier`` passes to the block: a component whose ``forward`` requires another one is
    an error at its call. Every problem is collected and raised together as one
    ``BlockValidationError``.
    """
    from blockdsl.parser import parse, source_text

    if isinstance(src, ast.Block):
        block, text = src, source or ""
    else:
        text = source_text(src)
        block = parse(src)
    builder = _Builder(
        text,
        registry or REGISTRY,
        defaults or {},
        model_globals or {},
        labels or LabelTable(),
        frozenset(supplies),
        supplier,
    )
    graph = builder.build(block, d_model, role)
    if builder.problems:
        raise BlockValidationError.collect(builder.problems)
    return graph


def shorthand_slot_graphs(
    component: Component,
    d_in: int,
    args: Mapping[str, Any],
    registry: Registry | None = None,
) -> dict[str, BlockGraph]:
    """The blocks that ``args`` (a constructor's arguments) put in ``component``'s slots by
    shorthand, validated as the compiler validates ``Name(args)``."""
    call = ast.Call(component.name)
    builder = _Builder(call.name, registry or REGISTRY, {}, {}, LabelTable())
    builder.d_model = d_in
    filled = builder.fill_slots(call, component, dict(args), d_in)
    if builder.problems or filled is None:
        raise BlockValidationError.collect(builder.problems)
    return filled[0]


_NAME_SANITISER = re.compile(r"[^0-9a-zA-Z_]")


def _snake(name: str) -> str:
    name = _NAME_SANITISER.sub("_", name)
    # CrossAttn → cross_attn, RMSNorm → rms_norm, MoE → moe, MLP → mlp
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
    return name if name and not name[0].isdigit() else f"m_{name}"


class _Builder:
    def __init__(
        self,
        source: str,
        registry: Registry,
        defaults: Mapping[str, Mapping[str, Any]],
        model_globals: Mapping[str, Any],
        labels: LabelTable,
        supplies: frozenset[str] = frozenset(CONTEXT_ARGS),
        supplier: str = "the model",
    ) -> None:
        self.source = source
        self.supplies = supplies
        self.supplier = supplier
        self.registry = registry
        self.defaults = defaults
        self.model_globals = model_globals
        self.global_labels = labels
        self.local_labels = LabelTable()
        self.problems: list[BlockDSLError] = []

    def problem(
        self, cls: type[BlockDSLError], message: str, span: Span, hint: str | None = None
    ) -> None:
        self.problems.append(cls(message, self.source, span, hint=hint))

    # ---------------------------------------------------------------- graph scaffolding
    def build(self, block: ast.Block, d_model: int, role: Role) -> BlockGraph:
        self.d_model = d_model
        self.g = nx.DiGraph()
        self.ids = itertools.count()
        self.names: dict[str, int] = {}
        self.modules: dict[str, ModuleSpec] = {}
        self.applied: dict[tuple[str, int], int] = {}
        d_input = None if role == "embed" else d_model
        x = self.node("input", "x", (), d_input, block.span)
        out = self.block(block, x)
        result = self.node("output", "output", (out,), self.size(out), block.span)
        self._check_output(block, x, out, d_model, role)
        self._prune(result)
        graph = BlockGraph(self.g, self.source, block, d_model, role, x, result, self.modules)
        _lint(graph)
        return graph

    def node(
        self, kind: NodeKind, name: str, inputs: tuple[int, ...], size: int | None, span: Span
    ) -> int:
        node = next(self.ids)
        self.g.add_node(node, kind=kind, name=name, inputs=inputs, size=size, span=span)
        for source in inputs:
            self.g.add_edge(source, node)
        return node

    def unique(self, name: str) -> str:
        count = self.names.get(name, 0)
        self.names[name] = count + 1
        return name if count == 0 else f"{name}_{count}"

    def size(self, node: int) -> int | None:
        return self.g.nodes[node]["size"]

    def _check_output(self, block: ast.Block, x: int, out: int, d_model: int, role: Role) -> None:
        got = self.size(out)
        vocab = self.model_globals.get("vocab")
        if role == "slot":  # the slot's sizes are checked by the call that owns it
            return
        if role == "head":
            if got is not None and vocab is not None and got != vocab:
                self.problem(
                    ShapeError,
                    f"the head produces {got} features but the model's vocabulary has {vocab}",
                    block.span,
                    "the head maps the stream to one logit per token: end it with Head, "
                    "e.g. 'Norm->Head'",
                )
            return
        want = d_model if role == "embed" else self.size(x)
        if got is None or want is None or got == want:
            return
        self.problem(
            ShapeError,
            f"block output has {got} features but its input has {want}",
            block.span,
            "a block maps the residual stream to a stream of the same size; "
            "add a Linear(out=...) back to the input size",
        )

    def _prune(self, result: int) -> None:
        """Drop values nothing reads (the last '+' of a parallel branch other than the first
        is never materialised: its update is summed into the result instead)."""
        keep = nx.ancestors(self.g, result) | {result}
        self.g.remove_nodes_from([n for n in list(self.g) if n not in keep])
        # Names are given once the graph is final, in execution order: add, add_1, ...
        for node in nx.lexicographical_topological_sort(self.g):
            self.g.nodes[node]["name"] = self.unique(self.g.nodes[node]["name"])

    # ---------------------------------------------------------------- expansion
    def block(self, block: ast.Block, x: int) -> int:
        if not block.is_parallel:
            return self.chain(block.chains[0], x)[0]
        result: int | None = None
        for chain in block.chains:
            out, updates = self.chain(chain, x)
            if not chain.steps or not isinstance(chain.steps[-1], ast.Residual):
                last = chain.steps[-1] if chain.steps else chain
                self.problem(
                    BlockValidationError,
                    "a parallel branch must end with '+'",
                    last.span,
                    "each branch adds its result to the shared input: end it with '->+'",
                )
                continue
            if result is None:
                result = out
                continue
            for update in updates:
                result = self.add(result, update, chain.steps[-1].span)
        return result if result is not None else x

    def chain(self, chain: ast.Chain, x: int) -> tuple[int, list[int]]:
        """Returns the chain's value and the updates its '+' steps added."""
        tap = h = x
        updates: list[int] = []
        for step in chain.steps:
            if isinstance(step, ast.Residual):
                if h == tap:
                    self.problem(
                        BlockValidationError,
                        "'+' has nothing to add",
                        step.span,
                        "a residual segment needs at least one step since the last '+' "
                        "(or the start of the chain)",
                    )
                    continue
                update = self.residual(step, tap, h) if step.args else h
                updates.append(update)
                h = tap = self.add(tap, update, step.span)
            elif isinstance(step, ast.Repeat):
                if step.count < 1:
                    self.problem(
                        BlockValidationError,
                        f"repeat count must be at least 1, got {step.count}",
                        step.count_span,
                    )
                    h = self.failed(step.span, h)
                    continue
                for _ in range(step.count):
                    h = self.term(step.body, h)
            else:
                h = self.term(step, h)
        return h, updates

    def term(self, term: ast.Call | ast.Group, h: int) -> int:
        if isinstance(term, ast.Group):
            return self.block(term.block, h)
        return self.call(term, h)

    def add(self, a: int, b: int, span: Span) -> int:
        size_a, size_b = self.size(a), self.size(b)
        if size_a != size_b:
            self.problem(
                ShapeError,
                f"'+' adds features of different sizes: {size_a} and {size_b}",
                span,
                "the steps since the last '+' must keep the feature size",
            )
        return self.node("add", "add", (a, b), size_a, span)

    def residual(self, step: ast.Residual, tap: int, h: int) -> int:
        """``+(args)``: a call of the registry's ``Residual`` on ``(tap, h)``, whose output is
        the update the chain adds to ``tap`` (docs/language.md, "Parameterised residuals")."""
        call = ast.Call(RESIDUAL, args=step.args, span=step.span, name_span=step.span)
        try:
            component, alias_args = self.registry.resolve(RESIDUAL)
        except KeyError:
            self.problem(
                UnknownComponentError,
                f"'+(...)' needs a registered '{RESIDUAL}' component, and there is none",
                step.span,
                "write a plain '+', or register a Residual component (residual=True)",
            )
            return self.failed(step.span, h)
        if not component.residual:
            self.problem(
                BlockValidationError,
                f"the registered '{RESIDUAL}' is not a residual (declared residual=True)",
                step.span,
            )
            return self.failed(step.span, h)
        size = self.size(tap)
        if size != self.size(h):  # reported once, by the '+' that follows
            return self.failed(step.span, h)
        args = self.bind(call, component, alias_args, size)
        if args is None:
            return self.failed(step.span, h)
        spec = self.new_spec(call, component, args, size, key=None)
        if spec is None:
            return self.failed(step.span, h)
        node = self.node("call", spec.name, (tap, h), spec.d_out, step.span)
        self.g.nodes[node].update(
            module=spec.key,
            component=spec.component.name,
            args=spec.args,
            label=None,
            d_in=spec.d_in,
            d_out=spec.d_out,
        )
        return node

    # ---------------------------------------------------------------- calls
    def call(self, call: ast.Call, h: int) -> int:
        try:
            component, alias_args = self.registry.resolve(call.name)
        except KeyError:
            self.problem(
                UnknownComponentError,
                f"unknown component '{call.name}'",
                call.name_span,
                did_you_mean(call.name, self.registry.names()),
            )
            return self.failed(call.span, h)
        if component.residual:
            written = ", ".join(printer_unparse(arg) for arg in call.args) or "lerp"
            self.problem(
                BlockValidationError,
                f"{call.name} is a residual step, not a sublayer",
                call.name_span,
                f"write it as +(...) where the residual goes, e.g. 'Norm->Attn->+({written})'",
            )
            return self.failed(call.span, h)
        d_in = self.size(h)
        if component.tokens_in != (d_in is None):
            what = "token ids" if d_in is None else "features"
            self.problem(
                BlockValidationError,
                f"{call.name} cannot read {what}",
                call.name_span,
                f"{call.name} reads token ids: it starts the embedding"
                if component.tokens_in
                else "only an embedding (e.g. Embed) can read token ids",
            )
            return self.failed(call.span, h)

        missing = sorted(component.required_context - self.supplies)
        if missing == ["rotary"]:
            self.problem(
                BlockValidationError,
                f"{call.name} applies an attention's rotary positions, and {self.supplier} "
                "has none",
                call.name_span,
                "it goes in the q, k or v slot of an attention with pos=rope, e.g. "
                "'Attn[q=Rope->Norm, k=Rope->Norm]'",
            )
            return self.failed(call.span, h)
        if missing:
            self.problem(
                BlockValidationError,
                f"{call.name} needs {_quoted(missing)} at call time, which {self.supplier} "
                "does not supply",
                call.name_span,
                f"{self.supplier} supplies "
                + (_quoted(sorted(self.supplies)) if self.supplies else "only the stream"),
            )
            return self.failed(call.span, h)

        # An embedding's size argument is the width it produces: the model's d_model.
        size = self.d_model if component.tokens_in else d_in
        args = self.bind(call, component, alias_args, size)
        if args is None:
            return self.failed(call.span, h)
        vocab = self.model_globals.get("vocab")
        short = isinstance(args.get("vocab"), int) and vocab is not None and args["vocab"] < vocab
        if component.tokens_in and short:
            self.problem(
                ArgumentError,
                f"{call.name}(vocab={args['vocab']}) has fewer rows than the model's "
                f"vocabulary ({vocab}): token ids from {args['vocab']} on have no embedding",
                call.span,
                "leave vocab unset (the model's), or raise it",
            )
            return self.failed(call.span, h)
        if (
            component.declarations.per_head
            and args.get("heads") is not None
            and "heads" not in self.model_globals
        ):
            self.problem(
                ArgumentError,
                f"{call.name}(heads=...) is for a per-head slot, which sets it",
                call.span,
                f"outside an attention's q, k, v or o slot leave heads unset; inside one, "
                f"e.g. 'Attn[v={call.name}]', each head gets its own weights",
            )
            return self.failed(call.span, h)
        if call.children and not component.takes_children:
            self.problem(
                BlockValidationError,
                f"{call.name} takes no children",
                call.children[0].span,
                "only combinators (e.g. MoE) take [child, ...] blocks",
            )
            return self.failed(call.span, h)
        if call.label is not None:
            spec = self.labelled(call, component, args, size)
            if spec is None:
                return self.failed(call.span, h)
            memo = (spec.key, h)
            if memo in self.applied:
                return self.applied[memo]
        else:
            spec = self.new_spec(call, component, args, size, key=None)
            if spec is None:
                return self.failed(call.span, h)
        node = self.node("call", spec.name, (h,), spec.d_out, call.span)
        self.g.nodes[node].update(
            module=spec.key,
            component=spec.component.name,
            args=spec.args,
            label=spec.label,
            d_in=spec.d_in,
            d_out=spec.d_out,
        )
        self.applied[(spec.key, h)] = node
        return node

    def failed(self, span: Span, h: int) -> int:
        """A stand-in for a step that could not be built (a call, a repeat), so that one
        mistake is reported once (not again as "'+' has nothing to add" further on). It keeps
        the size; the graph is discarded anyway, since a problem was recorded."""
        node = self.node("call", "failed", (h,), self.size(h), span)
        self.g.nodes[node]["module"] = None
        return node

    def bind(
        self, call: ast.Call, component: Component, alias_args: dict[str, Any], d_in: int | None
    ) -> dict[str, Any] | None:
        positional: list[Any] = []
        keywords: dict[str, Any] = {}
        positional_args: list[ast.Arg] = []
        keyword_args: list[ast.Arg] = []
        ok = True
        for arg in call.args:
            if arg.name is None:
                if keyword_args:
                    self.problem(
                        ArgumentError,
                        "positional argument follows keyword argument",
                        arg.span,
                        "write positional arguments first, or name this one",
                    )
                    ok = False
                    continue
                positional.append(arg.value.to_python())
                positional_args.append(arg)
            elif arg.name in keywords:
                self.problem(ArgumentError, f"argument '{arg.name}' given twice", arg.span)
                ok = False
            else:
                keywords[arg.name] = arg.value.to_python()
                keyword_args.append(arg)
        where_to_arg = positional_args + keyword_args
        defaults = {
            **self.defaults.get(component.name, {}),
            **alias_args,
            **(self.defaults.get(call.name, {}) if call.name != component.name else {}),
        }
        resolved, issues = component.bind(
            positional,
            keywords,
            defaults=defaults,
            model_globals=self.model_globals,
            d_in=d_in,
        )
        for issue in issues:
            span = where_to_arg[issue.where].span if issue.where is not None else call.span
            self.problem(ArgumentError, issue.message, span, issue.hint)
        if issues or not ok:
            return None
        verdict = component.check_args(d_in, resolved, len(call.children))
        if verdict:
            reason, hint = verdict
            if not reason.startswith(f"{component.name} "):
                reason = f"{call.name}: {reason}"
            self.problem(ArgumentError, reason, call.span, hint)
            return None
        return resolved

    def labelled(
        self, call: ast.Call, component: Component, args: dict[str, Any], d_in: int | None
    ) -> ModuleSpec | None:
        table = self.global_labels if call.global_label else self.local_labels
        existing = table.specs.get(call.label)
        if existing is None:
            key = f"{'##' if call.global_label else '#'}{call.label}"
            spec = self.new_spec(call, component, args, d_in, key=key)
            if spec is not None:
                table.specs[call.label] = spec
            return spec
        same = (
            existing.component is component
            and existing.args == args
            and existing.call.children == call.children
            and existing.call.slots == call.slots
        )
        if not same:
            where = f"{existing.span.line}:{existing.span.column}"
            if existing.component is not component:
                detail = f"it is {existing.written} at {where} but {call.name} here"
            elif existing.args != args:
                differ = [n for n in args if args[n] != existing.args.get(n)]
                detail = "; ".join(
                    f"{n}={format_value(existing.args.get(n))} at {where}, "
                    f"{n}={format_value(args[n])} here"
                    for n in differ
                )
            elif existing.call.children != call.children:
                detail = f"its children differ from those at {where}"
            else:
                detail = f"its slots differ from those at {where}"
            self.problem(
                BlockValidationError,
                f"label '{existing.label_text}' names different modules",
                call.span,
                f"{detail}\nevery use of a label must name the same component with the same "
                "arguments",
            )
            return None
        self.modules.setdefault(existing.key, existing)
        return existing

    def new_spec(
        self,
        call: ast.Call,
        component: Component,
        args: dict[str, Any],
        d_in: int | None,
        key: str | None,
    ) -> ModuleSpec | None:
        children = tuple(self.child(block, d_in, call.name) for block in call.children)
        if any(child is None for child in children):
            return None
        filled = self.fill_slots(call, component, args, d_in)
        if filled is None:
            return None
        slots, shorthand = filled
        name = _snake(call.label) if call.label else _snake(call.name)
        try:
            d_out = component.out_features(d_in, args) if d_in is not None else None
        except Exception as exc:  # a size hook rejecting its arguments
            self.problem(ArgumentError, f"{call.name}: {exc}", call.span)
            return None
        spec = ModuleSpec(
            key=key or self.unique_key(name),
            name=name,
            component=component,
            written=call.name,
            args=args,
            label=call.label,
            d_in=d_in,
            d_out=d_out,
            children=children,  # type: ignore[arg-type]
            span=call.span,
            call=call,
            global_label=call.global_label,
            slots=slots,
            shorthand_slots=shorthand,
        )
        self.modules[spec.key] = spec
        return spec

    def unique_key(self, base: str) -> str:
        """A key for an unlabelled module: its name, numbered when taken (``norm_1``)."""
        taken = self.modules.keys()
        if base not in taken:
            return base
        for index in itertools.count(1):
            if f"{base}_{index}" not in taken:
                return f"{base}_{index}"
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- slots (v3)
    def fill_slots(
        self, call: ast.Call, component: Component, args: dict[str, Any], d_in: int | None
    ) -> tuple[dict[str, BlockGraph], frozenset[str]] | None:
        """The block of every filled slot of ``call``: the user's ``name=block`` children, then
        the blocks its shorthand arguments mean (``qk_norm=true`` is ``q=Norm(...)``, ...), each
        validated at the slot's sizes. None when a problem was recorded."""
        declared = component.slots
        ok = True
        written: dict[str, ast.SlotFill] = {}
        for fill in call.slots:
            if fill.name not in declared:
                self.problem(
                    BlockValidationError,
                    f"{call.name} has no slot '{fill.name}'",
                    fill.name_span,
                    _slot_hint(call.name, fill.name, declared, self.registry),
                )
                ok = False
            elif fill.name in written:
                self.problem(
                    BlockValidationError, f"slot '{fill.name}' filled twice", fill.name_span
                )
                ok = False
            else:
                written[fill.name] = fill
        if not ok or d_in is None or not declared:
            return ({}, frozenset()) if ok else None
        blocks: dict[str, tuple[ast.Block, str, Span]] = {}
        shorthand: set[str] = set()
        for slot_name, slot in declared.items():
            implied = slot.shorthand(d_in=d_in, **args) if slot.shorthand else None
            if slot_name in written:
                fill = written[slot_name]
                if implied is not None:
                    self.problem(
                        BlockValidationError,
                        f"slot '{slot_name}' is filled twice: by '{slot_name}=' and by "
                        f"{call.name}'s arguments (they mean {slot_name}={implied})",
                        fill.name_span,
                        f"write the whole slot, e.g. {slot_name}={implied}, and drop the argument",
                    )
                    ok = False
                    continue
                blocks[slot_name] = (fill.block, self.source, fill.span)
            else:
                # not written: the shorthand's block, else the slot's default contents (both
                # compiled from text; the printer shows neither)
                implied = implied or (slot.default(d_in=d_in, **args) if slot.default else None)
                if implied is None:
                    continue
                from blockdsl.parser import parse

                blocks[slot_name] = (parse(implied), implied, call.span)
                shorthand.add(slot_name)
        graphs: dict[str, BlockGraph] = {}
        for slot_name, (block, source, span) in blocks.items():
            graph = self.slot_graph(call, component, slot_name, block, source, span, args, d_in)
            if graph is None:
                ok = False
            else:
                graphs[slot_name] = graph
        return (graphs, frozenset(shorthand)) if ok else None

    def slot_graph(
        self,
        call: ast.Call,
        component: Component,
        slot_name: str,
        block: ast.Block,
        source: str,
        span: Span,
        args: dict[str, Any],
        d_in: int,
    ) -> BlockGraph | None:
        slot = component.slots[slot_name]
        features = int(slot.features(d_in=d_in, **args))
        outputs = [int(n) for n in slot.outputs(d_in=d_in, **args)] if slot.outputs else []
        outputs = outputs or [features]
        slot_globals: dict[str, Any] = {"out": outputs[0]}
        if slot.heads is not None and slot.layout != "stream":  # per-head or per-score steps
            slot_globals["heads"] = int(slot.heads(d_in=d_in, **args))
        where = f"{call.name}'s {slot_name} slot"
        # A block the component's arguments mean (shorthand, default contents) means exactly
        # what its text says: the model's [defaults] (Qwen3-Next's Norm with a unit offset)
        # reach only the blocks the user writes.
        written_by_user = source is self.source
        sub = _Builder(
            source,
            self.registry,
            self.defaults if written_by_user else {},
            {**self.model_globals, **slot_globals},
            self.global_labels,
            frozenset(slot.supplies(d_in, args)),
            where,
        )
        sub.local_labels = self.local_labels  # a slot belongs to the same block instance
        graph = sub.build(block, features, "slot")
        before = len(self.problems)
        if not written_by_user:  # a shorthand's block: its problems point at the call
            for problem in sub.problems:
                self.problem(type(problem), f"{call.name}: {problem.message}", span, problem.hint)
        else:
            self.problems.extend(sub.problems)
        if sub.problems:
            return None
        got = graph.nx.nodes[graph.output]["size"]
        if slot.layout == "scores":  # extra columns are sink logits
            fits = got is not None and got >= features
            outputs_text = "" if fits else f"at least {features}"
        else:
            outputs_text = "" if got in outputs else " or ".join(str(n) for n in outputs)
        if outputs_text:
            self.problem(
                ShapeError,
                f"the block in {where} returns {got} features, the slot takes {outputs_text}",
                span,
                _slot_doc(slot_name, slot),
            )
        for _, data in graph.calls():
            spec = graph.modules[data["module"]]
            reason = _misfit(spec, slot, features)
            if reason:
                self.problem(
                    BlockValidationError,
                    f"{spec.written} cannot go in {where}: {reason}",
                    spec.span if source is self.source else span,
                    _slot_doc(slot_name, slot),
                )
        if graph.aux_modules:
            self.problem(
                BlockValidationError,
                f"{where} cannot hold a component with an auxiliary loss",
                span,
                "put the MoE outside the mixer",
            )
        return graph if len(self.problems) == before else None

    def child(self, block: ast.Block, d_in: int | None, parent: str) -> BlockGraph | None:
        sub = _Builder(
            self.source,
            self.registry,
            self.defaults,
            self.model_globals,
            self.global_labels,
            frozenset(),  # combinators call their children with the stream alone
            f"{parent}[...]",
        )
        sub.local_labels = self.local_labels  # children belong to the same block instance
        graph = sub.build(block, d_in or 0, "block")
        self.problems.extend(sub.problems)
        if sub.problems:
            return None
        if graph.aux_modules:
            self.problem(
                BlockValidationError,
                "a child block cannot hold a component with an auxiliary loss",
                block.span,
                "combinators call their children as plain modules; put the MoE outside",
            )
            return None
        return graph


def slot_multiplier(owner: ModuleSpec, slot_name: str, spec: ModuleSpec) -> int:
    """How many times a call in ``owner``'s slot runs per position: once per head in a
    per-head or scores slot, unless its component takes ``heads`` itself (then its hooks
    count every head)."""
    slot = owner.component.slots[slot_name]
    if slot.layout == "stream" or slot.heads is None or "heads" in spec.component.params:
        return 1
    return int(slot.heads(d_in=owner.d_in, **owner.args))


def _slot_hint(name: str, wanted: str, declared: Mapping[str, Any], registry: Registry) -> str:
    if not declared:
        with_slots = [n for n in registry.names() if registry.get(n).slots]
        return f"{name} has no slots; components with slots: {', '.join(with_slots)}"
    listing = ", ".join(declared)
    suggestion = did_you_mean(wanted, list(declared))
    return (f"{suggestion}\n" if suggestion else "") + f"{name}'s slots: {listing}"


def _slot_doc(name: str, slot: Any) -> str:
    return f"slot {name}: {slot.doc}"


def _misfit(spec: ModuleSpec, slot: Any, features: int) -> str | None:
    """Why the module of ``spec`` cannot run in ``slot`` (None when it can)."""
    component = spec.component
    if slot.layout == "heads" and component.mixes_positions and not component.declarations.per_head:
        return (
            "it mixes positions and does not accept per-head inputs (B, T, heads, features) "
            "(components that do: Conv, Shift)"
        )
    if slot.layout == "scores":
        if component.mixes_positions:
            return "it mixes positions; the scores slot holds position-wise steps"
        if "positions" in component.context:  # Temperature: its positions are a stream's axis 1
            return (
                "it reads token positions along its input's second axis, which in the scores "
                "slot (B, heads, T, S) is the heads"
            )
        wider = dict(spec.args)
        if component.input_size in wider and spec.d_in is not None:
            wider[component.input_size] = spec.d_in + 1
        if spec.d_in is not None and component.count_params(spec.d_in, spec.args) != (
            component.count_params(spec.d_in + 1, wider)
        ):
            return (
                "its parameters depend on its input size, and the scores slot has one feature "
                "per key (as many as the sequence is long)"
            )
    return None


def _quoted(names: Sequence[str]) -> str:
    return " and ".join(f"'{name}'" for name in names)


def _lint(graph: BlockGraph) -> None:
    """Structural invariants of every graph (like torch.fx's ``Graph.lint``). A failure here
    is a bug in the builder, not in the user's text."""
    g = graph.nx
    if not nx.is_directed_acyclic_graph(g):
        raise AssertionError("block graph has a cycle")
    kinds = [d["kind"] for _, d in g.nodes(data=True)]
    if kinds.count("input") != 1 or kinds.count("output") != 1:
        raise AssertionError("block graph must have exactly one input and one output")
    on_path = nx.descendants(g, graph.input) & nx.ancestors(g, graph.output)
    stray = set(g) - on_path - {graph.input, graph.output}
    if stray:
        raise AssertionError(f"nodes off every input→output path: {sorted(stray)}")
    for node, data in g.nodes(data=True):
        if set(data["inputs"]) != set(g.predecessors(node)):
            raise AssertionError(f"node {data['name']}: inputs disagree with edges")


__all__ = ["BlockGraph", "LabelTable", "ModuleSpec", "build_graph", "shorthand_slot_graphs"]
