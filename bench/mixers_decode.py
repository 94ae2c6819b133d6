"""Chunked (parallel) form against the recurrent (step) form of any stateful mixer: the time to
process a whole sequence of ``T`` tokens at once, the time to feed the same tokens one decode
step at a time through the mixer's decoding state (``init_state`` / ``forward(..., state=)``),
and the largest difference between the two outputs.

A mixer is any registered component with the decoding-state protocol, given as a one-call block
string (``GatedDeltaNet``, ``RWKV7(head_dim=32)``, ``Mamba2``, ``Attn(heads=4)``): nothing here is
specific to one of them. Both forms run without gradients (inference); the two contenders of one
``T`` alternate ``--repeats`` times and the medians are reported, so their ratio compares runs
under the same machine load. The recurrent form of a long ``T`` can take long: it runs once when
one pass takes longer than ``--slow`` seconds.

    PYTHONPATH=. python bench/mixers_decode.py [--mixers GatedDeltaNet RWKV7 ...]
        [--d-model 256] [--seq 256 1024 4096] [--batch 1] [--repeats 3] [--markdown] [--json]

``--json`` writes the record ``bench/results/mixers_decode.json`` that ``bench/report.py`` puts
in docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import blockdsl.components  # noqa: F401  registers the built-ins
from blockdsl.graph import build_graph
from blockdsl.registry import REGISTRY

DEFAULT_MIXERS = ["GatedDeltaNet", "RWKV7", "RWKV7ChannelMix", "Hyena", "BaseConv", "ShortConv"]


def build_mixer(call: str, d_model: int, context: int) -> torch.nn.Module:
    """A registered component from a one-call block string, arguments validated as in a block."""
    graph = build_graph(call, d_model=d_model, model_globals={"context": context})
    _, node = next(graph.calls())
    component = REGISTRY.get(node["component"])
    if not component.stateful:
        raise SystemExit(f"{component.name} has no decoding state (init_state / state=)")
    module = component.build(node["args"]).eval()
    module.takes_positions = "positions" in component.context  # the protocol's context keyword
    return module


def chunked(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


def recurrent(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Every token through the state, one decode step at a time."""
    B, T = x.shape[:2]
    state = module.init_state(B, T)
    outputs = []
    for t in range(T):
        context = {"positions": torch.full((B, 1), t)} if module.takes_positions else {}
        outputs.append(module(x[:, t : t + 1], state=state, **context))
    return torch.cat(outputs, dim=1)


def measure(module, x, repeats: int, slow: float) -> tuple[float, float, float]:
    """Median seconds of the chunked and recurrent forms, and their largest output difference."""
    times: dict[str, list[float]] = {"chunked": [], "recurrent": []}
    outputs = {}
    for i in range(repeats + 1):  # the first round warms up, and counts only for slow ones
        for name, form in (("chunked", chunked), ("recurrent", recurrent)):
            if i and times[name] and times[name][0] > slow:
                continue
            t0 = time.perf_counter()
            outputs[name] = form(module, x)
            elapsed = time.perf_counter() - t0
            if i or elapsed > slow:
                times[name].append(elapsed)
    diff = (outputs["chunked"] - outputs["recurrent"]).abs().max().item()
    return statistics.median(times["chunked"]), statistics.median(times["recurrent"]), diff


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", nargs="+", default=DEFAULT_MIXERS)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--seq", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow", type=float, default=5.0, help="run slower passes only once")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--json", action="store_true", help="write the record")
    args = parser.parse_args(argv)
    record = None
    if args.json:  # made first: it notes the machine's load before the runs
        from bench.record import Record

        record = Record("mixers_decode", "Chunked against recurrent form of each stateful mixer")
    torch.manual_seed(0)
    rows = []
    for call in args.mixers:
        module = build_mixer(call, args.d_model, max(args.seq))
        for T in args.seq:
            x = torch.randn(args.batch, T, args.d_model)
            par, rec, diff = measure(module, x, args.repeats, args.slow)
            rows.append((call, T, par, rec, diff))
            print(f"{call:20s} T={T:5d}  chunked {par * 1e3:9.1f} ms  "
                  f"recurrent {rec * 1e3:10.1f} ms  ({rec / T * 1e6:7.1f} us/token, "
                  f"{rec / par:6.1f}x)  max diff {diff:.1e}", flush=True)  # fmt: skip
    if args.markdown:
        print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s), "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, d_model={args.d_model}, "
              f"batch={args.batch}\n")  # fmt: skip
        print("| mixer | T | chunked (ms) | recurrent (ms) | µs/token decoded | recurrent / "
              "chunked | max abs diff |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|")
        for call, T, par, rec, diff in rows:
            print(f"| `{call}` | {T} | {par * 1e3:.1f} | {rec * 1e3:.0f} | {rec / T * 1e6:.0f} | "
                  f"{rec / par:.1f}× | {diff:.1e} |")  # fmt: skip
    if record is not None:
        record.table(
            ["mixer", "T", "chunked (ms)", "recurrent (ms)", "µs/token decoded",
             "recurrent / chunked", "max abs diff"],
            [[f"`{call}`", T, round(par * 1e3, 1), round(rec * 1e3), round(rec / T * 1e6),
              f"{rec / par:.1f}×", f"{diff:.1e}"] for call, T, par, rec, diff in rows],
            f"d_model={args.d_model}, batch={args.batch}, inference; median of {args.repeats} "
            f"alternating runs (one above {args.slow:g} s)",
        )  # fmt: skip
        print(f"wrote {record.write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
