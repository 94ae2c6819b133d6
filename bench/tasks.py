"""Synthetic-task benchmark: wall time for a 2-layer attention model of width 64 to reach 0.99
MQAR accuracy (Zoology's generator: vocab 256, seq 64, 4 pairs), trained by ``blockdsl train``
(the head computed only at the labelled positions, early stop at the target) and by a plain
loop that computes the head at every position, side by side in one process.

Two measurements:

1. **Step time**, interleaved round-robin on the same model, batches and optimizer: a training
   step with the head at the labelled positions (``model(x, y)``) against one with the head at
   every position (``cross_entropy(model(x), y)``); median of each and their ratio. Under a
   shared machine's load both see the same conditions, so the ratio holds.
2. **Time to target**: ``blockdsl.train(..., train={"target_accuracy": 0.99, "eval_every":
   0})`` (the test set scored only when the training batches' own score reaches the target,
   docs/tasks.md) against the plain loop (the head everywhere, the test set scored every
   ``--eval-every`` steps, as a user would write it), on the same batches and learning rate,
   each capped at ``--max-time`` seconds (the accuracy reached is reported when the cap comes
   first). Wall time and the process's CPU time of each: on a
   machine shared with other jobs the CPU time is what an idle core would take.

    PYTHONPATH=. python bench/tasks.py [--max-time 300] [--lr 3e-3] [--batch 32]
                                       [--eval-every 50] [--skip-train] [--task task:...]
                                       [--json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import blockdsl
from blockdsl.tasks import Task
from blockdsl.train.optim import build_optimizers
from blockdsl.train.settings import OptimSettings

TASK = "task:mqar,vocab=256,seq=64,pairs=4"
TARGET = 0.99


BLOCK = "Norm->Attn->+"


def model_overrides(task: Task) -> dict:
    """Zoology's two-layer attention model of Figure 2: one sequence mixer per layer (no
    MLP), one head."""
    return {
        "vocab": task.vocab,
        "d_model": 64,
        "context": task.seq_len,
        "layers": "block*2",
        "blocks": {"block": BLOCK},
        "defaults": {"Attn": {"heads": 1, "kv_heads": 1}},
    }


def build(task: Task, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return blockdsl.build_model("tiny", **model_overrides(task))


def labelled_step(model, optimizer, x, y) -> float:
    loss = model(x, y).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def full_head_step(model, optimizer, x, y) -> float:
    logits = model(x).logits
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def step_times(task: Task, batch: int, lr: float, rounds: int) -> dict[str, float]:
    """Median step time of each kind, interleaved round-robin (the order alternates)."""
    settings = OptimSettings(lr=lr, schedule="constant")
    arms = {}
    for name, fn in (("labelled head", labelled_step), ("head everywhere", full_head_step)):
        model = build(task)
        arms[name] = (fn, model, build_optimizers(model, settings)[0], [])
    for r in range(rounds):
        x, y = task.batch(r, batch)
        order = list(arms.items()) if r % 2 == 0 else list(reversed(arms.items()))
        for _, (fn, model, optimizer, times) in order:
            tick = time.perf_counter()
            fn(model, optimizer, x, y)
            times.append(time.perf_counter() - tick)
    warm = max(1, rounds // 5)
    return {name: statistics.median(arm[3][warm:]) for name, arm in arms.items()}


@torch.no_grad()
def full_head_accuracy(model: torch.nn.Module, task: Task, batch_size: int = 256) -> float:
    """The test score as a plain loop computes it: logits at every position, argmax."""
    model.eval()
    inputs, targets = task.test_set
    preds = torch.cat([model(x).logits.argmax(-1) for x in inputs.split(batch_size)])
    model.train()
    return task.score(preds, targets)


def plain_loop(task: Task, batch: int, lr: float, every: int, max_time: float) -> dict:
    """The loop a user would write: the head at every position, the same optimizer, batches
    and learning rate as ``blockdsl train``, the test set scored every ``every`` steps."""
    model = build(task)
    optimizer = build_optimizers(model, OptimSettings(lr=lr, schedule="constant"))[0]
    started, cpu = time.perf_counter(), time.process_time()
    accuracy, step, evaluations = 0.0, 0, 0
    while time.perf_counter() - started < max_time:
        x, y = task.batch(step, batch)
        full_head_step(model, optimizer, x, y)
        step += 1
        if step % every == 0:
            accuracy = full_head_accuracy(model, task)
            evaluations += 1
            if accuracy >= TARGET:
                break
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "steps": step,
        "evaluations": evaluations,
        "accuracy": accuracy,
    }


def blockdsl_train(task: Task, batch: int, lr: float, max_time: float, out: Path) -> dict:
    cpu = time.process_time()
    run = blockdsl.train(
        "tiny",
        data=task.text,
        out=out,
        progress=False,
        train={
            "time": max_time,
            "batch_size": batch,
            "eval_every": 0,  # the training batches' score calls the test evaluation
            "eval_batches": 1,
            "save_every": 0,
            "target_accuracy": TARGET,
        },
        optim={"lr": lr, "schedule": "constant", "warmup": 0},
        **model_overrides(task),
    )
    return {
        "seconds": run.summary["elapsed"],
        "cpu_seconds": time.process_time() - cpu,
        "steps": run.summary["steps"],
        "evaluations": sum("accuracy" in m for m in run.metrics),
        "accuracy": run.summary["final_accuracy"] or 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-time", type=float, default=300.0, help="cap per training run (s)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=50, help="steps between test scores")
    parser.add_argument("--rounds", type=int, default=30, help="round-robin step-time rounds")
    parser.add_argument("--skip-train", action="store_true", help="step times only")
    parser.add_argument("--task", default=TASK, help=f"the task (default {TASK})")
    parser.add_argument(
        "--json", action="store_true", help="write bench/results/tasks.json (bench/report.py)"
    )
    args = parser.parse_args()

    load_before = os.getloadavg()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"
        f", load average {load_before[0]:.1f}"
    )
    tick = time.perf_counter()
    task = Task(args.task, seed=0)
    _ = task.train_set  # generate now, outside the timings
    generated = time.perf_counter() - tick
    print(
        f"{task.text}: {task.params['train']:,} train / {task.params['test']:,} test examples "
        f"generated in {generated:.1f} s (not counted below)"
    )

    times = step_times(task, args.batch, args.lr, args.rounds)
    labelled, full = times["labelled head"], times["head everywhere"]
    labels = int((task.batch(0, 1)[1] != -100).sum())
    shape = f"batch {args.batch}×{task.seq_len}"
    print(f"step time (median of {args.rounds} interleaved rounds, {shape}):")
    print(f"  head at labelled positions {labelled * 1e3:8.1f} ms")
    print(f"  head at every position     {full * 1e3:8.1f} ms   ratio {full / labelled:.2f}x")
    runs: dict[str, dict] = {}
    if not args.skip_train:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            runs["blockdsl train"] = blockdsl_train(task, args.batch, args.lr, args.max_time, out)
        runs["plain loop"] = plain_loop(task, args.batch, args.lr, args.eval_every, args.max_time)
        print(f"time to {TARGET} accuracy (cap {args.max_time:.0f} s):")
        for name, result in runs.items():
            print(
                f"  {name:16s} {result['seconds']:7.1f} s wall {result['cpu_seconds']:7.1f} s CPU "
                f"{result['steps']:5d} steps {result['evaluations']:3d} test scores  accuracy "
                f"{result['accuracy']:.4f} ({_status(result)})"
            )
    load_after = os.getloadavg()
    print(f"load average {load_after[0]:.1f} at the end")
    if args.json:
        _write_record(args, task, labels, labelled, full, runs, generated, load_after)


def _status(result: dict) -> str:
    return "reached" if result["accuracy"] >= TARGET else "cap, NOT reached"


def _write_record(args, task, labels, labelled, full, runs, generated, load_after) -> None:
    from bench.record import Record

    record = Record("tasks", "Time to 0.99 MQAR accuracy; labelled head against head everywhere")
    record.table(
        ["training step", "ms", "head everywhere ÷ labelled head"],
        [
            [
                f"head at the {labels} labelled positions (`model(x, y)`)",
                labelled * 1e3,
                f"**{full / labelled:.2f}×**",
            ],
            [
                f"head at all {task.seq_len} positions (`cross_entropy(model(x), y)`)",
                full * 1e3,
                "1.00×",
            ],
        ],
        caption=f"`{task.text}` ({task.params['train']:,} training examples, generated in "
        f"{generated:.0f} s, not counted); model: 2 × `{BLOCK}`, width 64, one head "
        f"(Zoology's Figure 2 model); AdamW lr {args.lr:g}, batch {args.batch} × "
        f"{task.seq_len}; median of {args.rounds} interleaved rounds",
    )
    if runs:
        record.table(
            ["loop", "wall s", "CPU s", "steps", "test scores", "accuracy", ""],
            [
                [
                    name,
                    r["seconds"],
                    r["cpu_seconds"],
                    r["steps"],
                    r["evaluations"],
                    f"{r['accuracy']:.4f}",
                    _status(r),
                ]
                for name, r in runs.items()
            ],
            caption=f"time to {TARGET} accuracy on the {task.params['test']:,} test examples, "
            f"cap {args.max_time:.0f} s each; the plain loop scores the test set every "
            f"{args.eval_every} steps, `blockdsl train` only when its training batches reach the "
            "target (`eval_every = 0`)",
        )
        ours, plain = runs["blockdsl train"], runs["plain loop"]
        wall = plain["seconds"] / ours["seconds"]
        cpu = plain["cpu_seconds"] / ours["cpu_seconds"]
        record.note(
            f"Time to target, plain loop ÷ `blockdsl train`: **{wall:.2f}×** wall, "
            f"**{cpu:.2f}×** CPU. Load average {load_after[0]:.1f} at the end (1 minute)."
        )
    print(f"wrote {record.write()}")


if __name__ == "__main__":
    main()
