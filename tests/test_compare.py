"""blockdsl compare: variants on the same batches, skip of an over-budget variant with its
reason, reuse of finished runs, the output files, and training on a task."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

import blockdsl
from blockdsl.cli import main
from blockdsl.compare import COLUMNS, compare, parse_variants
from blockdsl.errors import ConfigError

TASK = "task:mqar,vocab=64,seq=16,pairs=2,train=64,test=16"
SMALL = {
    "d_model": 16,
    "layers": "block*1",
    "defaults": {"Attn": {"heads": 2, "kv_heads": 2}, "MLP": {"hidden": 32}},
    "train": {"batch_size": 4, "eval_every": 2},
}


def _runs(out):
    return sorted(p.name for p in (out / "runs").iterdir())


@pytest.mark.slow
def test_compare_trains_reuses_and_skips_with_reason(tmp_path):
    out = tmp_path / "cmp"
    specs = [
        "attn=Norm->Attn->+",
        "conv=Norm->Conv->+->Norm->MLP->+",
        "big=Norm->MLP(hidden=100000)->+",
    ]
    first = compare(
        specs,
        data=TASK,
        out=out,
        steps=2,
        seeds=[0, 1],
        lrs=[1e-3],
        max_memory="6MB",
        plot=False,
        progress=False,
        **SMALL,
    )
    by_name = {r.name: r for r in first.results}
    assert by_name["attn"].status == "ok" and by_name["conv"].status == "ok"
    assert by_name["big"].status.startswith("skipped: memory estimate")
    assert "over the budget of" in by_name["big"].status
    assert by_name["attn"].seeds == 2 and 0.0 <= by_name["attn"].metric_mean <= 1.0
    assert by_name["attn"].params < by_name["conv"].params
    runs = _runs(out)
    assert len(runs) == 4 and not any(name.startswith("big") for name in runs)

    rows = list(csv.DictReader(io.StringIO((out / "summary.csv").read_text())))
    assert tuple(rows[0]) == COLUMNS
    assert [r["status"] for r in rows] == ["ok", "ok", by_name["big"].status]
    assert "| big |" in (out / "summary.md").read_text()

    # The same batches for every variant: the same task, data seed and (seed, step) order.
    data = {
        name.split("-")[0] + name.split("-")[1]: (out / "runs" / name / "data.json").read_text()
        for name in runs
    }
    assert data["attnseed0"] == data["convseed0"] != data["attnseed1"] == data["convseed1"]

    # Reuse: a second comparison trains nothing and reports the same numbers.
    stamps = {n: (out / "runs" / n / "metrics.jsonl").stat().st_mtime_ns for n in runs}
    again = compare(
        specs,
        data=TASK,
        out=out,
        steps=2,
        seeds=[0, 1],
        lrs=[1e-3],
        max_memory="6MB",
        plot=False,
        progress=False,
        **SMALL,
    )
    assert _runs(out) == runs
    assert stamps == {n: (out / "runs" / n / "metrics.jsonl").stat().st_mtime_ns for n in runs}
    assert [r.metric_mean for r in again.results] == [r.metric_mean for r in first.results]


@pytest.mark.slow
def test_interrupted_run_is_resumed_not_restarted(tmp_path):
    out = tmp_path / "cmp"
    options = dict(steps=2, lrs=[1e-3], plot=False, progress=False, **SMALL)
    compare(["Norm->Attn->+"], data=TASK, out=out, **options)
    (run,) = (out / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    summary["interrupted"] = "SIGTERM"  # as a stopped run leaves it
    (run / "summary.json").write_text(json.dumps(summary))
    result = compare(["Norm->Attn->+"], data=TASK, out=out, **options)
    assert result.results[0].status == "ok"
    assert json.loads((run / "summary.json").read_text())["interrupted"] is None


@pytest.mark.slow
def test_learning_rate_grid_reports_the_best(tmp_path):
    result = compare(
        ["Norm->Attn->+"],
        data=TASK,
        out=tmp_path,
        steps=3,
        lrs=[1e-6, 3e-2],
        plot=False,
        progress=False,
        **SMALL,
    ).results[0]
    assert set(result.by_lr) == {1e-6, 3e-2}
    best = max(result.by_lr, key=lambda lr: result.by_lr[lr][0])
    assert result.best_lr == best and result.metric_mean == result.by_lr[best][0]


def test_variants_are_named_and_put_in_the_base(byte_data):
    variants = parse_variants(["a=Norm->Attn->+", "Norm->MLP->+", "tiny"], overrides={})
    assert [v.name for v in variants] == ["a", "Norm->MLP->+", "tiny"]
    assert variants[0].config.blocks["block"] == "Norm->Attn->+"
    assert variants[0].config.layers == variants[2].config.layers  # tiny's layers
    with pytest.raises(ConfigError, match="two variants are named 'a'"):
        parse_variants(["a=tiny", "a=llama"])
    with pytest.raises(ConfigError, match="needs a budget"):
        compare(["tiny"], data=byte_data, out="unused")


def test_blockdsl_compare_is_callable_and_the_cli_prints_the_table(tmp_path, capsys):
    import blockdsl.compare as module

    assert callable(blockdsl.compare) and callable(module)
    argv = ["compare", "attn=Norm->Attn->+", "--data", TASK, "--steps", "2"]
    argv += ["--out", str(tmp_path), "--set", "d_model=16", "--set", "layers='block*1'"]
    argv += ["--set", "defaults.Attn.heads=2", "--set", "train.batch_size=4", "--quiet"]
    code = main(argv)
    printed = capsys.readouterr().out
    assert code == 0 and "attn" in printed and "accuracy" in printed
    assert (tmp_path / "curves.png").stat().st_size > 1000  # matplotlib is in dev
    assert main(["compare", "x", "--data", TASK, "--steps", "2", "--seeds", "a"]) == 2
    assert "--seeds expects comma-separated numbers" in capsys.readouterr().err


# ==================================================================== issue 33: 3, 4, 5
@pytest.fixture(scope="module")
def byte_data(tmp_path_factory):
    """A prepared byte-level corpus (vocab 256): this package's parser and config sources."""
    from pathlib import Path

    from blockdsl.train.data import prepare

    root = Path(blockdsl.__file__).parent
    out = tmp_path_factory.mktemp("bytes")
    prepare(
        [str(root / "parser.py"), str(root / "config.py")], out, tokenizer="byte", progress=False
    )
    return out


def test_data_directory_gives_the_vocabulary_and_one_loss_column(tmp_path, byte_data):
    """A data directory fixes the vocabulary as a task does (the base preset's 4096 would
    train a 4096-row embedding on 256 byte tokens), and a val_loss comparison shows the loss
    once, not as "val_loss" and "val loss" side by side."""
    from blockdsl.model import build_model

    small = {**SMALL, "train": {**SMALL["train"], "seq_len": 16}}
    comparison = compare(
        ["attn=Norm->Attn->+"], data=byte_data, out=tmp_path, steps=2, plot=False,
        progress=False, **small,
    )  # fmt: skip
    (result,) = comparison.results
    run = blockdsl.train.Run.load(result.runs[0])
    assert run.config.vocab == 256
    assert result.params == build_model(run.config).num_params()
    headers = comparison.to_markdown().splitlines()[2]
    assert headers.count("val") == 1 and "val_loss" in headers
    assert [c.header for c in comparison.table().columns].count("val loss") == 0
    # a task's accuracy keeps the validation loss beside it
    task = compare(
        ["attn=Norm->Attn->+"], data=TASK, out=tmp_path / "t", steps=2, plot=False,
        progress=False, **SMALL,
    )  # fmt: skip
    assert "| accuracy | val loss |" in task.to_markdown()


def test_variant_names_are_safe_file_names_with_hyphens():
    variants = parse_variants(
        ["llama-like=Norm->Attn->+", "v1.2_x=Norm->MLP(hidden=8)->+", "Norm->MLP(hidden=8)->+"]
    )
    assert [v.name for v in variants][:2] == ["llama-like", "v1.2_x"]
    assert variants[0].config.blocks["block"] == "Norm->Attn->+"
    assert variants[2].config.blocks["block"] == "Norm->MLP(hidden=8)->+"
    for bad in ("my variant=Norm->Attn->+", "a/b=tiny", ".hidden=tiny", "-x=tiny"):
        with pytest.raises(
            ConfigError, match=re.escape("may contain letters, digits, '-', '_' and '.'")
        ):
            parse_variants([bad])


def test_nothing_left_to_compare_is_an_error_and_draws_no_plot(tmp_path, capsys):
    from blockdsl.errors import BudgetError

    specs = ["big=Norm->MLP(hidden=100000)->+", "bigger=Norm->MLP(hidden=200000)->+"]
    with pytest.raises(BudgetError, match="nothing to compare: all 2 variant"):
        compare(specs, data=TASK, out=tmp_path, steps=2, max_memory="6MB", progress=False, **SMALL)
    assert "warning: 2 of 2 variants not compared: big (skipped: memory estimate" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "curves.png").exists()
    argv = ["compare", *specs, "--data", TASK, "--steps", "2", "--max-memory", "6MB"]
    argv += ["--out", str(tmp_path / "cli"), "--set", "d_model=16", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "nothing to compare" in err and "Traceback" not in err


def test_a_skipped_variant_is_said_and_the_plot_shows_the_rest(tmp_path, capsys, recwarn):
    comparison = compare(
        ["attn=Norm->Attn->+", "big=Norm->MLP(hidden=100000)->+"], data=TASK, out=tmp_path,
        steps=2, max_memory="6MB", progress=False, **SMALL,
    )  # fmt: skip
    assert "warning: 1 of 2 variants not compared: big (skipped:" in capsys.readouterr().err
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert comparison.files == ["summary.csv", "summary.md", "compare.json", "curves.png"]
    assert not [w for w in recwarn if "No artists" in str(w.message)]
    from blockdsl.compare import plot_curves

    comparison.results[0].status = "skipped: for the test"
    assert plot_curves(comparison, tmp_path / "empty.png") is False
    assert not (tmp_path / "empty.png").exists()


def test_a_comparison_directory_has_one_owner(tmp_path):
    from blockdsl.checkpoint import RunInUse, run_lock

    with run_lock(tmp_path), pytest.raises(RunInUse, match=r"in use by another process \(pid"):
        compare(["Norm->MLP->+"], data=TASK, out=tmp_path, steps=1, progress=False, **SMALL)
    assert not (tmp_path / "runs").exists()  # refused before anything was trained
