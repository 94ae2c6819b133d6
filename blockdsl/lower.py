"""Lowering: a validated ``BlockGraph`` becomes a ``torch.fx.GraphModule``.

The generated ``forward`` is plain Python with one line per node, named after the components::

    >>> print(compile_block("Norm->Attn->+->Norm->MLP->+", d_model=64).code)
    def forward(self, x):
        norm = self.norm(x)
        attn = self.attn(norm);  norm = None
        add = x + attn;  x = attn = None
        ...

A block holding components with a decoding state (docs/generation.md) also takes ``state``, a
sequence of per-call state dicts whose default is all None (the full-sequence path), and passes
``state=state[i]`` to its i-th stateful call::

    def forward(self, x, positions = None, state = (None,)):
        norm = self.norm(x)
        attn_state = state[0]
        attn = self.attn(norm, positions = positions, state = attn_state);  ...

Nothing interprets the graph at run time: each call of the module runs that code. Blocks with
the same structure share their generated Python (``_SharedCodeGraph``): it is generated once,
and each block instance only compiles that text into its own ``forward``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import fx, nn

from blockdsl.errors import ArgumentError, BlockDSLError
from blockdsl.graph import BlockGraph, ModuleSpec, build_graph
from blockdsl.registry import Registry


class _SharedCodeGraph(fx.Graph):
    """An fx Graph whose Python source is generated once per structure. Lowered graphs are
    never edited, so blocks with the same steps, names and arguments (a repeated named block,
    or the same text compiled twice) share one piece of generated code."""

    _codes: ClassVar[dict[tuple, Any]] = {}
    _MAX_CODES: ClassVar[int] = 512

    def signature(self) -> tuple:
        def ref(value: Any) -> Any:
            if isinstance(value, fx.Node):
                return value.name
            if isinstance(value, (tuple, list)):
                return tuple(ref(v) for v in value)
            if isinstance(value, dict):
                return tuple((k, ref(v)) for k, v in value.items())
            return value if isinstance(value, (str, int, type(None))) else id(value)

        return tuple(
            (node.op, node.name, ref(node.target), ref(node.args), ref(node.kwargs))
            for node in self.nodes
        )

    def python_code(self, root_module: str, *args: Any, **kwargs: Any) -> Any:
        key = (self.signature(), root_module, args, tuple(sorted(kwargs.items())))
        code = self._codes.get(key)
        if code is None:
            code = super().python_code(root_module, *args, **kwargs)
            if len(self._codes) >= self._MAX_CODES:
                self._codes.pop(next(iter(self._codes)))
            self._codes[key] = code
        return code


class BlockModule(fx.GraphModule):
    """A compiled block. ``code`` shows its generated forward; ``block_graph`` is the IR it came
    from. ``forward(x, ...)`` returns the new stream, or ``(stream, auxes)`` when ``has_aux``
    (one auxiliary-loss tensor per aux-producing call, in call order)."""

    has_aux: bool
    context: tuple[str, ...]
    #: attributes of the stateful calls' modules, in call order (one entry per call site)
    state_attrs: tuple[str, ...] = ()

    def init_state(self, batch_size: int, max_len: int) -> list[Any] | None:
        """Fresh decoding state for ``batch_size`` sequences of at most ``max_len`` positions:
        one entry per stateful call (a component's dict; a combinator's list of per-child
        block states), or None when no call of this block keeps state."""
        if not self.state_attrs:
            return None
        states: list[Any] = []
        for attr in self.state_attrs:
            module = getattr(self, attr)
            children = module.__dict__.get(_CHILDREN)
            if children is not None:  # a combinator: its children's states, one per child
                states.append([child.init_state(batch_size, max_len) for child in children])
            else:
                states.append(module.init_state(batch_size, max_len))
        return states


#: Where a combinator built by ``lower`` keeps its child blocks (a plain attribute, not a
#: submodule: they are already registered inside it), so that their states can be made.
_CHILDREN = "_blockdsl_children"


def _keeps_state(graph: BlockGraph, spec: ModuleSpec) -> bool:
    """Whether a call of ``spec`` takes a state: a stateful leaf component, or a combinator
    accepting ``state`` whose children hold stateful calls."""
    if not spec.component.stateful:
        return False
    if not spec.component.takes_children:
        return True
    return any(_state_calls(child) for child in spec.children)


def _state_calls(graph: BlockGraph) -> list[str]:
    """Module keys of the calls that take a state, in call order (a label twice: twice)."""
    keys = []
    for _, data in graph.calls():
        spec = graph.modules[data["module"]]
        if _keeps_state(graph, spec):
            keys.append(data["module"])
    return keys


def cache_blocker(graph: BlockGraph) -> str | None:
    """Why ``graph`` cannot decode with a cache (None when it can): a component that mixes
    positions without the decoding-state protocol, a non-causal one (its earlier outputs
    change with later tokens), or a combinator that cannot pass its children's states."""
    for spec in call_specs(graph):
        component = spec.component
        if component.takes_children:
            needs_state = any(_state_calls(child) for child in spec.children)
            if needs_state and not component.stateful:
                return f"{_where(spec)} does not pass a decoding state to its children"
        elif component.mixes_positions and not component.is_causal(spec.args):
            return f"{_where(spec)} is not causal"
        elif component.mixes_positions and not component.stateful:
            return f"{_where(spec)} has no decoding state (no 'state' keyword in its forward)"
    return None


def noncausal_call(graph: BlockGraph) -> str | None:
    """The first call in ``graph`` (children included) whose outputs at a position depend on
    later positions, described, or None."""
    for spec in call_specs(graph):
        if spec.component.mixes_positions and not spec.component.is_causal(spec.args):
            return _where(spec)
    return None


def call_specs(graph: BlockGraph) -> Iterator[ModuleSpec]:
    """The module of every call of ``graph``, then of its children's calls (depth first)."""
    for _, data in graph.calls():
        spec = graph.modules[data["module"]]
        yield spec
        for child in spec.children:
            yield from call_specs(child)


def _where(spec: ModuleSpec) -> str:
    return f"{spec.describe()} at {spec.span.line}:{spec.span.column}"


def _fx_graph(graph: BlockGraph) -> _SharedCodeGraph:
    """The fx Graph of a block, built once per BlockGraph (the model builder reuses one
    BlockGraph for every repetition of a named block, so they share the generated code)."""
    if graph.fx_graph is not None:
        return graph.fx_graph
    g = _SharedCodeGraph()
    env: dict[int, fx.Node] = {graph.input: g.placeholder("idx" if graph.role == "embed" else "x")}
    context = {name: g.placeholder(name, default_value=None) for name in sorted(graph.context)}
    stateful = _state_calls(graph)
    state = g.placeholder("state", default_value=(None,) * len(stateful)) if stateful else None
    n_states = 0
    auxes: list[fx.Node] = []
    for node, data in graph.nodes():
        kind = data["kind"]
        if kind == "input":
            continue
        if kind == "call":
            spec = graph.modules[data["module"]]
            kwargs = {name: context[name] for name in sorted(spec.component.context)}
            if state is not None and _keeps_state(graph, spec):
                kwargs["state"] = g.create_node(
                    "call_function",
                    operator.getitem,
                    (state, n_states),
                    name=f"{data['name']}_state",
                )
                n_states += 1
            (source,) = data["inputs"]
            if spec.component.aux_loss:
                pair = g.create_node(
                    "call_module", spec.attr, (env[source],), kwargs, name=f"{data['name']}_out"
                )
                env[node] = g.create_node(
                    "call_function", operator.getitem, (pair, 0), name=data["name"]
                )
                auxes.append(
                    g.create_node(
                        "call_function", operator.getitem, (pair, 1), name=f"{data['name']}_aux"
                    )
                )
            else:
                env[node] = g.create_node(
                    "call_module", spec.attr, (env[source],), kwargs, name=data["name"]
                )
        elif kind == "add":
            left, right = data["inputs"]
            env[node] = g.create_node(
                "call_function", operator.add, (env[left], env[right]), name=data["name"]
            )
        else:
            (source,) = data["inputs"]
            g.output((env[source], tuple(auxes)) if auxes else env[source])
    g.lint()
    graph.fx_graph = g
    return g


def lower(
    graph: BlockGraph,
    *,
    shared: dict[str, nn.Module] | None = None,
) -> BlockModule:
    """Instantiate the modules of ``graph`` and wrap them in a GraphModule running its code.

    ``shared`` maps label keys to modules already built for this model, so that a label is one
    module object everywhere (pass the same dict for every block of a model). Modules are
    created on the current default device (use ``with allocation("meta"):`` for none).
    """
    shared = {} if shared is None else shared
    modules: dict[str, nn.Module] = {}
    for key, spec in graph.modules.items():
        if spec.label is not None and key in shared:
            modules[spec.attr] = shared[key]
            continue
        module = _instantiate(spec, graph, shared)
        if spec.label is not None:
            shared[key] = module
        modules[spec.attr] = module
    block = BlockModule(modules, _fx_graph(graph), class_name="Block")
    block.has_aux = bool(graph.aux_modules)
    block.context = tuple(sorted(graph.context))
    block.state_attrs = tuple(graph.modules[key].attr for key in _state_calls(graph))
    block.block_graph = graph
    return block


def _instantiate(spec: ModuleSpec, graph: BlockGraph, shared: dict[str, nn.Module]) -> nn.Module:
    children = [lower(child, shared=shared) for child in spec.children]
    try:
        module = spec.component.build(spec.args, children)
        if children:
            module.__dict__[_CHILDREN] = children
        return module
    except BlockDSLError as exc:
        if exc.source:
            raise
        raise ArgumentError(
            f"{spec.written}: {exc.message}", graph.source, spec.span, hint=exc.hint
        ) from exc
    except Exception as exc:  # the component rejected its arguments: say where
        raise ArgumentError(
            f"cannot build {spec.describe()}: {exc}",
            graph.source,
            spec.span,
            hint=spec.component.valid_arguments(),
        ) from exc


def compile_block(
    src: str | Sequence[str],
    *,
    d_model: int,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
    registry: Registry | None = None,
    device: torch.device | str | None = None,
    model_globals: Mapping[str, Any] | None = None,
) -> BlockModule:
    """Parse, validate and lower one block string: ``compile_block("Norm->MLP->+",
    d_model=256)``. ``device="meta"`` allocates no parameter memory."""
    graph = build_graph(
        src, d_model=d_model, defaults=defaults, registry=registry, model_globals=model_globals
    )
    with allocation(device):
        return lower(graph)


@contextmanager
def allocation(device: torch.device | str | None) -> Iterator[None]:
    """Create modules on ``device`` (None: torch's default). On the meta device parameters hold
    no values, so ``torch.nn.init`` is skipped there: initialising is most of the time of a
    meta build (transformers' ``no_init_weights`` does the same)."""
    if device is None:
        yield
        return
    with torch.device(device):
        if torch.device(device).type != "meta":
            yield
            return
        names = [n for n in vars(nn.init) if n.endswith("_") and not n.startswith("_")]
        saved = {name: getattr(nn.init, name) for name in names}
        try:
            for name in names:
                setattr(nn.init, name, _keep)
            yield
        finally:
            for name, function in saved.items():
                setattr(nn.init, name, function)


def _keep(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor
