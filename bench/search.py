"""Search throughput: candidates proposed, rejected before training and trained per minute.

A small ``blockdsl search`` on MQAR (d_model 16, one layer, 40 steps per candidate, a hurdle at
step 10, ``--max-params`` just above the seed's size so that growing candidates are rejected
by the estimate), one worker, in a fresh study. Then the cheap checks alone: mutations of the
seed proposed and checked (validation, parameter and memory estimates) without training, per
second: what a candidate costs before the first allocation.

Run from the repository root:  PYTHONPATH=. python bench/search.py [--trials N] [--json]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TASK = "task:mqar,vocab=32,seq=16,pairs=2,train=256,test=32"
SEED = "Norm->Conv->+->Norm->MLP->+"
COMPONENTS = ("Norm", "MLP", "Conv", "Attn")


def settings(steps: int, max_params: int | None):
    from blockdsl.search import SearchSettings

    return SearchSettings(
        data=TASK,
        components=COMPONENTS,
        seeds=(SEED,),
        steps=steps,
        hurdle=steps // 4,
        max_params=max_params,
        overrides={
            "d_model": 16,
            "layers": "block*1",
            "train": {"batch_size": 8, "eval_every": 0},
            "defaults": {"Attn": {"heads": 2, "kv_heads": 1}},
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="candidates to train")
    parser.add_argument("--steps", type=int, default=40, help="training steps per candidate")
    parser.add_argument("--checks", type=int, default=200, help="proposals for the cheap part")
    parser.add_argument("--json", action="store_true", help="record to bench/results/search.json")
    args = parser.parse_args()

    from blockdsl.search import default_storage
    from blockdsl.search.study import candidate_config, precheck
    from blockdsl.search.workers import run_worker, search_space

    probe = settings(args.steps, None)
    from blockdsl.model import ModelPlan

    seed_params = ModelPlan(candidate_config(probe, SEED)).params()
    budget = int(seed_params * 1.15)
    chosen = settings(args.steps, budget)

    with tempfile.TemporaryDirectory() as tmp:
        stats = run_worker(
            chosen,
            storage=default_storage(tmp),
            study_name="bench",
            out=tmp,
            trials=args.trials,
            rng_seed=0,
        )
    minutes = stats.seconds / 60
    rejected = stats.invalid + stats.over_budget
    counted = [
        ("proposed", stats.proposed),
        ("rejected before training (invalid)", stats.invalid),
        ("rejected before training (over budget)", stats.over_budget),
        ("already known (not re-evaluated)", stats.duplicates),
        ("trained", stats.trained),
        ("of which pruned at the hurdle", stats.pruned),
    ]
    search_rows = [[what, count, f"{count / minutes:.1f}"] for what, count in counted]
    print(f"search: {stats.seconds:.1f} s, {args.trials} trials of {args.steps} steps")
    for row in search_rows:
        print(f"  {row[0]:42s} {row[1]:5d}  {row[2]:>8s}/min")

    # the cheap part alone: propose and check, nothing trained
    space = search_space(chosen)
    rng = random.Random(1)
    parent = SEED
    outcomes = {"ok": 0, "invalid": 0, "budget": 0}
    started = time.perf_counter()
    for _ in range(args.checks):
        _, child = space.mutate(parent, rng)
        estimate, _, kind = precheck(chosen, child)
        outcomes["ok" if estimate is not None else kind] += 1
        if estimate is not None and rng.random() < 0.5:
            parent = child  # wander, so that the checks see varied candidates
    checked = time.perf_counter() - started
    per_check = checked / args.checks
    print(
        f"cheap checks: {args.checks} proposals in {checked:.2f} s = "
        f"{args.checks / checked:.1f}/s ({per_check * 1e3:.1f} ms each); {outcomes}"
    )
    per_trained = stats.seconds / max(stats.trained, 1)
    if args.json:
        from bench.record import Record

        record = Record("search", "Search throughput: proposed, rejected, trained per minute")
        record.table(
            ["candidates", "count", "per minute"],
            search_rows,
            caption=f"One worker, {args.trials} candidates trained ({args.steps} steps each, "
            f"hurdle at {args.steps // 4}), --max-params {budget:,} (seed: {seed_params:,}); "
            f"{stats.seconds:.1f} s in all",
        )
        record.table(
            ["proposals", "valid", "invalid", "over budget", "ms per proposal"],
            [
                [
                    args.checks,
                    outcomes["ok"],
                    outcomes["invalid"],
                    outcomes["budget"],
                    f"{per_check * 1e3:.1f}",
                ]
            ],
            caption="The cheap checks alone: a mutation, validation and the parameter and "
            "memory estimates (meta device), nothing allocated",
        )
        record.note(
            f"Rejecting a candidate before training costs {per_check * 1e3:.1f} ms; training "
            f"one costs {per_trained:.1f} s here ({per_trained / per_check:,.0f}× more), so "
            f"the {rejected} rejections of the run cost "
            f"{rejected * per_check:.1f} s of its {stats.seconds:.0f} s."
        )
        record.write()


if __name__ == "__main__":
    main()
