"""Build-time benchmark: how long it takes to construct the models of ``bench/step.py``.

Rows:

* real initialisation at the benchmark size (``bench/step.py``'s config): blockdsl's ``llama``
  preset, the hand-written reference, ``transformers.LlamaForCausalLM``;
* meta device at Llama-2-7B size: ``build_model("llama", device="meta")`` (the preset *is*
  7B) against ``LlamaForCausalLM(LlamaConfig(7B))`` under ``with torch.device("meta")``;
* ``blockdsl compile llama --show-shapes`` at Llama-2-70B size, wall time of the CLI in a fresh
  process (skipped with a note when the CLI does not exist).

Each figure is the median of ``--repeats`` builds in this process (after one untimed build, so
imports and first-call caches are not counted), except the CLI row (cold process, includes the
interpreter start and imports).

    PYTHONPATH=. python bench/build.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench.models import Config, build_blockdsl, build_hf, build_reference, count_params  # noqa: E402

LLAMA2_7B = {
    "vocab": 32000,
    "d_model": 4096,
    "layers": 32,
    "heads": 32,
    "kv_heads": 32,
    "hidden": 11008,
    "seq": 4096,
}
LLAMA2_70B = {
    "vocab": 32000,
    "d_model": 8192,
    "layers": 80,
    "heads": 64,
    "kv_heads": 8,
    "hidden": 28672,
    "seq": 4096,
}


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one untimed call, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        del out
        gc.collect()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


ROWS: list[list] = []  # what --json records: [what, ms, ratio to transformers, parameters]


def row(name: str, seconds: float, params: int | None, base: float | None = None) -> None:
    ROWS.append([name, seconds * 1e3, f"{seconds / base:.2f}x" if base else "", params or ""])
    ratio = f"{seconds / base:>7.2f}x" if base else " " * 8
    n = f"{params:>16,}" if params is not None else " " * 16
    print(f"  {name:<40}{seconds * 1e3:>10.1f} ms{ratio}{n}")


def cli_row(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("blockdsl.cli") is None:
        print("  blockdsl compile llama --show-shapes (70B): skipped, no blockdsl CLI yet")
        return
    c = LLAMA2_70B
    cmd = [
        sys.executable,
        "-m",
        "blockdsl.cli",
        "compile",
        "llama",
        "--show-shapes",
        "--set",
        f"d_model={c['d_model']}",
        "--set",
        f"layers=block*{c['layers']}",
        "--set",
        f"defaults.Attn.heads={c['heads']}",
        "--set",
        f"defaults.Attn.kv_heads={c['kv_heads']}",
        "--set",
        f"defaults.MLP.hidden={c['hidden']}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for _ in range(args.cli_repeats):
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        times.append(time.perf_counter() - t)
        if proc.returncode != 0:
            print(f"  CLI failed ({' '.join(cmd[2:])}): {proc.stderr.strip()[-300:]}")
            return
    ROWS.append(
        [
            "`blockdsl compile llama --show-shapes` at 70B, cold process",
            statistics.median(times) * 1e3,
            "",
            "",
        ]
    )
    print(
        f"  {'blockdsl compile llama --show-shapes (70B)':<40}"
        f"{statistics.median(times) * 1e3:>10.1f} ms  (cold process, median of {len(times)})"
    )
    print(f"    command: python {' '.join(cmd[2:])}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cli-repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one repeat each")
    ap.add_argument("--json", action="store_true", help="record to bench/results/build.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.cli_repeats = 1, 1
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} builds"
    )
    print(f"  {'':<40}{'time':>13}{'ratio':>8}{'params':>16}")

    cfg = Config()
    print(f"real init, CPU, float32, bench size (d_model {cfg.d_model}, {cfg.layers} layers):")
    t_ref, m = timed(lambda: build_reference(cfg), args.repeats)
    row("hand-written reference", t_ref, count_params(m))
    t_hf, m = timed(lambda: build_hf(cfg), args.repeats)
    row("transformers LlamaForCausalLM", t_hf, count_params(m))
    t_bd, m = timed(lambda: build_blockdsl(cfg), args.repeats)
    row("blockdsl build_model('llama')", t_bd, count_params(m), t_hf)

    big = Config(**LLAMA2_7B)
    print("meta device, Llama-2-7B size:")

    def hf_meta():
        with torch.device("meta"):
            return build_hf(big)

    t_hf, m = timed(hf_meta, args.repeats)
    row("transformers LlamaForCausalLM (meta)", t_hf, count_params(m))
    import blockdsl

    t_bd, m = timed(lambda: blockdsl.build_model("llama", device="meta"), args.repeats)
    row("blockdsl build_model('llama', meta)", t_bd, count_params(m), t_hf)
    del m
    print("CLI, Llama-2-70B size:")
    cli_row(args)
    if args.json:
        from bench.record import Record

        record = Record("build", "Build time")
        record.table(
            ["build", "ms (median)", "ratio to transformers", "parameters"],
            ROWS,
            caption=f"Median of {args.repeats} builds (the CLI: of {args.cli_repeats} cold "
            "processes, interpreter start and imports included).",
        )
        record.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
