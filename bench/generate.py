"""Generation benchmark: tokens per second with and without the decoding state, and against
transformers' ``generate`` on the same Llama configuration and weights.

The model is the ``tiny`` preset's Llama (vocab 4096, d_model 128, 4 layers, 4 heads / 2 kv
heads, SwiGLU 352) with its context raised to fit the longest run. It is built as a
``transformers.LlamaForCausalLM`` (sdpa attention, random weights) and imported with
``blockdsl.hf.from_hf``, so both sides run identical weights; the greedy tokens are checked
to be identical before anything is timed. A run generates ``N`` new tokens greedily after a
prompt of 16 tokens, batch 1 (``--batch`` for more); the contenders run interleaved
round-robin and the median of ``--repeats`` runs is reported:

* ``blockdsl cached``     ``model.generate(idx, N, greedy=True)`` (static K/V cache)
* ``blockdsl uncached``   ``model.generate(idx, N, greedy=True, use_cache=False)`` (the
                          fallback: the whole prefix each step)
* ``transformers``        ``hf_model.generate(idx, max_new_tokens=N, do_sample=False)``
                          (its default dynamic cache)

    PYTHONPATH=. python bench/generate.py [--tokens 64 256 1024] [--repeats 3]
                                          [--repeats-long 1] [--threads 1] [--json]

``--json`` writes the record ``bench/results/generate.json`` that ``bench/report.py`` puts in
docs/performance.md.
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

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = 16


def tiny_llama(context: int):
    """``LlamaForCausalLM`` with the ``tiny`` preset's sizes, and its blockdsl import."""
    import transformers

    import blockdsl
    from blockdsl import hf

    preset = blockdsl.load_config("tiny")
    defaults = preset.defaults
    config = transformers.LlamaConfig(
        vocab_size=preset.vocab,
        hidden_size=preset.d_model,
        intermediate_size=defaults["MLP"]["hidden"],
        num_hidden_layers=4,
        num_attention_heads=defaults["Attn"]["heads"],
        num_key_value_heads=defaults["Attn"]["kv_heads"],
        max_position_embeddings=context,
        rms_norm_eps=defaults["Norm"]["eps"],
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    hf_model = transformers.LlamaForCausalLM(config).eval()
    hf_model.generation_config.eos_token_id = None  # every run makes exactly N tokens
    hf_model.generation_config.pad_token_id = preset.vocab - 1
    return hf_model, hf.from_hf(hf_model).eval()


def contenders(hf_model, model, idx: torch.Tensor, n: int, uncached: bool) -> dict[str, Callable]:
    mask = torch.ones_like(idx)
    runs = {
        "blockdsl cached": lambda: model.generate(idx, n, greedy=True),
        "transformers": lambda: hf_model.generate(
            idx, attention_mask=mask, max_new_tokens=n, do_sample=False
        ),
    }
    if uncached:
        runs["blockdsl uncached"] = lambda: model.generate(idx, n, greedy=True, use_cache=False)
    return runs


def round_robin(runs: dict[str, Callable], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            with torch.no_grad():
                runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--repeats-long",
        type=int,
        default=1,
        help="runs of each contender at 1024 new tokens or more (the uncached one takes minutes)",
    )
    parser.add_argument("--json", action="store_true", help="write bench/results/generate.json")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--uncached-max",
        type=int,
        default=1024,
        help="time the uncached fallback only up to this many new tokens (it is quadratic)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    record = None
    if args.json:  # made first: it notes the machine's load before the runs
        from bench.record import Record

        record = Record("generate", "Generation: tokens/s with and without the cache")
    context = PROMPT + max(32, *args.tokens)  # 32: the agreement check below
    hf_model, model = tiny_llama(context)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"{args.threads} thread(s), torch {torch.__version__}, transformers "
        f"{transformers.__version__}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"# tiny Llama, {sum(p.numel() for p in model.parameters()):,} parameters, context "
        f"{context}, prompt {PROMPT}, batch {args.batch}, greedy, median of {args.repeats}"
    )
    idx = torch.randint(
        0, model.config.vocab, (args.batch, PROMPT), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():  # identical weights give identical tokens
        ours = model.generate(idx, 32, greedy=True)
        theirs = hf_model.generate(
            idx, attention_mask=torch.ones_like(idx), max_new_tokens=32, do_sample=False
        )
    assert torch.equal(ours, theirs), "blockdsl and transformers disagree: not the same model"
    columns = [
        "new tokens",
        "blockdsl cached (tok/s)",
        "blockdsl uncached (tok/s)",
        "transformers (tok/s)",
        "cached / uncached",
        "blockdsl / transformers",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for run in contenders(hf_model, model, idx, 8, uncached=True).values():  # warm-up
        run()
    rows = []
    for n in args.tokens:
        runs = contenders(hf_model, model, idx, n, uncached=n <= args.uncached_max)
        times = round_robin(runs, args.repeats if n < 1024 else args.repeats_long)
        rate = {name: args.batch * n / statistics.median(t) for name, t in times.items()}
        cached, hf_rate = rate["blockdsl cached"], rate["transformers"]
        uncached = rate.get("blockdsl uncached")
        row = [
            n,
            round(cached, 1),
            round(uncached, 1) if uncached else "—",
            round(hf_rate, 1),
            f"{cached / uncached:.2f}×" if uncached else "—",
            f"**{cached / hf_rate:.2f}×**",
        ]
        rows.append(row)
        print("| " + " | ".join(str(v) for v in row) + " |", flush=True)
    if record is not None:
        record.table(
            columns,
            rows,
            f"tiny Llama ({sum(p.numel() for p in model.parameters()):,} parameters), context "
            f"{context}, prompt {PROMPT} tokens, batch {args.batch}, greedy; median of "
            f"{args.repeats} interleaved runs ({args.repeats_long} at 1024 new tokens or more); "
            f"transformers {transformers.__version__}",
        )
        print(f"wrote {record.write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
