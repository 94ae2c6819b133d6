"""Distillation (issue 29 item 4): the loss's terms against a hand-written reference, a run
with a teacher (each term in the metrics, the teacher frozen), bad [distill] tables, and
SIGKILL + --resume during a distillation run equal to an uninterrupted one."""

from __future__ import annotations

import math
import signal
import subprocess
from pathlib import Path

import pytest
import torch

import blockdsl
from blockdsl import checkpoint as ckpt
from blockdsl.errors import ConfigError
from blockdsl.train import Run
from blockdsl.train.data import prepare
from blockdsl.train.distill import distill_terms
from tests.test_runs import _cli, _wait_for_lines
from tests.test_train import ROOT, TINY, _env, strip_clock, tiny_train

pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare([str(ROOT / "blockdsl" / "train")], out, glob="*.py", tokenizer="byte", progress=False)
    return out


@pytest.fixture(scope="module")
def teacher(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    blockdsl.train(
        "tiny", data=data_dir, out=out, progress=False, train=tiny_train(steps=3), **TINY
    )
    return out


def test_the_terms_equal_a_hand_written_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    hidden = [torch.randn(2, 5, 4, generator=gen) for _ in range(4)]
    for temperature in (1.0, 2.0):
        terms = distill_terms(student, teacher, temperature, hidden[:2], hidden[2:])
        total = 0.0
        for s_row, t_row in zip(student.reshape(-1, 7).tolist(), teacher.reshape(-1, 7).tolist()):
            s_z = [v / temperature for v in s_row]
            t_z = [v / temperature for v in t_row]
            s_log = [v - math.log(sum(math.exp(u) for u in s_z)) for v in s_z]
            t_log = [v - math.log(sum(math.exp(u) for u in t_z)) for v in t_z]
            total += sum(math.exp(t) * (t - s) for s, t in zip(s_log, t_log))
        expected_kl = total / 10 * temperature**2
        assert terms["kl"].item() == pytest.approx(expected_kl, rel=1e-5)
        mses = [((a - b) ** 2).mean().item() for a, b in zip(hidden[:2], hidden[2:])]
        assert terms["hidden"].item() == pytest.approx(sum(mses) / 2, rel=1e-5)
    same = distill_terms(student, student, 3.0)
    assert same["kl"].item() == pytest.approx(0.0, abs=1e-6) and "hidden" not in same


def test_a_run_with_a_teacher_logs_each_term_and_leaves_the_teacher_alone(
    data_dir: Path, teacher: Path, tmp_path: Path
) -> None:
    before = {k: v.clone() for k, v in ckpt.load(teacher).state_dict().items()}
    weights = {"kl": 0.7, "ce": 0.3, "temperature": 2.0, "hidden": [["layers.1", "layers.1"]],
               "hidden_weight": 0.5}  # fmt: skip
    run = blockdsl.train(
        "tiny", data=data_dir, out=tmp_path / "student", progress=False, init=teacher,
        teacher=teacher, distill=weights, train=tiny_train(steps=3), **TINY,
    )  # fmt: skip
    first = run.metrics[0]
    # started from the teacher's own weights: nothing to distil at step 1
    assert first["distill_kl"] == pytest.approx(0.0, abs=1e-6)
    assert first["distill_hidden"] == pytest.approx(0.0, abs=1e-9)
    for line in run.metrics:
        combined = 0.3 * line["distill_ce"] + 0.7 * line["distill_kl"]
        combined += 0.5 * line["distill_hidden"]
        assert line["loss"] == pytest.approx(combined, rel=1e-5, abs=1e-7)
    assert run.metrics[-1]["distill_kl"] > 0  # the student moved away from the teacher
    after = ckpt.load(teacher).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    saved = (tmp_path / "student" / "config.toml").read_text()
    assert "[distill]" in saved and f'teacher = "{teacher}"' in saved


def test_bad_distillation_settings_are_errors_naming_them(
    data_dir: Path, teacher: Path, tmp_path: Path
) -> None:
    common = {"data": data_dir, "progress": False, "train": tiny_train(steps=1), **TINY}
    with pytest.raises(ConfigError, match="no \\[train\\] teacher is set"):
        blockdsl.train("tiny", out=tmp_path / "a", distill={"kl": 1.0}, **common)
    with pytest.raises(ConfigError, match="unknown \\[distill\\] key 'kll'"):
        blockdsl.train("tiny", out=tmp_path / "b", teacher=teacher, distill={"kll": 1}, **common)
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
        blockdsl.train(
            "tiny", out=tmp_path / "c", teacher=teacher, distill={"temperature": 0}, **common
        )
    with pytest.raises(ConfigError, match=r"the student has no module 'layers\.7'"):
        blockdsl.train(
            "tiny", out=tmp_path / "d", teacher=teacher,
            distill={"hidden": [["layers.7", "layers.0"]]}, **common,
        )  # fmt: skip
    with pytest.raises(blockdsl.train.TrainingError, match="vocab of 256, the student 300"):
        blockdsl.train("tiny", out=tmp_path / "e", teacher=teacher, **{**common, "vocab": 300})


def test_sigkill_and_resume_during_distillation_equal_an_uninterrupted_run(
    data_dir: Path, teacher: Path, tmp_path: Path
) -> None:
    steps = 16
    distil = ["--teacher", str(teacher), "--set", "distill.kl=0.8", "--set", "distill.ce=0.2",
              "--set", "distill.temperature=2.0"]  # fmt: skip
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(data_dir, out, steps, "--quiet", *distil), env=_env())
    _wait_for_lines(proc, out / "metrics.jsonl", 9)  # past the checkpoint of step 7
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    resumed = subprocess.run(
        _cli(data_dir, out, steps, "--quiet", "--resume", *distil), env=_env(), text=True,
        capture_output=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "reference"
    done = subprocess.run(_cli(data_dir, reference, steps, "--quiet", *distil), env=_env())
    assert done.returncode == 0
    metrics = strip_clock(Run.load(out).metrics)
    assert metrics == strip_clock(Run.load(reference).metrics)
    assert len(metrics) == steps and all("distill_kl" in m for m in metrics)


def test_training_doc_lists_every_distill_key() -> None:
    from dataclasses import fields

    from blockdsl.train.distill import DistillSettings

    text = (ROOT / "docs" / "training.md").read_text()
    for key in fields(DistillSettings):
        assert f"| `{key.name}` |" in text, key.name
