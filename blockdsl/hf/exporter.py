"""Export blockdsl models to Hugging Face ``transformers``: the importer's mapping run backwards.

>>> blockdsl.export_hf(model, "out/")          # config.json, model.safetensors, ...
>>> AutoModelForCausalLM.from_pretrained("out/")

There is no export table. Each architecture the importer knows is one record (its transformers
class, the function from a transformers config to a blockdsl config, and the function that
maps checkpoint tensors to blockdsl parameters); the export inverts those two functions:

* **config**: find the transformers config whose import builds *this* model. The model is
  compared as a validated plan (every node of every layer with its fully resolved arguments,
  parameter names and sharing), not as text, so ``Attn(heads=4)`` written inline and
  ``[defaults] Attn = {heads = 4}`` are the same model. The search starts from the config
  class's defaults; numeric fields the import copies verbatim are found by giving each a
  distinctive value and seeing where it lands; the rest (booleans, activation names, counts,
  derived numbers) by trying the values the model itself holds, one field at a time, keeping
  any change that brings the imported plan closer, until it is identical. Anything short of
  identical is refused, naming the first layer and step that has no counterpart.
* **weights**: run the importer's weight mapping on a probe checkpoint whose every element
  holds its own index; the blockdsl tensors it produces say, element by element, where each
  transformers weight comes from. The mapping must be a rearrangement (transposes, splits,
  stacks, reshapes); each transformers weight is then gathered from the model's tensors.

So an architecture added to the importer (``register_architecture``) exports with no further
code. ``export_hf`` checks its own result: the written folder is loaded back with
``transformers`` and its logits compared on random tokens.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockdsl.errors import ConfigError
from blockdsl.graph import BlockGraph
from blockdsl.hf.base import ARCHITECTURES, WeightMapper, require_transformers
from blockdsl.lower import module_attributes

__all__ = ["HFExportError", "export_hf", "hf_config_for", "hf_state_dict"]

VERIFY_TOLERANCE = 1e-4


class HFExportError(ConfigError):
    """The model has no transformers equivalent, or the export cannot be written."""

    def _render_one(self) -> str:  # about a model, not a text: no position
        where = f" in {self.context}" if self.context else ""
        head = f"blockdsl: {self.message}{where}"
        return head if not self.hint else f"{head}\n  " + self.hint.replace("\n", "\n  ")


# ==================================================================== the importer's records
@dataclass(frozen=True)
class _Record:
    model_type: str
    hf_class: str
    config: Callable[[Any], dict]
    weights: Callable[[Any, Any], None]
    mapper: Callable[[dict], Any]


def _records() -> list[_Record]:
    """The importer's architectures (``blockdsl.hf.base.ARCHITECTURES``), in its order:
    one record serves both directions."""
    return [
        _Record(a.model_type, a.hf_class, a.config, a.weights, WeightMapper)
        for a in ARCHITECTURES.values()
    ]


# ==================================================================== model signatures
Signature = frozenset


def _nodes(where: str, graph: BlockGraph) -> Iterator[tuple]:
    """``(where, step, ...)`` items describing a block: one per node (kind, component, module
    attribute, inputs) and one per resolved argument and per filled slot, then its children's
    own."""
    index = {node: i for i, (node, _) in enumerate(graph.nodes())}
    attributes = module_attributes(graph)
    for step, (_, data) in enumerate(graph.nodes()):
        inputs = tuple(index[n] for n in data["inputs"])
        if data["kind"] != "call":
            yield (where, step, "node", data["kind"], "", "", inputs)
            continue
        spec = graph.modules[data["module"]]
        attr = attributes[data["module"]]
        label = "" if spec.label is None else "##" if spec.global_label else "#"  # the scope
        yield (where, step, "node", "call", spec.component.name, attr, inputs, label)
        for name, value in sorted(spec.args.items()):
            yield (where, step, "arg", name, _hashable(value))
        for c, child in enumerate(spec.children):
            yield from _nodes(f"{where}.{attr}[{c}]", child)
        # the blocks written in its slots, one item per slot (as an argument ``[q]``): a q/k
        # norm after the rotary is not the same model as one before it, nor as no norm at
        # all. A slot a shorthand argument filled (``qk_norm=true``) is that argument's item.
        for name, slot in sorted(spec.slots.items()):
            if name not in spec.shorthand_slots:
                yield (where, step, "arg", f"[{name}]", _slot_contents(slot))


@dataclass(frozen=True)
class _SlotContents:
    """What one slot of a call holds: its block's signature items (compared), shown as the
    block's steps (``Rope->Norm(eps=1e-06)``) in a refusal."""

    items: tuple
    text: str = field(compare=False)


def _written_slots(spec: Any) -> dict[str, _SlotContents]:
    """The slots of a call that its text fills (not its shorthand arguments)."""
    return {
        name: _slot_contents(slot)
        for name, slot in spec.slots.items()
        if name not in spec.shorthand_slots
    }


def _slot_contents(slot: BlockGraph) -> _SlotContents:
    steps = [
        slot.modules[data["module"]].describe()
        for _, data in slot.nodes()
        if data["kind"] == "call"
    ]
    return _SlotContents(tuple(_nodes("", slot)), "->".join(steps))


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, float) and value == int(value) and not math.isinf(value):
        return float(value)
    return value


def signature(plan: Any) -> Signature:
    """Everything that decides a model's function and parameter names, as a set of items."""
    config = plan.config
    items: set[tuple] = {
        ("model", "vocab", config.vocab),
        ("model", "d_model", config.d_model),
        ("model", "context", config.context),
        ("model", "layers", len(plan.layers)),
    }
    cache: dict[int, list[tuple]] = {}
    blocks = [("embed", plan.embed)]
    blocks += [(f"layers.{i}", g) for i, (_, g) in enumerate(plan.layers)]
    blocks.append(("head", plan.head))
    for where, graph in blocks:
        if id(graph) not in cache:
            cache[id(graph)] = [item[1:] for item in _nodes("", graph)]
        items.update((where, *rest) for rest in cache[id(graph)])
    return frozenset(items)


def _node_args(plan: Any) -> dict[tuple[str, int], Any]:
    """``(where, step) -> ModuleSpec`` of every call node (child blocks' too)."""
    out: dict[tuple[str, int], Any] = {}

    def visit(where: str, graph: BlockGraph) -> None:
        attributes = module_attributes(graph)
        for step, (_, data) in enumerate(graph.nodes()):
            if data["kind"] == "call":
                spec = graph.modules[data["module"]]
                out[(where, step)] = spec
                for c, child in enumerate(spec.children):
                    visit(f"{where}.{attributes[data['module']]}[{c}]", child)

    visit("embed", plan.embed)
    for i, (_, graph) in enumerate(plan.layers):
        visit(f"layers.{i}", graph)
    visit("head", plan.head)
    return out


def difference(target_plan: Any, target: Signature, plan: Any) -> tuple[set, set]:
    """``(target's items the plan lacks, the plan's items the target lacks)``, where two
    spellings of one module count as the same (``MLP(mult=4)`` and ``MLP(hidden=256)`` at
    width 64: see ``_equivalent``)."""
    image = signature(plan)
    own, theirs = set(target - image), set(image - target)
    nodes: dict[tuple[str, int], list[tuple]] = {}
    for item in own:
        if item[2] == "arg":
            nodes.setdefault(item[:2], []).append(item)
    if not nodes:
        return own, theirs
    mine, other = _node_args(target_plan), _node_args(plan)
    for key, items in nodes.items():
        a, b = mine.get(key), other.get(key)
        if a is None or b is None or a.component is not b.component:
            continue
        if _equivalent(a, b):
            own.difference_update(items)
            theirs.difference_update(t for t in list(theirs) if t[:2] == key and t[2] == "arg")
    return own, theirs


_EQUIVALENT: dict[tuple, bool] = {}


def _equivalent(a: Any, b: Any) -> bool:
    """Whether two specs of one component are the same module although their arguments
    differ: every difference is a size argument left unset on the model's side (``hidden``
    derived from ``mult``, ``head_dim`` from ``heads``) and set by the other to the value it
    derives to: the same parameter shapes, while another value would change them, and the
    same outputs for the same weights. ``window=8`` and ``window=None`` are not the same
    module, though they agree on short inputs."""
    names = set(a.args) | set(b.args)
    differing = [n for n in names if a.args.get(n) != b.args.get(n)]
    key = (a.component.name, repr(sorted(a.args.items())), repr(sorted(b.args.items())))
    if key in _EQUIVALENT:
        return _EQUIVALENT[key]
    result = (
        all(
            a.args.get(n) is None
            and isinstance(b.args.get(n), int)
            and not isinstance(b.args.get(n), bool)
            for n in differing
        )
        and not a.children
        and not b.children
        and _written_slots(a) == _written_slots(b)  # built alone, both would miss them
        and not a.component.required_context
        and all(_sizes(a, {n: b.args[n] * 2 + 1}) != _sizes(a, {n: b.args[n]}) for n in differing)
        and _same_module(a, b)
    )
    _EQUIVALENT[key] = result
    return result


def _sizes(spec: Any, changes: dict[str, Any]) -> Any:
    """The parameter shapes of ``spec`` with some arguments changed (built on meta)."""
    from blockdsl.lower import allocation

    try:
        with allocation("meta"):
            module = spec.component.build({**spec.args, **changes}, [])
        return {n: tuple(p.shape) for n, p in module.state_dict().items()}
    except Exception:
        return None


def _same_module(a: Any, b: Any) -> bool:
    from blockdsl.lower import allocation

    try:
        with allocation("meta"):
            shapes = [
                {n: p.shape for n, p in spec.component.build(spec.args, []).state_dict().items()}
                for spec in (a, b)
            ]
        if shapes[0] != shapes[1] or a.d_in is None:
            return False
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            first = a.component.build(a.args, []).eval()
            second = b.component.build(b.args, []).eval()
            second.load_state_dict(first.state_dict())
            x = torch.randn(1, 5, a.d_in)
            with torch.no_grad():
                out = [module(x) for module in (first, second)]
    except Exception:  # cannot be built or run alone
        return False
    pairs = list(zip(*(o if isinstance(o, tuple) else (o,) for o in out)))
    return all(
        isinstance(p, torch.Tensor) and p.shape == q.shape and torch.allclose(p, q)
        for p, q in pairs
    )


def _plan(config: Any) -> Any:
    from blockdsl.config import load_config
    from blockdsl.model import ModelPlan

    return ModelPlan(load_config(config))


# ==================================================================== config search
_INF = 10**12
_LAYERS = 10**6  # distance per layer too many or too few
_TIE = 16
_LAYER_FIELD_BOUND = 4  # a field that sets the layer count: values up to 4x the count tried


@dataclass
class _Fit:
    record: _Record
    kwargs: dict[str, Any]
    hf_config: Any
    distance: int
    plan: Any  # the plan the importer builds from hf_config (None if it fails)


class _Search:
    """Finds transformers config kwargs whose import has the target's signature."""

    def __init__(
        self, record: _Record, target_plan: Any, target: Signature, numbers: list[Any]
    ) -> None:
        self.record = record
        self.target_plan = target_plan
        self.target = target
        self.numbers = numbers
        self.cls = type(require_transformers().AutoConfig.for_model(record.model_type))
        self.cache: dict[str, tuple[int, Any, Any]] = {}
        self.built: dict[str, tuple[Any, dict] | None] = {}
        self.plans: dict[str, tuple[int, Any]] = {}
        self.fit: _Fit | None = None
        # what the import makes of a config depends on the record alone: shared by every
        # search of the process (the landings of ``direct_copies`` are most of a start)
        self.leaves = _LEAVES.setdefault((record.model_type, record.config), {})
        self.layers = next((i[2] for i in target if i[:2] == ("model", "layers")), 0)
        #: the fields that set the number of layers (found by ``start``): another value of one
        #: alone only makes the count wrong, so ``run`` leaves them be
        self.layer_fields: set[str] = set()

    def build(self, kwargs: dict[str, Any]) -> Any:
        return self.cls(**kwargs)

    def imports(self, kwargs: dict[str, Any]) -> tuple[Any, dict] | None:
        """The transformers config of ``kwargs`` and the blockdsl config its import makes
        (None if either fails). transformers validates every field of a config it builds, so
        ``evaluate`` and ``imported`` share the work."""
        key = repr(sorted(kwargs.items()))
        if key not in self.built:
            try:
                cfg = self.build(kwargs)
                self.built[key] = (cfg, self.record.config(cfg))
            except Exception:
                self.built[key] = None
        return self.built[key]

    def evaluate(self, kwargs: dict[str, Any]) -> tuple[int, Any, Any]:
        key = repr(sorted(kwargs.items()))
        if key not in self.cache:
            both = self.imports(kwargs)
            if both is None:
                self.cache[key] = (_INF, None, None)
                return self.cache[key]
            cfg, config = both
            imported = repr(config)
            if imported not in self.plans:
                layers = _layer_count(config)
                try:
                    if layers != self.layers:  # not worth building (it may be huge)
                        raise _Skip(_LAYERS * abs(layers - self.layers) if layers >= 0 else _INF)
                    plan = _plan(config)
                    own, theirs = difference(self.target_plan, self.target, plan)
                    self.plans[imported] = (len(own) + len(theirs), plan)
                except _Skip as skip:
                    self.plans[imported] = (skip.distance, None)
                except Exception:
                    self.plans[imported] = (_LAYERS - 1, None)
            distance, plan = self.plans[imported]
            self.cache[key] = (distance, cfg, plan)
        return self.cache[key]

    def fields(self, kwargs: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
        """The config fields the import reads (of the config ``kwargs`` builds, default the
        class's defaults), with their values there."""
        reads: list[str] = []
        try:
            base = self.build(kwargs or {})
        except Exception:
            return []
        cls = type(base)

        class Traced(cls):  # type: ignore[misc, valid-type]
            def __getattribute__(self, name: str) -> Any:
                if not name.startswith("_"):
                    reads.append(name)
                return super().__getattribute__(name)

        traced = copy.copy(base)
        traced.__class__ = Traced
        with contextlib.suppress(Exception):  # the defaults themselves may be unsupported
            self.record.config(traced)
        out = []
        for name in dict.fromkeys(reads):
            value = getattr(base, name, None)
            if callable(value) and not isinstance(value, type):
                continue
            out.append((name, value))
        return out

    def start(self) -> int:
        """Set the fields the import copies verbatim; returns the distance left."""
        self.field_list = self.fields()
        self.kwargs = self.direct_copies(self.field_list, {})
        self.copied = list(self.kwargs)
        distance = self.evaluate(self.kwargs)[0]
        # The number of layers next: until it is right no plan is built to compare. A field
        # that sets it needs a value near it; a huge one only costs a huge config (Jamba
        # validates a layer-type list per layer: 65536 layers take seconds to build).
        bound = _LAYER_FIELD_BOUND * max(self.layers, 1)
        for name, default in self.field_list:
            current = self.kwargs.get(name, default)
            if distance < _LAYERS or isinstance(current, bool) or not isinstance(current, int):
                continue
            for value in self.candidates(name, current):
                if isinstance(value, int) and value > bound:
                    continue
                d = self.evaluate({**self.kwargs, name: value})[0]
                if d < distance:
                    if distance >= _LAYERS > d:
                        self.layer_fields.add(name)
                    self.kwargs, distance = {**self.kwargs, name: value}, d
        return distance

    def run(self) -> _Fit:
        """Improve one field at a time. The fields the import copies verbatim (set by
        ``start``) move last: they hold the model's own values, and moving one early only
        leads to a config that fits elsewhere but can never fit exactly."""
        if self.fit is not None:
            return self.fit
        kwargs = self.kwargs
        distance = self.evaluate(kwargs)[0]
        copied = set(self.copied)
        movable = [f for f in self.field_list if f[0] not in self.layer_fields]
        free = [f for f in movable if f[0] not in copied]
        for fields, sweeps in ((free, 3), (movable, 1)):
            for _ in range(sweeps):
                # A field read only under others' values (a dense layer's width once
                # mlp_only_layers names one) joins the search when it is first read.
                known = {name for name, _ in self.field_list}
                for name, value in self.fields(kwargs):
                    if name not in known:
                        self.field_list.append((name, value))
                        movable.append((name, value))
                        if fields is free:
                            free.append((name, value))
                improved = False
                for name, default in fields:
                    for value in self.candidates(name, kwargs.get(name, default)):
                        if distance == 0:
                            break
                        trial = {**kwargs, name: value}
                        d = self.evaluate(trial)[0]
                        if d >= _INF:  # refused alone: move the fields it equals too
                            trial = self.joint(trial, name, kwargs.get(name, default), value)
                            d = self.evaluate(trial)[0]
                        if d < distance:
                            kwargs, distance, improved = trial, d, True
                if distance == 0 or not improved:
                    break
            if distance == 0:
                break
        distance, cfg, plan = self.evaluate(kwargs)
        self.fit = _Fit(self.record, kwargs, cfg, distance, plan)
        return self.fit

    def joint(self, trial: dict[str, Any], name: str, current: Any, value: Any) -> dict:
        """``trial`` with every other integer field still at a class default equal to
        ``name``'s current value given ``value`` as well: fields the import requires equal
        (MLA's ``num_key_value_heads`` and ``num_attention_heads``) only move together."""
        if not isinstance(current, int) or isinstance(current, bool):
            return trial
        together = {
            other: value
            for other, default in self.field_list
            if other != name
            and other not in trial
            and isinstance(default, int)
            and not isinstance(default, bool)
            and default == current
        }
        return {**trial, **together}

    def direct_copies(self, fields: list[tuple[str, Any]], kwargs: dict) -> dict[str, Any]:
        """Numeric fields the import copies into the config as they are: nudge each to a
        value found nowhere in the import's output and read the target's value at the place
        where it lands. Repeated until nothing new is found (a field may only import once
        others fit, as heads must divide the width)."""
        found: dict[str, Any] = dict(kwargs)
        values = self.target_values()
        for _ in range(3):
            before = dict(found)
            for name, default in fields:
                if name in found and not isinstance(default, dict):
                    continue
                current = found.get(name, default)
                if isinstance(current, dict):
                    for key, inner in current.items():
                        if isinstance(inner, int | float) and not isinstance(inner, bool):
                            place = self.landing(found, name, current, key)
                            if values.get(place) is not None:
                                current = {**current, key: values[place]}
                    if current != found.get(name, default):
                        found[name] = current
                elif current is None or (
                    isinstance(current, int | float) and not isinstance(current, bool)
                ):
                    place = self.landing(found, name, current, None)
                    if values.get(place) is not None:
                        found[name] = values[place]
            if found == before:
                break
        return found

    def landing(self, kwargs: dict, name: str, current: Any, key: str | None) -> tuple | None:
        """Where the import writes field ``name`` (``[key]`` inside a dict field), if it
        copies it verbatim into one place."""
        baseline = self.imported(kwargs) or {}
        seen = set(map(repr, baseline.values()))
        inner = current if key is None else current[key]
        for probe in _probes(inner):
            if repr(probe) in seen:
                continue
            value = probe if key is None else {**current, key: probe}
            output = self.imported({**kwargs, name: value})
            if output is None:
                continue
            places = [p for p, v in output.items() if v == probe and type(v) is type(probe)]
            return places[0] if len(places) == 1 else None
        return None

    def imported(self, kwargs: dict[str, Any]) -> dict[tuple, Any] | None:
        """The leaves of the blockdsl config the import makes of ``kwargs`` (None if it
        fails)."""
        key = repr(sorted(kwargs.items()))
        if key not in self.leaves:
            both = self.imports(kwargs)
            self.leaves[key] = None if both is None else dict(_leaves(both[1]))
        return self.leaves[key]

    def target_values(self) -> dict[tuple, Any]:
        """The target's values by the config place they would be written at:
        ``("model", key)`` and ``("defaults", Component, arg)`` where that argument has one
        value over every call of the component."""
        out: dict[tuple, Any] = {}
        by_arg: dict[tuple, set] = {}
        components = {}
        for item in self.target:
            if item[0] == "model":
                out[("model", item[1])] = item[2]
            elif len(item) >= 3 and item[2] == "node" and item[3] == "call":
                components[(item[0], item[1])] = item[4]
        for item in self.target:
            if len(item) >= 3 and item[2] == "arg" and (item[0], item[1]) in components:
                by_arg.setdefault((components[(item[0], item[1])], item[3]), set()).add(item[4])
        for (component, arg), seen in by_arg.items():
            if len(seen) == 1:
                out[("defaults", component, arg)] = next(iter(seen))
        return out

    def candidates(self, name: str, current: Any) -> Iterator[Any]:
        if isinstance(current, bool):
            yield not current
            return
        if isinstance(current, str):
            activations = require_transformers().activations.ACT2FN
            if current in activations:
                yield from (a for a in activations if a != current)
            return
        if isinstance(current, list):
            yield from _list_candidates(current, self.layers)
            return
        if isinstance(current, dict):
            for key, inner in current.items():
                if isinstance(inner, int | float) and not isinstance(inner, bool):
                    for number in self.numbers:
                        if number != inner:
                            yield {**current, key: number}
            if name == "rope_parameters" and "partial_rotary_factor" not in current:
                # a partial rotary the class's defaults do not name (MiniMax-M2's)
                for number in self.numbers:
                    if isinstance(number, float) and 0 < number < 1:
                        yield {**current, "partial_rotary_factor": number}
            return
        if current is None or isinstance(current, int | float):
            if current is not None:
                yield None
            for number in self.numbers:
                if number != current and (current is None or type(number) is type(current)):
                    yield number


class _Skip(Exception):
    def __init__(self, distance: int) -> None:
        self.distance = distance


def _layer_count(config: dict) -> int:
    """The number of layers a config's ``layers`` chain unrolls to (-1 if unreadable),
    without unrolling it."""
    from blockdsl.ast import Block, Call, Group, Repeat
    from blockdsl.parser import parse

    named = set(config.get("blocks", {}))

    def only_named(block: Block) -> bool:  # as ModelPlan flattens groups
        if block.is_parallel:
            return False
        for step in block.chains[0].steps:
            body = step.body if isinstance(step, Repeat) else step
            if isinstance(body, Group):
                if not only_named(body.block):
                    return False
            elif not (isinstance(body, Call) and body.name in named):
                return False
        return True

    def count(node: Any) -> int:
        if isinstance(node, Block):
            return sum(count(s) for s in node.chains[0].steps) if not node.is_parallel else 1
        if isinstance(node, Repeat):
            return node.count * count(node.body)
        if isinstance(node, Group):
            return count(node.block) if only_named(node.block) else 1
        return 1

    try:
        return count(parse(config["model"]["layers"]))
    except Exception:
        return -1


def _probes(default: Any) -> Iterator[Any]:
    """Values near a field's default (so that the import still accepts them)."""
    if isinstance(default, float):
        yield from (default * 1.37 + 0.011, default * 1.0000001 + 1e-9)
    elif isinstance(default, int) and default > 0:
        yield from (2 * default, 3 * default, default + 1)  # multiples keep divisibility
    else:
        yield from (7, 11)


def _leaves(data: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path, data


def _list_candidates(current: list, layers: int) -> Iterator[list]:
    """For a per-layer list of names (``layer_types``): the same pattern at the model's
    number of layers, and each name on every layer. For a list of layer indices
    (``mlp_only_layers``, empty by default): the first k layers."""
    if all(isinstance(i, int) and not isinstance(i, bool) for i in current):
        for k in range(1, layers):
            yield list(range(k))
        return
    period = current[: max(1, len(set(current)))] if current else []
    if period:
        yield [period[i % len(period)] for i in range(layers)]
        for name in dict.fromkeys(current):
            yield [name] * layers


def _numbers(target: Signature) -> list[Any]:
    """Candidate field values: the numbers the model holds, and simple functions of them (a
    scale ``s`` may come from ``s**-2`` or from ``1 / s``, as Granite's ``logits_scaling``; a
    rotary size from a fraction of the head size)."""
    ints: set[int] = set()
    floats: set[float] = set()
    for item in target:
        value = item[-1] if item[0] == "model" else item[4] if item[2] == "arg" else None
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            ints.add(value)
        elif isinstance(value, float) and math.isfinite(value):
            floats.add(value)
    ints.update(a // b for a in list(ints) for b in list(ints) if 0 < b < a and a % b == 0)
    for f in list(floats):
        for derived in (f**-2 if f else 0.0, 1 / f if f else 0.0):
            if 0 < derived <= 65536 and abs(derived - round(derived)) < 1e-6 * derived:
                ints.add(round(derived))
        if 0 < f <= 16:  # a fraction of a size (rotary dims) or a multiple (MLP mult)
            for n in [n for n in ints if 0 < n <= 65536]:
                if f < 1 or float(n * f).is_integer():
                    ints.add(int(n * f))
    # reciprocals only where they are round numbers (Granite's logits_scaling 2.5 for 0.4)
    floats.update(1 / f for f in list(floats) if f != 0 and round(1 / f, 3) == 1 / f)
    floats.update(float(i) for i in ints if i <= 10**7)
    return sorted(ints) + sorted(floats)


# ==================================================================== refusal reasons
def _components(target: Signature) -> dict[str, tuple[str, int]]:
    """component -> (where, step) of its first use."""
    out: dict[str, tuple[str, int]] = {}
    for item in sorted(target, key=_order):
        if len(item) > 4 and item[2] == "node" and item[3] == "call":
            out.setdefault(item[4], (item[0], item[1]))
    return out


def _order(item: tuple) -> tuple:
    where = item[0]
    if where == "model":
        return (0, 0, "", 0, False, repr(item))
    if where.startswith("embed"):
        rank, rest = (1, 0), where[len("embed") :]
    elif where.startswith("layers."):
        number = re.match(r"layers\.(\d+)(.*)", where)
        assert number is not None
        rank, rest = (2, int(number.group(1))), number.group(2)
    else:
        rank, rest = (3, 0), where[len("head") :]
    return (*rank, rest, item[1], item[2] != "node", repr(item[2:]))


def _step_text(plan: Any, where: str, step: int) -> str:
    graph = _graph_at(plan, where)
    if graph is None:
        return ""
    for i, (_, data) in enumerate(graph.nodes()):
        if i == step:
            if data["kind"] == "call":
                return graph.modules[data["module"]].describe()
            return "+" if data["kind"] == "add" else data["kind"]
    return ""


def _graph_at(plan: Any, where: str) -> BlockGraph | None:
    head, _, rest = where.partition("[")
    parts = head.split(".")
    if parts[0] == "embed":
        graph = plan.embed
    elif parts[0] == "head":
        graph = plan.head
    else:
        index = int(parts[1])
        if index >= len(plan.layers):
            return None
        graph = plan.layers[index][1]
    return graph if not rest else None


def _where_text(plan: Any, where: str) -> str:
    if where.startswith("layers."):
        index = int(where.split(".")[1])
        if index < len(plan.layers):
            name = plan.layers[index][0]
            return f"{where} (block '{name}')"
    return where


def _first_difference(target_plan: Any, target: Signature, fit: _Fit) -> str:
    """The first layer and step where the closest importable model differs from the target."""
    if fit.plan is None:
        return f"the closest architecture, {fit.record.model_type}, imports nothing close"
    own_set, theirs_set = difference(target_plan, target, fit.plan)
    # an unset argument (derived from others) differs only because something else does
    own = sorted(
        own_set, key=lambda i: (*_order(i)[:-1], i[2] == "arg" and i[4] is None, _order(i)[-1])
    )
    theirs = sorted(theirs_set, key=_order)
    model_items = [i for i in own if i[0] == "model"]
    arch = f"{fit.record.model_type} ({fit.record.hf_class})"
    if model_items and model_items[0][1] == "layers":
        return f"{arch} has {len(fit.plan.layers)} layers here, the model {model_items[0][2]}"
    for item in own:
        if item[0] == "model":
            continue
        where, step = item[0], item[1]
        mine = _step_text(target_plan, where, step)
        other = _step_text(fit.plan, where, step)
        if item[2] == "arg":
            counter = next(
                (t for t in theirs if t[:2] == item[:2] and t[2] == "arg" and t[3] == item[3]),
                None,
            )
            value = _show(counter[4]) if counter else "no such argument"
            detail = f"argument {item[3]}={_show(item[4])}; {arch} can only give {value}"
        else:
            detail = f"{arch} has {other or 'nothing'} there"
        return f"{_where_text(target_plan, where)}, step {step} {mine}: {detail}"
    for item in model_items:
        return f"[model] {item[1]} = {item[2]}: {arch} cannot express it"
    return f"{arch} differs in a way that has no name"


def _show(value: Any) -> str:
    from blockdsl.printer import format_value

    if isinstance(value, _SlotContents):
        return value.text
    return format_value(list(value) if isinstance(value, tuple) else value)


# ==================================================================== public: config
def hf_config_for(model_or_config: Any) -> tuple[str, Any]:
    """``(model_type, transformers config)`` whose import builds exactly this model (a
    ``LanguageModel``, ``ModelConfig``, dict config or anything ``load_config`` takes). Raises
    ``HFExportError`` saying which block and step has no transformers counterpart."""
    with _quiet_transformers():
        model_type, hf_config = _find_config(model_or_config)
    # A class default outside the vocabulary (FlexOlmo's pad_token_id 100277) is no token of
    # this model; the embedding refuses a padding index it does not have.
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(hf_config, name, None)
        if isinstance(value, int) and not 0 <= value < hf_config.vocab_size:
            _set_token_id(hf_config, name, None)
    return model_type, hf_config


def _set_token_id(hf_config: Any, name: str, value: int | None) -> None:
    """Set a special token id; where the config class requires one (ModernBERT-Decoder's
    ``bos_token_id`` and ``pad_token_id`` are typed ``int``, and its strict dataclass refuses
    None), no id becomes the first token of the vocabulary, which the model itself never
    treats apart (a padding index only stops gradients)."""
    try:
        setattr(hf_config, name, value)
    except Exception as error:  # huggingface_hub's StrictDataclassFieldValidationError
        if value is not None or "StrictDataclass" not in type(error).__name__:
            raise
        setattr(hf_config, name, 0)


def _find_config(model_or_config: Any) -> tuple[str, Any]:
    config = getattr(model_or_config, "config", model_or_config)
    target_plan = _plan(config)
    target = signature(target_plan)
    used = _components(target)
    records = _records()
    numbers = _numbers(target)
    # Closest start first; a tie (a Llama is a Mistral without a window) goes to the
    # architecture the importer lists first, among those that started about as close. So the
    # first listed search that starts exact and runs exact is the answer once the ones listed
    # before it are started: the architectures listed after it are not even surveyed.
    surveyed: list[tuple[int, _Record, set[str]]] = []
    searches: list[_Search] = []
    started: list[tuple[int, int]] = []
    for record in records:
        produced = _producible(record, set(used))
        missing = [c for c in used if c not in produced]
        surveyed.append((len(missing), record, produced))
        if missing:
            continue
        searches.append(_Search(record, target_plan, target, numbers))
        started.append((searches[-1].start(), len(searches) - 1))
        if started[-1][0] == 0 and searches[-1].run().distance == 0:
            fit = _first_listed_fit(searches, started, len(searches) - 1)
            return fit.record.model_type, fit.hf_config
    surveyed.sort(key=lambda r: r[0])  # stable: the first listed of the closest
    if surveyed[0][0]:
        everything = set().union(*(r[2] for r in surveyed))
        for component, (where, step) in used.items():
            if component not in everything:
                raise HFExportError(
                    f"cannot export to Hugging Face: {component} has no counterpart in "
                    "any transformers architecture blockdsl knows",
                    hint=f"{_where_text(target_plan, where)}, step {step}: "
                    f"{_step_text(target_plan, where, step)}",
                )
    started.sort()
    best: _Fit | None = None
    for _, i in started:
        fit = searches[i].run()
        if fit.distance == 0:
            fit = _first_listed_fit(searches, started, i)
            return fit.record.model_type, fit.hf_config
        if best is None or fit.distance < best.distance:
            best = fit
    if best is None:  # every component exists somewhere, but not all in one architecture
        _, record, produced = surveyed[0]
        component = next(c for c in used if c not in produced)
        where, step = used[component]
        raise HFExportError(
            "cannot export to Hugging Face: no transformers architecture has all of "
            + ", ".join(sorted(used)),
            hint=f"{_where_text(target_plan, where)}, step {step} "
            f"{_step_text(target_plan, where, step)}: no counterpart in "
            f"{record.model_type} ({record.hf_class}), the closest",
        )
    raise HFExportError(
        "cannot export to Hugging Face: no transformers architecture computes this model",
        hint=_first_difference(target_plan, target, best),
    )


def _first_listed_fit(searches: list[_Search], started: list[tuple[int, int]], i: int) -> _Fit:
    """The exact fit of ``searches[i]``, or of a search listed before it that started about
    as close (within ``_TIE``) and also runs exact: the closest such, then the first listed."""
    start = next(s for s, j in started if j == i)
    for other_start, j in sorted(started):
        if j < i and other_start <= start + _TIE and searches[j].run().distance == 0:
            return searches[j].run()
    return searches[i].run()


_PRODUCIBLE: dict[tuple[str, bool], set[str]] = {}
#: (model_type, config mapping) -> config kwargs (repr) -> the leaves of its import
_LEAVES: dict[tuple[str, Callable], dict[str, dict[tuple, Any] | None]] = {}


def _producible(record: _Record, needed: set[str] | None = None) -> set[str]:
    """The components an architecture's import can produce: from its default config with
    each boolean field flipped; where that lacks one of ``needed``, also with each field moved
    off its neutral default (a count of 0 made 1, a multiplier of 1 made 0.5, an empty list of
    layer indices given the first layer: ``first_k_dense_replace``, ``residual_multiplier``
    or ``mlp_only_layers`` bring in the dense MLP or the residual ``Scale``)."""
    basic = _trial_components(record, extended=False)
    if needed is None or needed <= basic:
        return basic
    return _trial_components(record, extended=True)


def _trial_components(record: _Record, extended: bool) -> set[str]:
    key = (record.model_type, extended)
    if key not in _PRODUCIBLE:
        search = _Search(record, None, frozenset(), [])
        found: set[str] = set()
        trials: list[dict[str, Any]] = [{}]
        for name, value in search.fields():
            if isinstance(value, bool):
                trials.append({name: not value})
            elif not extended:
                continue
            elif isinstance(value, int) and value == 0:
                trials.append({name: 1})
            elif isinstance(value, float) and value == 1.0:
                trials.append({name: 0.5})
            elif isinstance(value, list) and not value:
                trials.append({name: [0]})
        for kwargs in trials:
            try:
                config = record.config(search.build(kwargs))
            except Exception:
                continue
            found |= _component_names(config)
        _PRODUCIBLE[key] = found
    return _PRODUCIBLE[key]


def _component_names(config: dict) -> set[str]:
    from blockdsl.ast import Call, walk
    from blockdsl.parser import parse

    texts = [config["model"].get("embed", "Embed"), config["model"].get("head", "Norm->Head")]
    for value in config.get("blocks", {}).values():
        texts += value if isinstance(value, list) else [value]
    names = set()
    for text in texts:
        for node in walk(parse(text)):
            if isinstance(node, Call):
                names.add(node.name)
    return names


# ==================================================================== public: weights
def hf_state_dict(model: nn.Module, model_type: str, hf_config: Any) -> dict[str, torch.Tensor]:
    """The transformers checkpoint tensors of ``model`` for ``hf_config``: the importer's
    weight mapping inverted through a probe (see the module docstring)."""
    record = next(r for r in _records() if r.model_type == model_type)
    with _quiet_transformers():
        skeleton = _skeleton(record, hf_config)
    names, shapes, tied = skeleton
    probes: dict[str, torch.Tensor] = {}
    offsets: dict[str, int] = {}
    total = 0
    for name in names:
        if name in tied:
            continue
        count = math.prod(shapes[name])
        probes[name] = torch.arange(total, total + count, dtype=torch.int64).view(shapes[name])
        offsets[name] = total
        total += count
    for name, target in tied.items():
        probes[name] = probes[target]
    mapper = record.mapper(probes)
    record.weights(hf_config, mapper)
    if mapper.missing:
        raise HFExportError(
            f"{model_type}: the importer's weight mapping asks for tensors a "
            f"{record.hf_class} does not have: {', '.join(mapper.missing[:8])}"
        )
    state = model.state_dict()
    values: torch.Tensor | None = None
    covered = torch.zeros(total, dtype=torch.bool)
    for name, ids in mapper.out.items():
        if name not in state:
            raise HFExportError(f"{model_type}: the model has no parameter '{name}'")
        source = state[name].detach()
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64:
            raise HFExportError(
                f"{model_type}: the weight mapping of '{name}' computes values rather than "
                "moving them; it cannot be run backwards"
            )
        if values is None:
            values = torch.empty(total, dtype=source.dtype)
        flat_ids = ids.reshape(-1)
        values[flat_ids] = source.reshape(-1).to(values.dtype)
        covered[flat_ids] = True
    if values is None or not bool(covered.all()):
        missing = [
            n
            for n in probes
            if n not in tied and not bool(covered[_span(n, offsets, shapes)].all())
        ]
        raise HFExportError(f"{model_type}: no blockdsl parameter gives {', '.join(missing[:8])}")
    out = {}
    for name in names:
        source_name = tied.get(name, name)
        start = offsets[source_name]
        out[name] = (
            values[start : start + math.prod(shapes[source_name])].view(shapes[name]).clone()
        )
    return out


def _span(name: str, offsets: dict[str, int], shapes: dict[str, tuple]) -> slice:
    return slice(offsets[name], offsets[name] + math.prod(shapes[name]))


def _skeleton(
    record: _Record, hf_config: Any
) -> tuple[list[str], dict[str, tuple], dict[str, str]]:
    """Names and shapes of a transformers model's checkpoint tensors (built on the meta
    device), and its tied names (``lm_head.weight`` -> ``...embed_tokens.weight``)."""
    transformers = require_transformers()
    cls = getattr(transformers, record.hf_class)
    with torch.device("meta"):
        hf_model = cls(hf_config)
    names, shapes, first = [], {}, {}
    tied: dict[str, str] = {}
    for name, tensor in hf_model.state_dict(keep_vars=True).items():
        shapes[name] = tuple(tensor.shape)
        names.append(name)
        if id(tensor) in first:
            tied[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name
    return names, shapes, tied


# ==================================================================== public: export
def export_hf(
    model_or_path: Any,
    out_dir: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    force: bool = False,
    verify: bool = True,
) -> Path:
    """Write a Hugging Face checkpoint folder for a blockdsl model: ``config.json``,
    ``model.safetensors``, ``generation_config.json`` and, given a ``tokenizer.json``, the
    tokenizer files, so that ``AutoModelForCausalLM.from_pretrained(out_dir)`` and
    ``AutoTokenizer.from_pretrained(out_dir)`` load them.

    ``model_or_path``: a ``LanguageModel``, or what ``blockdsl.load`` takes (a checkpoint
    file, a checkpoint directory, a training run directory: its newest checkpoint, and its
    ``tokenizer.json`` unless ``tokenizer`` is given). An existing non-empty ``out_dir`` is
    replaced only with ``force``; the folder is written beside it and renamed into place.
    With ``verify`` the folder is loaded back with transformers and its logits compared on
    random tokens (raises ``HFExportError`` above 1e-4)."""
    from blockdsl.checkpoint import load, tokenizer_file
    from blockdsl.model import LanguageModel

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise HFExportError(
            f"'{out}' exists and is not empty; not overwriting it",
            hint="choose another folder, or pass force=True (--force) to replace it",
        )
    if isinstance(model_or_path, LanguageModel):
        model = model_or_path
    else:
        source = Path(model_or_path)
        model = load(source)
        if tokenizer is None:
            tokenizer = tokenizer_file(source)
    model_type, hf_cfg = hf_config_for(model)
    record = next(r for r in _records() if r.model_type == model_type)
    transformers = require_transformers()
    hf_cfg.architectures = [record.hf_class]
    # The token ids the tokenizer really has (none without one), not the config class's
    # defaults: a byte tokenizer has no bos/eos, and Llama's default 1/2 would be bytes (and
    # GLM's default pad id 151329 is no row of a small embedding: set before any HF model is
    # built from the config).
    special = _special_tokens(tokenizer, hf_cfg.vocab_size) if tokenizer else {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        _set_token_id(hf_cfg, name, special.get(name))
    state = hf_state_dict(model, model_type, hf_cfg)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with _quiet_transformers():
            hf_model = getattr(transformers, record.hf_class)(hf_cfg)
            hf_model.load_state_dict(state, strict=True)
            hf_model.to(dtype).eval()
            hf_model.save_pretrained(staging)
            hf_model.generation_config.save_pretrained(staging)
            if tokenizer is not None:
                _write_tokenizer(Path(tokenizer), staging, special)
            if verify:
                _verify(model, staging)
        _use_umask(staging)
        _replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Nothing from transformers reaches the terminal meanwhile: the search builds configs
    whose class defaults (token ids such as GPT-2's 50256) lie outside a small vocabulary, and
    transformers logs a warning for each (and an error, with the whole config, for a value a
    config cannot take, such as a layer list Jamba derives itself); its progress bars go too.
    Errors still raise."""
    logging = require_transformers().utils.logging
    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity(logging.CRITICAL)
    logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _use_umask(folder: Path) -> None:
    """``tempfile.mkdtemp`` makes the folder 0700 and safetensors may write 0600: give the
    folder and its files the modes every other writer's get (0777 / 0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _special_tokens(path: str | os.PathLike, vocab: int) -> dict[str, int]:
    """``eos_token_id`` (and ``bos_token_id``) from a tokenizer.json's one special token
    (a trained BPE's end of text), if it has exactly one inside the model's vocabulary."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    specials = [t for t in data.get("added_tokens", []) if t.get("special")]
    if len(specials) == 1 and 0 <= specials[0]["id"] < vocab:
        token_id = specials[0]["id"]
        return {"bos_token_id": token_id, "eos_token_id": token_id}
    return {}


def _write_tokenizer(path: Path, out: Path, special: dict[str, int]) -> None:
    """``tokenizer.json`` and ``tokenizer_config.json`` (a ``PreTrainedTokenizerFast``): the
    same tokenizer, so ``AutoTokenizer`` encodes exactly as the run did."""
    transformers = require_transformers()
    if not path.is_file():
        raise HFExportError(f"no tokenizer file '{path}'")
    try:
        fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    except Exception as exc:
        raise HFExportError(f"'{path}' is not a tokenizers tokenizer.json ({exc})") from None
    if "eos_token_id" in special:
        token = fast.convert_ids_to_tokens(special["eos_token_id"])
        fast.eos_token = fast.bos_token = token
    fast.save_pretrained(out)


def _verify(model: nn.Module, folder: Path) -> None:
    transformers = require_transformers()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    hf_model.eval()
    reference = model
    if any(p.dtype != torch.float32 for p in model.parameters()):  # compare in float32
        from blockdsl.model import build_model

        reference = build_model(model.config, device="meta").to_empty(device="cpu")
        reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    seq = min(16, model.config.context)
    generator = torch.Generator().manual_seed(0)
    idx = torch.randint(0, model.config.vocab, (2, seq), generator=generator)
    device = next(model.parameters()).device
    training = reference.training
    try:
        with torch.no_grad():
            expected = reference.eval()(idx.to(device)).logits.float().cpu()
            got = hf_model(idx).logits
    finally:
        reference.train(training)
    diff = (expected - got).abs().max().item()
    if not diff <= VERIFY_TOLERANCE:
        raise HFExportError(
            f"the exported model's logits differ from the blockdsl model's by {diff:.3g}",
            hint="this is a bug in the importer's mapping for this architecture",
        )


def _replace(staging: Path, out: Path) -> None:
    """Move the written folder to ``out``; an existing ``out`` (allowed by ``force``) is
    moved aside first and deleted only once the new one is in place."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
