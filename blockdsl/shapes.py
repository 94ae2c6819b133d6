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
  the block boundaries; component internals (attention scores, MLP hidden units) come on top.

A component's ``shape_steps(d_in, seq, batch, **args)`` returns a list of
``(name, symbolic, concrete, flops)``: ``symbolic`` a tuple of dimension names (``"B"``,
``"H"``, ``"T"``, ...), ``concrete`` the matching sizes, ``flops`` the step's forward FLOPs
for the whole batch (0 where not counted).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from blockdsl.graph import BlockGraph, ModuleSpec
from blockdsl.lower import module_attributes
from blockdsl.model import ModelPlan
from blockdsl.printer import format_value

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

    @property
    def flops_per_token(self) -> int:
        return self.flops // (self.batch * self.seq)


def describe_args(spec: ModuleSpec) -> str:
    """``Attn(heads=64, kv_heads=8, head_dim=128, pos=rope, ...)``: every user-settable
    argument as resolved (model-level values like ``context`` included)."""
    shown = []
    for name in spec.component.user_params:
        value = spec.args.get(name)
        shown.append(f"{name}={format_value(value)}")
    label = f"#{spec.label}" if spec.label else ""
    inner = f"({', '.join(shown)})" if shown else ""
    return f"{spec.written}{label}{inner}"


class _Tabulator:
    def __init__(self, plan: ModelPlan, batch: int, seq: int, depth: int, full_args: bool):
        self.plan = plan
        self.batch, self.seq, self.depth = batch, seq, depth
        self.full_args = full_args
        config = plan.config
        self.symbols = {"D": config.d_model, "V": config.vocab}
        self.rows: list[ShapeRow] = []
        self.owner: dict[int, str] = {}  # id(ModuleSpec) -> path of its first use
        self.values = 0  # Σ size over produced values, per token

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
                if id(spec) in self.owner:
                    continue
                self.owner[id(spec)] = path
            params += spec.params
        for _, data in graph.nodes():
            if data["kind"] in ("call", "add") and data["size"]:
                self.values += data["size"]
        out = graph.nx.nodes[graph.output]["size"]
        sym, num = self.dims(out)
        if name in ("embed", "head"):
            what = "->".join(spec.describe() for spec in graph.modules.values())
        else:
            what = name
        flops = graph.flops(self.seq) * self.batch
        self.rows.append(ShapeRow(path, "block", what, sym, num, params, flops))

    def graph_rows(self, path: str, graph: BlockGraph, level: int) -> None:
        for _, data in graph.nodes():
            kind = data["kind"]
            if kind not in ("call", "add"):
                continue
            sym, num = self.dims(data["size"])
            if data["size"]:
                self.values += data["size"] if level == 0 else 0
            if kind == "add":
                flops = self.seq * (data["size"] or 0) * self.batch
                node_path = f"{path}.{data['name']}"
                self.rows.append(ShapeRow(node_path, "add", "+", sym, num, None, flops, level))
                continue
            spec = graph.modules[data["module"]]
            node_path = f"{path}.{module_attributes(graph)[data['module']]}"
            what = describe_args(spec) if self.full_args else spec.describe()
            flops = spec.flops(self.seq) * self.batch
            # A named block's repetitions share one graph but own distinct modules; only a
            # label (``Name#label``) is one module wherever it is used.
            first = self.owner.get(id(spec)) if spec.label is not None else None
            if first is None:
                self.owner.setdefault(id(spec), node_path)
                params, note = spec.params, ""
            else:
                params, note = None, f"shared with {first}"
            self.rows.append(
                ShapeRow(node_path, "call", what, sym, num, params, flops, level, note)
            )
            if self.depth >= 2:
                self.step_rows(node_path, spec, level + 1)
                for index, child in enumerate(spec.children):
                    self.graph_rows(f"{node_path}[{index}]", child, level + 1)

    def step_rows(self, path: str, spec: ModuleSpec, level: int) -> None:
        hook = spec.component.shape_steps_fn
        if hook is None or spec.d_in is None:
            return
        args = {k: v for k, v in spec.args.items() if k != spec.component.input_size}
        if spec.component.takes_children:
            args["n_children"] = len(spec.children)
        for name, symbolic, concrete, flops in hook(
            d_in=spec.d_in, seq=self.seq, batch=self.batch, **args
        ):
            self.rows.append(
                ShapeRow(
                    f"{path}/{name}", "step", name, tuple(symbolic), tuple(concrete), None,
                    flops, level,
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
    return ShapeTable(
        rows=rows,
        batch=batch,
        seq=seq,
        dtype=dtype,
        params=plan.params(),
        flops=plan.flops(seq) * batch,
        activation_bytes=batch * seq * tab.values * DTYPE_BYTES[dtype],
        d_model=plan.config.d_model,
        vocab=plan.config.vocab,
        layers=len(plan.layers),
        symbols=dict(tab.symbols),
    )


__all__ = ["DTYPE_BYTES", "ShapeRow", "ShapeTable", "describe_args", "shape_table"]
