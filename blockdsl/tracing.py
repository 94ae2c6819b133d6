"""Live shape tracing: one real forward pass, every node's actual output.

``blockdsl.trace(model, idx)`` runs the model once (eval mode, no gradients) and records, for
every row of its shape table (``blockdsl.shapes``), the tensor the node really produced: its
shape, dtype, mean, standard deviation and largest magnitude. A node whose output holds NaN or
infinity, or whose largest magnitude passes ``explode`` (default ``1e4``), is flagged at that
node, and the first such node is named below the table: the place a new component starts to
misbehave, not the loss many layers later. ``blockdsl compile SPEC --trace`` prints the same
table for a freshly built model on random tokens.

How: each block of the model is a ``torch.fx.GraphModule`` whose nodes are exactly the table's
rows, so during the traced call every block runs through a ``torch.fx.Interpreter`` that
summarises each node's value as it is computed (the tensors themselves are not kept). Steps
inside a component (q/k/v, router, ...) are not graph nodes and have no row in a trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from blockdsl.errors import ConfigError
from blockdsl.lower import BlockModule, module_attributes
from blockdsl.model import LanguageModel, ModelPlan
from blockdsl.registry import Registry
from blockdsl.shapes import Column, Grid, ShapeRow, ShapeTable, lead_cells, shape_table, table_title

__all__ = ["Trace", "TraceRow", "trace"]

EXPLODE = 1e4


@dataclass
class TraceRow:
    """A row of the shape table with what the forward pass produced there (``shape`` None if
    the node never ran, e.g. a child block a router skipped)."""

    row: ShapeRow
    shape: tuple[int, ...] | None = None
    dtype: str = ""
    mean: float | None = None
    std: float | None = None
    absmax: float | None = None
    nan: int = 0
    inf: int = 0
    flags: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.row.path

    @property
    def problem(self) -> bool:
        return bool(self.flags)

    def shape_text(self) -> str:
        if self.shape is None:
            return ""
        symbolic = self.row.symbolic
        if len(symbolic) != len(self.shape):  # not what the plan said: numbers only
            return "(" + ", ".join(str(n) for n in self.shape) + ")"
        sym = ", ".join(symbolic)
        num = ", ".join(str(n) for n in self.shape)
        return f"({sym}) = ({num})"


@dataclass
class Trace:
    """The result of ``blockdsl.trace``: ``rows`` in execution order, the plan's ``table``
    they extend, and the first flagged row (None when every value is finite and tame)."""

    rows: list[TraceRow]
    table: ShapeTable  # the plan's table (steps inside components have no trace row)
    explode: float
    seed: int | None = None

    @property
    def first_problem(self) -> TraceRow | None:
        return next((r for r in self.rows if r.problem), None)

    def __getitem__(self, path: str) -> TraceRow:
        for row in self.rows:
            if row.path == path:
                return row
        raise KeyError(path)

    def grid(self) -> Grid:
        cells = []
        for r in self.rows:
            cells.append(
                [
                    *lead_cells(r.row, r.shape_text()),
                    r.dtype,
                    _number(r.mean),
                    _number(r.std),
                    _number(r.absmax),
                    ", ".join(r.flags),
                ]
            )
        columns = [
            Column("path"),
            Column("component", fold=True),
            Column("output shape"),
            Column("dtype"),
            Column("mean", "right"),
            Column("std", "right"),
            Column("max |x|", "right"),
            Column("flags"),
        ]
        seed = f", seed={self.seed}" if self.seed is not None else ""
        title = table_title(self.table, f"{seed}: one forward pass")
        first = self.first_problem
        if first is None:
            largest = max(
                (r for r in self.rows if r.absmax is not None),
                key=lambda r: r.absmax or 0.0,
                default=None,
            )
            footer = ["all values finite"]
            if largest is not None:
                footer[0] += f"; largest |x| = {_number(largest.absmax)} at {largest.path}"
        else:
            footer = [f"first problem at {first.path} ({first.row.what}): {', '.join(first.flags)}"]
        return Grid(title, columns, cells, footer)

    def __str__(self) -> str:
        return self.grid().text()

    def _repr_html_(self) -> str:
        return self.grid().html()


def _number(value: float | None) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.3g}"


# ==================================================================== recording
def _summary(value: Any, explode: float) -> dict[str, Any] | None:
    if not isinstance(value, torch.Tensor):
        return None
    dtype = str(value.dtype).removeprefix("torch.")
    out: dict[str, Any] = {"shape": tuple(value.shape), "dtype": dtype}
    if not (value.is_floating_point() or value.is_complex()) or value.numel() == 0:
        return out
    x = value.detach().double()
    finite = torch.isfinite(x)
    nan = int(torch.isnan(x).sum())
    inf = int(x.numel() - finite.sum() - nan)
    tame = x[finite]
    out.update(
        mean=float(x.mean()),
        std=float(x.std()) if x.numel() > 1 else 0.0,
        absmax=float(x.abs().max()),
        nan=nan,
        inf=inf,
    )
    flags = []
    if nan:
        flags.append(f"NaN ×{nan}")
    if inf:
        flags.append(f"inf ×{inf}")
    if tame.numel() and float(tame.abs().max()) > explode:
        flags.append(f"exploding (|x| > {explode:g})")
    out["flags"] = flags
    return out


class _Recorder(fx.Interpreter):
    """Runs a block's graph node by node, summarising each node's output into ``sink``."""

    def __init__(self, block: BlockModule, path: str, sink: dict, explode: float) -> None:
        super().__init__(block)
        self.path, self.sink, self.explode = path, sink, explode

    def run_node(self, node: fx.Node) -> Any:
        value = super().run_node(node)
        if node.op in ("call_module", "call_function"):
            self.sink[(self.path, node.name)] = _summary(value, self.explode)
        elif node.op == "output":
            stream = value[0] if isinstance(value, tuple) else value
            self.sink[(self.path, "")] = _summary(stream, self.explode)
        return value


def _block_paths(model: LanguageModel) -> Iterator[tuple[str, BlockModule]]:
    """Every block module of the model with its path in the shape table: the embedding, the
    layers, the head, and the child blocks of combinators (``layers.0.moe[1]``)."""
    tops = [("embed", model.embed)]
    tops += [(f"layers.{i}", layer) for i, layer in enumerate(model.layers)]
    tops.append(("head", model.head))
    for path, block in tops:
        yield from _with_children(path, block)


def _with_children(path: str, block: BlockModule) -> Iterator[tuple[str, BlockModule]]:
    yield path, block
    attributes = module_attributes(block.block_graph)
    for key, spec in block.block_graph.modules.items():
        if not spec.children:
            continue
        module = getattr(block, attributes[key])
        found = [
            m
            for m in _direct_blocks(module)
            if any(m.block_graph is child for child in spec.children)
        ]
        for index, child in enumerate(found):
            yield from _with_children(f"{path}.{attributes[key]}[{index}]", child)


def _direct_blocks(module: nn.Module) -> Iterator[BlockModule]:
    """The BlockModules under ``module`` that are not inside another BlockModule."""
    for child in module.children():
        if isinstance(child, BlockModule):
            yield child
        else:
            yield from _direct_blocks(child)


@contextmanager
def _recording(model: LanguageModel, sink: dict, explode: float) -> Iterator[None]:
    patched = []
    try:
        for path, block in _block_paths(model):
            # (name, default) of each input of the generated forward (``state`` defaults to
            # one None per stateful call, not to None)
            placeholders = [
                (n.target, n.args[0] if n.args else None)
                for n in block.graph.nodes
                if n.op == "placeholder"
            ]

            def forward(*args: Any, _b=block, _p=path, _names=placeholders, **kwargs: Any):
                rest = _names[len(args) :]
                values = list(args) + [kwargs.get(name, default) for name, default in rest]
                return _Recorder(_b, _p, sink, explode).run(*values)

            block.forward = forward  # an instance attribute: nn.Module.__call__ uses it
            patched.append(block)
        yield
    finally:
        for block in patched:
            del block.forward


def trace(
    model: LanguageModel,
    idx: torch.Tensor | None = None,
    *,
    batch: int = 1,
    seq: int | None = None,
    depth: int = 1,
    seed: int = 0,
    explode: float = EXPLODE,
    full_args: bool = False,
    registry: Registry | None = None,
    **context: Any,
) -> Trace:
    """Run ``model`` once on ``idx`` (default: random tokens, ``batch`` × ``seq`` drawn with
    ``seed``; ``seq`` defaults to the context) and return every node's actual output.

    ``depth`` as in ``shape_table`` (0: one row per block; 1: every node; 2: also the nodes of
    combinators' child blocks). ``registry`` is the one the model was built with (default:
    ``blockdsl.REGISTRY``). ``context`` is passed to the model (``positions=``,
    ``memory=``). The model runs in eval mode under ``torch.no_grad`` and is left in the mode
    it was in. ``print(trace(...))`` shows the table; notebooks render it as HTML."""
    if not isinstance(model, LanguageModel):
        raise ConfigError(
            f"blockdsl.trace expects a blockdsl LanguageModel, got {type(model).__name__}"
        )
    config = model.config
    if idx is None:
        seq = config.context if seq is None else seq
        if batch < 1 or seq < 1:
            raise ConfigError("trace: batch and seq must be positive")
        generator = torch.Generator().manual_seed(seed)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        idx = torch.randint(0, config.vocab, (batch, seq), generator=generator).to(device)
    elif idx.dim() != 2:
        raise ConfigError(
            f"trace: idx must be (batch, seq) token ids, got shape {tuple(idx.shape)}"
        )
    else:
        seed = None  # type: ignore[assignment]
    dtype = next((str(p.dtype).removeprefix("torch.") for p in model.parameters()), "float32")
    table = shape_table(
        ModelPlan(config, registry),
        batch=idx.shape[0],
        seq=idx.shape[1],
        depth=depth,
        dtype=dtype if dtype in ("float32", "float16", "bfloat16", "float64") else "float32",
        full_args=full_args,
    )
    sink: dict[tuple[str, str], dict | None] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _recording(model, sink, explode):
            model(idx, **context)
    finally:
        model.train(was_training)

    rows = []
    for row in table.rows:
        if row.kind == "step":  # inside a component: not a node, nothing was recorded
            continue
        summary = _summary(idx, explode) if row.kind == "input" else sink.get((row.block, row.node))
        traced = TraceRow(row, **_fields(summary)) if summary else TraceRow(row)
        if traced.shape is not None and traced.shape != tuple(row.concrete):
            planned = ", ".join(str(n) for n in row.concrete)
            traced.flags.append(f"shape differs from plan ({planned})")
        rows.append(traced)
    return Trace(rows, table, explode, seed)


def _fields(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "flags"} | {
        "flags": list(summary.get("flags", []))
    }
