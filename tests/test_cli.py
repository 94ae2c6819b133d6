"""The command line, in-process through ``blockdsl.cli.main(argv)`` (plus one subprocess run).

Golden files of the complete ``--show-shapes`` output live in ``tests/fixtures/cli/``;
regenerate them with ``BLOCKDSL_REGEN=1 pytest tests/test_cli.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import networkx as nx
import pydot
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from blockdsl.cli import main
from blockdsl.commands.common import parse_value

FIXTURES = Path(__file__).parent / "fixtures" / "cli"
REGEN = os.environ.get("BLOCKDSL_REGEN") == "1"
SMALL = ["--set", "d_model=64", "--set", "layers=block*2", "--set", "vocab=512"]
SMALL += ["--set", "context=64", "--batch", "2", "--seq", "16"]
SMALL_ATTN = ["--set", "defaults.Attn.heads=4", "--set", "defaults.Attn.kv_heads=2"]
SMALL_MOE = ["--set", "defaults.MoE.experts=4", "--set", "defaults.MoE.hidden=128"]

GOLDEN = {
    "tiny": ["tiny", *SMALL],
    "gpt2": ["gpt2", *SMALL, "--set", "defaults.Attn.heads=4"],
    "mixtral": ["mixtral", *SMALL, *SMALL_ATTN, *SMALL_MOE, "--depth", "2"],
    "prenorm": ["Norm->Attn->+->Norm->MLP->+", *SMALL, *SMALL_ATTN],
    "arctic_pair": [
        "Norm->Attn->+->Norm->MLP->+",
        "Norm->MoE->+",
        *SMALL,
        *SMALL_ATTN,
        *SMALL_MOE,
        "--set",
        "defaults.MLP.hidden=128",
        "--depth",
        "2",
    ],
}


@pytest.fixture(autouse=True)
def _fixed_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.delenv("NO_COLOR", raising=False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ==================================================================== goldens
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_show_shapes_golden(capsys, name):
    code, out, err = run(capsys, "compile", *GOLDEN[name], "--show-shapes")
    assert code == 0, err
    assert "\x1b[" not in out  # no colour codes
    path = FIXTURES / f"{name}.txt"
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(out)
    assert path.exists(), f"missing golden {path}; run with BLOCKDSL_REGEN=1"
    assert out == path.read_text()


def test_show_shapes_rows_and_totals(capsys):
    code, out, _ = run(capsys, "compile", *GOLDEN["prenorm"], "--show-shapes")
    assert code == 0
    assert "(B, T, D) = (2, 16, 64)" in out
    assert "(B, T, V) = (2, 16, 512)" in out
    paths = re.findall(r"^(layers\.\d+\.\w+)", out, re.M)
    assert paths[:6] == [
        "layers.0.norm",
        "layers.0.attn",
        "layers.0.add",
        "layers.0.norm_1",
        "layers.0.mlp",
        "layers.0.add_1",
    ]
    from blockdsl.config import load_config
    from blockdsl.model import ModelPlan, build_model

    config = load_config(
        "Norm->Attn->+->Norm->MLP->+",
        d_model=64,
        layers="block*2",
        vocab=512,
        context=64,
        defaults={"Attn": {"heads": 4, "kv_heads": 2}},
    )
    params = build_model(config).num_params()
    assert f"parameters:        {params:,} " in out
    per_token = ModelPlan(config).flops(16) // 16
    assert f"FLOPs per token:   {per_token:,} " in out


def test_depth_two_shows_attention_and_moe_steps(capsys):
    code, out, _ = run(capsys, "compile", *GOLDEN["arctic_pair"], "--show-shapes")
    assert code == 0
    for step in ("attn/q", "attn/k", "attn/scores", "moe/router", "moe/expert hidden"):
        assert step in out
    assert "(B, H, T, T) = (2, 4, 16, 16)" in out  # scores
    assert "(B, T, E) = (2, 16, 4)" in out  # router logits


def test_depth_zero_is_one_row_per_block(capsys):
    code, out, _ = run(capsys, "compile", *GOLDEN["tiny"], "--show-shapes", "--depth", "0")
    assert code == 0
    assert re.findall(r"^(embed|layers\.\d+|head) ", out, re.M) == [
        "embed",
        "layers.0",
        "layers.1",
        "head",
    ]


def test_shared_label_parameters_counted_once(capsys):
    argv = ["compile", "Norm##n->Attn##a->+->Norm->MLP->+", *SMALL, *SMALL_ATTN, "--show-shapes"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert re.search(r"^layers\.1\.a .*shared with layers\.0\.a\s", out, re.M)
    assert re.search(r"^layers\.1\.n .*shared with layers\.0\.n\s", out, re.M)
    # a block's own label is one module per layer: each layer counts its own
    argv[1] = "Norm#n->Attn#a->+->Norm->MLP->+"
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "shared with" not in out


# ==================================================================== 70B
class _AllocationRecorder(TorchDispatchMode):
    """Records every aten op that produces a tensor with real (non-meta) storage."""

    def __init__(self):
        super().__init__()
        self.real: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                self.real.append(str(func))
        return out


def test_allocation_recorder_can_fail():
    with _AllocationRecorder() as recorder:
        torch.nn.Linear(4, 4)
    assert recorder.real  # the check below is able to see an allocation


LLAMA_70B = [
    "compile",
    "llama",
    "--set",
    "d_model=8192",
    "--set",
    "layers=block*80",
    "--set",
    "vocab=32000",
    "--set",
    "defaults.Attn.heads=64",
    "--set",
    "defaults.Attn.kv_heads=8",
    "--set",
    "defaults.MLP.hidden=28672",
    "--show-shapes",
    "--batch",
    "1",
    "--seq",
    "4096",
]


def test_llama_70b_shapes_fast_exact_and_without_allocation(capsys):
    main(["compile", "tiny", "--show-shapes"])  # warm imports
    capsys.readouterr()
    with _AllocationRecorder() as recorder:
        start = time.perf_counter()
        code = main(LLAMA_70B)
        elapsed = time.perf_counter() - start
    out, err = capsys.readouterr()
    assert code == 0, err
    assert recorder.real == []
    assert elapsed < 2.0, f"--show-shapes of a 70B model took {elapsed:.2f} s"

    V, D, L, H, KV, F = 32000, 8192, 80, 64, 8, 28672
    hd = D // H
    # embed + layers (2 RMSNorm, q, k, v, o, gate/up/down) + final norm + untied head
    expected = V * D + L * (2 * D + D * (H * hd) + 2 * D * (KV * hd) + (H * hd) * D + 3 * D * F)
    expected += D + V * D
    assert expected == 68_976_648_192
    assert f"parameters:        {expected:,} " in out
    assert out.count("layers.79.") >= 6


# ==================================================================== emits
def test_emit_python_prints_each_distinct_block_once(capsys):
    code, out, _ = run(capsys, "compile", *GOLDEN["arctic_pair"], "--emit", "python")
    assert code == 0
    assert out.count("def forward(") == 3  # embed, block, head
    assert "# layers.0-1 (block)" in out
    assert "moe = self.moe(norm_2" in out or "self.moe(" in out


MERMAID_NODE = re.compile(r'^(\w+)(\["[^"]*"\]|\(\("[^"]*"\)\)|\(\["[^"]*"\]\))$')
MERMAID_EDGE = re.compile(r"^(\w+) (-->|-\. residual \.->) (\w+)$")
MERMAID_SUBGRAPH = re.compile(r'^subgraph (\w+)\["[^"]*"\]$')


def check_mermaid(text: str) -> tuple[set[str], list[tuple[str, str, str]]]:
    lines = [line.strip() for line in text.strip().splitlines()]
    assert re.fullmatch(r"(flowchart|graph) (TB|TD|LR|BT|RL)", lines[0])
    nodes: set[str] = set()
    subgraphs: set[str] = set()
    edges = []
    depth = 0
    for line in lines[1:]:
        if m := MERMAID_SUBGRAPH.match(line):
            assert m.group(1) not in subgraphs | nodes
            subgraphs.add(m.group(1))
            depth += 1
        elif line == "end":
            depth -= 1
            assert depth >= 0
        elif re.fullmatch(r"direction (TB|TD|LR|BT|RL)", line):
            pass
        elif m := MERMAID_NODE.match(line):
            assert m.group(1) not in nodes | subgraphs, f"duplicate id {m.group(1)}"
            assert m.group(1) != "end"
            nodes.add(m.group(1))
        elif m := MERMAID_EDGE.match(line):
            edges.append((m.group(1), m.group(2), m.group(3)))
        else:
            raise AssertionError(f"not Mermaid flowchart syntax: {line!r}")
    assert depth == 0
    for source, _, target in edges:
        assert source in nodes and target in nodes, (source, target)
    return nodes, edges


def test_emit_mermaid_is_valid_and_shows_branches(capsys):
    code, out, _ = run(capsys, "compile", *GOLDEN["arctic_pair"], "--emit", "mermaid")
    assert code == 0
    _, edges = check_mermaid(out)
    residual = [e for e in edges if "residual" in e[1]]
    assert residual
    fan_out: dict[str, int] = {}
    for source, _, _ in edges:
        fan_out[source] = fan_out.get(source, 0) + 1
    assert fan_out["b1_x"] >= 3  # the input feeds the two branches' norms and the residual


def test_emit_dot_parses_with_pydot_and_networkx(capsys, tmp_path):
    code, out, _ = run(capsys, "compile", *GOLDEN["arctic_pair"], "--emit", "dot")
    assert code == 0
    (graph,) = pydot.graph_from_dot_data(out)
    assert graph.get_subgraph_list()
    path = tmp_path / "model.dot"
    path.write_text(out)
    g = nx.drawing.nx_pydot.read_dot(path)
    assert "b1_moe" in g and "b1_attn" in g
    assert g.has_edge("b1_x", "b1_norm") and g.has_edge("b1_x", "b1_norm_2")


def test_emit_json_has_graph_and_sizes(capsys, tmp_path):
    target = tmp_path / "model.json"
    code, out, _ = run(capsys, "compile", *GOLDEN["prenorm"], "--emit", "json", "-o", str(target))
    assert code == 0 and out == ""
    import json

    data = json.loads(target.read_text())
    block = data["blocks"][1]
    assert block["paths"] == ["layers.0", "layers.1"]
    assert block["modules"]["attn"]["d_out"] == 64
    assert {"from": "b1_x", "to": "b1_add", "residual": True} in block["edges"]
    assert data["params"] == sum(b["params"] * len(b["paths"]) for b in data["blocks"])


# ==================================================================== other commands
def test_compile_defaults_to_tiny_summary(capsys):
    code, out, _ = run(capsys, "compile")
    assert code == 0
    assert out.startswith("4 layers, d_model=128")
    assert "x + Attn(Norm(x))" in out


def test_check_ok_and_error(capsys):
    code, out, err = run(capsys, "check", "Norm->Attn->+->Norm->MLP->+", "--set", "d_model=64")
    assert code == 0 and out.startswith("ok: ") and out.count("\n") == 1 and err == ""
    code, out, err = run(capsys, "check", "Norm->Atn->+")
    assert code == 2 and out == ""
    assert "unknown component 'Atn'" in err and "^^^" in err and "did you mean 'Attn'?" in err
    assert "Traceback" not in err


def test_check_runs_component_constructors(capsys):
    code, _, err = run(capsys, "check", "Norm->Attn(heads=3)->+", "--set", "d_model=64")
    assert code == 2 and "blockdsl:" in err


def test_set_values_and_errors(capsys):
    assert parse_value("512") == 512
    assert parse_value("1e-5") == 1e-5
    assert parse_value("true") is True
    assert parse_value("rms") == "rms"
    assert parse_value('"rms"') == "rms"
    assert parse_value("block*80") == "block*80"
    code, _, err = run(capsys, "compile", "--set", "d_modle=64")
    assert code == 2 and "did you mean 'd_model'?" in err
    code, _, err = run(capsys, "compile", "--set", "d_model")
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = run(capsys, "compile", "--set", "defaults.Attn.haeds=4")
    assert code == 2 and "haeds" in err


def test_components_listing_and_detail(capsys):
    code, out, _ = run(capsys, "components")
    assert code == 0
    for name in ("Attn", "MLP", "MoE", "Norm", "Embed", "Head"):
        assert re.search(rf"^{name} ", out, re.M)
    code, out, _ = run(capsys, "components", "Attn")
    assert code == 0
    assert re.search(r"^kv_heads\s+int \| none\s+none\s+\S", out, re.M)
    code, _, err = run(capsys, "components", "Atn")
    assert code == 2 and "did you mean 'Attn'?" in err


def test_presets_listing(capsys):
    code, out, _ = run(capsys, "presets")
    assert code == 0
    assert re.search(r"^gpt2\s+124 M\s+GPT-2", out, re.M)
    assert re.search(r"^tiny\s+1.79 M\s", out, re.M)


@pytest.mark.parametrize("command", ["compile", "check", "components", "presets"])
def test_help_shows_an_example(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert "examples:" in out and "blockdsl " + command in out


def test_usage_errors_exit_2(capsys):
    code, _, err = run(capsys, "compile", "--depth", "x")
    assert code == 2 and "invalid int value" in err
    code, _, err = run(capsys, "frobnicate")
    assert code == 2


def test_from_hf_missing_folder_is_a_clean_error(capsys, tmp_path):
    pytest.importorskip("transformers")
    code, _, err = run(capsys, "compile", "--from-hf", str(tmp_path / "nope"))
    assert code == 2
    assert err.startswith("blockdsl: ") and "Traceback" not in err


@pytest.mark.slow
def test_console_entry_has_no_traceback():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run(
        [sys.executable, "-m", "blockdsl", "compile", "Norm->Attn->+->Norm->MLP->"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("blockdsl: ")
    assert "^" in result.stderr
    assert "Traceback" not in result.stderr


def test_from_hf_reads_a_local_checkpoint(capsys, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    hf_model = transformers.LlamaForCausalLM(config)
    hf_model.save_pretrained(tmp_path)
    code, out, err = run(capsys, "compile", "--from-hf", str(tmp_path), "--show-shapes")
    assert code == 0, err
    expected = sum(p.numel() for p in hf_model.parameters())
    assert f"parameters:        {expected:,}" in out
    assert "Attn(heads=4, kv_heads=2" in out


def test_parallel_branches_as_one_list_argument(capsys):
    """The seeds' own syntax: a JSON or Python list of block strings as ONE argument means the
    same as the branches given as separate arguments, for compile and check, and in --set."""
    branches = ["Norm->Attn->+->Norm->MLP->+", "Norm->MoE->+"]
    _, separate, _ = run(capsys, "compile", *branches, "--set", "layers=block*2", "--emit", "json")
    for listed in (json.dumps(branches), repr(branches)):  # JSON, and Python's single quotes
        code, out, err = run(capsys, "compile", listed, "--set", "layers=block*2", "--emit", "json")
        assert code == 0, err
        assert out == separate
        code, out, err = run(capsys, "check", listed)
        assert code == 0 and out.startswith("ok:"), err
    code, out, err = run(capsys, "check", "tiny", "--set", f"blocks.block={branches!r}")
    assert code == 0, err
    assert parse_value(repr(branches)) == branches
    code, _, err = run(capsys, "check", "['Norm->Attn->+', 'Norm->MLP->+'")
    assert code == 2
    assert "a list of block strings must be a JSON or Python list of quoted strings" in err
    code, _, err = run(capsys, "check", "[1, 2]")
    assert code == 2 and "list of block strings" in err


def test_check_lists_labels_shared_across_layers(capsys):
    block = "blocks.block=Norm##ln->Attn->+->Norm#n->MLP->+"
    code, out, err = run(capsys, "check", "tiny", "--set", block, "--set", "layers=block*12")
    assert code == 0, err
    assert "shared across layers: Norm##ln in layers.0-11 (one module)" in out
    assert "#n" not in out  # a block's own label is one module per layer: nothing is tied
    code, out, _ = run(capsys, "check", "gptj", "--set", "d_model=64", "--set", "vocab=64")
    assert code == 0 and "shared across layers" not in out


# ==================================================================== options stated once
def _declared_options():
    """Every ``Option`` a command module declares (module-level names and tuples)."""
    from blockdsl.commands import COMMANDS
    from blockdsl.commands.options import Option

    for command in COMMANDS:
        for value in vars(command).values():
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, Option):
                    yield command.NAME, item


def test_every_option_names_a_parameter_of_its_library_function():
    """The flags are declared against the library's signature: a renamed or removed keyword
    fails here, not at a user's command line."""
    declared = list(_declared_options())
    assert {name for name, _ in declared} >= {"compile", "compare", "search", "train", "data"}
    for name, option in declared:
        parameter = option.parameter()  # raises TypeError when the keyword is gone
        assert parameter.name == option.keyword, (name, option.flag)


def test_options_take_type_and_default_from_the_signature(capsys):
    import argparse
    import inspect

    from blockdsl.commands.options import Option, add_options, options_from

    def library(*, steps: int | None = None, seeds=(0, 1), plot: bool = True, base: str = "x"):
        return steps, seeds, plot, base

    options = [
        Option("--steps", "optimizer steps", library, metavar="N"),
        Option("--seeds", "seeds", library, parse=lambda t: [int(x) for x in t.split(",")]),
        Option("--no-plot", "no plot", library),
        Option("--base", "the base", library),
    ]
    parser = argparse.ArgumentParser(prog="p")
    add_options(parser, options)
    shown = " ".join(parser.format_help().split())
    assert "--seeds SEEDS seeds (default: 0,1)" in shown and "the base (default: x)" in shown
    assert options_from(parser.parse_args([]), options) == {}  # the library's defaults apply
    given = parser.parse_args(["--steps", "3", "--seeds", "4,5", "--no-plot", "--base", "y"])
    assert options_from(given, options) == {"steps": 3, "seeds": [4, 5], "plot": False, "base": "y"}
    assert library(**options_from(given, options)) == (3, [4, 5], False, "y")
    with pytest.raises(SystemExit):
        parser.parse_args(["--steps", "x"])  # the type (int) came from the annotation
    capsys.readouterr()
    with pytest.raises(TypeError, match="has no parameter 'lr'"):
        Option("--lr", "learning rate", library).parameter()
    assert inspect.signature(library).parameters["steps"].default is None


def test_compare_help_defaults_come_from_the_library(capsys):
    import inspect

    from blockdsl.compare import compare

    code, out, _ = run(capsys, "compare", "--help")
    assert code == 0
    base = inspect.signature(compare).parameters["base"].default
    assert f"model for block strings (default: {base})" in " ".join(out.split())


# ==================================================================== components (issue 33.7)
def test_components_descriptions_are_whole_sentences(capsys, monkeypatch):
    """The listing showed the docstring's first line, cut mid-sentence ("the output bias of a
    projection whose other"); every description is now a whole sentence, also in the
    registry (and so in docs/components.md)."""
    from blockdsl.registry import REGISTRY

    for component in REGISTRY.components():
        sentence = component.description
        assert sentence.endswith((".", "!", "?")), (component.name, sentence)
    monkeypatch.setenv("COLUMNS", "1000")  # one line per row: the whole description on it
    code, out, _ = run(capsys, "components")
    assert code == 0
    (bias,) = [line for line in out.splitlines() if line.startswith("Bias ")]
    assert bias.rstrip().endswith(
        "whose other biases are off (RecurrentGemma's attention: ``Attn->Bias``)."
    )
    code, out, _ = run(capsys, "components", "Bias")
    assert code == 0 and "whose other biases are off" in " ".join(out.split())
