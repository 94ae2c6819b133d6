"""Training-loop benchmark: ``blockdsl.train`` against a plain nanoGPT-style loop.

Both train the same model (the ``tiny`` preset at the size below, byte vocabulary) from the
same initial weights on the same ``(seed, step)`` batches with the same optimizer (AdamW,
weight decay on matrices, betas (0.9, 0.95), gradient clipping at 1.0, warmup + cosine
learning rate), in one process, in alternating rounds (blockdsl, hand-written, blockdsl, ...)
so both see the same machine load. The hand-written loop is nanoGPT's ``train.py`` reduced to
what this run uses: it sets the learning rate by hand, accumulates micro-batches, clips,
steps, zeroes gradients with ``set_to_none`` and reads ``loss.item()`` every step.

A step's time is the wall time between consecutive steps (for blockdsl, the differences of
``metrics.jsonl``'s ``elapsed``: everything the loop does, metrics file and checks included);
the first ``--warmup`` steps of each round are left out (both loops). Reported: the median
step time over all rounds, tokens/s, and the ratio blockdsl ÷ hand-written in tokens/s (1.0 =
as fast). Eager, then ``torch.compile``.

    PYTHONPATH=. python bench/train.py [--steps 30] [--rounds 3] [--threads 2] [--seq 256]
                                       [--no-compile | --no-eager] [--json [--record NAME]]

``--json`` writes the rows to ``bench/results/NAME.json`` (default ``train``) for
``bench/report.py``; eager and compiled rows may be recorded by separate runs under two names.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import blockdsl
from blockdsl.train.data import TokenData, prepare

ROOT = Path(__file__).resolve().parent.parent
MODEL = {
    "vocab": 256,
    "d_model": 128,
    "context": 256,
    "layers": "block*4",
    "defaults": {"Attn": {"heads": 4, "kv_heads": 2}, "MLP": {"hidden": 352}},
}
LR, MIN_LR, WARMUP, CLIP, WD, BETAS = 1e-3, 1e-4, 5, 1.0, 0.1, (0.9, 0.95)


def blockdsl_steps(data: Path, out: Path, args: argparse.Namespace, compiled: bool) -> list[float]:
    # each loop compiles its own model afresh (a shared code cache would hit dynamo's
    # recompile limit after a few rounds and silently run eagerly)
    torch._dynamo.reset()
    run = blockdsl.train(
        "tiny",
        data=data,
        out=out,
        progress=False,
        train={
            "steps": args.steps,
            "batch_size": args.batch,
            "global_batch_size": args.batch * args.accumulation,
            "seq_len": args.seq,
            "eval_every": 0,
            "eval_batches": 1,
            "save_every": 0,
            "compile": compiled,
            "seed": 0,
        },
        optim={
            "lr": LR,
            "min_lr": MIN_LR,
            "warmup": WARMUP,
            "weight_decay": WD,
            "betas": list(BETAS),
            "grad_clip": CLIP,
        },
        **MODEL,
    )
    elapsed = [m["elapsed"] for m in run.metrics]
    times = [b - a for a, b in itertools.pairwise(elapsed)]  # times[i]: step i + 2
    return times[args.warmup - 1 :]


def handwritten_steps(data: Path, args: argparse.Namespace, compiled: bool) -> list[float]:
    """nanoGPT's loop, reduced to what this run uses."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = blockdsl.build_model("tiny", **MODEL)
    tokens = TokenData(data)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR,
        betas=BETAS,
    )
    forward = torch.compile(model) if compiled else model

    def get_lr(it: int) -> float:
        if it < WARMUP:
            return LR * (it + 1) / (WARMUP + 1)
        ratio = (it - WARMUP) / max(1, args.steps - WARMUP)
        return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)

    times = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step)
        x, y = tokens.batch(0, step, args.batch * args.accumulation, args.seq)
        for micro in range(args.accumulation):
            rows = slice(micro * args.batch, (micro + 1) * args.batch)
            loss = forward(x[rows], y[rows]).loss
            (loss / args.accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
    return times[args.warmup :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--no-eager", action="store_true", help="torch.compile rows only")
    parser.add_argument("--json", action="store_true", help="record to bench/results/NAME.json")
    parser.add_argument("--record", default="train", help="record NAME (default: train)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}; tiny preset {MODEL['d_model']}d {MODEL['layers']}, "
        f"batch {args.batch}×{args.accumulation} (accumulation) × {args.seq} tokens, "
        f"{args.steps} steps × {args.rounds} rounds"
    )
    step_tokens = args.batch * args.accumulation * args.seq
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare([str(ROOT / "blockdsl")], data, glob="*.py", progress=False)
        modes = [] if args.no_eager else [False]
        modes += [] if args.no_compile else [True]
        rows = []
        for compiled in modes:
            ours: list[float] = []
            theirs: list[float] = []
            round_ratios: list[float] = []
            for round_ in range(args.rounds):
                run_ours = functools.partial(
                    blockdsl_steps, data, Path(tmp) / f"run{compiled}{round_}", args, compiled
                )
                run_theirs = functools.partial(handwritten_steps, data, args, compiled)
                # ABBA order: a load that drifts during a round weighs on both loops alike
                if round_ % 2 == 0:
                    mine, reference = run_ours(), run_theirs()
                else:
                    reference, mine = run_theirs(), run_ours()
                ours += mine
                theirs += reference
                round_ratios.append(statistics.median(reference) / statistics.median(mine))
            a, b = statistics.median(ours), statistics.median(theirs)
            paired = statistics.median(round_ratios)
            mode = "compiled" if compiled else "eager"
            print(
                f"{mode:8s} blockdsl train {a * 1e3:7.1f} ms/step {step_tokens / a:9,.0f} tok/s | "
                f"hand-written {b * 1e3:7.1f} ms/step {step_tokens / b:9,.0f} tok/s | "
                f"ratio {b / a:.3f}, median of per-round ratios {paired:.3f} "
                f"({len(ours)} and {len(theirs)} steps)",
                flush=True,
            )
            rows.append(
                [
                    f"{mode}, {args.threads} thread(s)",
                    f"{len(ours)} / {len(theirs)}",
                    a * 1e3,
                    step_tokens / a,
                    b * 1e3,
                    step_tokens / b,
                    b / a,
                    paired,
                ]
            )
    if args.json:
        from bench.record import Record

        record = Record(args.record, "blockdsl train against a hand-written nanoGPT-style loop")
        record.table(
            [
                "mode",
                "steps timed (blockdsl / hand-written)",
                "blockdsl ms/step",
                "blockdsl tok/s",
                "hand-written ms/step",
                "hand-written tok/s",
                "ratio (tokens/s)",
                "median of per-round ratios",
            ],
            rows,
            caption=(
                f"tiny preset {MODEL['d_model']}d {MODEL['layers']}, byte vocabulary; "
                f"micro-batch {args.batch} x {args.seq} tokens, {args.accumulation}-step "
                f"accumulation; {args.rounds} alternating rounds of {args.steps} steps, the "
                f"first {args.warmup} of each left out; median step time; ratio = blockdsl "
                "tokens/s over hand-written (1.0 = as fast), pooled and per round (ABBA order)."
            ),
        )
        print(f"recorded {record.write()}")


if __name__ == "__main__":
    main()
