"""Task recipes (issue 28, item 4): every task carries the batch, learning rate, schedule and
steps it trains with when the run's config says nothing; ``train`` and ``compare`` use it, a
user's setting overrides it; and ``compare`` without ``--lr`` sweeps three learning rates
around the default and says so (table, summary.md, compare.json)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from blockdsl.cli import main
from blockdsl.compare import compare, sweep_around
from blockdsl.config import load_config
from blockdsl.tasks import TASKS
from blockdsl.tasks.recipe import Recipe, with_recipe
from blockdsl.train.settings import resolve

TASK = "task:mqar,vocab=64,seq=16,pairs=2,train=64,test=16"
SMALL = {
    "d_model": 16,
    "layers": "block*1",
    "defaults": {"Attn": {"heads": 2, "kv_heads": 2}, "MLP": {"hidden": 32}},
}
#: a recipe small enough for CI, put in place of MQAR's by the ``tiny_recipe`` fixture
TINY = Recipe(batch_size=3, lr=0.02, steps=2, schedule="constant", warmup=1, weight_decay=0.05)


@pytest.fixture
def tiny_recipe(monkeypatch):
    monkeypatch.setitem(TASKS, "mqar", dataclasses.replace(TASKS["mqar"], recipe=TINY))
    return TINY


def test_every_task_has_a_recipe_that_resolves():
    for name, task in TASKS.items():
        train, optim = task.recipe.tables()
        settings, optim_settings = resolve(load_config("tiny", train=train, optim=optim))
        assert settings.batch_size == task.recipe.batch_size, name
        assert settings.steps == task.recipe.steps and optim_settings.lr == task.recipe.lr
        assert f"batch {task.recipe.batch_size}, lr {task.recipe.lr:g}" in task.recipe.describe()


def test_the_recipe_fills_only_what_the_config_leaves_unset():
    recipe = TASKS["mqar"].recipe
    filled = with_recipe(load_config("tiny"), recipe)
    assert filled.train == {"batch_size": recipe.batch_size, "steps": recipe.steps}
    assert filled.optim["lr"] == recipe.lr and filled.optim["warmup"] == recipe.warmup
    mine = load_config("tiny", train={"batch_size": 5, "tokens": 1000}, optim={"lr": 0.5})
    kept = with_recipe(mine, recipe)
    assert kept.train == {"batch_size": 5, "tokens": 1000}  # a budget given: no recipe steps
    assert kept.optim["lr"] == 0.5 and kept.optim["schedule"] == recipe.schedule
    # a global batch chosen by the user keeps its micro-batch (the recipe's might not divide it)
    global_batch = with_recipe(load_config("tiny", train={"global_batch_size": 6}), recipe)
    assert "batch_size" not in global_batch.train
    assert with_recipe(mine, None) is mine


def test_train_uses_the_task_recipe_and_the_user_overrides_it(tmp_path, tiny_recipe):
    from blockdsl.train import train

    run = train("tiny", data=TASK, out=tmp_path / "a", progress=False, vocab=64, **SMALL)
    assert run.steps == tiny_recipe.steps  # no budget given: the recipe's
    assert run.config.train["batch_size"] == tiny_recipe.batch_size
    assert run.config.optim["lr"] == tiny_recipe.lr
    assert run.config.optim["weight_decay"] == tiny_recipe.weight_decay
    assert run.metrics[-1]["tokens"] == tiny_recipe.steps * tiny_recipe.batch_size * 16

    mine = train(
        "tiny",
        data=TASK,
        out=tmp_path / "b",
        progress=False,
        vocab=64,
        train={"steps": 1, "batch_size": 2},
        optim={"lr": 1e-4},
        **SMALL,
    )
    assert mine.steps == 1 and mine.config.train["batch_size"] == 2
    assert mine.config.optim["lr"] == 1e-4
    assert mine.config.optim["schedule"] == tiny_recipe.schedule  # the rest still the recipe's


def test_text_data_has_no_recipe(tmp_path):
    from blockdsl.tasks.data import task_recipe

    assert task_recipe(str(tmp_path)) is None
    assert task_recipe(TASK) == TASKS["mqar"].recipe


def test_sweep_is_three_half_decade_steps():
    assert sweep_around(3e-3) == [0.001, 0.003, 0.009]
    assert sweep_around(1e-3) == [0.00033, 0.001, 0.003]


def test_compare_without_lr_sweeps_around_the_recipe_and_says_so(tmp_path, tiny_recipe):
    out = tmp_path / "sweep"
    comparison = compare(
        ["attn=Norm->Attn->+"], data=TASK, out=out, plot=False, progress=False, **SMALL
    )
    (result,) = comparison.results
    grid = sweep_around(tiny_recipe.lr)
    assert sorted(result.by_lr) == grid and result.best_lr in grid
    assert comparison.lr_sweep == {"attn": grid}
    assert len(list((out / "runs").iterdir())) == 3  # one run per learning rate
    notes = "\n".join(comparison.notes())
    assert "no --lr given: every variant swept lr 0.0067, 0.02, 0.06" in notes
    used = {"train.batch_size": 3, "train.steps": 2, "optim.schedule": "constant"}
    used.update({"optim.warmup": 1, "optim.weight_decay": 0.05})
    assert comparison.recipe == used  # the lr is the sweep's centre, said in its own note
    assert (
        "from the task's recipe (not set otherwise): train.batch_size=3, train.steps=2, "
        "optim.schedule=constant, optim.warmup=1, optim.weight_decay=0.05" in notes
    )
    assert "(its default lr 0.02 ÷3, ×1, ×3)" in notes
    assert "no --lr given" in (out / "summary.md").read_text()
    record = json.loads((out / "compare.json").read_text())
    assert record["lr_sweep"] == {"attn": grid} and record["lrs"] is None
    assert record["recipe"] == used
    for run in (out / "runs").iterdir():  # the recipe's budget and batch, as train uses them
        config = (run / "config.toml").read_text()
        assert f"batch_size = {tiny_recipe.batch_size}" in config and "steps = 2" in config


def test_compare_with_lr_or_a_users_lr_sweeps_accordingly(tmp_path, tiny_recipe):
    given = compare(
        ["attn=Norm->Attn->+"], data=TASK, out=tmp_path / "given", lrs=[1e-3],
        plot=False, progress=False, **SMALL,
    )  # fmt: skip
    assert given.lr_sweep == {} and list(given.results[0].by_lr) == [1e-3]
    assert not any("no --lr" in note for note in given.notes())
    assert "optim.lr" not in given.recipe  # --lr is the learning rate, not the recipe's
    # a user's [optim] lr is the centre of the sweep in place of the recipe's
    own = compare(
        ["attn=Norm->Attn->+"], data=TASK, out=tmp_path / "own", steps=1, optim={"lr": 1e-3},
        plot=False, progress=False, **SMALL,
    )  # fmt: skip
    assert own.lr_sweep == {"attn": [0.00033, 0.001, 0.003]}


def test_the_cli_prints_the_sweep_under_the_table(tmp_path, capsys, tiny_recipe):
    argv = ["compare", "attn=Norm->Attn->+", "--data", TASK, "--out", str(tmp_path)]
    argv += ["--set", "d_model=16", "--set", "layers='block*1'", "--set", "defaults.Attn.heads=2"]
    assert main([*argv, "--quiet", "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "no --lr given: every variant swept lr 0.0067, 0.02, 0.06" in printed
