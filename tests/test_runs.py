"""Run directories that survive users and adversaries (issue 34): one owner per run
directory, append-only metrics, resume fingerprints, checked checkpoint weights and state,
an interrupt that says how to resume, and a kill loop that stays bit-exact."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import blockdsl
from blockdsl import checkpoint as ckpt
from blockdsl._io import read_jsonl
from blockdsl.checkpoint import CheckpointError, RunInUse
from blockdsl.cli import main
from blockdsl.train import Run, TrainingError
from blockdsl.train.data import prepare
from tests.test_train import ROOT, TINY, TINY_SET, _env, strip_clock, tiny_train

pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare([str(ROOT / "blockdsl")], out, glob="*.py", tokenizer="byte", progress=False)
    return out


def _train(data_dir: Path, out: Path, steps: int, resume: bool = False, **extra: object):
    train = {**tiny_train(steps=steps, save_every=2), **extra.pop("train", {})}
    # a constant schedule: a resumed run may then grow its budget (a decaying one may not)
    optim = {"schedule": "constant", **extra.pop("optim", {})}
    return blockdsl.train(
        "tiny", data=data_dir, out=out, resume=resume, progress=False, train=train,
        optim=optim, **{**TINY, **extra},
    )  # fmt: skip


def _cli(data_dir: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "blockdsl", "train", "tiny", "--data", str(data_dir),
        "--out", str(out), *TINY_SET, "--set", f"train.steps={steps}",
        "--set", "train.batch_size=2", "--set", "train.seq_len=16",
        "--set", "train.save_every=7", "--set", "train.eval_every=10",
        "--set", "train.eval_batches=2", "--set", "optim.warmup=5", *extra,
    ]  # fmt: skip


def read_jsonl_bytes(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines()]


def _wait_for_lines(proc: subprocess.Popen, metrics: Path, lines: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_bytes().count(b"\n") >= lines:
            return
        time.sleep(0.005)


# ==================================================================== one owner
@pytest.mark.slow
def test_a_second_trainer_is_refused_and_nothing_is_lost(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    steps = 150
    proc = subprocess.Popen(
        _cli(data_dir, out, steps, "--quiet"), env=_env(), stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_lines(proc, out / "metrics.jsonl", 2)
        assert proc.poll() is None, "the first trainer ended before the second started"
        for resume in (False, True):
            with pytest.raises(RunInUse, match=f"in use by another process \\(pid {proc.pid}\\)"):
                _train(data_dir, out, steps, resume=resume)
    finally:
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    run = Run.load(out)
    assert [m["step"] for m in run.metrics] == list(range(1, steps + 1))
    assert run.summary["steps"] == steps


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_is_taken_over(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom blockdsl.checkpoint import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
         str(out)],
        env=_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    with pytest.raises(RunInUse, match=f"pid {holder.pid}"):
        _train(data_dir, out, 2)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert (out / ".lock").read_text().strip() == str(holder.pid)  # stale: its owner is dead
    run = _train(data_dir, out, 2)
    assert run.summary["steps"] == 2
    with ckpt.run_lock(out):  # released at the end of the run
        pass


# ==================================================================== append-only metrics
@pytest.mark.slow
def test_a_damaged_metrics_line_is_kept_reported_and_resume_appends(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    _train(data_dir, out, 4)
    path = out / "metrics.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b'{"step": 2, "loss": gar\n'  # damaged in place, shorter than it was
    path.write_bytes(b"".join(lines))
    with pytest.warns(UserWarning, match=r"skipped 1 damaged line\(s\) \(2\)"):
        assert [m["step"] for m in Run.load(out).metrics] == [1, 3, 4]
    run = _train(data_dir, out, 8, resume=True)
    assert [m["step"] for m in run.metrics] == [1, 3, 4, 5, 6, 7, 8]
    written = path.read_bytes().splitlines(keepends=True)
    assert written[:4] == lines  # nothing before the checkpoint rewritten, the damage kept
    assert [json.loads(line)["step"] for line in written[4:]] == [5, 6, 7, 8]


@pytest.mark.slow
def test_lines_past_the_checkpoint_are_cut_and_lost_lines_refused(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    _train(data_dir, out, 4, train={"save_every": 2, "keep": 3})
    path = out / "metrics.jsonl"
    full = path.read_bytes()
    newest = ckpt.latest(out)
    assert newest is not None and newest.step == 4
    for child in newest.path.iterdir():
        child.unlink()
    newest.path.rmdir()  # as if killed after step 4's line, before its checkpoint
    path.write_bytes(full + b'{"step": 5, "lo')  # and a line cut short by the kill
    run = _train(data_dir, out, 4, resume=True, train={"save_every": 2, "keep": 3})
    kept = b"".join(full.splitlines(keepends=True)[:2])  # up to the checkpoint: as written
    assert path.read_bytes().startswith(kept) and path.read_bytes().count(b"\n") == 4
    assert strip_clock(read_jsonl(path)) == strip_clock(read_jsonl_bytes(full))
    assert [m["step"] for m in run.metrics] == [1, 2, 3, 4]

    path.write_bytes(b"\n".join(full.splitlines()[:2]) + b"\n")  # two lines lost
    with pytest.raises(TrainingError, match="ends at step 2 but the checkpoint is of step 4"):
        _train(data_dir, out, 6, resume=True, train={"save_every": 2, "keep": 3})


# ==================================================================== resume fingerprints
@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"seed": 1}}, r"\[train\] seed is 1, but the run was trained with 0"),
        ({"optim": {"lr": 0.002}}, r"\[optim\] lr is 0.002, but the run was trained with 0.001"),
        ({"optim": {"warmup": 3}}, r"\[optim\] warmup is 3"),
        ({"train": {"global_batch_size": 8}}, r"\[train\] global_batch_size is 8"),
        ({"data": "other"}, "the data differs"),
        # meta.json binds its tokenizer, so another tokenizer is other data
        ({"data": "tokenizer"}, "the data differs|the data's tokenizer differs"),
    ],
)
def test_resume_with_other_settings_is_refused_naming_them(
    data_dir: Path, tmp_path: Path, change: dict, message: str
) -> None:
    out = tmp_path / "run"
    _train(data_dir, out, 2)
    data = data_dir
    if change.get("data") == "other":
        data = tmp_path / "other"
        prepare([str(ROOT / "blockdsl")], data, glob="c*.py", tokenizer="byte", progress=False)
    elif change.get("data") == "tokenizer":
        data = tmp_path / "swapped"
        prepare([str(ROOT / "blockdsl")], data, glob="*.py", tokenizer="byte", progress=False)
        tokenizer = json.loads((data / "tokenizer.json").read_text())
        tokenizer["normalizer"] = {"type": "Lowercase"}
        (data / "tokenizer.json").write_text(json.dumps(tokenizer))
        # bound into meta.json as a prepare with this tokenizer would (a swap alone is refused
        # by the data directory itself: test_adversarial)
        meta = json.loads((data / "meta.json").read_text())
        meta["tokenizer_sha256"] = hashlib.sha256(
            (data / "tokenizer.json").read_bytes()
        ).hexdigest()
        (data / "meta.json").write_text(json.dumps(meta))
    before = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(TrainingError, match=message) as info:
        _train(
            data, out, 4, resume=True,
            train=change.get("train", {}), optim=change.get("optim", {}),
        )  # fmt: skip
    assert "start a new run with a different --out" in str(info.value)
    assert (out / "metrics.jsonl").read_bytes() == before


# ==================================================================== damaged checkpoints
@pytest.mark.slow
def test_tampered_checkpoint_weights_and_state_are_refused(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _train(data_dir, out, 2)
    last = ckpt.latest(out)
    assert last is not None
    weights = bytearray(last.weights.read_bytes())
    weights[-3] ^= 0x10  # one bit of the last tensor: still a readable file
    last.weights.write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        _train(data_dir, out, 4, resume=True)
    weights[-3] ^= 0x10
    last.weights.write_bytes(bytes(weights))
    good = torch.load(last.state, weights_only=True)
    for step, message in ((999999, "records step 999999 but sits in step_0000002"),
                          (-5, "records step -5, not a step count"),
                          (10**15, "not a step count")):  # fmt: skip
        torch.save({**good, "step": step}, last.state)
        with pytest.raises(CheckpointError, match=message):
            _train(data_dir, out, 4, resume=True)
    torch.save({**good, "tokens": -1}, last.state)
    with pytest.raises(CheckpointError, match="records tokens -1, out of range"):
        _train(data_dir, out, 4, resume=True)
    torch.save(good, last.state)
    assert _train(data_dir, out, 4, resume=True).summary["steps"] == 4


# ==================================================================== interrupts and kills
@pytest.mark.slow
def test_kill_loop_and_interrupt_resume_bit_exactly(data_dir: Path, tmp_path: Path) -> None:
    """SIGKILL a training subprocess at random moments and resume each time; then SIGTERM it:
    it names the command that resumes (the run's own config.toml), and the summary says at
    which step its last validation loss was measured. Resumed by that command it finishes,
    and its metrics equal an uninterrupted run's, bit for bit."""
    steps, out = 80, tmp_path / "run"
    rng = random.Random(34)
    for lines in sorted(rng.sample(range(3, 40), 3)):
        proc = subprocess.Popen(_cli(data_dir, out, steps, "--quiet", "--resume"), env=_env())
        _wait_for_lines(proc, out / "metrics.jsonl", lines)
        time.sleep(rng.random() * 0.05)  # anywhere in a step: a write, a save, a prune
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
        assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"

    # SIGTERM once the resumed process has written lines of its own (its handler is in place
    # before its first step): past both line 45 and the end the killed runs left behind
    written = (out / "metrics.jsonl").read_bytes().count(b"\n")
    proc = subprocess.Popen(
        _cli(data_dir, out, steps, "--resume"), env=_env(), stdout=subprocess.PIPE, text=True
    )
    _wait_for_lines(proc, out / "metrics.jsonl", max(45, written + 2))
    proc.send_signal(signal.SIGTERM)
    printed, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    command = f"blockdsl train {out}/config.toml --data {data_dir} --out {out} --resume"
    assert f"continue with: {command}" in printed
    summary = json.loads((out / "summary.json").read_text())
    evaluated = [m["step"] for m in read_jsonl(out / "metrics.jsonl") if "val_loss" in m]
    assert summary["final_val_loss_step"] == evaluated[-1] <= summary["steps"] < steps

    resume = [sys.executable, "-m", "blockdsl", *command.split()[1:], "--quiet"]
    finished = subprocess.run(resume, env=_env(), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr

    reference = tmp_path / "reference"  # never interrupted, one thread like the others
    done = subprocess.run(_cli(data_dir, reference, steps, "--quiet"), env=_env(), text=True)
    assert done.returncode == 0
    assert strip_clock(Run.load(out).metrics) == strip_clock(Run.load(reference).metrics)


def test_a_search_stopped_by_sigterm_does_not_exit_0(monkeypatch, capsys) -> None:
    import os

    from blockdsl.commands import search

    def search_until_terminated(args: object, out: object) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the signal arrives long before
        return 0

    monkeypatch.setattr(search, "_search", search_until_terminated)
    assert main(["search", "--data", "task:mqar", "--quiet"]) == 128 + signal.SIGTERM
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize(
    ("summary", "message"),
    [('{"steps": 2', "is not valid JSON"), ("[1, 2]", "holds a JSON list, not an object")],
)
def test_a_damaged_summary_is_named(data_dir: Path, tmp_path: Path, summary, message) -> None:
    out = tmp_path / "run"
    _train(data_dir, out, 2)
    (out / "summary.json").write_text(summary)
    with pytest.raises(blockdsl.BlockDSLError, match=message):
        Run.load(out)


@pytest.mark.parametrize(("data", "named"), [(None, "NoneType"), (5, "int")])
def test_train_without_data_is_a_blockdsl_error(tmp_path: Path, data: object, named: str) -> None:
    out = tmp_path / "run"
    with pytest.raises(
        blockdsl.BlockDSLError,
        match=f"data must be a prepared data directory or task:NAME, got {named}",
    ):
        blockdsl.train("tiny", data=data, out=out, train=tiny_train(), **TINY)  # type: ignore[arg-type]
    assert not out.exists()
