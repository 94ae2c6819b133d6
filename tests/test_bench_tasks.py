"""The synthetic-task benchmark and the experiments' figure must not rot: the plain loop's
step and score compute what ``blockdsl train``'s do (tiny task, CPU), and the figure script
reads ``compare`` directories into its table."""

from __future__ import annotations

import json

import torch

from bench import mqar_figure
from bench import tasks as bench_tasks
from blockdsl.tasks import Task

TINY = "task:mqar,vocab=64,seq=16,pairs=2,train=64,test=32"


def test_plain_loop_step_and_score_match_the_labelled_head():
    task = Task(TINY, seed=0)
    x, y = task.batch(0, 8)
    model = bench_tasks.build(task)
    labelled = model(x, y).loss
    full = torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
    torch.testing.assert_close(labelled, full)
    assert bench_tasks.full_head_accuracy(model, task) == task.evaluate(model)["accuracy"]


def test_plain_loop_stops_at_the_target(monkeypatch):
    monkeypatch.setattr(bench_tasks, "TARGET", 0.0)
    result = bench_tasks.plain_loop(Task(TINY, seed=0), batch=4, lr=3e-3, every=2, max_time=60)
    assert result["steps"] == 2 and result["evaluations"] == 1
    assert result["cpu_seconds"] > 0


def _compare_dir(root, seq, width, scores):
    directory = root / f"seq{seq}-width{width}"
    run = directory / "runs" / "attention-seed0-abc"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(f"[model]\nd_model = {width}\n")
    data = f"task:mqar,vocab=64,seq={seq},pairs=2"
    (directory / "compare.json").write_text(json.dumps({"data": data}))
    rows = ["name,status,metric_mean"] + [f"{n},ok,{s}" for n, s in scores.items()]
    rows.append("big,skipped: memory,")
    (directory / "summary.csv").write_text("\n".join(rows) + "\n")
    return directory


def test_figure_reads_length_width_and_scores(tmp_path):
    a = _compare_dir(tmp_path, 16, 32, {"attention": 1.0, "hyena": 0.5})
    b = _compare_dir(tmp_path, 48, 32, {"attention": 0.99})
    assert mqar_figure.read(a) == (16, 32, {"attention": 1.0, "hyena": 0.5})
    points = {}
    for directory in (a, b):
        seq, width, scores = mqar_figure.read(directory)
        for name, accuracy in scores.items():
            points.setdefault(name, {})[(seq, width)] = accuracy
    assert mqar_figure.markdown(points).splitlines()[2:] == [
        "| 16 | 32 | 1.000 | 0.500 |",
        "| 48 | 32 | 0.990 | — |",
    ]
