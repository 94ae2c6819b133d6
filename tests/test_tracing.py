"""Live shape tracing: ``blockdsl.trace`` and ``blockdsl compile --trace``.

The golden file ``tests/fixtures/cli/trace_tiny.txt`` is the complete ``--trace`` output for the
tiny preset (seeded weights and tokens); regenerate with ``BLOCKDSL_REGEN=1`` and review.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import blockdsl
from blockdsl.cli import main
from blockdsl.model import ModelPlan
from blockdsl.registry import REGISTRY
from blockdsl.tracing import trace

FIXTURES = Path(__file__).parent / "fixtures" / "cli"
REGEN = os.environ.get("BLOCKDSL_REGEN") == "1"
SMALL = ["--set", "d_model=64", "--set", "layers=block*2", "--set", "vocab=512"]
SMALL += ["--set", "context=64", "--batch", "2", "--seq", "16"]
TINY = {"d_model": 32, "vocab": 64, "context": 16}


class Poison(nn.Module):
    """Turns every value into NaN (a component with a bug)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * float("nan")


class Blowup(nn.Module):
    """Finite but far too large."""

    def __init__(self, d_model: int, gain: float = 1e6) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


@pytest.fixture
def registry():
    reg = REGISTRY.copy()
    reg.register("Poison")(Poison)
    reg.register("Blowup")(Blowup)
    return reg


@pytest.fixture(autouse=True)
def _fixed_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.delenv("NO_COLOR", raising=False)


def test_trace_golden_tiny(capsys):
    code = main(["compile", "tiny", *SMALL, "--trace"])
    out, err = capsys.readouterr()
    assert code == 0, err
    path = FIXTURES / "trace_tiny.txt"
    if REGEN:
        path.write_text(out)
    assert out == path.read_text()


@pytest.mark.slow
def test_trace_rows_follow_the_shape_table():
    model = blockdsl.build_model("tiny", **TINY)
    result = trace(model, batch=2, seq=8)
    table_paths = [row.path for row in result.table.rows]
    assert [r.path for r in result.rows] == table_paths
    for r in result.rows[1:]:
        assert r.shape == tuple(r.row.concrete)
        assert r.dtype == "float32" and r.std is not None and r.std > 0
        assert not r.flags
    assert result.first_problem is None
    assert result["head.head"].shape == (2, 8, 64)
    # the statistics are those of the real forward
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model.eval()(idx).logits
    assert result["head.head"].mean == pytest.approx(logits.double().mean().item(), rel=1e-6)
    assert result["head.head"].absmax == pytest.approx(logits.abs().max().item(), rel=1e-6)


def test_nan_is_flagged_at_its_node(registry):
    spec = {"block": "Norm->Attn->+->Norm->Poison->+->Norm->MLP->+"}
    model = blockdsl.build_model("tiny", **TINY, layers="block*2", blocks=spec, registry=registry)
    result = trace(model, seq=8, registry=registry)
    first = result.first_problem
    assert first is not None and first.path == "layers.0.poison"
    assert first.flags == [f"NaN ×{8 * 32}"]
    before = result.rows[: result.rows.index(first)]
    assert before and all(not r.flags for r in before)
    assert "first problem at layers.0.poison (Poison): NaN ×256" in str(result)


def test_exploding_values_are_flagged(registry):
    model = blockdsl.build_model(
        "tiny", **TINY, layers="block", blocks={"block": "Norm->Blowup->+"}, registry=registry
    )
    result = trace(model, seq=4, registry=registry)
    assert result.first_problem.path == "layers.0.blowup"
    assert result.first_problem.flags == ["exploding (|x| > 10000)"]
    assert trace(model, seq=4, registry=registry, explode=1e9).first_problem is None


def test_cli_trace_flags_nan_and_exits_1(capsys):
    REGISTRY.register("PoisonCLI", replace=True)(Poison)
    try:
        code = main(["compile", "Norm->PoisonCLI->+", *SMALL, "--trace"])
    finally:
        REGISTRY.unregister("PoisonCLI")
    out, _ = capsys.readouterr()
    assert code == 1
    flagged = [line for line in out.splitlines() if "NaN" in line]
    assert flagged[0].startswith("layers.0.poisoncli ")
    assert "first problem at layers.0.poisoncli (PoisonCLI)" in out


def test_child_blocks_and_depth_zero():
    block = "Norm->MoE[MLP, Norm->MLP]->+"
    model = blockdsl.build_model("tiny", **TINY, layers="block", blocks={"block": block})
    deep = trace(model, seq=8, depth=2)
    assert deep["layers.0.moe[1].norm"].shape == (1, 8, 32)
    assert deep["layers.0.moe[0].mlp"].std > 0
    assert not any(r.row.kind == "step" for r in deep.rows)
    blocks = trace(model, seq=8, depth=0)
    assert [r.path for r in blocks.rows] == ["idx", "embed", "layers.0", "head"]
    assert blocks["head"].shape == (1, 8, 64)


def test_trace_leaves_the_model_as_it_was():
    model = blockdsl.build_model("tiny", **TINY).train()
    idx = torch.randint(0, 64, (1, 8))
    before = model.eval()(idx)
    model.train()
    trace(model, idx)
    assert model.training
    assert all("forward" not in vars(m) for m in model.modules())
    torch.testing.assert_close(model.eval()(idx), before)


def test_trace_rejects_bad_input():
    model = blockdsl.build_model("tiny", **TINY)
    with pytest.raises(blockdsl.BlockDSLError, match="idx must be"):
        trace(model, torch.zeros(8, dtype=torch.long))
    with pytest.raises(blockdsl.BlockDSLError, match="LanguageModel"):
        trace(nn.Linear(2, 2))


def test_notebook_html():
    model = blockdsl.build_model("tiny", **TINY)
    for html in (
        model._repr_html_(),
        ModelPlan(model.config)._repr_html_(),
        trace(model, seq=4)._repr_html_(),
    ):
        assert html.startswith('<div class="blockdsl-table">')
        assert "<td" in html and "layers.0.attn" in html and "head.head" in html
    assert "FLOPs" in model._repr_html_() and "std" in trace(model, seq=4)._repr_html_()
