"""Slots (issue 27): what the mixer's slots cost in a training step.

1. *Before and after*: the training step of ``Attn`` with q/k norms and of a plain ``Attn``,
   in this tree against the tree before the slots (``--base``, default e785a0b: the commit
   the slots branch started from; its files are extracted with ``git archive`` into a
   temporary folder, nothing is checked out). Two versions of the package cannot share one
   process, so each round runs one worker process per tree, in ABBA order (base first in even
   rounds, this tree first in odd ones), and the table gives the median of the per-round ratios
   (this tree's step over the base's, the same block) and their range. The slot form
   ``Attn[q=Norm, k=Norm]`` and the shorthand ``Attn(qk_norm=true)`` are both measured against
   the base's ``Attn(qk_norm=true)``.
2. *The other mixers' default slot contents* (``--mixers``): Mamba2's short convolutions,
   gate and grouped norm, RWKV-7's output norm and gate became blocks in their slots, and MLA
   gained empty slots; the training step of each with its defaults, against the tree before
   (``--mixers-base``, default 670f6de), in the same ABBA rounds, recorded on its own
   (``bench/results/slots_mixers.json``).
3. *A scores slot against the fused kernel*: ``Attn[scores=...]`` computes the logits
   explicitly, off ``scaled_dot_product_attention``; measured side by side with the plain
   ``Attn`` in one process, round-robin.

A training step is ``loss = (block(x) * w).sum(); loss.backward()`` for the block
``Norm->ATTN->+`` on ``x`` of shape ``(batch, T, d_model)``, gradients set to None outside the
timed region; with one torch thread a step is timed in CPU time of that thread
(``time.thread_time``), so the time slices other jobs take are not counted.

    PYTHONPATH=. python bench/slots.py [--rounds 6] [--steps 15] [--threads 1] [--json]
    PYTHONPATH=. python bench/slots.py --mixers [--batch 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_COMMIT = "e785a0b"
D_MODEL, HEADS = 256, 4

#: (row, block in the base tree, block in this tree)
BEFORE_AFTER = (
    ("`Attn`", "Attn(heads=4)", "Attn(heads=4)"),
    ("`Attn(qk_norm=true)`", "Attn(heads=4, qk_norm=true)", "Attn(heads=4, qk_norm=true)"),
    ("`Attn[q=Norm, k=Norm]`", "Attn(heads=4, qk_norm=true)", "Attn(heads=4)[q=Norm, k=Norm]"),
)
MIXERS_BASE_COMMIT = "670f6de"
#: (row, block in the base tree, block in this tree): the mixers whose defaults became slots
MIXERS_BEFORE_AFTER = (
    ("`Mamba2`", "Mamba2(head_dim=64)", "Mamba2(head_dim=64)"),
    ("`RWKV7`", "RWKV7", "RWKV7"),
    ("`MLA`", "MLA(heads=4)", "MLA(heads=4)"),
)
SCORES = (
    "Attn(heads=4)",
    "Attn(heads=4)[scores=Softcap(cap=50.0)]",
    "Attn(heads=4)[scores=Sink]",
    "Attn(heads=4)[scores=Softcap(cap=50.0)->Sink]",
)


# ==================================================================== timing (both trees)
def _clock() -> float:
    import torch

    return time.thread_time() if torch.get_num_threads() == 1 else time.perf_counter()


def time_blocks(blocks: list[str], seq: int, batch: int, steps: int) -> dict[str, list[float]]:
    """Seconds per training step of each ``Norm->BLOCK->+``, round-robin after one warm-up
    step: ``{block: [seconds, ...]}`` (``steps`` readings each). Imports the ``blockdsl`` that
    ``sys.path`` finds first, so a worker measures its own tree."""
    import torch

    from blockdsl.lower import compile_block

    torch.manual_seed(0)
    x = torch.randn(batch, seq, D_MODEL)
    w = torch.randn(batch, seq, D_MODEL)
    modules = {b: compile_block(f"Norm->{b}->+", d_model=D_MODEL) for b in blocks}

    def step(module: torch.nn.Module) -> float:
        for p in module.parameters():
            p.grad = None
        start = _clock()
        (module(x) * w).sum().backward()
        return _clock() - start

    for module in modules.values():
        step(module)  # warm-up
    times: dict[str, list[float]] = {b: [] for b in blocks}
    for _ in range(steps):
        for block, module in modules.items():
            times[block].append(step(module))
    return times


# ==================================================================== worker processes
def _worker(tree: str, blocks: list[str], seq: int, batch: int, steps: int) -> None:
    sys.path.insert(0, tree)
    import blockdsl

    if Path(blockdsl.__file__).resolve().parent.parent != Path(tree).resolve():
        raise SystemExit(f"worker for {tree} imported blockdsl from {blockdsl.__file__}")
    times = time_blocks(blocks, seq, batch, steps)
    print(json.dumps({b: statistics.median(t) for b, t in times.items()}))


def _run_worker(tree: Path, blocks: list[str], args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(tree)}
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        str(tree),
        "--blocks",
        json.dumps(blocks),
        "--seq",
        str(args.seq),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker for {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _extract(commit: str, into: Path) -> Path:
    """The files of ``commit`` (``git archive``), extracted under ``into``."""
    archive = into / "base.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", commit], stdout=out, check=True)
    tree = into / "tree"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def before_after(
    args: argparse.Namespace, table: tuple[tuple[str, str, str], ...], base_commit: str
) -> tuple[list[list], str]:
    """The rows of ``table`` timed in the tree of ``base_commit`` and in this one."""
    heads = "" if table is MIXERS_BEFORE_AFTER else f"{HEADS} heads, "  # the mixers' own
    with tempfile.TemporaryDirectory(prefix="blockdsl-base-") as tmp:
        base = _extract(base_commit, Path(tmp))
        base_blocks = sorted({row[1] for row in table})
        new_blocks = sorted({row[2] for row in table})
        rounds: list[tuple[dict, dict]] = []
        for index in range(args.rounds):
            if index % 2 == 0:
                old = _run_worker(base, base_blocks, args)
                new = _run_worker(ROOT, new_blocks, args)
            else:
                new = _run_worker(ROOT, new_blocks, args)
                old = _run_worker(base, base_blocks, args)
            rounds.append((old, new))
            print(f"round {index + 1}/{args.rounds} done", file=sys.stderr)
    rows = []
    for label, old_block, new_block in table:
        ratios = [new[new_block] / old[old_block] for old, new in rounds]
        rows.append(
            [
                label,
                f"`{old_block}`",
                round(1000 * statistics.median(old[old_block] for old, _ in rounds), 2),
                round(1000 * statistics.median(new[new_block] for _, new in rounds), 2),
                f"{statistics.median(ratios):.3f}×",
                f"{min(ratios):.3f}–{max(ratios):.3f}×",
            ]
        )
    caption = (
        f"d_model={D_MODEL}, {heads}batch={args.batch}, T={args.seq}; "
        f"{args.rounds} ABBA rounds of one worker process per tree, {args.steps} steps each; "
        f"base: {base_commit}"
    )
    return rows, caption


def scores_cost(args: argparse.Namespace) -> list[tuple[list[list], str]]:
    tables = []
    for seq in args.scores_seq:
        times = time_blocks(list(SCORES), seq, args.batch, args.steps)
        fused = times[SCORES[0]]
        rows = []
        for block in SCORES:
            ratios = [t / f for t, f in zip(times[block], fused)]
            rows.append(
                [
                    f"`{block}`",
                    round(1000 * statistics.median(times[block]), 2),
                    f"{statistics.median(times[block]) / statistics.median(fused):.2f}×",
                    f"{min(ratios):.2f}–{max(ratios):.2f}×",
                ]
            )
        caption = (
            f"d_model={D_MODEL}, {HEADS} heads, batch={args.batch}, T={seq}; "
            f"round-robin in one process, {args.steps} steps each"
        )
        tables.append((rows, caption))
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BASE_COMMIT, help="the commit before the slots")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--scores-seq", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--mixers",
        action="store_true",
        help="only the other mixers' defaults before and after (bench/results/slots_mixers.json)",
    )
    parser.add_argument(
        "--mixers-base", default=MIXERS_BASE_COMMIT, help="the commit before the mixers' slots"
    )
    parser.add_argument("--json", action="store_true", help="write the record")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--blocks", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, json.loads(args.blocks), args.seq, args.batch, args.steps)
        return 0

    import torch

    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(args.threads)
    from bench.record import Record

    columns = ["block", "before the slots", "base ms", "this tree ms", "ratio", "per-round range"]
    if args.mixers:
        record = Record("slots_mixers", "Slots: Mamba2, RWKV-7 and MLA before and after")
        rows, caption = before_after(args, MIXERS_BEFORE_AFTER, args.mixers_base)
        record.table(columns, rows, caption)
    else:
        record = Record("slots", "Slots: the training step before and after, and a scores slot")
        rows, caption = before_after(args, BEFORE_AFTER, args.base)
        record.table(columns, rows, caption)
        for rows, caption in scores_cost(args):
            record.table(["block", "step ms", "vs fused `Attn`", "per-round range"], rows, caption)
    for table in record.tables:
        print(table["caption"])
        for row in table["rows"]:
            print("  ", *row)
    if args.json:
        print(record.write())
    return 0


if __name__ == "__main__":
    sys.exit(main())
