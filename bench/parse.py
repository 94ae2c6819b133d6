"""Parsing speed: throughput on a 1,000-step block string, and latency on a 12-step one.

Run from the repository root:  PYTHONPATH=. python bench/parse.py
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blockdsl.ast import Chain, walk
from blockdsl.parser import lark_parser, parse

# 12 steps: transformer-like, with arguments, a label and a repeat.
SMALL = (
    "Norm#ln(eps=1e-6)->Attn(heads=8, kv_heads=2, pos=rope)->+->Norm->MLP(act=gelu)->+"
    "->Norm->Attn*2->+->Norm->MoE(k=2)->+"
)


def count_steps(block) -> int:
    """Steps of every chain, nested ones included (a repeat counts once)."""
    return sum(len(n.steps) for n in walk(block) if isinstance(n, Chain))


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    t0 = time.perf_counter()
    lark_parser()
    build = time.perf_counter() - t0

    # 1,000 steps: 200 copies of a 5-step chain with arguments and a label.
    big = "->".join(["Norm(eps=1e-5)->Attn#a(heads=8)->+->MLP(act=gelu)->+"] * 200)
    big_steps = count_steps(parse(big))
    assert big_steps == 1000, big_steps
    small_steps = count_steps(parse(SMALL))
    assert small_steps == 12, small_steps

    big_t = median_seconds(lambda: parse(big), 21)
    small_t = median_seconds(lambda: parse(SMALL), 2001)

    print(f"python {platform.python_version()} on {platform.machine()}, {platform.processor()}")
    print(f"parser build (once, lazily):  {build * 1e3:8.1f} ms")
    print(f"1,000-step string ({len(big)} chars): {big_t * 1e3:8.2f} ms median of 21")
    print(f"  throughput:                 {big_steps / big_t:8.0f} steps/s")
    print(f"12-step string ({len(SMALL)} chars):    {small_t * 1e6:8.1f} us median of 2001")
    if "--json" in sys.argv[1:]:
        from bench.record import Record

        record = Record("parse", "Parsing speed")
        record.table(
            ["what", "figure"],
            [
                ["building the LALR parser (once per process)", f"{build * 1e3:.0f} ms"],
                [
                    f"1,000-step string ({len(big):,} characters), median of 21",
                    f"{big_t * 1e3:.1f} ms = {big_steps / big_t:,.0f} steps/s",
                ],
                [
                    f"12-step string ({len(SMALL)} characters), median of 2,001",
                    f"{small_t * 1e3:.2f} ms",
                ],
            ],
        )
        record.write()


if __name__ == "__main__":
    main()
