"""blockdsl search: mutations, the claim ledger across workers, and recovery from a killed
worker (docs/search.md)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockdsl import compile_block, parse, unparse
from blockdsl.errors import BlockDSLError
from blockdsl.search.space import MUTATIONS, SearchSpace, canonical
from blockdsl.testing import block_asts
from blockdsl.testing.invariants import DEFAULT_GLOBALS

optuna = pytest.importorskip("optuna")

from blockdsl.search import SearchSettings, Study, default_storage  # noqa: E402
from blockdsl.search.study import Ledger  # noqa: E402
from blockdsl.search.workers import run_worker, run_workers  # noqa: E402

D = 16
COMPONENTS = ("Norm", "MLP", "Conv", "Attn", "MoE")
SPACE = SearchSpace(COMPONENTS, d_model=D, model_globals=DEFAULT_GLOBALS)
TASK = "task:mqar,vocab=32,seq=16,pairs=2,train=32,test=8"


# ==================================================================== mutations
@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block=block_asts(COMPONENTS, d_model=D), seed=st.integers(0, 2**32 - 1))
def test_mutations_yield_valid_canonical_blocks_or_are_rejected_by_validation(block, seed):
    name, text = SPACE.mutate(block, random.Random(seed))
    assert name in (*MUTATIONS, "none")
    assert unparse(parse(text)) == text  # canonical: a fixed point of the printer
    reason = SPACE.check(text)
    if reason is not None:
        assert isinstance(reason, str) and reason  # the validator's message, not a crash
        return
    module = compile_block(text, d_model=D, model_globals=DEFAULT_GLOBALS)
    x = torch.randn(2, 5, D)
    out = module(x)
    y = out[0] if isinstance(out, tuple) else out
    assert y.shape == x.shape


def test_every_mutation_applies_and_most_children_of_a_seed_are_valid():
    rng = random.Random(0)
    seeds = ["Norm->Conv->+->Norm->MLP->+", "Norm->Conv->+ | Norm->MLP->+"]
    made, valid = set(), 0
    for i in range(200):
        name, child = SPACE.mutate(seeds[i % 2], rng)
        made.add(name)
        assert child == canonical(child)
        valid += SPACE.check(child) is None
    assert made == set(MUTATIONS)
    assert valid >= 120  # the validator rejects a minority, in milliseconds


def test_change_arg_stays_within_the_declared_schema():
    rng = random.Random(1)
    space = SearchSpace(["Attn"], d_model=D)
    seen = set()
    for _ in range(60):
        name, child = space.mutate("Attn->+", rng)
        if name == "change_arg":
            seen.add(child)
            call = parse(child).chains[0].steps[0]
            for arg in call.args:
                param = space.registry.get("Attn").user_params[arg.name]
                assert param.check(arg.value.to_python())[0], child
    assert len(seen) > 3


def test_without_optuna_the_command_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    from blockdsl.cli import main

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    argv = ["search", "--data", TASK, "--components", "Norm,MLP", "--seed-spec", "Norm->MLP->+"]
    assert main([*argv, "--steps", "2", "--out", str(tmp_path)]) == 2
    assert "pip install 'blockdsl[search]'" in capsys.readouterr().err


def test_a_study_refuses_other_settings_and_bad_seeds(tmp_path, capsys):
    from blockdsl.cli import main

    storage = default_storage(tmp_path)
    Study(_settings(), storage=storage, name="s")
    with pytest.raises(BlockDSLError, match=r"other settings.*steps: study 2, now 3"):
        Study(_settings(steps=3), storage=storage, name="s")
    argv = ["search", "--data", TASK, "--components", "Norm,MLP", "--steps", "2"]
    assert main([*argv, "--seed-spec", "MLP | MLP->+", "--out", str(tmp_path / "x")]) == 2
    assert "seed 'MLP | MLP->+' is not a valid block" in capsys.readouterr().err
    assert main([*argv, "--seed-spec", "Norm->MLP->+", "--components", "Nrom"]) == 2
    assert "did you mean 'Norm'" in capsys.readouterr().err


# ==================================================================== the ledger
def test_concurrent_claims_of_one_candidate_have_exactly_one_winner(tmp_path):
    """Four connections (each its own engine, as four processes would have) claim the same
    candidates at once: the database lets exactly one win each."""
    url = f"sqlite:///{tmp_path / 'claims.db'}"
    Ledger(url)  # create the table once
    blocks = [f"Norm->MLP(hidden={h})->+" for h in (8, 16, 24, 32, 40)]
    start = threading.Barrier(4)

    def claim_all(worker: int) -> list[tuple[str, str]]:
        ledger = Ledger(url)
        start.wait()
        return [(b, ledger.claim("s", b, f"host:{worker}", limit=100)) for b in blocks]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(claim_all, range(4)))
    for block in blocks:
        verdicts = [v for result in results for b, v in result if b == block]
        assert sorted(verdicts) == ["claimed", "taken", "taken", "taken"]


def test_the_claim_refuses_candidates_beyond_the_study_size(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'claims.db'}")
    assert ledger.claim("s", "A->+", "me", limit=1) == "claimed"
    assert ledger.claim("s", "B->+", "me", limit=1) == "full"
    ledger.reject("s", "C->+", "invalid: ...")  # rejections do not count
    assert ledger.claim("t", "B->+", "me", limit=1) == "claimed"  # another study


# ==================================================================== workers
def _settings(steps: int = 2, hurdle: int = 0, seconds: float | None = None) -> SearchSettings:
    train = {"batch_size": 4, "eval_every": 0}
    if seconds is not None:
        train["time"] = seconds  # a wall-clock budget: stops at steps or seconds
    return SearchSettings(
        data=TASK,
        components=("Norm", "MLP", "Conv"),
        seeds=("Norm->Conv->+->Norm->MLP->+",),
        steps=steps,
        hurdle=hurdle,
        overrides={
            "d_model": D,
            "layers": "block*1",
            "train": train,
        },
    )


@pytest.mark.slow
def test_two_workers_on_one_sqlite_study_never_train_a_candidate_twice(tmp_path):
    settings = _settings()
    storage = default_storage(tmp_path)
    Study(settings, storage=storage, name="s")
    # the same random stream in both workers: both start by proposing the same candidates
    stats = run_workers(
        settings, workers=2, storage=storage, study_name="s", out=tmp_path, trials=4, rng_seed=0
    )
    study = Study(settings, storage=storage, name="s")
    trials = study.study.get_trials(deepcopy=False)
    blocks = [t.user_attrs["block"] for t in trials]
    assert len(blocks) == 4
    assert len(set(blocks)) == len(blocks)
    assert stats.trained == 4
    assert all(t.state.name == "COMPLETE" for t in trials)
    runs = {t.user_attrs["run"] for t in trials}
    assert len(runs) == 4 and all(Path(r, "summary.json").is_file() for r in runs)


KILLED_WORKER = """
import json, sys
from blockdsl.search import SearchSettings
from blockdsl.search.workers import run_worker
settings = SearchSettings.from_dict(json.loads(sys.argv[3]))
run_worker(settings, storage=sys.argv[1], study_name="s", out=sys.argv[2], trials=1)
"""


@pytest.mark.slow
def test_a_killed_worker_leaves_the_study_consistent_and_resumable(tmp_path):
    storage = default_storage(tmp_path)
    settings = _settings(steps=100_000, seconds=2.0)
    study = Study(settings, storage=storage, name="s")
    payload = json.dumps(settings.to_dict())
    worker = subprocess.Popen(
        [sys.executable, "-c", KILLED_WORKER, storage, str(tmp_path), payload],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = study.ledger.rows("s", "running")
            if running and running[0]["trial"] is not None:
                break
            assert worker.poll() is None, worker.stderr.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("the worker never started its trial")
        time.sleep(1.0)  # mid-training (the run lasts 2 s)
    finally:
        worker.kill()
        worker.wait()
    states = [t.state.name for t in study.study.get_trials(deepcopy=False)]
    assert states == ["RUNNING"]  # what a kill leaves behind

    stats = run_worker(settings, storage=storage, study_name="s", out=tmp_path, trials=1)
    assert stats.resumed == 1
    trials = study.study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].user_attrs["block"] == trials[1].user_attrs["block"]
    assert trials[1].user_attrs["mutation"] == "resumed"
    assert [r["status"] for r in study.ledger.rows("s")] == ["complete"]
