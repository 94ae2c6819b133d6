"""Fuzzing speed: architectures generated, compiled and checked per second.

Each example is a block drawn by ``blockdsl.testing.block_asts`` from every built-in component
(d_model 16, depth <= 2, chains <= 3 steps), printed, compiled with ``compile_block`` and run
through all of ``check_architecture``'s invariants (batch 2, 6 tokens): five forwards, one
backward, a state_dict save/load into a rebuilt copy. Hypothesis's own time is included.

Run from the repository root:  PYTHONPATH=. python bench/fuzz.py [--examples N] [--runs R]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from blockdsl.fuzz import fuzz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="record to bench/results/fuzz.json")
    args = parser.parse_args()

    fuzz(examples=5, seed=args.seed + 1000)  # warm-up: imports, lark, first fx codegen
    rates, rows = [], []
    for run in range(args.runs):
        result = fuzz(examples=args.examples, seed=args.seed + run)
        if not result.ok:
            print(f"run {run}: FAILED\n{result.failure.render()}")
            sys.exit(1)
        rates.append(result.per_second)
        rows.append([args.seed + run, result.examples, result.seconds, result.per_second])
        print(
            f"run {run} (seed {args.seed + run}): {result.examples} architectures in "
            f"{result.seconds:.2f}s = {result.per_second:.1f} architectures/s"
        )
    print(
        f"median {statistics.median(rates):.1f} architectures/s "
        f"(min {min(rates):.1f}, max {max(rates):.1f}) over {args.runs} runs of "
        f"{args.examples}; python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads outside checks"
    )
    if args.json:
        from bench.record import Record

        record = Record("fuzz", "Fuzzing throughput")
        record.table(["seed", "architectures", "seconds", "architectures/s"], rows)
        record.note(
            f"Median {statistics.median(rates):.1f} architectures/s over {args.runs} runs "
            "(Hypothesis's own time included)."
        )
        record.write()


if __name__ == "__main__":
    main()
