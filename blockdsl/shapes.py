"""Shape tables: every node of a model plan with its output shape, parameters and FLOPs.

Computed purely from a ``ModelPlan`` (the validated graphs, before any module exists): no
parameter or activation memory is allocated, so a 70-billion-parameter configuration is
tabulated in milliseconds.

Rows, in execution order (``depth`` picks how much is shown):

* depth 0: one row per block (the embedding, every layer, the head);
* depth 1: one row per node of each block: module calls and residual ``+`` (the default);
* depth 2: also the steps inside components that declare them (a ``shape_steps`` static
  method: q/k/v and scores inside attention, router and experts inside MoE) and the nodes of
  a combinator's child blocks.

Totals:

* parameters: every distinct module once (a label's shared module and a tied head once);
* FLOPs per token: forward FLOPs of one sequence of length ``T`` divided by ``T`` (the
  components' own ``flops`` declarations; each ``+`` counts one add per feature);
* activation memory: ``B * T * bytes * Σ size(v)`` over every value ``v`` a forward pass
  produces at graph level (the output of every module call and every ``+``, in every block,
  the logits included; token ids and the steps inside components are not counted), with
  ``bytes`` the element size of ``dtype`` (4 for float32). It is the memory autograd keeps for
  the block boundaries; component internals (attention scores, MLP hidden units) come on top;
* decoding state: what ``generate`` keeps for ``B`` sequences of ``T`` positions (the
  components' ``state_size``: attention's K/V cache, convolution windows, recurrent states),
  shown when the model has any.

A component's ``shape_steps(d_in, seq, batch, **args)`` returns a list of
``(name, symbolic, concrete, flops)``: ``symbolic`` a tuple of dimension names (``"B"``,
``"H"``, ``"T"``, ...), ``concrete`` the matching sizes, ``flops`` the step's forward FLOPs
for the whole batch (0 where not counted). A fifth element, ``saved``, optionally says how
many tensors of that shape the forward keeps for backward (default 1; 0 for a step whose value
is never stored whole, like a scan's per-position states): the training memory estimate
(``blockdsl.train.memory``) sums ``saved × size`` over the steps, so a component whose forward
keeps more than its listed outputs (custom autograd functions, chunked scans) declares it here.
A sixth, ``workspace``, says how many tensors of that shape its backward allocates at once and
frees before returning (a chunked scan's recomputed states): the estimate adds the largest
such workspace of the model once, since backward runs one component at a time.
"""

from __future__ import annotations

import html
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blockdsl.graph import BlockGraph, ModuleSpec
from blockdsl.lower import module_attributes
from blockdsl.printer import format_int, format_value, human, human_bytes

if TYPE_CHECKING:  # an annotation only: blockdsl.model imports this module on use
    from blockdsl.model import ModelPlan

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass
class ShapeRow:
    """One line of the table. ``params`` is None where nothing is owned (``+``, steps, a
    second use of a shared module); ``note`` says why (``shared with layers.0.attn``)."""

    path: str
    kind: str  # "input" | "block" | "call" | "add" | "step"
    what: str  # the component with its resolved arguments, "+", or a step's description
    symbolic: tuple[str, ...]
    concrete: tuple[int, ...]
    params: int | None
    flops: int
    level: int = 0  # nesting (1 inside a component or a child block)
    note: str = ""
    # Where the row's value is computed: the path of its block module and the node's name in
    # that block's generated code ("" for a whole block's row); used by ``blockdsl.trace``.
    block: str = ""
    node: str = ""
    saved: int = 1  # tensors of this shape kept for backward (a step's declared ``saved``)
    workspace: int = 0  # tensors of this shape its backward allocates transiently

    @property
    def shape(self) -> str:
        """``(B, T, D) = (8, 256, 512)``."""
        sym = ", ".join(self.symbolic)
        num = ", ".join(str(n) for n in self.concrete)
        return f"({sym}) = ({num})"


@dataclass
class ShapeTable:
    rows: list[ShapeRow]
    batch: int
    seq: int
    dtype: str
    params: int
    flops: int  # forward FLOPs of the whole batch
    activation_bytes: int
    d_model: int
    vocab: int
    layers: int
    symbols: dict[str, int] = field(default_factory=dict)
    state_bytes: int = 0  # decoding state of B sequences of T positions (docs/generation.md)

    @property
    def flops_per_token(self) -> int:
        return self.flops // (self.batch * self.seq)

    def __str__(self) -> str:
        return shape_grid(self).text()

    def _repr_html_(self) -> str:
        return shape_grid(self).html()


def _slot_positions(spec: ModuleSpec, name: str) -> int:
    """Values a slot's block produces per position for each of its features: one per head for
    a per-head slot, none for a ``scores`` block (its logits are the attention's explicit
    scores, counted by train/memory.py)."""
    declared = spec.component.slots[name]
    if declared.layout == "scores":
        return 0
    if declared.layout == "heads" and declared.heads:
        return declared.heads(d_in=spec.d_in, **spec.args)
    return 1


def _kept_values(graph: BlockGraph, per_position: int = 1) -> int:
    """Features per position that a block keeps for backward: the output of every call and
    residual ``+``, and of the calls inside its mixers' slots."""
    total = 0
    for _, data in graph.nodes():
        if data["kind"] not in ("call", "add"):
            continue
        total += (data["size"] or 0) * per_position
        if data["kind"] == "call":
            spec = graph.modules[data["module"]]
            for name, slot in spec.slots.items():
                total += _kept_values(slot, per_position * _slot_positions(spec, name))
    return total


def describe_args(spec: ModuleSpec) -> str:
    """``Attn(heads=64, kv_heads=8, head_dim=128, pos=rope, ...)``: every user-settable
    argument as resolved (model-level values like ``context`` included)."""
    shown = []
    for name in spec.component.user_params:
        value = spec.args.get(name)
        shown.append(f"{name}={format_value(value)}")
    inner = f"({', '.join(shown)})" if shown else ""
    return f"{spec.written}{spec.label_text}{inner}"


def _shared_key(spec: ModuleSpec, instance: str) -> object:
    """What identifies a labelled module: the spec for a model-global ``##label``; the spec in
    one block instance for a ``#label`` (repetitions of a named block share the spec)."""
    return id(spec) if spec.global_label else (id(spec), instance)


class _Tabulator:
    def __init__(self, plan: ModelPlan, batch: int, seq: int, depth: int, full_args: bool):
        self.plan = plan
        self.batch, self.seq, self.depth = batch, seq, depth
        self.full_args = full_args
        config = plan.config
        self.symbols = {"D": config.d_model, "V": config.vocab}
        self.rows: list[ShapeRow] = []
        # a labelled module -> path of its first use (see _shared_key)
        self.owner: dict[object, str] = {}

    def dims(self, size: int | None) -> tuple[tuple[str, ...], tuple[int, ...]]:
        if size is None:  # token ids
            return ("B", "T"), (self.batch, self.seq)
        for symbol, value in self.symbols.items():
            if value == size:
                return ("B", "T", symbol), (self.batch, self.seq, size)
        return ("B", "T", str(size)), (self.batch, self.seq, size)

    def blocks(self) -> Iterator[tuple[str, str, BlockGraph]]:
        yield "embed", "embed", self.plan.embed
        for index, (name, graph) in enumerate(self.plan.layers):
            yield f"layers.{index}", name, graph
        yield "head", "head", self.plan.head

    def run(self) -> list[ShapeRow]:
        embed_in = self.plan.embed.nx.nodes[self.plan.embed.input]
        sym, num = self.dims(embed_in["size"])
        self.rows.append(ShapeRow("idx", "input", "token ids", sym, num, None, 0))
        for path, name, graph in self.blocks():
            if self.depth <= 0:
                self.block_row(path, name, graph)
            else:
                self.graph_rows(path, graph, level=0)
        return self.rows

    def block_row(self, path: str, name: str, graph: BlockGraph) -> None:
        params = 0
        for spec in graph.modules.values():
            if spec.label is not None:
                if _shared_key(spec, path) in self.owner:
                    continue
                self.owner[_shared_key(spec, path)] = path
            params += spec.params
        out = graph.nx.nodes[graph.output]["size"]
        sym, num = self.dims(out)
        if name in ("embed", "head"):
            what = "->".join(spec.describe() for spec in graph.modules.values())
        else:
            what = name
        flops = graph.flops(self.seq) * self.batch
        self.rows.append(ShapeRow(path, "block", what, sym, num, params, flops, block=path))

    def graph_rows(
        self,
        path: str,
        graph: BlockGraph,
        level: int,
        instance: str | None = None,
    ) -> None:
        """Rows of ``graph``'s calls and adds."""
        instance = instance or path  # the block instance (layers.3) that owns #labels
        for _, data in graph.nodes():
            kind = data["kind"]
            if kind not in ("call", "add"):
                continue
            sym, num = self.dims(data["size"])
            if kind == "add":
                flops = self.seq * (data["size"] or 0) * self.batch
                node_path = f"{path}.{data['name']}"
                self.rows.append(
                    ShapeRow(
                        node_path, "add", "+", sym, num, None, flops, level,
                        block=path, node=data["name"],
                    )
                )  # fmt: skip
                continue
            spec = graph.modules[data["module"]]
            node_path = f"{path}.{module_attributes(graph)[data['module']]}"
            what = describe_args(spec) if self.full_args else spec.describe()
            flops = spec.flops(self.seq) * self.batch
            # A named block's repetitions share one graph but own distinct modules; a label is
            # one module within its block instance (#label) or the whole model (##label).
            key = _shared_key(spec, instance)
            first = self.owner.get(key) if spec.label is not None else None
            if first is None:
                self.owner.setdefault(key, node_path)
                params, note = spec.params, ""
            else:
                params, note = None, f"shared with {first}"
            self.rows.append(
                ShapeRow(
                    node_path, "call", what, sym, num, params, flops, level, note,
                    block=path, node=data["name"],
                )
            )  # fmt: skip
            if self.depth >= 2:
                self.step_rows(node_path, spec, level + 1)
                for index, child in enumerate(spec.children):
                    self.graph_rows(f"{node_path}[{index}]", child, level + 1, instance)
            if self.depth >= 2:
                for name, slot in spec.slots.items():
                    self.graph_rows(f"{node_path}[{name}=]", slot, level + 1, instance)

    def step_rows(self, path: str, spec: ModuleSpec, level: int) -> None:
        hook = spec.component.shape_steps_fn
        if hook is None or spec.d_in is None:
            return
        args = {k: v for k, v in spec.args.items() if k != spec.component.input_size}
        if spec.component.takes_children:
            args["n_children"] = len(spec.children)
        for step in hook(d_in=spec.d_in, seq=self.seq, batch=self.batch, **args):
            name, symbolic, concrete, flops = step[:4]
            saved = step[4] if len(step) > 4 else 1
            workspace = step[5] if len(step) > 5 else 0
            self.rows.append(
                ShapeRow(
                    f"{path}/{name}", "step", name, tuple(symbolic), tuple(concrete), None,
                    flops, level, saved=saved, workspace=workspace,
                )
            )  # fmt: skip


def shape_table(
    plan: ModelPlan,
    *,
    batch: int = 1,
    seq: int | None = None,
    depth: int = 1,
    dtype: str = "float32",
    full_args: bool = False,
) -> ShapeTable:
    """The shape table of ``plan`` for ``batch`` sequences of ``seq`` tokens (default: the
    model's context)."""
    seq = plan.config.context if seq is None else seq
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPE_BYTES)}")
    tab = _Tabulator(plan, batch, seq, depth, full_args)
    rows = tab.run()
    values = sum(_kept_values(graph) for _, _, graph in tab.blocks())
    return ShapeTable(
        rows=rows,
        batch=batch,
        seq=seq,
        dtype=dtype,
        params=plan.params(),
        flops=plan.flops(seq) * batch,
        activation_bytes=batch * seq * values * DTYPE_BYTES[dtype],
        d_model=plan.config.d_model,
        vocab=plan.config.vocab,
        layers=len(plan.layers),
        symbols=dict(tab.symbols),
        state_bytes=batch * plan.state_size(seq) * DTYPE_BYTES[dtype],
    )


# ==================================================================== rendering
@dataclass(frozen=True)
class Column:
    header: str
    justify: str = "left"  # "left" | "right"
    fold: bool = False  # may wrap (long component descriptions); other columns never do


@dataclass
class Grid:
    """A table as text: a title line, columns, rows of cells and footer lines. The terminal
    (``print``/``text``, rich) and notebooks (``html``) render the same cells, so the shape
    table of ``compile --show-shapes`` and the trace of ``--trace`` share one layout."""

    title: str
    columns: list[Column]
    rows: list[list[str]]
    footer: list[str] = field(default_factory=list)

    def rich(self) -> Any:
        from rich import box
        from rich.table import Table

        grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
        for column in self.columns:
            grid.add_column(
                column.header,
                justify=column.justify,  # type: ignore[arg-type]
                no_wrap=not column.fold,
                overflow="fold" if column.fold else "ellipsis",
            )
        for cells in self.rows:
            grid.add_row(*cells)
        return grid

    def print(self, console: Any) -> None:
        """Print to a ``rich.console.Console`` (the command line's)."""
        console.print(self.title)
        console.print(self.rich())
        for line in self.footer:
            console.print(line)

    def text(self, width: int = 120) -> str:
        """Plain text, ``width`` columns wide, no colour."""
        from rich.console import Console

        out = io.StringIO()
        console = Console(
            file=out, width=width, no_color=True, highlight=False, markup=False, emoji=False
        )
        self.print(console)
        return out.getvalue()

    def html(self) -> str:
        """An HTML ``<table>`` for notebooks (``_repr_html_``)."""
        esc = html.escape
        cell = "padding:1px 8px;white-space:pre;font-family:monospace;text-align:{}"
        head = "".join(
            f'<th style="{cell.format(c.justify)}">{esc(c.header)}</th>' for c in self.columns
        )
        body = "".join(
            "<tr>"
            + "".join(
                f'<td style="{cell.format(c.justify)}">{esc(v)}</td>'
                for c, v in zip(self.columns, cells)
            )
            + "</tr>"
            for cells in self.rows
        )
        lines = "".join(f"<div>{esc(line)}</div>" for line in self.footer)
        return (
            f'<div class="blockdsl-table"><div>{esc(self.title)}</div>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f'<div style="font-family:monospace;white-space:pre">{lines}</div></div>'
        )


LEAD_COLUMNS = [Column("path"), Column("component", fold=True), Column("output shape")]


def lead_cells(row: ShapeRow, shape: str | None = None) -> list[str]:
    """The path, component and output-shape cells of a row (``shape`` replaces the planned
    shape, as a trace does with the measured one)."""
    indent = "  " * row.level
    what = row.what if row.kind != "step" else f"· {row.what}"
    return [indent + row.path, indent + what, row.shape if shape is None else shape]


def table_title(table: ShapeTable, extra: str = "") -> str:
    symbols = ", ".join(f"{k}={v}" for k, v in table.symbols.items())
    return (
        f"B={table.batch}, T={table.seq}, {symbols}, {table.layers} layers, "
        f"dtype={table.dtype}{extra}"
    )


def shape_grid(table: ShapeTable) -> Grid:
    """The ``--show-shapes`` table: every row's shape, parameters and FLOPs, then totals."""
    rows = []
    for row in table.rows:
        params = format_int(row.params) if row.params is not None else ""
        rows.append([*lead_cells(row), row.note or params, human(row.flops) if row.flops else ""])
    footer = [
        f"parameters:        {format_int(table.params)} ({human(table.params, count=True)})",
        f"FLOPs per token:   {format_int(table.flops_per_token)} "
        f"({human(table.flops_per_token)}; forward, T={table.seq})",
        f"forward FLOPs:     {format_int(table.flops)} ({human(table.flops)}; B·T tokens)",
        f"activation memory: {format_int(table.activation_bytes)} bytes "
        f"({human_bytes(table.activation_bytes)}; B·T·{table.dtype} × Σ node output sizes)",
    ]
    if table.state_bytes:
        footer.append(
            f"decoding state:    {format_int(table.state_bytes)} bytes "
            f"({human_bytes(table.state_bytes)}; B sequences of T positions, {table.dtype})"
        )
    columns = [*LEAD_COLUMNS, Column("params", "right"), Column("FLOPs", "right")]
    return Grid(table_title(table), columns, rows, footer)


__all__ = [
    "DTYPE_BYTES",
    "Column",
    "Grid",
    "ShapeRow",
    "ShapeTable",
    "describe_args",
    "shape_grid",
    "shape_table",
]
