"""Synthetic-task benchmark: wall time for a 2-layer attention model of width 64 to reach 0.99
MQAR accuracy (Zoology's generator: vocab 256, seq 64, 4 pairs), trained by ``blockdsl train``
(the head computed only at the labelled positions, early stop at the target) and by a plain
loop that computes the head at every position, side by side in one process.

Two measurements:

1. **Step time**, interleaved round-robin on the same model, batches and optimizer: a training
   step with the head at the labelled positions (``model(x, y)``) against one with the head at
   every position (``cross_entropy(model(x), y)``); median of each and their ratio. Under a
   shared machine's load both see the same conditions, so the ratio holds.
2. **Time to target**: ``blockdsl.train(..., train={"target_accuracy": 0.99}) `` against the
   plain loop on the same batches, learning rate and evaluation cadence, each capped at
   ``--max-time`` seconds (the accuracy reached is reported when the cap comes first).

    PYTHONPATH=. python bench/tasks.py [--max-time 300] [--lr 3e-3] [--batch 64]
                                       [--eval-every 25] [--skip-train] [--task task:...]
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


def model_overrides(task: Task) -> dict:
    return {
        "vocab": task.vocab,
        "d_model": 64,
        "context": task.seq_len,
        "layers": "block*2",
        "blocks": {"block": "Norm->Attn->+->Norm->MLP->+"},
        "defaults": {"Attn": {"heads": 2, "kv_heads": 2}, "MLP": {"hidden": 128}},
    }


def build(task: Task, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return blockdsl.build_model("tiny", **model_overrides(task))


def labelled_step(model, optimizer, x, y) -> float:
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def full_head_step(model, optimizer, x, y) -> float:
    logits = model(x)
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


def plain_loop(task: Task, batch: int, lr: float, every: int, max_time: float) -> dict:
    """The loop a user would write: the head at every position, the same optimizer, batches
    and evaluation cadence as ``blockdsl train``."""
    model = build(task)
    optimizer = build_optimizers(model, OptimSettings(lr=lr, schedule="constant"))[0]
    started = time.perf_counter()
    accuracy, step = 0.0, 0
    while time.perf_counter() - started < max_time:
        x, y = task.batch(step, batch)
        full_head_step(model, optimizer, x, y)
        step += 1
        if step % every == 0:
            accuracy = task.evaluate(model)["accuracy"]
            if accuracy >= TARGET:
                break
    return {"seconds": time.perf_counter() - started, "steps": step, "accuracy": accuracy}


def blockdsl_train(
    task: Task, batch: int, lr: float, every: int, max_time: float, out: Path
) -> dict:
    run = blockdsl.train(
        "tiny",
        data=task.text,
        out=out,
        progress=False,
        train={
            "time": max_time,
            "batch_size": batch,
            "eval_every": every,
            "eval_batches": 1,
            "save_every": 0,
            "target_accuracy": TARGET,
        },
        optim={"lr": lr, "schedule": "constant", "warmup": 0},
        **model_overrides(task),
    )
    return {
        "seconds": run.summary["elapsed"],
        "steps": run.summary["steps"],
        "accuracy": run.summary["final_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-time", type=float, default=300.0, help="cap per training run (s)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=30, help="round-robin step-time rounds")
    parser.add_argument("--skip-train", action="store_true", help="step times only")
    parser.add_argument("--task", default=TASK, help=f"the task (default {TASK})")
    args = parser.parse_args()

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"
    )
    tick = time.perf_counter()
    task = Task(args.task, seed=0)
    _ = task.train_set  # generate now, outside the timings
    print(
        f"{task.text}: {task.params['train']:,} train / {task.params['test']:,} test examples "
        f"generated in {time.perf_counter() - tick:.1f} s (not counted below)"
    )

    times = step_times(task, args.batch, args.lr, args.rounds)
    labelled, full = times["labelled head"], times["head everywhere"]
    shape = f"batch {args.batch}×{task.seq_len}"
    print(f"step time (median of {args.rounds} interleaved rounds, {shape}):")
    print(f"  head at labelled positions {labelled * 1e3:8.1f} ms")
    print(f"  head at every position     {full * 1e3:8.1f} ms   ratio {full / labelled:.2f}x")
    if args.skip_train:
        return

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        ours = blockdsl_train(task, args.batch, args.lr, args.eval_every, args.max_time, out)
    plain = plain_loop(task, args.batch, args.lr, args.eval_every, args.max_time)
    print(
        f"time to {TARGET} accuracy (cap {args.max_time:.0f} s, evaluation every "
        f"{args.eval_every} steps on the {task.params['test']:,} test examples):"
    )
    for name, result in (("blockdsl train", ours), ("plain loop, head everywhere", plain)):
        reached = result["accuracy"] is not None and result["accuracy"] >= TARGET
        status = "reached" if reached else "NOT reached"
        print(
            f"  {name:28s} {result['seconds']:7.1f} s  {result['steps']:5d} steps  accuracy "
            f"{result['accuracy'] or 0:.4f} ({status})"
        )


if __name__ == "__main__":
    main()
