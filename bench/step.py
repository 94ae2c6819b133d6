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
    reference_from_blockdsl,
)

MATMUL = "matmul"


class LossOf(nn.Module):
    """``model`` -> the scalar training loss (what is compiled and differentiated)."""

    def __init__(self, model: nn.Module, vocab: int) -> None:
        super().__init__()
        self.model, self.vocab = model, vocab

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model(idx)
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


def report(title: str, times: dict[str, list[float]], flops: dict[str, int], n: int) -> None:
    ref = statistics.median(times["reference"])
    peak = 2 * n**3 / statistics.median(times[MATMUL])
    print(f"\n{title}; matmul peak {peak / 1e9:.1f} GFLOP/s ({n}x{n}, median, same rounds)")
    print(f"{'model':<16}{'median ms':>11}{'min ms':>9}{'ratio':>8}{'GFLOP/s':>9}{'of peak':>9}")
    for name, ts in times.items():
        if name == MATMUL:
            continue
        med = statistics.median(ts)
        rate = flops[name] / med
        print(
            f"{name:<16}{med * 1e3:>11.1f}{min(ts) * 1e3:>9.1f}{med / ref:>8.3f}"
            f"{rate / 1e9:>9.1f}{rate / peak:>9.1%}"
        )


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
        "--only", default="", help="comma-separated contenders (reference is always included)"
    )
    ap.add_argument("--ref-gqa", default="sdpa", choices=["sdpa", "repeat"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
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
                diff = (m(idx).float() - ref_logits.float()).abs().max().item()
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
    if not args.no_eager:
        times = run_round_robin({**steps, MATMUL: matmul}, args.warmup, args.steps)
        report(f"eager: forward+backward, median of {args.steps} steps", times, flops, n)

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
        report(f"torch.compile: forward+backward, median of {args.steps} steps", times, flops, n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
