"""The first steps of a new user (issue 23): mistakes are caught early, with a useful message,
and the conventions the README relies on hold."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import blockdsl
from blockdsl.cli import main
from blockdsl.errors import ShapeError

SMALL = {"d_model": 32, "vocab": 64, "context": 16, "layers": "block"}


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_mistyped_preset_suggests_the_preset(capsys):
    code, err = run(capsys, "check", "lama")
    assert code == 2
    assert "unknown preset or component 'lama'" in err and "did you mean 'llama'?" in err
    assert "presets:" in err and "Traceback" not in err


def test_component_names_and_block_strings_are_not_taken_for_presets(capsys):
    assert run(capsys, "check", "MLP")[0] == 0  # a one-step block string, no preset hint
    code, err = run(capsys, "check", "Norm->Atn->+")
    assert code == 2 and "unknown component 'Atn'" in err and "preset" not in err


def test_seq_longer_than_the_context_is_refused(capsys):
    code, err = run(capsys, "compile", "tiny", "--show-shapes", "--seq", "100000")
    assert code == 2
    assert "--seq 100000 is longer than the model's context (256)" in err
    assert run(capsys, "compile", "tiny", "--show-shapes", "--seq", "256")[0] == 0


@pytest.mark.parametrize("head", ["Norm", "Norm->Linear(out=7)"])
def test_head_without_vocabulary_logits_fails_at_build_time(capsys, head):
    with pytest.raises(ShapeError, match=r"the head produces \d+ features but the model's vocab"):
        blockdsl.build_model("tiny", head=head, **SMALL)
    code, err = run(capsys, "check", "tiny", "--set", f"head={head}")
    assert code == 2 and "the model's vocabulary has 4096" in err and "end it with Head" in err


def test_targets_are_not_shifted_and_minus_100_is_ignored():
    """``model(idx, targets)`` scores position t's logits against ``targets[:, t]`` as given;
    the caller shifts, and marks positions without a target with -100."""
    model = blockdsl.build_model("tiny", **SMALL).eval()
    idx = torch.randint(0, 64, (2, 16))
    targets = torch.cat([idx[:, 1:], torch.full((2, 1), -100)], dim=1)  # next token; none last
    loss = model(idx, targets=targets).loss
    logits = model(idx).logits  # every position's logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 64), idx[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_generated_code_starts_with_def_forward():
    model = blockdsl.build_model("tiny", **SMALL)
    assert model.layers[0].code.startswith("def forward(self, x")
    assert blockdsl.compile_block("Norm->MLP->+", d_model=16).code.startswith("def forward(")


def test_config_errors_point_at_the_table_or_nowhere(tmp_path, capsys):
    path = tmp_path / "t.toml"
    path.write_text("[model]\nvocab = 512\n\n[trian]\nsteps = 3\n")
    code, err = run(capsys, "check", str(path))
    assert code == 2 and "unknown table [trian] at 4:2" in err
    # a key that only an override gives is not in the preset's text: no caret into a comment
    code, err = run(capsys, "check", "tiny", "--set", "defaults.Atn.heads=3")
    assert code == 2 and "unknown component 'Atn' in preset 'tiny'" in err
    assert "^" not in err and "#" not in err


def test_fuzz_plugin_is_found_from_the_current_directory(tmp_path, monkeypatch):
    import sys

    from blockdsl.fuzz import load_plugin

    (tmp_path / "my_plugin_pkg").mkdir()
    (tmp_path / "my_plugin_pkg" / "comps.py").write_text("VALUE = 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert load_plugin("my_plugin_pkg.comps").VALUE == 3


def test_true_and_false_are_names_outside_argument_values():
    block = blockdsl.parse("Norm#true->MLP#False->+")
    labels = [step.label for step in block.chains[0].steps[:2]]
    assert labels == ["true", "False"]
    assert blockdsl.compile_block("Norm#true->MLP(gated=true)->+", d_model=16).mlp.gate is not None


def test_bench_step_without_the_bench_extra_names_it(monkeypatch, capsys):
    import importlib.util

    from bench import step

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "x_transformers" else real(name, *a),
    )
    assert step.main(["--quick", "--no-compile"]) == 2
    err = capsys.readouterr().err
    assert "x-transformers is not installed" in err and "pip install -e '.[bench]'" in err
