"""Watching runs: ``curves.png`` at each evaluation and ``blockdsl plot``; the TensorBoard and
W&B loggers (their files read back: the same scalars as metrics.jsonl, the config as
hyperparameters, no step twice after a resume); ``[train] threads``."""

from __future__ import annotations

import json
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest
import torch

import blockdsl
import blockdsl.plot as plot
from blockdsl.cli import main
from blockdsl.errors import ConfigError
from blockdsl.train.data import prepare

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "vocab": 256,
    "d_model": 32,
    "context": 64,
    "layers": "block*2",
    "defaults": {"Attn": {"heads": 2, "kv_heads": 1}, "MLP": {"hidden": 64}},
}
SCALARS = ("loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed", "val_loss")


def tiny_train(**train: object) -> dict:
    return {"steps": 4, "batch_size": 4, "seq_len": 32, "eval_every": 2, "eval_batches": 2, **train}


def train(data: Path, out: Path, resume: bool = False, **options: object) -> blockdsl.train.Run:
    settings = options.pop("train", {})
    return blockdsl.train(
        "tiny",
        data=data,
        out=out,
        resume=resume,
        progress=False,
        train=tiny_train(**settings),
        **TINY,
        **options,
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare([str(ROOT / "blockdsl")], out, glob="*.py", tokenizer="byte", progress=False)
    return out


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    train(data_dir, root / "a")
    train(data_dir, root / "b", plot=False, train={"steps": 3, "eval_every": 0})
    return [root / "a", root / "b"]


def metrics_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ==================================================================== plots
def test_train_writes_curves_at_each_evaluation_unless_told_not_to(two_runs):
    with_plot, without = two_runs
    assert (with_plot / "curves.png").stat().st_size > 10_000
    assert (with_plot / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (without / "curves.png").exists()
    assert not list(with_plot.glob(".curves.png.tmp*"))  # written through a renamed temporary


@pytest.mark.slow  # trains a run
def test_curves_are_redrawn_at_every_evaluation(data_dir, tmp_path, monkeypatch):
    drawn: list[int] = []
    real = plot.plot_curves

    def spy(curves, path, **kwargs):
        drawn.append(curves[0].metrics[-1]["step"])
        return real(curves, path, **kwargs)

    monkeypatch.setattr(plot, "plot_curves", spy)
    train(data_dir, tmp_path / "run", train={"steps": 4, "eval_every": 2})
    assert drawn == [2, 4]


def test_plot_draws_several_runs_in_one_png(capsys, two_runs, tmp_path):
    out = tmp_path / "both.png"
    argv = ["plot", *map(str, two_runs), "--labels", "four,three", "--out", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert out.stat().st_size > 10_000
    assert main(argv) == 2  # never overwritten without --force
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--force", "--metrics", "loss,grad_norm"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plot", "{tmp}", "--out", "{tmp}/x.png"], "is not a training run directory"),
        (["plot", "{run}", "--out", "{tmp}/x.svg"], "must end in .png"),
        (["plot", "{run}", "--labels", "a,b", "--out", "{tmp}/x.png"], "2 label(s) for 1 run"),
        (["plot", "{run}", "--metrics", "accuracy", "--out", "{tmp}/x.png"], "no run recorded"),
    ],
)
def test_plot_refuses_what_it_cannot_draw(capsys, two_runs, tmp_path, argv, message):
    argv = [a.format(tmp=tmp_path, run=two_runs[0]) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_plot_without_matplotlib_names_the_extra(two_runs, tmp_path, monkeypatch):
    monkeypatch.setattr(plot, "pyplot", lambda: None)
    with pytest.raises(plot.PlotError, match="needs matplotlib") as caught:
        plot.plot_runs(two_runs, tmp_path / "x.png")
    assert "blockdsl[plot]" in caught.value.hint
    assert plot.plot_curves([plot.Curve("a", metrics_of(two_runs[0]))], tmp_path / "y.png") is False
    assert not (tmp_path / "y.png").exists()


# ==================================================================== loggers
def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def jsonl_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    found: dict[str, list[tuple[int, float]]] = {}
    for line in metrics_of(run):
        for key, value in line.items():
            if key != "step":
                found.setdefault(key, []).append((line["step"], value))
    return found


def assert_same_scalars(logged: dict, recorded: dict) -> None:
    assert sorted(logged) == sorted(recorded)
    for tag, points in recorded.items():
        assert [s for s, _ in logged[tag]] == [s for s, _ in points], tag
        expected = [pytest.approx(v, rel=1e-6) for _, v in points]  # float32 in the events
        assert [v for _, v in logged[tag]] == expected, tag


@pytest.mark.slow  # two short runs and a resume
def test_tensorboard_logs_what_metrics_jsonl_holds_and_a_resume_adds_no_step_twice(
    data_dir, tmp_path
):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    settings = {"log": ["jsonl", "tensorboard"], "save_every": 2}
    train(data_dir, run, plot=False, train=settings)
    assert_same_scalars(tensorboard_scalars(run), jsonl_scalars(run))
    assert sorted(jsonl_scalars(run)) == sorted(SCALARS)
    # as if killed after step 4 was logged but before its checkpoint was saved
    shutil.rmtree(run / "checkpoints" / "step_0000004")
    before = jsonl_scalars(run)
    train(data_dir, run, resume=True, plot=False, train=settings)
    after = tensorboard_scalars(run)
    assert [s for s, _ in after["loss"]] == [1, 2, 3, 4]  # 3 and 4 trained twice, logged once
    assert_same_scalars(after, jsonl_scalars(run))
    assert [v for _, v in after["loss"]] == [pytest.approx(v) for _, v in before["loss"]]


def test_tensorboard_gets_the_config_as_hyperparameters(data_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = tmp_path / "run"
    train(data_dir, run, plot=False, train={"steps": 1, "log": ["jsonl", "tensorboard"]})
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    hparams = {k: v for k, v in data.session_start_info.hparams.items()}
    assert hparams["model.d_model"].number_value == 32
    assert hparams["train.steps"].number_value == 1
    assert hparams["optim.name"].string_value == "adamw"
    assert hparams["train.log"].string_value == "['jsonl', 'tensorboard']"


def wandb_history(run: Path) -> tuple[list[dict], dict]:
    """The history rows and config of W&B's offline run file(s) in ``run`` (a leveldb-style log
    of protobuf records: 32 KiB blocks, each record a 7-byte header, after a 7-byte file
    header), oldest run first."""
    from wandb.proto import wandb_internal_pb2

    rows, config = [], {}
    for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        raw = path.read_bytes()
        position, pending = 7, b""
        while position + 7 <= len(raw):
            left = 32768 - position % 32768
            if left < 7:
                position += left
                continue
            _, length, kind = struct.unpack("<IHB", raw[position : position + 7])
            position += 7
            if length == 0 and kind == 0:  # the block's zero padding
                position += left - 7
                continue
            pending += raw[position : position + length]
            position += length
            if kind in (1, 4):  # a full record, or the last piece of one
                record = wandb_internal_pb2.Record.FromString(pending)
                pending = b""
                which = record.WhichOneof("record_type")
                if which == "history":
                    rows.append(
                        {
                            i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in record.history.item
                        }
                    )
                elif which == "run":
                    for item in record.run.config.update:
                        config[item.key] = json.loads(item.value_json)
    return rows, config


@pytest.mark.slow  # W&B starts a service process
def test_wandb_logs_offline_the_same_scalars_and_the_config(data_dir, tmp_path, capfd):
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    train(data_dir, run, plot=False, train={"log": ["jsonl", "wandb"]})
    recorded = metrics_of(run)
    # W&B's service process writes the offline file after finish() returns
    deadline = time.monotonic() + 60
    rows, config = wandb_history(run)
    while len(rows) < len(recorded) and time.monotonic() < deadline:
        time.sleep(0.5)
        rows, config = wandb_history(run)
    assert [r["_step"] for r in rows] == [m["step"] for m in recorded]
    for row, line in zip(rows, recorded):
        assert {k: row[k] for k in line if k != "step"} == {
            k: v for k, v in line.items() if k != "step"
        }
    assert config["train.steps"] == 4 and config["model.d_model"] == 32
    assert (run / "wandb_id.txt").read_text().strip() in str(next(run.glob("wandb/offline-*")))
    captured = capfd.readouterr()
    assert "wandb" not in captured.out + captured.err  # nothing but the tool's own lines


def test_a_logger_that_is_not_installed_is_refused_before_the_run(data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ConfigError, match="the wandb package is not installed") as caught:
        train(data_dir, tmp_path / "run", train={"log": ["jsonl", "wandb"]})
    assert "blockdsl[wandb]" in caught.value.hint
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("log", "message"),
    [
        (["jsonl", "mlflow"], "unknown logger 'mlflow'"),
        (["tensorboard"], 'must keep "jsonl"'),
        ("jsonl,tensorboard", "unknown logger"),
        ([1], "must be a list of loggers"),
    ],
)
def test_bad_log_settings_are_named(log, message):
    from blockdsl.config import load_config
    from blockdsl.train.settings import resolve

    with pytest.raises(ConfigError, match=message):
        resolve(load_config("tiny", train={"steps": 1, "log": log}))


# ==================================================================== threads
@pytest.mark.slow  # trains a run
def test_threads_apply_to_the_run_are_recorded_and_restored(data_dir, tmp_path, monkeypatch):
    seen: list[int] = []
    from blockdsl.train.trainer import Trainer

    real = Trainer.train_step

    def spy(self, step):
        seen.append(torch.get_num_threads())
        return real(self, step)

    monkeypatch.setattr(Trainer, "train_step", spy)
    before = torch.get_num_threads()
    run = train(data_dir, tmp_path / "run", threads=1, plot=False, train={"steps": 2})
    assert seen == [1, 1]
    assert run.summary["threads"] == 1
    assert torch.get_num_threads() == before
    config = (tmp_path / "run" / "config.toml").read_text()
    assert "threads = 1" in config


def test_without_threads_torch_chooses_and_the_summary_says_what_it_chose(two_runs):
    summary = json.loads((two_runs[1] / "summary.json").read_text())
    assert summary["threads"] == torch.get_num_threads()
    assert summary["log"] == ["jsonl"]


@pytest.mark.parametrize("value", [0, -1, True, 2.5, 10**6])
def test_bad_thread_counts_are_named(value):
    from blockdsl.config import load_config
    from blockdsl.train.settings import resolve

    with pytest.raises(ConfigError, match=r"\[train\] threads must be a whole number"):
        resolve(load_config("tiny", train={"steps": 1, "threads": value}))


def test_the_commands_take_threads(capsys, two_runs, tmp_path):
    from blockdsl.cli import build_parser

    for command in ("train", "generate", "eval", "compare", "search"):
        parser = build_parser(command)
        sub = parser._subparsers._group_actions[0].choices[command]
        assert any("--threads" in a.option_strings for a in sub._actions), command
    code = main(["generate", str(two_runs[0]), "--prompt", "def", "--max-new-tokens", "3",
                 "--threads", "1", "--seed", "0"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("def")
    assert main(["generate", str(two_runs[0]), "--prompt", "x", "--threads", "0"]) == 2
    assert "--threads must be a whole number" in capsys.readouterr().err


@pytest.mark.slow  # prepares data and trains the examples' runs
@pytest.mark.parametrize("name", ["eval", "plot"])
def test_eval_and_plot_examples_run_as_printed(capsys, tmp_path, monkeypatch, name):
    """The --help examples of eval and plot, run in order; the data they prepare is this
    package's source instead of the whole standard library (the same command otherwise)."""
    from tests.test_cli_examples import examples_in, help_text

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "120")
    for argv in examples_in(help_text(capsys, name)):
        if argv[:2] == ["data", "prepare"]:
            argv = [*argv[:2], str(ROOT / "blockdsl"), "--glob", "*.py", *argv[3:]]
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 0, f"blockdsl {' '.join(argv)}: {captured.err}"
    if name == "plot":
        assert (tmp_path / "curves.png").stat().st_size > 10_000
    else:
        assert (tmp_path / "runs" / "eval" / "eval.csv").is_file()


def test_the_search_front_is_drawn_by_the_plotting_module(tmp_path, monkeypatch):
    """search's front.png goes through blockdsl.plot (one plotting module): every member is a
    point, the two-objective staircase is the front of metric and that panel's axis."""
    from types import SimpleNamespace

    from blockdsl.search import plot_front
    from blockdsl.search.evolution import Member, pareto_front

    members = [
        Member("a", 0.5, 100, 10.0, number=0),
        Member("b", 0.9, 300, 5.0, number=1),
        Member("c", 0.7, 200, 20.0, number=2),
        Member("d", 0.4, 400, 40.0, number=3),
    ]
    front = pareto_front(members, ("metric", "params", "state"))
    report = SimpleNamespace(
        members=members, front=front, seeds=members[:1], settings=SimpleNamespace(data="task:x")
    )
    panels = []
    real = plot.plot_front

    def spy(drawn, path, title=""):
        panels.extend(drawn)
        return real(drawn, path, title)

    monkeypatch.setattr(plot, "plot_front", spy)
    assert plot_front(report, tmp_path / "front.png") is True
    assert (tmp_path / "front.png").stat().st_size > 10_000
    params, state = panels
    assert params.x_label == "parameters" and state.x_label == "state/token"
    assert sorted(params.others + params.front) == sorted((m.params, m.metric) for m in members)
    assert params.staircase == [(100, 0.5), (200, 0.7), (300, 0.9)]
    assert params.seeds == [(100, 0.5)]
    assert plot_front(SimpleNamespace(members=[]), tmp_path / "none.png") is False
