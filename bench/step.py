"""Training-step benchmark: blockdsl's ``llama`` preset against hand-written PyTorch.

Four contenders, built at one Llama-style configuration with (where possible) the same weights:

* ``blockdsl``     ``blockdsl.build_model("llama", ...)``
* ``reference``    ``bench/reference_llama.py`` (hand-written, no framework; the baseline)
* ``transformers`` ``LlamaForCausalLM`` (``attn_implementation="sdpa"``, from a ``LlamaConfig``)
* ``x-transformers`` ``TransformerWrapper(Decoder(...))`` with the closest flags (own weights)

Each step is ``loss = cross_entropy(model(idx), targets); loss.backward()`` with gradients set to
None before it (outside the timed region). After warm-up, contenders run interleaved round-robin
(the order rotates every round) and each one's median step time is reported with its ratio to the
reference; eager first, then under ``torch.compile`` (default inductor backend).

Achieved FLOP/s use the PaLM formula (per token ``6 N + 12 L T d_model``, ``N`` = parameters
without the input embedding table, ``L`` layers, ``T`` sequence length; attention counted as if
non-causal), divided by the FLOP/s of a plain ``2048 x 2048`` matrix multiply timed in the same
round-robin (its median), so both see the same machine load.

    PYTHONPATH=. python bench/step.py [--device cpu] [--dtype float32] [--steps 20]
                                      [--no-compile] [--quick]

``--shapes`` runs a second benchmark instead: every preset *shape* at a small size (dense, GQA,
sliding window, soft-capping, parallel residual, MoE), each model's training step eager against
the same model under ``torch.compile``, interleaved; the MoE row also runs transformers'
``MixtralForCausalLM`` on the same config with the same weights (``blockdsl.hf.from_hf``),
eager and compiled, in the same rounds. ``--json`` records the figures for
``bench/report.py`` (``docs/performance.md``).

    PYTHONPATH=. python bench/step.py --shapes [--steps 10] [--threads 1] [--json]
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
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.models import (
    Config,
    build_blockdsl,
    build_reference,
    build_xtransformers,
    count_params,
    hf_from_reference,
    logits_of,
    reference_from_blockdsl,
)

MATMUL = "matmul"


class LossOf(nn.Module):
    """``model`` -> the scalar training loss (what is compiled and differentiated)."""

    def __init__(self, model: nn.Module, vocab: int) -> None:
        super().__init__()
        self.model, self.vocab = model, vocab

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits_of(self.model(idx))
        return F.cross_entropy(logits.reshape(-1, self.vocab).float(), targets.reshape(-1))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_step(device: torch.device, dtype: torch.dtype, n: int) -> Callable[[], float]:
    """One timed ``n x n @ n x n`` matrix multiply (``2 n^3`` FLOPs), run round-robin with the
    models so that the peak is measured under the same machine load."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def step() -> float:
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        return time.perf_counter() - t

    return step


def step_flops(cfg: Config, params_no_embed: int) -> int:
    tokens = cfg.batch * cfg.seq
    return tokens * (6 * params_no_embed + 12 * cfg.layers * cfg.seq * cfg.d_model)


def make_step(loss_fn: nn.Module | Callable, model: nn.Module, idx, targets, device):
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> float:
        for p in params:
            p.grad = None
        sync(device)
        t = time.perf_counter()
        loss_fn(idx, targets).backward()
        sync(device)
        return time.perf_counter() - t

    return step


def run_round_robin(steps: dict[str, Callable[[], float]], warmup: int, n: int) -> dict[str, list]:
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(n):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(steps[name]())
    return times


REPORT_COLUMNS = ["model", "median ms", "min ms", "ratio", "GFLOP/s", "of matmul peak"]


def report(title: str, times: dict[str, list[float]], flops: dict[str, int], n: int) -> list[list]:
    """Print one table of step times against the reference; return its rows (REPORT_COLUMNS)."""
    ref = statistics.median(times["reference"])
    peak = 2 * n**3 / statistics.median(times[MATMUL])
    print(f"\n{title}; matmul peak {peak / 1e9:.1f} GFLOP/s ({n}x{n}, median, same rounds)")
    print(f"{'model':<16}{'median ms':>11}{'min ms':>9}{'ratio':>8}{'GFLOP/s':>9}{'of peak':>9}")
    rows = []
    for name, ts in times.items():
        if name == MATMUL:
            continue
        med = statistics.median(ts)
        rate = flops[name] / med
        print(
            f"{name:<16}{med * 1e3:>11.1f}{min(ts) * 1e3:>9.1f}{med / ref:>8.3f}"
            f"{rate / 1e9:>9.1f}{rate / peak:>9.1%}"
        )
        rows.append([name, med * 1e3, min(ts) * 1e3, med / ref, rate / 1e9, f"{rate / peak:.1%}"])
    return rows


# --------------------------------------------------------------------------- --shapes

SMALL = {"vocab": 2048, "d_model": 128, "seq": 128, "batch": 4, "heads": 4, "hidden": 352}
#: (row, preset, overrides at the small size); ``{seq}`` in a block string is formatted.
SHAPES: list[tuple[str, str, dict]] = [
    ("dense", "llama", {"defaults": {"Attn": {"kv_heads": 4}}}),
    ("GQA", "llama", {"defaults": {"Attn": {"kv_heads": 1}}}),
    ("sliding window", "mistral", {"defaults": {"Attn": {"kv_heads": 2, "window": 32}}}),
    (
        "soft-capping",
        "gemma2",
        {
            "layers": "local->global",
            "blocks": {"local": "Norm->Attn(window=32)->Norm->+->Norm->MLP->Norm->+"},
            "defaults": {"Attn": {"kv_heads": 2, "head_dim": 32, "scale": 32**-0.5}},
        },
    ),
    ("parallel", "gptj", {"layers": "l0->l1"}),
    ("MoE", "mixtral", {"defaults": {"Attn": {"kv_heads": 2}, "MoE": {"hidden": 176}}}),
]
MOE_EXPERTS, MOE_K = 8, 2


def small_model(preset: str, overrides: dict) -> nn.Module:
    import blockdsl

    s = SMALL
    attn = {"heads": s["heads"], **overrides.get("defaults", {}).get("Attn", {})}
    defaults = {**overrides.get("defaults", {}), "Attn": attn}
    if preset != "mixtral":
        defaults["MLP"] = {"hidden": s["hidden"]}
    config = {"layers": "block*2", **overrides, "defaults": defaults}
    return blockdsl.build_model(
        preset, vocab=s["vocab"], d_model=s["d_model"], context=s["seq"], **config
    )


class BlockdslLoss(nn.Module):
    """The training loss of a blockdsl model: cross-entropy plus its auxiliary losses."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model(idx, targets).loss


class MixtralLoss(nn.Module):
    """transformers' Mixtral training loss: cross-entropy plus ``router_aux_loss_coef`` times
    its load-balancing loss (targets given as they are: not shifted, like blockdsl's)."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = self.hf(input_ids=idx, use_cache=False, output_router_logits=True)
        logits = out.logits.flatten(0, 1).float()
        return F.cross_entropy(logits, targets.flatten()) + self.hf.config.router_aux_loss_coef * (
            out.aux_loss
        )


def small_mixtral() -> tuple[nn.Module, nn.Module]:
    """``MixtralForCausalLM`` at the MoE row's size and the blockdsl model converted from it."""
    from transformers import MixtralConfig, MixtralForCausalLM

    from blockdsl.hf import from_hf

    s = SMALL
    config = MixtralConfig(
        vocab_size=s["vocab"],
        hidden_size=s["d_model"],
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=s["heads"],
        num_key_value_heads=2,
        num_local_experts=MOE_EXPERTS,
        num_experts_per_tok=MOE_K,
        max_position_embeddings=s["seq"],
        sliding_window=None,
        router_aux_loss_coef=0.02,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    hf = MixtralForCausalLM(config).train()
    return hf, from_hf(hf).train()


def shapes_record(rows: list[dict], steps: int):
    """The ``--shapes`` figures as a record for ``bench/report.py``."""
    from bench.record import Record

    s = SMALL
    record = Record("step_shapes", "Training step of every preset shape, compiled / eager")
    record.table(
        ["shape", "preset", "model", "eager ms", "compiled ms", "compiled / eager", "compile s"],
        [
            [
                r["shape"],
                r["preset"],
                r["model"],
                r["eager_ms"],
                r["compiled_ms"],
                r["compiled_over_eager"],
                r["compile_s"],
            ]
            for r in rows
        ],
        caption=(
            f"Small size: vocab {s['vocab']}, d_model {s['d_model']}, 2 layers, {s['heads']} "
            f"heads, MLP hidden {s['hidden']}, MoE {MOE_EXPERTS} experts top-{MOE_K} hidden 176; "
            f"batch {s['batch']} x seq {s['seq']}, float32; a step is forward + backward of the "
            f"training loss; median of {steps} interleaved steps."
        ),
    )
    by = {(r["shape"], r["model"]): r for r in rows}
    if ("MoE", "transformers") in by:
        bd, hf = by[("MoE", "blockdsl")], by[("MoE", "transformers")]
        record.note(
            "MoE against transformers' `MixtralForCausalLM` (same config, same weights, same "
            f"loss): blockdsl / transformers = {bd['eager_ms'] / hf['eager_ms']:.3f} eager, "
            f"{bd['compiled_ms'] / hf['compiled_ms']:.3f} compiled."
        )
    return record


def shapes_main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    s = SMALL
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {device}, float32, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        f"small size: vocab {s['vocab']}, d_model {s['d_model']}, 2 layers, {s['heads']} heads, "
        f"MLP hidden {s['hidden']}, MoE {MOE_EXPERTS} experts top-{MOE_K} hidden 176, "
        f"batch {s['batch']} x seq {s['seq']}; forward+backward, median of {args.steps} steps"
    )
    idx = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), device=device)
    targets = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), device=device)
    rows = []
    print(
        f"\n{'shape':<16}{'preset':<9}{'eager ms':>10}{'compiled ms':>13}{'compiled/eager':>16}"
        f"{'compile s':>11}"
    )
    for name, preset, overrides in SHAPES:
        if args.only and name not in args.only.split(","):
            continue
        contenders: dict[str, tuple[nn.Module, nn.Module]] = {}
        if preset == "mixtral":
            hf, model = small_mixtral()
            contenders["transformers"] = (MixtralLoss(hf.to(device)), hf)
        else:
            model = small_model(preset, overrides)
        model = model.to(device).train()
        contenders = {"blockdsl": (BlockdslLoss(model), model), **contenders}
        if "transformers" in contenders:
            with torch.no_grad():
                a, b = (fn(idx, targets).item() for fn, _ in contenders.values())
            print(f"  same weights: loss blockdsl {a:.6f}, transformers {b:.6f}")
        steps, compile_s = {}, {}
        for who, (loss_fn, m) in contenders.items():
            torch._dynamo.reset()
            steps[f"{who} eager"] = make_step(loss_fn, m, idx, targets, device)
            compiled = make_step(torch.compile(loss_fn), m, idx, targets, device)
            t = time.perf_counter()
            compiled()
            compile_s[who] = time.perf_counter() - t
            steps[f"{who} compiled"] = compiled
        times = run_round_robin(steps, args.warmup, args.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        for who in contenders:
            eager, comp = med[f"{who} eager"], med[f"{who} compiled"]
            label = name if who == "blockdsl" else f"  {who}"
            print(
                f"{label:<16}{preset:<9}{eager * 1e3:>10.1f}{comp * 1e3:>13.1f}"
                f"{comp / eager:>16.3f}{compile_s[who]:>11.1f}"
            )
            rows.append(
                {
                    "shape": name,
                    "preset": preset,
                    "model": who,
                    "eager_ms": eager * 1e3,
                    "compiled_ms": comp * 1e3,
                    "compiled_over_eager": comp / eager,
                    "compile_s": compile_s[who],
                }
            )
        if "transformers" in contenders:
            ratio = med["blockdsl compiled"] / med["transformers compiled"]
            print(f"  blockdsl compiled / transformers compiled: {ratio:.3f}")
    if args.json:
        shapes_record(rows, args.steps).write()
    return 0


def missing_extra(args: argparse.Namespace) -> str | None:
    """The message for a competitor whose package is not installed (the ``bench`` extra)."""
    import importlib.util

    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    needed = {"transformers": "transformers"}
    if not args.shapes:
        needed["x-transformers"] = "x_transformers"
    for name, module in needed.items():
        if (args.shapes or not wanted or name in wanted) and not importlib.util.find_spec(module):
            return (
                f"bench/step.py: {name} is not installed; the benchmark's competitors come with "
                "the bench extra: pip install -e '.[bench]' (or leave it out: --only blockdsl)"
            )
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per contender and mode")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--no-eager", action="store_true", help="torch.compile only")
    ap.add_argument("--quick", action="store_true", help="tiny model, few steps (smoke test)")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated contenders (reference is always included); with --shapes: shapes",
    )
    ap.add_argument("--ref-gqa", default="sdpa", choices=["sdpa", "repeat"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--shapes", action="store_true", help="every preset shape, compiled/eager")
    ap.add_argument(
        "--json",
        action="store_true",
        help="record to bench/results/step.json (with --shapes: step_shapes.json)",
    )
    args = ap.parse_args(argv)

    problem = missing_extra(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shapes:
        return shapes_main(args)
    cfg = Config()
    if args.quick:
        cfg = Config(vocab=512, d_model=64, layers=2, heads=4, kv_heads=2, hidden=176, seq=64)
        cfg.batch = 2
        args.steps, args.warmup = min(args.steps, 3), 1
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}

    def want(name: str) -> bool:
        return not wanted or name in wanted

    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {device}, dtype {args.dtype}, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        f"config: vocab {cfg.vocab}, d_model {cfg.d_model}, layers {cfg.layers}, heads "
        f"{cfg.heads}, kv_heads {cfg.kv_heads}, hidden {cfg.hidden}, seq {cfg.seq}, "
        f"batch {cfg.batch}"
    )

    models: dict[str, nn.Module] = {}
    try:
        bd = build_blockdsl(cfg, device=device, dtype=dtype)
    except (ImportError, AttributeError) as e:  # the compiler is not there yet
        print(f"blockdsl: not available ({e}); the reference keeps its own initialisation")
        bd = None
    if bd is not None:
        ref = reference_from_blockdsl(cfg, bd, gqa=args.ref_gqa)
        if want("blockdsl"):
            models["blockdsl"] = bd
    else:
        ref = build_reference(cfg, gqa=args.ref_gqa).to(device=device, dtype=dtype)
    models["reference"] = ref
    if want("transformers"):
        import transformers

        print(f"transformers {transformers.__version__}")
        models["transformers"] = hf_from_reference(cfg, ref)
    if want("x-transformers"):
        from importlib.metadata import version

        print(f"x-transformers {version('x-transformers')}")
        xt = build_xtransformers(cfg)
        for m in xt.modules():  # its GLU input projection always has a bias; Llama's has none
            if type(m).__name__ == "GLU":
                m.proj.bias = None
        models["x-transformers"] = xt.to(device=device, dtype=dtype)

    idx = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq), device=device)
    targets = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq), device=device)

    print("\nparameters (same weights: max |logits - reference logits|)")
    with torch.no_grad():
        ref_logits = ref(idx)
        for name, m in models.items():
            m.train()
            n = count_params(m)
            if name == "x-transformers":
                note = "own weights (different init and RMSNorm form; not compared)"
            else:
                diff = (logits_of(m(idx)).float() - ref_logits.float()).abs().max().item()
                note = f"max abs diff {diff:.3g}"
            print(f"  {name:<16}{n:>12,}  {note}")

    embed = cfg.vocab * cfg.d_model
    flops = {name: step_flops(cfg, count_params(m) - embed) for name, m in models.items()}
    print(
        f"\nFLOPs per step (6 N + 12 L T d) x tokens, N = params - embedding table "
        f"({count_params(ref) - embed:,}): {flops['reference'] / 1e9:.2f} GFLOP (reference)"
    )
    n = 1024 if args.quick else 2048
    matmul = matmul_step(device, dtype, n)
    steps = {
        name: make_step(LossOf(m, cfg.vocab), m, idx, targets, device) for name, m in models.items()
    }
    tables: list[tuple[str, list[list]]] = []
    if not args.no_eager:
        times = run_round_robin({**steps, MATMUL: matmul}, args.warmup, args.steps)
        title = f"eager: forward+backward, median of {args.steps} steps"
        tables.append((title, report(title, times, flops, n)))

    if not args.no_compile:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        compiled = {}
        print("\ncompiling (torch.compile, inductor default mode); first step = compile time:")
        for name, m in models.items():
            fn = torch.compile(LossOf(m, cfg.vocab))
            step = make_step(fn, m, idx, targets, device)
            t = time.perf_counter()
            step()
            print(f"  {name:<16}{time.perf_counter() - t:>8.1f} s")
            compiled[name] = step
        times = run_round_robin({**compiled, MATMUL: matmul}, args.warmup, args.steps)
        title = f"torch.compile: forward+backward, median of {args.steps} steps"
        tables.append((title, report(title, times, flops, n)))
    if args.json:
        from bench.record import Record

        record = Record("step", "Training step against hand-written PyTorch")
        for title, rows in tables:
            record.table(REPORT_COLUMNS, rows, caption=f"{title}; ratio = time / reference's")
        record.note(
            f"vocab {cfg.vocab}, d_model {cfg.d_model}, {cfg.layers} layers, {cfg.heads} heads / "
            f"{cfg.kv_heads} kv heads, hidden {cfg.hidden}, batch {cfg.batch} x seq {cfg.seq}, "
            f"{args.dtype} on {device}; x-transformers has its own weights."
        )
        print(f"recorded {record.write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
