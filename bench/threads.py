"""Threads benchmark: training and generation tokens/s with one torch thread against torch's
default (one per core), side by side in one process.

torch starts one intra-op thread per core. On a machine shared with other work those threads
wait for each other at every operation, and a small model can run faster on one. This bench
measures it where it runs: the same ``blockdsl.train`` run (the ``tiny`` preset at the size
below, byte vocabulary) and the same cached generation, alternating one thread and the
default in rounds (1, default, 1, default, ...) so both see the same machine load; the ratio
is default tokens/s over one thread's (below 1: the default is slower).

Run it without ``OMP_NUM_THREADS`` set (that would make the default one thread too):

    PYTHONPATH=. python bench/threads.py [--rounds 4] [--steps 12] [--tokens 64] [--json]

``--json`` writes ``bench/results/threads.json`` for ``bench/report.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import blockdsl
from blockdsl.threads import cpu_threads
from blockdsl.train.data import prepare

ROOT = Path(__file__).resolve().parent.parent
MODEL = {
    "vocab": 256,
    "d_model": 128,
    "context": 256,
    "layers": "block*4",
    "defaults": {"Attn": {"heads": 4, "kv_heads": 2}, "MLP": {"hidden": 352}},
}


def train_tokens_per_s(data: Path, out: Path, threads: int | None, args: argparse.Namespace):
    """Median tokens/s of a short run's steps after the first ``--warmup`` (from the
    differences of metrics.jsonl's ``elapsed``: everything the loop does)."""
    run = blockdsl.train(
        "tiny",
        data=data,
        out=out,
        progress=False,
        threads=threads,
        plot=False,
        train={
            "steps": args.steps,
            "batch_size": 8,
            "seq_len": 128,
            "eval_every": 0,
            "eval_batches": 1,
            "save_every": 0,
        },
        **MODEL,
    )
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    times = [b["elapsed"] - a["elapsed"] for a, b in itertools.pairwise(lines)][args.warmup :]
    return run.summary["threads"], 8 * 128 / statistics.median(times)


def generate_tokens_per_s(model: torch.nn.Module, threads: int | None, tokens: int) -> float:
    prompt = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    with cpu_threads(threads), torch.no_grad():
        model.generate(prompt, 4, greedy=True)  # warm the allocator and the cache code
        start = time.perf_counter()
        model.generate(prompt, tokens, greedy=True)
        return tokens / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per timing")
    parser.add_argument("--json", action="store_true", help="record to bench/results/threads.json")
    args = parser.parse_args(argv)
    if "OMP_NUM_THREADS" in os.environ:
        parser.error("unset OMP_NUM_THREADS: it makes torch's default one thread as well")
    default = torch.get_num_threads()
    train_rates: dict[int | None, list[float]] = {1: [], None: []}
    generate_rates: dict[int | None, list[float]] = {1: [], None: []}
    torch.manual_seed(0)
    model = blockdsl.build_model("tiny", **MODEL).eval()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare([str(ROOT / "blockdsl")], data, glob="*.py", progress=False)
        for index in range(args.rounds):
            for threads in (1, None):
                out = Path(tmp) / f"run-{index}-{threads}"
                used, rate = train_tokens_per_s(data, out, threads, args)
                assert used == (threads or default), (used, threads, default)
                train_rates[threads].append(rate)
                generate_rates[threads].append(generate_tokens_per_s(model, threads, args.tokens))
                print(
                    f"round {index + 1} threads {used}: train {rate:,.0f} tok/s, generate "
                    f"{generate_rates[threads][-1]:,.1f} tok/s",
                    flush=True,
                )
    rows = []
    for what, rates in (("training", train_rates), ("generation", generate_rates)):
        one, many = statistics.median(rates[1]), statistics.median(rates[None])
        rows.append([what, one, many, many / one])
    for row in rows:
        print(f"{row[0]}: 1 thread {row[1]:,.1f} tok/s, {default} threads {row[2]:,.1f} tok/s, "
              f"ratio {row[3]:.2f}")  # fmt: skip
    if args.json:
        from bench.record import Record

        record = Record("threads", "One torch thread against torch's default, side by side")
        record.table(
            ["work", "1 thread tok/s", f"default ({default} threads) tok/s", "ratio (default / 1)"],
            rows,
            caption=(
                f"tiny preset 128d block*4, byte vocabulary. Training: micro-batch 8 x 128, "
                f"{args.steps} steps per run, the first {args.warmup} left out, median step; "
                f"generation: {args.tokens} tokens after a 16-token prompt, cached, greedy. "
                f"{args.rounds} alternating rounds (1 thread, default, ...), medians over "
                "rounds. Ratio below 1: the default is slower than one thread."
            ),
        )
        record.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
