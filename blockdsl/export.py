"""Exports of a model plan: generated Python, Graphviz dot, Mermaid and JSON.

All work from a ``ModelPlan`` (no module is allocated). Each *distinct* block is exported
once: the embedding, every named block (however often it is repeated in ``layers``), every
inline layer, and the head.

In the drawings a call is a box labelled with its component, a ``+`` a small circle; the edge
that carries the residual (the ``tap`` operand of a ``+``) is dashed and labelled
``residual``, so that skip connections and parallel branches (several edges leaving one
value) are visible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from blockdsl.graph import BlockGraph
from blockdsl.lower import generated_code, module_attributes
from blockdsl.model import ModelPlan


@dataclass
class DistinctBlock:
    name: str  # "embed", "head", a named block, or the inline layer's text
    paths: list[str]  # "layers.0", "layers.1", ...
    graph: BlockGraph

    @property
    def where(self) -> str:
        """``layers.0-3`` for a contiguous run, else the paths joined by commas."""
        if len(self.paths) == 1:
            return self.paths[0]
        indices = [int(p.split(".")[1]) for p in self.paths]
        if indices == list(range(indices[0], indices[0] + len(indices))):
            return f"layers.{indices[0]}-{indices[-1]}"
        return ", ".join(self.paths)


def distinct_blocks(plan: ModelPlan) -> list[DistinctBlock]:
    blocks = {id(plan.embed): DistinctBlock("embed", ["embed"], plan.embed)}
    for index, (name, graph) in enumerate(plan.layers):
        entry = blocks.setdefault(id(graph), DistinctBlock(name, [], graph))
        entry.paths.append(f"layers.{index}")
    blocks[id(plan.head)] = DistinctBlock("head", ["head"], plan.head)
    return list(blocks.values())


# ==================================================================== python
def to_python(plan: ModelPlan) -> str:
    """The generated ``forward`` of every distinct block (what ``BlockModule.code`` shows once
    the model is built), each under a comment saying where it is used."""
    out = []
    for block in distinct_blocks(plan):
        src = generated_code(block.graph)
        code = "\n".join(line.rstrip() for line in src.strip("\n").splitlines())
        out.append(f"# {block.where} ({block.name}): {_source(block.graph)}\n{code}\n")
    return "\n".join(out)


def _source(graph: BlockGraph) -> str:
    return " ".join(graph.source.split())


# ==================================================================== graph views
def _node_label(graph: BlockGraph, data: dict[str, Any]) -> str:
    kind = data["kind"]
    if kind == "call":
        return graph.modules[data["module"]].describe()
    if kind == "add":
        return "+"
    return "idx" if graph.role == "embed" and kind == "input" else data["name"]


def _edges(graph: BlockGraph) -> list[tuple[int, int, bool]]:
    """``(source, target, is_residual)`` in execution order."""
    edges = []
    for node, data in graph.nodes():
        for position, source in enumerate(data["inputs"]):
            edges.append((source, node, data["kind"] == "add" and position == 0))
    return edges


def _ids(plan: ModelPlan) -> list[tuple[str, DistinctBlock, dict[int, str]]]:
    """A prefix per distinct block and a unique id per node: ``b1_attn``."""
    out = []
    for index, block in enumerate(distinct_blocks(plan)):
        prefix = f"b{index}"
        ids = {node: f"{prefix}_{data['name']}" for node, data in block.graph.nodes()}
        out.append((prefix, block, ids))
    return out


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(plan: ModelPlan) -> str:
    """Graphviz ``digraph``: one cluster of nodes per distinct block, then the edges."""
    lines = [
        "digraph blockdsl {",
        "  rankdir=TB;",
        '  node [shape=box, fontname="Helvetica"];',
    ]
    edges: list[str] = []
    for prefix, block, ids in _ids(plan):
        graph = block.graph
        title = f"{block.where} ({block.name}): {_source(graph)}"
        lines.append(f"  subgraph cluster_{prefix} {{")
        lines.append(f"    label={_dot_quote(title)};")
        for node, data in graph.nodes():
            attrs = [f"label={_dot_quote(_node_label(graph, data))}"]
            if data["kind"] == "add":
                attrs.append("shape=circle")
            elif data["kind"] in ("input", "output"):
                attrs.append("shape=ellipse")
            lines.append(f"    {ids[node]} [{', '.join(attrs)}];")
        lines.append("  }")
        # Edges at the top level: readers that ignore clusters' contents (networkx's
        # read_dot) still see the whole graph.
        for source, target, residual in _edges(graph):
            style = ' [style=dashed, label="residual"]' if residual else ""
            edges.append(f"  {ids[source]} -> {ids[target]}{style};")
    lines += edges
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def to_mermaid(plan: ModelPlan) -> str:
    """Mermaid ``flowchart``: one subgraph per distinct block."""
    lines = ["flowchart TB"]
    for prefix, block, ids in _ids(plan):
        graph = block.graph
        title = f"{block.where} ({block.name})"
        lines.append(f"  subgraph {prefix}[{_mermaid_text(title)}]")
        lines.append("    direction TB")
        for node, data in graph.nodes():
            label = _mermaid_text(_node_label(graph, data))
            if data["kind"] == "add":
                lines.append(f"    {ids[node]}(({label}))")
            elif data["kind"] in ("input", "output"):
                lines.append(f"    {ids[node]}([{label}])")
            else:
                lines.append(f"    {ids[node]}[{label}]")
        for source, target, residual in _edges(graph):
            arrow = "-. residual .->" if residual else "-->"
            lines.append(f"    {ids[source]} {arrow} {ids[target]}")
        lines.append("  end")
    return "\n".join(lines) + "\n"


# ==================================================================== json
def to_json_data(plan: ModelPlan, seq: int | None = None) -> dict[str, Any]:
    """The plan as plain data: configuration, totals and every distinct block's nodes, edges
    and modules with their sizes, parameter counts and FLOPs (one sequence of ``seq``)."""
    seq = plan.config.context if seq is None else seq
    blocks = []
    for _prefix, block, ids in _ids(plan):
        graph = block.graph
        attributes = module_attributes(graph)
        nodes = []
        for node, data in graph.nodes():
            entry: dict[str, Any] = {
                "id": ids[node],
                "kind": data["kind"],
                "name": data["name"],
                "inputs": [ids[i] for i in data["inputs"]],
                "size": data["size"],
            }
            if data["kind"] == "call":
                entry["module"] = attributes[data["module"]]
            nodes.append(entry)
        modules = {
            attributes[key]: {
                "component": spec.component.name,
                "written": spec.written,
                "label": spec.label,
                "args": _jsonable(spec.args),
                "d_in": spec.d_in,
                "d_out": spec.d_out,
                "params": spec.params,
                "flops": spec.flops(seq),
                "children": len(spec.children),
            }
            for key, spec in graph.modules.items()
        }
        blocks.append(
            {
                "name": block.name,
                "paths": block.paths,
                "source": _source(graph),
                "expression": graph.expression(),
                "params": graph.params(),
                "flops": graph.flops(seq),
                "nodes": nodes,
                "edges": [
                    {"from": ids[s], "to": ids[t], "residual": r} for s, t, r in _edges(graph)
                ],
                "modules": modules,
            }
        )
    return {
        "config": plan.config.to_dict(),
        "params": plan.params(),
        "seq": seq,
        "flops": plan.flops(seq),
        "flops_per_token": plan.flops(seq) // seq,
        "blocks": blocks,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def to_json(plan: ModelPlan, seq: int | None = None) -> str:
    return json.dumps(to_json_data(plan, seq), indent=2) + "\n"


EMITTERS = {"python": to_python, "dot": to_dot, "mermaid": to_mermaid, "json": to_json}

__all__ = [
    "EMITTERS",
    "DistinctBlock",
    "distinct_blocks",
    "to_dot",
    "to_json",
    "to_json_data",
    "to_mermaid",
    "to_python",
]
