"""Sequence-mixer benchmark: the training-step time of each mixer against attention at the same
width, and against transformers' own pure-PyTorch module for the same architecture.

A *mixer* is any registered component (a name and block-string arguments, e.g. ``Mamba``,
``Mamba2(state=64)``, ``Attn(heads=4)``): the benchmark builds it through the registry at
``d_model``, so rows for new mixers need no code here. A *reference* is optional: an entry of
``REFERENCES`` maps a mixer name to a function that builds transformers' module for the same
configuration, loads the blockdsl module's weights into it, and returns a callable ``x -> y``
(other mixers add their entry with ``REFERENCES[name] = build``).

A training step is ``loss = (mixer(x) * w).sum(); loss.backward()`` on ``x`` of shape
``(batch, T, d_model)`` with gradients set to None before it (outside the timed region); ``w``
is a fixed random projection, so no gradient is trivially zero. Contenders of one ``T`` run
interleaved round-robin after one warm-up step and the median is reported (at least
``--steps`` rounds, more until every contender ran ``--min-time`` seconds; a single timed step
when one step takes longer than ``--slow`` seconds), so every ratio compares runs under the same
machine load; the table also gives the range of the per-round ratios (blockdsl's step over
transformers' step of the same round), which shows how much the load moved them. ``--slow``
is high by default: a threshold that a loaded machine pushes ordinary steps over turns the
median into a single reading (an earlier default of 5 s did so at T = 4096). With one torch
thread (``OMP_NUM_THREADS=1``) a step is timed in CPU time of that thread, not wall time,
so time slices the scheduler gives to other jobs are not counted (``clock``). A reference
whose previous ``T`` took longer than ``--ref-limit`` seconds is not run at longer ``T``
(reported as skipped).

    PYTHONPATH=. python bench/mixers.py [--mixers Mamba Mamba2 RGLRU] [--attention Attn]
        [--d-model 256] [--seq 256 1024 4096] [--batch 1] [--steps 5] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import blockdsl.components  # noqa: F401  registers the built-ins
from blockdsl.graph import build_graph
from blockdsl.registry import REGISTRY

Step = Callable[[torch.Tensor], torch.Tensor]


def build_mixer(call: str, d_model: int, context: int) -> tuple[str, dict, nn.Module]:
    """A registered component from a one-call block string (``"Mamba2(state=64)"``), with its
    arguments resolved and validated as in any block."""
    graph = build_graph(call, d_model=d_model, model_globals={"context": context})
    _, node = next(graph.calls())
    component = REGISTRY.get(node["component"])
    return component.name, dict(node["args"]), component.build(node["args"])


# --------------------------------------------------------------------------- references


def _mamba_reference(module: nn.Module, args: dict) -> Step:
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    cfg = MambaConfig(
        hidden_size=args["d_model"],
        state_size=module.state,
        intermediate_size=module.inner,
        time_step_rank=module.dt_rank,
        conv_kernel=module.kernel,
        use_bias=args["bias"],
        use_conv_bias=args["conv_bias"],
    )
    ref = MambaMixer(cfg, 0)
    ref.load_state_dict(module.state_dict())
    return ref


def _mamba2_reference(module: nn.Module, args: dict) -> Step:
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    cfg = Mamba2Config(
        hidden_size=args["d_model"],
        state_size=module.state,
        expand=module.inner // args["d_model"],
        head_dim=module.head_dim,
        num_heads=module.heads,
        n_groups=module.groups,
        conv_kernel=module.kernel,
        chunk_size=module.chunk,
        use_bias=args["bias"],
        use_conv_bias=args["conv_bias"],
        layer_norm_epsilon=args["eps"],
    )
    ref = Mamba2Mixer(cfg, 0)
    # the other way round: transformers' in_proj (with z), conv1d and norm load into the
    # module's in_proj and slots (its load hook splits them), so both hold the same weights
    module.load_state_dict(ref.state_dict())
    return ref


def _rglru_reference(module: nn.Module, args: dict) -> Step:
    from transformers import RecurrentGemmaConfig
    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import (
        RecurrentGemmaRecurrentBlock,
    )

    cfg = RecurrentGemmaConfig(
        hidden_size=args["d_model"],
        lru_width=module.width,
        num_attention_heads=module.rg_lru.heads,
        conv1d_width=module.kernel,
    )
    ref = RecurrentGemmaRecurrentBlock(cfg, 0)
    ref.load_state_dict(module.state_dict())

    def run(x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        return ref(x, positions, None, use_cache=False)[0]

    run.parameters = ref.parameters  # type: ignore[attr-defined]
    return run


def _gated_deltanet_reference(module: nn.Module, args: dict) -> Step:
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet

    cfg = Qwen3NextConfig(
        hidden_size=args["d_model"],
        linear_num_key_heads=module.heads,
        linear_num_value_heads=module.v_heads,
        linear_key_head_dim=module.head_dim,
        linear_value_head_dim=module.v_head_dim,
        linear_conv_kernel_dim=module.kernel,
        rms_norm_eps=module.eps,
        num_hidden_layers=1,
        layer_types=["linear_attention"],
    )
    ref = Qwen3NextGatedDeltaNet(cfg, 0)
    # the other way round: HF's fused in_proj_qkvz/conv1d/norm load into the module's
    # projections and slots (its load hook splits them), so both hold the same weights
    module.load_state_dict(ref.state_dict())
    return ref


def _short_conv_reference(module: nn.Module, args: dict) -> Step:
    from transformers import Lfm2Config
    from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv

    cfg = Lfm2Config(
        hidden_size=args["d_model"],
        conv_L_cache=module.kernel,
        conv_bias=args["bias"],
        num_hidden_layers=1,
        layer_types=["conv"],
    )
    ref = Lfm2ShortConv(cfg, 0)
    ref.load_state_dict(module.state_dict())
    return ref


#: Mixer name -> ``build(blockdsl_module, args) -> callable`` running transformers' module with
#: the same weights. Other mixers register theirs here.
REFERENCES: dict[str, Callable[[nn.Module, dict], Step]] = {
    "Mamba": _mamba_reference,
    "Mamba2": _mamba2_reference,
    "RGLRU": _rglru_reference,
    "GatedDeltaNet": _gated_deltanet_reference,
    "ShortConv": _short_conv_reference,
}

# --------------------------------------------------------------------------- timing


def _step_fn(run: Step, params: Callable, x: torch.Tensor, w: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        for p in params():
            p.grad = None
        (run(x) * w).sum().backward()

    return step


def clock() -> float:
    """Seconds of CPU time of this thread when torch computes on it alone (one intra-op
    thread), else wall-clock seconds. On a machine shared with other jobs a single-threaded
    step's wall time counts the time slices the scheduler gave to others (tens of
    milliseconds each), which dominates short steps; its CPU time does not."""
    return time.thread_time() if torch.get_num_threads() == 1 else time.perf_counter()


def time_round_robin(
    steps: dict[str, Callable[[], None]], n: int, slow: float, min_time: float = 0.0
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median seconds per step of each contender, interleaved (one warm-up step each), and
    every timed step, in round order. At least ``n`` rounds, more while the slowest
    contender's rounds add up to less than ``min_time`` seconds (up to 100 rounds): a fast
    step is timed often enough that a burst of load hits only a few of its rounds."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    warm: dict[str, float] = {}
    for name, step in steps.items():  # warm-up doubles as the first measurement of slow ones
        t0 = clock()
        step()
        warm[name] = elapsed = clock() - t0
        if elapsed > slow:
            times[name].append(elapsed)
    timed = [t for name, t in warm.items() if t <= slow]
    rounds = max(n, min(100, int(min_time / max(timed)))) if timed and min_time > 0 else n
    for _ in range(rounds):
        for name, step in steps.items():
            if len(times[name]) and times[name][0] > slow:
                continue
            t0 = clock()
            step()
            times[name].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, times


def ratio_range(ours: list[float], ref: list[float]) -> str:
    """Smallest and largest ratio of two contenders' steps timed in the same round."""
    ratios = [a / b for a, b in zip(ours, ref)]
    if len(ratios) < 2:
        return "–"
    return f"{min(ratios):.2f}–{max(ratios):.2f}×"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", nargs="+", default=["Mamba", "Mamba2", "RGLRU"])
    parser.add_argument("--attention", default="Attn(heads=4)", help="the attention row")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--seq", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per contender")
    parser.add_argument("--slow", type=float, default=60.0, help="time slower steps only once")
    parser.add_argument(
        "--min-time", type=float, default=5.0, help="more rounds until a contender ran this long"
    )
    parser.add_argument("--ref-limit", type=float, default=60.0)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument(
        "--json", action="store_true", help="write bench/results/NAME.json (bench/report.py)"
    )
    parser.add_argument("--record", default="mixers", help="NAME of the --json record")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    load_at_start = [round(x, 1) for x in os.getloadavg()]
    D, context = args.d_model, max(args.seq)

    contenders: list[tuple[str, str, nn.Module, Step | None]] = []
    for call in [args.attention, *args.mixers]:
        name, margs, module = build_mixer(call, D, context)
        ref = None
        if not args.no_reference and name in REFERENCES:
            ref = REFERENCES[name](module, margs)
        contenders.append((call, name, module, ref))

    rows = []
    ref_too_slow: set[str] = set()
    attn_call = args.attention
    for T in args.seq:
        x = torch.randn(args.batch, T, D, requires_grad=True)
        w = torch.randn(args.batch, T, D)
        steps: dict[str, Callable[[], None]] = {}
        for call, _name, module, ref in contenders:
            steps[call] = _step_fn(module, module.parameters, x, w)
            if ref is not None and call not in ref_too_slow:
                params = ref.parameters
                steps[f"{call} (transformers)"] = _step_fn(ref, params, x, w)
        med, samples = time_round_robin(steps, args.steps, args.slow, args.min_time)
        for call, _name, _module, ref in contenders:
            ours = med[call]
            ref_t = med.get(f"{call} (transformers)")
            if ref_t is not None and ref_t > args.ref_limit:
                ref_too_slow.add(call)
            spread = (
                ratio_range(samples[call], samples[f"{call} (transformers)"])
                if ref_t is not None
                else "–"
            )
            rows.append((call, T, ours, ours / med[attn_call], ref_t, ref is not None, spread))
            ref_s = f"{ref_t * 1e3:10.1f} ms  {ours / ref_t:5.2f}x  {spread}" if ref_t else ""
            print(f"T={T:5d} {call:24s} {ours * 1e3:9.1f} ms  "
                  f"{ours / T * 1e6:8.1f} us/token  {ours / med[attn_call]:5.2f}x attn  {ref_s}",
                  flush=True)  # fmt: skip

    columns = ["mixer", "T", "step (ms)", "µs/token", "vs attention", "transformers (ms)",
               "blockdsl / transformers", "per-round range"]  # fmt: skip
    table = []
    for call, T, ours, vs_attn, ref_t, has_ref, spread in rows:
        ref_cells = (
            [round(ref_t * 1e3, 1), f"{ours / ref_t:.3f}×", spread]
            if ref_t is not None
            else (["skipped (too slow)", "–", "–"] if has_ref else ["–", "–", "–"])
        )
        table.append([f"`{call}`", T, round(ours * 1e3, 1), round(ours / T * 1e6, 1),
                      f"{vs_attn:.2f}×", *ref_cells])  # fmt: skip
    if args.json:
        from bench.record import Record

        record = Record(args.record, "Training step of each sequence mixer")
        record.table(columns, table, caption=f"d_model={D}, batch={args.batch}")
        single = torch.get_num_threads() == 1
        record.note(
            f"Median of at least {args.steps} interleaved rounds, more for fast steps until each "
            f"contender ran {args.min_time:g} s (steps over {args.slow:g} s timed once), "
            f"{'CPU time of the one torch thread' if single else 'wall time'}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; load average "
            f"{load_at_start[0]} at the start, {round(os.getloadavg()[0], 1)} at the end "
            f"({os.cpu_count()} cores shared with other jobs)."
        )
        print(f"wrote {record.write()}")
    if args.markdown:
        threads = torch.get_num_threads()
        print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{threads} thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
              f"d_model={D}, batch={args.batch}\n")  # fmt: skip
        print("| mixer | T | step (ms) | µs/token | vs attention | transformers (ms) | "
              "blockdsl / transformers | per-round range |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for call, T, ours, vs_attn, ref_t, has_ref, spread in rows:
            if ref_t is not None:
                ref_cells = f"{ref_t * 1e3:.0f} | {ours / ref_t:.3f}× | {spread}"
            else:
                ref_cells = "skipped (too slow) | – | –" if has_ref else "– | – | –"
            print(f"| `{call}` | {T} | {ours * 1e3:.1f} | {ours / T * 1e6:.1f} | "
                  f"{vs_attn:.2f}× | {ref_cells} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
