"""The model builder: a configuration becomes a ``LanguageModel`` of compiled blocks.

A model is an embedding chain, a stack of layers and a head chain (docs/configs.md). ``layers``
is a chain over named blocks and inline block text: each top-level step, repeats unrolled and
groups of named blocks flattened, becomes one layer (``layers.0``, ``layers.1``, ...).
Repetitions of one named block share its validated graph and generated code but get their own
modules (a ``#label`` is one module within each instance; a ``##label`` one module across the
whole model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from blockdsl import ast
from blockdsl.config import ModelConfig, load_config
from blockdsl.errors import BlockDSLError, BudgetError, ConfigError, InputError, did_you_mean
from blockdsl.graph import BlockGraph, LabelTable, build_graph
from blockdsl.initialisation import initialise, parametrised_defaults
from blockdsl.lower import BlockModule, allocation, cache_blocker, component_modules, lower
from blockdsl.parser import parse, source_text
from blockdsl.printer import unparse
from blockdsl.registry import REGISTRY, SLOT_CONTEXT_ARGS, Registry


class LMOutput(NamedTuple):
    """What ``LanguageModel.forward`` returns, always (a ``NamedTuple``, so that
    ``torch.compile(fullgraph=True)``, ``torch.export`` and ``torch.fx`` see a plain tuple):

    ``logits``  ``(B, T, vocab)``; with targets some of which are ``IGNORE_INDEX``, ``(B, K,
                vocab)`` at the labelled positions only (``labelled_positions``)
    ``loss``    the cross-entropy plus ``aux`` when targets were given, else None
    ``aux``     the model's auxiliary loss (MoE load balancing), a 0-dim tensor: zero for a
                model without auxiliary losses
    """

    logits: torch.Tensor
    loss: torch.Tensor | None
    aux: torch.Tensor


#: Auxiliary losses collected during one forward: one list per way of combining them.
AuxValues = list[list[torch.Tensor]]


class LanguageModel(nn.Module):
    """Token ids → logits. ``config`` and ``source`` (its TOML text) rebuild it:
    ``build_model(model.config)``."""

    def __init__(
        self,
        config: ModelConfig,
        embed: BlockModule,
        layers: Sequence[BlockModule],
        head: BlockModule,
        layer_names: Sequence[str],
    ) -> None:
        super().__init__()
        self.config = config
        self.embed = embed
        self.layers = nn.ModuleList(layers)
        self.head = head
        self.layer_names = list(layer_names)
        # Auxiliary losses are grouped by how they combine (a component's ``combine_aux`` hook
        # sees the whole model's values at once; the default is their sum).
        self._combiners: list[Callable[[list[torch.Tensor]], torch.Tensor]] = []
        self._aux_groups: dict[int, tuple[int, ...]] = {}
        for index, block in enumerate([embed, *layers, head]):
            if not block.has_aux:
                continue
            groups = []
            for key in block.block_graph.aux_modules:
                component = block.block_graph.modules[key].component
                combine = component.combine_aux_fn or _sum_aux
                if combine not in self._combiners:
                    self._combiners.append(combine)
                groups.append(self._combiners.index(combine))
            self._aux_groups[index] = tuple(groups)
        # Call-time inputs some call cannot do without (``memory``), and who needs them.
        self._required_inputs: dict[str, str] = {}
        # The width each memory reader expects (its ``d_memory`` argument, else its input size).
        self._memory_widths: dict[int, str] = {}
        # The longest sequence every call can take: the model's context, or less where a call
        # was given a smaller ``context`` of its own.
        self._context: tuple[int, str] = (config.context, "the context")
        for path, block in [("embed", embed), *zip(self.layer_paths(), layers), ("head", head)]:
            for where, spec, _ in component_modules(block, f"{path}."):
                # what only a mixer's slot supplies (``rotary``) the mixer passes itself
                for name in sorted(spec.component.required_context - set(SLOT_CONTEXT_ARGS)):
                    self._required_inputs.setdefault(name, f"{spec.written} at {where}")
                own = spec.args.get("context") if "context" in spec.component.params else None
                if isinstance(own, int) and own < self._context[0]:
                    self._context = (own, f"the context of {spec.written} at {where}")
                if "memory" in spec.component.context:
                    width = spec.args.get("d_memory") or spec.d_in
                    self._memory_widths.setdefault(width, f"{spec.written} at {where}")

    def layer_paths(self) -> list[str]:
        return [f"layers.{index}" for index in range(len(self.layers))]

    def check_inputs(
        self,
        idx: Any,
        *,
        ids: bool | None = None,
        **inputs: torch.Tensor | None,
    ) -> None:
        """Raise ``InputError`` unless ``idx`` is a ``(batch, time)`` tensor of integer token ids
        no longer than the model's context, and every call-time input some call requires
        (``memory``) is given in ``inputs``. ``ids=True`` also checks that every id is in
        ``[0, vocab)`` (it reads the values: on an accelerator that waits for the device);
        the default checks them on the CPU only, where it costs nothing measurable. Under
        ``torch.compile`` and ``torch.export`` only the static checks (shape, dtype) run, so
        that nothing breaks the graph. ``forward`` calls this; training and generation call it
        with ``ids=True``."""
        if not isinstance(idx, torch.Tensor):
            raise InputError(f"idx must be a tensor of token ids, got {type(idx).__name__}")
        if idx.dim() != 2:
            raise InputError(
                f"idx must be token ids of shape (batch, time), got shape {tuple(idx.shape)}",
                hint="add a batch dimension: model(idx[None])"
                if idx.dim() == 1
                else "pass a 2-D tensor of token ids",
            )
        if idx.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
            raise InputError(
                f"token ids must be integers, got {idx.dtype}",
                hint="convert them with idx.long()",
            )
        for name, where in self._required_inputs.items():
            if inputs.get(name) is None:
                raise InputError(
                    f"{where} needs '{name}': call model(idx, {name}=...)",
                    hint="memory is (batch, source length, d_model)" if name == "memory" else None,
                )
        memory = inputs.get("memory")
        if memory is not None and self._memory_widths:
            if not isinstance(memory, torch.Tensor) or memory.dim() != 3:
                shape = tuple(memory.shape) if isinstance(memory, torch.Tensor) else memory
                raise InputError(f"memory must be (batch, source length, width), got {shape}")
            for width, where in self._memory_widths.items():
                if memory.shape[-1] != width or memory.shape[0] != idx.shape[0]:
                    raise InputError(
                        f"memory of shape {tuple(memory.shape)} does not fit {where}: it reads "
                        f"(batch={idx.shape[0]}, source length, {width})",
                    )
        if torch.compiler.is_compiling():
            return
        length, (context, which) = idx.shape[1], self._context
        if length > context:
            raise InputError(
                f"cannot forward a sequence of length {length}: {which} is only {context}",
                hint=f"crop it to the last {context} tokens (idx[:, -{context}:]), or build "
                "the model with a larger context",
            )
        if ids is None:
            ids = idx.device.type == "cpu"
        if ids and idx.numel():
            low, high = int(idx.min()), int(idx.max())
            vocab = self.config.vocab
            if low < 0 or high >= vocab:
                bad = low if low < 0 else high
                raise InputError(
                    f"token id {bad} is outside the vocabulary: ids must be in [0, {vocab})",
                    hint="the tokenizer and the model disagree on the vocabulary size",
                )

    @property
    def source(self) -> str:
        return self.config.to_toml()

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        state: Sequence[Any] | None = None,
    ) -> LMOutput:
        """``LMOutput(logits, loss, aux)``: logits ``(B, T, vocab)``; with ``targets`` the
        loss (cross-entropy plus every auxiliary loss), else None; the auxiliary loss alone
        (zero when the model has none).

        Targets equal to ``IGNORE_INDEX`` (-100) carry no label. When some do, the head runs
        only at each row's labelled positions (``labelled_positions``), so the logits are
        ``(B, K, vocab)`` for the K most labels in a row; the loss is the same.

        ``state`` (from ``init_state``) decodes: ``idx`` are the tokens following those the
        state has seen and ``positions`` ``(B, T)`` their absolute positions; every block's
        state is updated in place (docs/generation.md)."""
        self.check_inputs(idx, memory=memory)
        aux = self.new_aux_values()
        x = self.forward_features(idx, aux, positions=positions, memory=memory, state=state)
        if targets is not None and not self.head.context:
            order = labelled_positions(targets)
            if order is not None:
                x = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
                targets = targets.gather(1, order)
        logits = self.forward_head(x, aux, positions=positions, memory=memory, state=state)
        return self.output(logits, targets, aux)

    @property
    def has_aux_loss(self) -> bool:
        """Whether some component adds an auxiliary loss (``LMOutput.aux`` is then not just
        zero)."""
        return bool(self._combiners)

    def new_aux_values(self) -> AuxValues:
        """An empty collection for the auxiliary losses of one forward (``forward_features``
        and ``forward_head`` append to it, ``output`` combines it)."""
        return [[] for _ in self._combiners]

    def forward_features(
        self,
        idx: torch.Tensor,
        aux: AuxValues,
        *,
        positions: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        state: Sequence[Any] | None = None,
    ) -> torch.Tensor:
        """The embedding and every layer: token ids ``(B, T)`` → features ``(B, T, d_model)``
        before the head, their auxiliary losses appended to ``aux`` (``new_aux_values``).
        ``state`` is the whole model's (``init_state``). Inputs are not checked: ``forward``
        does that."""
        context = {"positions": positions, "memory": memory}
        states = state if state is not None else [None] * (len(self.layers) + 2)
        x = self._run(0, self.embed, idx, context, aux, states[0])
        for index, layer in enumerate(self.layers, start=1):
            x = self._run(index, layer, x, context, aux, states[index])
        return x

    def forward_head(
        self,
        x: torch.Tensor,
        aux: AuxValues,
        *,
        positions: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        state: Sequence[Any] | None = None,
    ) -> torch.Tensor:
        """The head on features ``(B, T, d_model)`` → logits, its auxiliary losses appended to
        ``aux``. ``state`` is the whole model's (``init_state``)."""
        context = {"positions": positions, "memory": memory}
        last = len(self.layers) + 1
        return self._run(last, self.head, x, context, aux, None if state is None else state[last])

    def output(
        self, logits: torch.Tensor, targets: torch.Tensor | None, aux: AuxValues
    ) -> LMOutput:
        """``LMOutput`` of ``logits`` (the loss against ``targets``, already gathered to the
        positions the logits are at) and the auxiliary losses collected in ``aux``."""
        total = (
            sum(combine(values) for combine, values in zip(self._combiners, aux))
            if self._combiners
            else None
        )
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
            if total is not None:
                loss = loss + total
        return LMOutput(logits, loss, total if total is not None else logits.new_zeros(()))

    def _run(
        self,
        index: int,
        block: BlockModule,
        x: torch.Tensor,
        context: dict[str, torch.Tensor | None],
        collected: AuxValues,
        state: Any = None,
    ) -> torch.Tensor:
        kwargs = {name: context[name] for name in block.context}
        if state is not None:
            kwargs["state"] = state
        out = block(x, **kwargs)
        if not block.has_aux:
            return out
        out, values = out
        for group, value in zip(self._aux_groups[index], values):
            collected[group].append(value)
        return out

    def num_params(self) -> int:
        """Distinct parameters (tied and shared weights once)."""
        return sum(p.numel() for p in self.parameters())

    def blocks(self) -> list[BlockModule]:
        """The embedding, every layer and the head, in order (the indices of ``init_state``)."""
        return [self.embed, *self.layers, self.head]

    def cache_blocker(self) -> str | None:
        """Why this model cannot decode with a cache (None when it can): see
        ``blockdsl.lower.cache_blocker``."""
        for block in self.blocks():
            reason = cache_blocker(block.block_graph)
            if reason:
                return reason
        return None

    def init_state(self, batch_size: int, max_len: int) -> list[Any]:
        """Fresh decoding state for ``batch_size`` sequences of at most ``max_len`` positions:
        one entry per block (None for a block that keeps none), each a list of per-call
        states. Every tensor has the batch as dim 0."""
        return [block.init_state(batch_size, max_len) for block in self.blocks()]

    def generate(self, idx: Any, max_new_tokens: int, **options: Any) -> Any:
        """Continue ``idx`` (a ``(B, T)`` tensor or a list of prompts of any lengths) by up to
        ``max_new_tokens`` tokens, with the decoding state when every component has one;
        ``options`` (``temperature``, ``top_k``, ``top_p``, ``greedy``, ``stop``,
        ``generator``, ``use_cache``) as for ``blockdsl.generate.stream``; see
        docs/generation.md."""
        from blockdsl.generate import generate

        return generate(self, idx, max_new_tokens, **options)

    def _repr_html_(self) -> str:
        """Notebooks show the model's shape table (see ``ModelPlan._repr_html_``)."""
        return ModelPlan(self.config)._repr_html_()


def _state_size(graph: BlockGraph, seq: int) -> int:
    total = 0
    for _, data in graph.calls():
        spec = graph.modules[data["module"]]
        total += spec.component.state_size(spec.d_in, spec.args, seq)
        total += sum(_state_size(child, seq) for child in spec.children)
        for slot in spec.slots.values():  # per-head steps that keep a state declare heads
            total += _state_size(slot, seq)
    return total


IGNORE_INDEX = -100


def labelled_positions(targets: torch.Tensor) -> torch.Tensor | None:
    """Indices ``(B, K)`` of each row's labelled positions in order, K the most labels in a
    row (shorter rows padded with unlabelled positions), or None when no position is
    unlabelled. The head needs only these positions: a task labelling 4 of 64 positions
    computes 1/16 of the logits."""
    labelled = targets != IGNORE_INDEX
    width = int(labelled.sum(dim=1).max())
    if width == targets.shape[1]:
        return None
    order = labelled.to(torch.int8).argsort(dim=1, descending=True, stable=True)
    return order[:, : max(width, 1)]


def _sum_aux(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([v.sum() for v in values]).sum()


# ==================================================================== building
class ModelPlan:
    """A configuration expanded and validated: the graphs of the embedding, every layer and
    the head, before any module is allocated."""

    def __init__(self, config: ModelConfig, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry or REGISTRY
        self.labels = LabelTable()
        self.model_globals = {"vocab": config.vocab, "context": config.context}
        self._check_defaults()
        # [defaults] plus what the [init] scheme sets per call (muP's attention and logit
        # scales); the configuration itself stays as written
        self.defaults = parametrised_defaults(config, self.registry)
        self.embed = self._graph(config.embed, "[model] embed", role="embed")
        self._named: dict[str, BlockGraph] = {}
        self._inline: dict[int, BlockGraph] = {}
        self.layers: list[tuple[str, BlockGraph]] = []
        layers_text = config.layers
        try:
            layers_ast = parse(layers_text)
        except BlockDSLError as exc:
            raise exc.with_context("[model] layers") from None
        self._expand(layers_ast, layers_text)
        if not self.layers:
            raise ConfigError("[model] layers is empty", layers_text, context="[model] layers")
        self.head = self._graph(config.head, "[model] head", role="head")

    def graphs(self) -> list[BlockGraph]:
        return [self.embed, *(g for _, g in self.layers), self.head]

    def params(self) -> int:
        """Parameters of the whole model: a ``#label`` once per block instance, a
        model-global ``##label`` once in all, tied heads once."""
        seen: set[int] = set()
        total = 0
        for graph in self.graphs():
            for spec in graph.modules.values():
                if spec.global_label:
                    if id(spec) in seen:
                        continue
                    seen.add(id(spec))
                total += spec.params
        return total

    def shared_labels(self) -> dict[str, list[str]]:
        """Model-global labels used by more than one block instance: ``{"##ln": ["layers.0",
        "layers.1", ...]}`` (the embedding and head are ``embed`` and ``head``). Only these tie
        weights across layers; ``blockdsl check`` lists them so that no tying is silent."""
        paths = ["embed", *(f"layers.{i}" for i in range(len(self.layers))), "head"]
        users: dict[str, list[str]] = {}
        for path, graph in zip(paths, self.graphs()):
            for spec in graph.modules.values():
                if spec.global_label:
                    users.setdefault(f"{spec.written}{spec.label_text}", []).append(path)
        return {label: where for label, where in users.items() if len(where) > 1}

    def flops(self, seq: int) -> int:
        return sum(graph.flops(seq) for graph in self.graphs())

    def state_size(self, seq: int | None = None) -> int:
        """Decoding-state elements of one sequence of ``seq`` positions (default: the context):
        every stateful call's state (a label called twice: twice; children included)."""
        seq = self.config.context if seq is None else seq
        return sum(_state_size(graph, seq) for graph in self.graphs())

    def _repr_html_(self) -> str:
        """Notebooks show the shape table (one sequence of the full context). A display hook
        only, so the table code (and rich) is imported here, on use, not with the model."""
        from blockdsl.shapes import shape_table

        return shape_table(self)._repr_html_()

    # ---------------------------------------------------------------- internals
    def _check_defaults(self) -> None:
        for component, args in self.config.defaults.items():
            if component not in self.registry:
                raise self.config.error(
                    f"[defaults] names unknown component '{component}'",
                    component,
                    hint=did_you_mean(component, self.registry.names()),
                )
            resolved, _ = self.registry.resolve(component)
            for arg in args:
                if arg not in resolved.user_params:
                    raise self.config.error(
                        f"unknown argument '{arg}' for {component} in [defaults]",
                        arg,
                        hint=resolved.valid_arguments(),
                    )

    def _graph(
        self,
        src: str | list[str] | ast.Block,
        where: str,
        *,
        role: str = "block",
        source: str | None = None,
    ) -> BlockGraph:
        try:
            return build_graph(
                src,
                d_model=self.config.d_model,
                defaults=self.defaults,
                registry=self.registry,
                model_globals=self.model_globals,
                labels=self.labels,
                role=role,  # type: ignore[arg-type]
                source=source,
            )
        except BlockDSLError as exc:
            raise exc.with_context(where) from None

    def _named_graph(self, name: str) -> BlockGraph:
        if name not in self._named:
            self._named[name] = self._graph(self.config.blocks[name], f"[blocks] {name}")
        return self._named[name]

    def _expand(self, node: ast.Block, text: str) -> None:
        if node.is_parallel:
            self._add_inline(node, text, node)
            return
        for step in node.chains[0].steps:
            self._expand_step(step, text)

    def _expand_step(self, step: ast.Step, text: str) -> None:
        if isinstance(step, ast.Residual):
            raise ConfigError(
                "'+' cannot stand between layers",
                text,
                step.span,
                hint="put residual steps inside a block",
                context="[model] layers",
            )
        if isinstance(step, ast.Repeat):
            if step.count < 1:
                raise ConfigError(
                    f"repeat count must be at least 1, got {step.count}",
                    text,
                    step.count_span,
                    context="[model] layers",
                )
            for _ in range(step.count):
                self._expand_step(step.body, text)
            return
        if isinstance(step, ast.Call) and step.name in self.config.blocks:
            if step.args or step.label or step.children:
                raise ConfigError(
                    f"block '{step.name}' is a named block and takes no arguments, "
                    "label or children",
                    text,
                    step.span,
                    context="[model] layers",
                )
            self.layers.append((step.name, self._named_graph(step.name)))
            return
        if (
            isinstance(step, ast.Call)
            and not step.args
            and step.name not in self.registry
            and step.name not in self.config.blocks
        ):
            defined = ", ".join(self.config.blocks) or "nothing"
            raise ConfigError(
                f"no block or component named '{step.name}'",
                text,
                step.name_span,
                hint=did_you_mean(step.name, [*self.config.blocks, *self.registry.names()])
                or f"[blocks] defines {defined}",
                context="[model] layers",
            )
        if isinstance(step, ast.Group) and self._only_named(step.block):
            self._expand(step.block, text)
            return
        self._add_inline(
            step, text, ast.Block((ast.Chain((step,), span=step.span),), span=step.span)
        )

    def _only_named(self, block: ast.Block) -> bool:
        """A group whose steps are all named blocks (or groups/repeats of them) is flattened
        into the layer list."""
        if block.is_parallel:
            return False
        for step in block.chains[0].steps:
            body = step.body if isinstance(step, ast.Repeat) else step
            if isinstance(body, ast.Call):
                if body.name not in self.config.blocks:
                    return False
            elif isinstance(body, ast.Group):
                if not self._only_named(body.block):
                    return False
            else:
                return False
        return True

    def _add_inline(self, key_node: ast.Node, text: str, block: ast.Block) -> None:
        for node in ast.walk(block):
            if isinstance(node, ast.Call) and node.name in self.config.blocks:
                raise ConfigError(
                    f"named block '{node.name}' can only be chained or repeated in layers",
                    text,
                    node.name_span,
                    hint="write the layers as a chain of names, e.g. '(a->b)*4'",
                    context="[model] layers",
                )
        if id(key_node) not in self._inline:
            self._inline[id(key_node)] = self._graph(
                block, "[model] layers", source=source_text(text)
            )
        self.layers.append((unparse(key_node), self._inline[id(key_node)]))


def build_model(
    spec: Any = "tiny",
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    registry: Registry | None = None,
    **overrides: Any,
) -> LanguageModel:
    """Build a ``LanguageModel`` from a preset name, a ``.toml`` path, a config dict or
    ``ModelConfig``, a block string or a list of strings; ``overrides`` set config keys
    (``d_model=``, ``vocab=``, ``layers=``, ``defaults=``, ``blocks=``, ...).

    The whole model is validated (and its parameter budget checked) before any memory is
    allocated; ``device="meta"`` allocates none at all.
    """
    config = load_config(spec, **overrides)
    plan = ModelPlan(config, registry)
    if config.max_params is not None:
        total = plan.params()
        if total > config.max_params:
            raise BudgetError(
                f"the model has {total:,} parameters, over the budget of {config.max_params:,}",
                config.text,
                config.locate("max_params"),
                hint="reduce d_model, layers or the components' sizes, or raise max_params",
                context=config.origin or None,
            )
    with allocation(device):
        shared: dict[str, nn.Module] = {}
        embed = lower(plan.embed, shared=shared)
        layers = [lower(graph, shared=shared) for _, graph in plan.layers]
        head = lower(plan.head, shared=shared)
    _tie(embed, head)
    model = LanguageModel(config, embed, layers, head, [name for name, _ in plan.layers])
    initialise(model)  # the [init] scheme (nothing under "torch", nothing on the meta device)
    if dtype is not None:
        model.to(dtype)
    return model


def _tie(embed: BlockModule, head: BlockModule) -> None:
    """Run the ``tie`` hook of every head module (``Head(tie=true)`` takes the weight of the
    first token embedding, found by the ``embedding`` hook of the embedding chain's modules)."""
    embeddings = [
        spec.component.embedding_fn(module)
        for _, spec, module in component_modules(embed)
        if spec.component.embedding_fn is not None
    ]
    for _, spec, module in component_modules(head):
        if spec.component.tie_fn is not None:
            spec.component.tie_fn(module, embeddings[0] if embeddings else None)
