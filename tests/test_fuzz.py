"""blockdsl fuzz: a deliberately broken plugin component is caught, shrunk to a minimal block
string that contains it, and reported with the invariant and the seed (exit 1)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import blockdsl
from blockdsl.cli import main
from blockdsl.fuzz import fuzz, load_plugin

PLUGIN = str(Path(__file__).parent / "plugins" / "leaky.py")


@pytest.fixture
def plugin_cleanup():
    yield
    for name in ("Leak", "Frozen"):
        blockdsl.REGISTRY.unregister(name)


def _block_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith("block:"))


def test_leaky_component_is_caught_and_shrunk(plugin_cleanup, capsys):
    code = main(["fuzz", "--component", "Leak", "--plugin", PLUGIN, "--seed", "0"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "causality" in out
    assert "Leak" in _block_line(out)
    assert _block_line(out).split("block:")[1].strip() == "Leak"  # minimal
    assert "seed 0" in out and "node:      leak" in out


def test_leak_among_other_components_is_shrunk_to_a_small_block(plugin_cleanup, capsys):
    argv = ["fuzz", "--plugin", PLUGIN, "--seed", "3", "--examples", "60"]
    argv += ["--component", "Norm", "--component", "MLP", "--component", "Leak"]
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 1, out
    block = _block_line(out).split("block:")[1].strip()
    assert "Leak" in block and len(block) <= 30, out
    assert "causality" in out


def test_parameter_without_gradient_is_caught(plugin_cleanup, capsys):
    argv = ["fuzz", "--component", "Frozen", "--component", "Norm", "--plugin", PLUGIN]
    code = main([*argv, "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "gradient" in out and "Frozen" in _block_line(out)
    assert "frozen.weight" in out


def test_builtin_components_pass_with_a_summary(capsys):
    argv = ["fuzz", "--examples", "15", "--seed", "7"]
    argv += ["--component", "Norm", "--component", "Attn", "--component", "MLP"]
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "15 examples passed" in out and "seed 7" in out
    assert "components seen:" in out and "Attn" in out


def test_bad_invocations_exit_2(capsys):
    assert main(["fuzz", "--component", "Nope", "--examples", "1"]) == 2
    assert main(["fuzz", "--plugin", "no/such/file.py", "--examples", "1"]) == 2
    assert main(["fuzz", "--plugin", "no_such_module_xyz", "--examples", "1"]) == 2


def test_fuzz_is_deterministic_for_a_seed(plugin_cleanup):
    load_plugin(PLUGIN)
    first = fuzz(["Norm", "Leak"], examples=30, seed=11)
    second = fuzz(["Norm", "Leak"], examples=30, seed=11)
    assert not first.ok and first.failure is not None
    assert first.failure.block == second.failure.block
    assert first.failure.invariant == "causality"


def test_module_path_plugins_are_imported(plugin_cleanup, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent))
    monkeypatch.delitem(sys.modules, "tests.plugins.leaky", raising=False)
    load_plugin("tests.plugins.leaky")
    assert "Leak" in blockdsl.REGISTRY
