"""Distributed training (blockdsl.train.distributed): real 2-process gloo jobs under torchrun.

A tiny model (d_model 32, 2 layers) takes 4 optimizer steps on a global batch of 8 sequences in
micro-batches of 2: one process accumulates 4 micro-batches a step, each of 2 ranks 2 of its own
rows. The 2-rank runs (DDP, FSDP, resumes that change the number of ranks and the strategy, and
one whose rank 1 raises) share one torchrun launch (tests/distributed_driver.py); a killed
rank gets a launch of its own.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import blockdsl
from blockdsl import checkpoint as ckpt
from blockdsl.checkpoint import CheckpointError
from blockdsl.config import load_config
from blockdsl.errors import ConfigError
from blockdsl.train import Run
from blockdsl.train.data import prepare
from blockdsl.train.distributed import (
    Launch,
    choose_strategy,
    detect_launch,
    per_rank_estimate,
    shardable_layers,
)
from blockdsl.train.settings import resolve
from tests.distributed_driver import cut_copy

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "vocab": 256,
    "d_model": 32,
    "context": 64,
    "layers": "block*2",
    "defaults": {"Attn": {"heads": 2, "kv_heads": 1}, "MLP": {"hidden": 64}},
}
TRAIN = {
    "steps": 4,
    "batch_size": 2,
    "global_batch_size": 8,
    "seq_len": 16,
    "eval_every": 2,
    "eval_batches": 3,  # not a multiple of 2 ranks: one rank evaluates a padding batch
    "save_every": 2,
}
COMPARED = ("loss", "val_loss", "grad_norm", "lr")
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare([str(ROOT / "blockdsl" / "train")], out, glob="*.py", progress=False)
    return out


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _torchrun(*args: str, timeout: float, **env: str) -> subprocess.CompletedProcess:
    """Two processes on this host; ``--standalone`` picks a free port for the rendezvous."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, "--standalone", *args],
        env=_env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_rank(data_dir: Path, out: Path, resume: bool = False) -> Run:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the subprocesses
    try:
        return blockdsl.train(
            "tiny", data=data_dir, out=out, resume=resume, progress=False, train=TRAIN, **TINY
        )
    finally:
        torch.set_num_threads(threads)


def _assert_same_run(run: Path, reference: Run) -> None:
    """Metrics of every step and the final weights equal the reference's within 1e-5."""
    metrics = Run.load(run).metrics
    assert [m["step"] for m in metrics] == [1, 2, 3, 4], run  # one line a step: rank 0 alone
    for ours, theirs in zip(metrics, reference.metrics):
        assert set(ours) == set(theirs), run
        for key in COMPARED:
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], abs=TOLERANCE), (run, key, ours)
    weights = blockdsl.load(ckpt.checkpoints(run)[-1].weights).state_dict()
    expected = blockdsl.load(ckpt.checkpoints(reference.dir)[-1].weights).state_dict()
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, atol=TOLERANCE, rtol=0, msg=name)


@pytest.mark.slow
def test_two_ranks_equal_one_and_checkpoints_reshard(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """2-rank DDP and FSDP equal a 1-rank run on the same global batch; a 1-rank checkpoint
    resumes on 2 FSDP ranks, a 2-rank FSDP checkpoint on 1 rank and on 2 DDP ranks, each
    continuing as the uninterrupted run did. Last, rank 1 raises: the job fails with its
    traceback in torchrun's report. And a sharded checkpoint whose pickled DCP metadata names
    anything else than DCP's records is refused before it is unpickled."""
    reference = _one_rank(data_dir, tmp_path / "one")
    one, fsdp = str(tmp_path / "one"), str(tmp_path / "fsdp")
    plan = {
        "data": str(data_dir),
        "model": TINY,
        "train": TRAIN,
        "cut_at": 2,
        "runs": [
            {"out": str(tmp_path / "ddp"), "strategy": "ddp"},
            {"out": fsdp, "strategy": "fsdp"},
            {"out": str(tmp_path / "one_to_fsdp"), "strategy": "fsdp", "resume_from": one},
            {"out": str(tmp_path / "fsdp_to_ddp"), "strategy": "ddp", "resume_from": fsdp},
            {"out": str(tmp_path / "raises"), "strategy": "ddp", "fault": "1:1:raise"},
        ],
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    job = _torchrun("tests/distributed_driver.py", str(tmp_path / "plan.json"), timeout=300)
    assert job.returncode != 0, job.stderr[-3000:]
    report = job.stderr[job.stderr.index("Root Cause") :]
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", report), report
    assert "fault injected by BLOCKDSL_FAULT=1:1:raise on rank 1 at step 1" in report, report
    assert len(Run.load(tmp_path / "raises").metrics) == 1  # the job stopped there
    # rank 0 alone prints: each complete run's last log line once
    assert job.stdout.count("step 4/4 loss") == len(plan["runs"]) - 1, job.stdout

    for name, strategy in (("ddp", "ddp"), ("fsdp", "fsdp")):
        _assert_same_run(tmp_path / name, reference)
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["distributed"] == {"world_size": 2, "strategy": strategy, "backend": "gloo"}
        state = ckpt.load_state(ckpt.checkpoints(tmp_path / name)[-1])
        assert state["sharded"] == "sharded" and state["optimizers"] is None
    for name in ("one_to_fsdp", "fsdp_to_ddp"):
        _assert_same_run(tmp_path / name, reference)

    cut_copy(tmp_path / "fsdp", tmp_path / "fsdp_to_one", 2)
    resumed = _one_rank(data_dir, tmp_path / "fsdp_to_one", resume=True)
    assert resumed.summary["distributed"] is None
    _assert_same_run(tmp_path / "fsdp_to_one", reference)
    # the 1-process checkpoint it wrote is the single-process kind
    assert "sharded" not in ckpt.load_state(ckpt.checkpoints(resumed.dir)[-1])

    # DCP reads .metadata with pickle: one naming anything but DCP's records is refused
    cut_copy(tmp_path / "fsdp", tmp_path / "forged", 2)
    metadata = ckpt.checkpoints(tmp_path / "forged")[-1].path / "sharded" / ".metadata"
    metadata.write_bytes(pickle.dumps(_Forged()))
    capsys.readouterr()
    with pytest.raises(CheckpointError, match=r"builtins\.print has no place in DCP metadata"):
        _one_rank(data_dir, tmp_path / "forged", resume=True)
    assert not capsys.readouterr().out  # nothing ran


class _Forged:
    def __reduce__(self) -> tuple:
        return (print, ("code run by unpickling",))


@pytest.mark.slow
def test_a_killed_rank_ends_the_job(data_dir: Path, tmp_path: Path) -> None:
    """Rank 1 is killed (SIGKILL) at its second step of a run of 100,000 steps: the job ends
    soon after, with a non-zero exit and rank 1's death in torchrun's report."""
    sets = [f"train.{key}={value}" for key, value in {**TRAIN, "steps": 100_000}.items()]
    sets += [f"{key}={value}" for key, value in TINY.items() if key != "defaults"]
    sets += ["defaults.Attn.heads=2", "defaults.Attn.kv_heads=1", "defaults.MLP.hidden=64"]
    args = ["-m", "blockdsl", "train", "tiny", "--data", str(data_dir)]
    args += ["--out", str(tmp_path / "run"), "--quiet", "--set", "train.strategy=fsdp"]
    args += [part for value in sets for part in ("--set", value)]
    started = time.monotonic()
    job = _torchrun(*args, timeout=240, BLOCKDSL_FAULT="1:1:kill")
    took = time.monotonic() - started
    assert job.returncode != 0, job.stderr[-3000:]
    assert took < 200, took
    # torchrun's report lists every failed rank; which one it names the root cause is a race
    # (rank 0 may see the closed connection first), so rank 1's death is looked for in all
    report = job.stderr[job.stderr.index("Failures:") :]
    killed = re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*-9", report)
    assert killed, report
    assert "Signal 9 (SIGKILL)" in report, report
    assert len(Run.load(tmp_path / "run").metrics) == 1  # it did not go on


def test_launch_comes_from_torchruns_environment() -> None:
    assert detect_launch({}) == Launch() and not Launch().distributed
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    launch = detect_launch(env)
    assert launch == Launch(3, 4, 1, 2) and launch.distributed
    with pytest.raises(ConfigError, match="RANK='x' is not a number"):
        detect_launch({**env, "RANK": "x"})
    with pytest.raises(ConfigError, match="outside WORLD_SIZE"):
        detect_launch({**env, "RANK": "4"})


def test_auto_strategy_follows_the_memory_estimate() -> None:
    from blockdsl.model import ModelPlan, build_model
    from blockdsl.train import memory

    config = load_config("tiny", **{**TINY, "layers": "block*8"}, train={"steps": 1})
    _, optim = resolve(config)
    estimate = memory.estimate(ModelPlan(config), 2, 16, "float32", optim)
    assert choose_strategy("auto", estimate.total, None, 1) is None  # one process: none
    assert choose_strategy("auto", estimate.total, estimate.total, 2) == "ddp"
    assert choose_strategy("auto", estimate.total, estimate.total - 1, 2) == "fsdp"
    assert choose_strategy("ddp", estimate.total, 1, 2) == "ddp"  # asked for: kept
    meta = build_model(config, device=torch.device("meta"))
    sharded = per_rank_estimate(estimate, "fsdp", 2, meta)
    # each rank: half the state, plus the root (embedding, head) and two layers gathered whole
    layer = sum(p.numel() * 4 for p in meta.layers[0].parameters())
    root = estimate.params - 8 * layer
    assert sharded.params == estimate.params // 2 + root + 2 * layer
    assert sharded.gradients == estimate.gradients // 2 + root + 2 * layer
    assert sharded.optimizer == estimate.optimizer // 2
    assert sharded.activations == estimate.activations and sharded.total < estimate.total
    assert per_rank_estimate(estimate, "ddp", 2, meta) is estimate


def test_layers_sharing_a_weight_are_not_sharded_apart() -> None:
    """FSDP shards a layer as a unit of its own only when no other part holds its weights."""
    config = {
        "model": {"vocab": 256, "d_model": 32, "context": 64, "layers": "a->b->a->b"},
        "blocks": {"a": "Norm->Attn->+->Norm->MLP##shared->+", "b": "Norm->Attn->+->Norm->MLP->+"},
        "defaults": {"Attn": {"heads": 2}},
    }
    assert shardable_layers(blockdsl.build_model(config, device="meta")) == [1, 3]
    tiny = blockdsl.build_model("tiny", **TINY, device="meta")
    assert shardable_layers(tiny) == [0, 1]


def test_distributed_settings_are_checked(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="did you mean 'fsdp'"):
        resolve(load_config("tiny", train={"steps": 1, "strategy": "fdsp"}))
    with pytest.raises(ConfigError, match="collective_timeout must be a finite number > 0"):
        resolve(load_config("tiny", train={"steps": 1, "collective_timeout": 0}))
    # a global batch of 6 does not split into micro-batches of 2 on 2 ranks: refused before
    # the process group opens
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="multiple of batch_size × ranks = 4"):
        blockdsl.train(
            "tiny",
            data=data_dir,
            out=tmp_path / "run",
            progress=False,
            train={**TRAIN, "global_batch_size": 6},
            **TINY,
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a torchrun job that fails, restarts and finishes (about a minute)
def test_max_restarts_resumes_from_the_newest_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    """docs/distributed.md's elastic restart: rank 1 is killed at its sixth step in torchrun's
    first attempt; ``--max-restarts=1`` with ``--resume`` restarts both ranks, which continue
    from the step-4 checkpoint and finish the 8 steps with exit status 0."""
    sets = [f"train.{key}={value}" for key, value in {**TRAIN, "steps": 8}.items()]
    sets += [f"{key}={value}" for key, value in TINY.items() if key != "defaults"]
    sets += ["defaults.Attn.heads=2", "defaults.Attn.kv_heads=1", "defaults.MLP.hidden=64"]
    args = ["--max-restarts=1", "-m", "blockdsl", "train", "tiny", "--data", str(data_dir)]
    args += ["--out", str(tmp_path / "run"), "--resume", "--quiet"]
    args += [part for value in sets for part in ("--set", value)]
    job = _torchrun(*args, timeout=400, BLOCKDSL_FAULT="1:5:kill")
    assert job.returncode == 0, job.stderr[-3000:]
    run = Run.load(tmp_path / "run")
    assert [m["step"] for m in run.metrics] == list(range(1, 9))  # steps 5-6 redone once
    assert [c.step for c in ckpt.checkpoints(tmp_path / "run")][-1] == 8
