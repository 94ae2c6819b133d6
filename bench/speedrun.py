"""The ``speedrun`` recipe against the ``gpt2`` recipe (issue 28 item 5, docs/experiments.md).

Both at nanoGPT's Shakespeare-char CPU size (4 layers, 4 heads, width 128, context 64, batch
12, byte vocabulary) on the standard library corpus of ``bench/nanogpt_parity.py``. The target
is the ``gpt2`` recipe's validation loss after 500 steps (nanoGPT's schedule: AdamW lr 1e-3,
100 warmup steps, cosine to 1e-4, betas (0.9, 0.99)). The ``speedrun`` preset (its own
``[init]`` and ``[optim]``: Muon, ReLU², q/k norm, zero-initialised projections and head,
untied head, logit soft-cap, warmup-stable-decay) is trained with step budgets from
``--budgets``, each a whole run (its schedule decays at its end); reported: the fewest steps
whose final validation loss reaches the target, and that run's CPU time against the gpt2 run's.
Then the ablation: the speedrun recipe at that budget with one technique taken out at a time.

    PYTHONPATH=. python bench/speedrun.py [--budgets 80,100] [--seed 0] [--threads 1]
        [--json]

``--json`` writes ``bench/results/speedrun.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import blockdsl
from blockdsl.train.data import prepare

ROOT = Path(__file__).resolve().parent.parent
STDLIB_EMAIL = str(Path(sysconfig.get_paths()["stdlib"]) / "email")
SIZE = {"vocab": 256, "d_model": 128, "context": 64, "layers": "block*4"}
GPT2 = {
    "defaults": {"Attn": {"heads": 4}},
    "optim": {
        "lr": 1e-3, "min_lr": 1e-4, "warmup": 100, "betas": [0.9, 0.99],
        "weight_decay": 0.1, "schedule": "cosine",
    },
}  # fmt: skip
SPEEDRUN = {"defaults": {"Attn": {"heads": 4}}}
#: One technique of the recipe taken out at a time: the overrides that remove it.
ABLATIONS = {
    "AdamW instead of Muon": {"optim": {"name": "adamw"}},
    "GELU instead of ReLU²": {"defaults": {"Attn": {"heads": 4}, "MLP": {"act": "gelu"}}},
    "no q/k norm": {"defaults": {"Attn": {"heads": 4, "qk_norm": False}}},
    "init as Llama (no zero-init projections, head)": {
        "init": {"zero_out": False, "zero_readout": False}
    },
    "head tied to the embedding (its init then N(0, 0.02))": {
        "head": "Norm->Head(tie=true, softcap=15.0)",
        "init": {"zero_readout": False},
    },
    "no logit soft-cap": {"head": "Norm->Head"},
    "cosine instead of warmup-stable-decay": {"optim": {"schedule": "cosine"}},
}


def train(preset: str, data: Path, out: Path, steps: int, seed: int, extra: dict) -> tuple:
    """Final validation loss and CPU seconds of one run."""
    # an ablation's tables merge into the preset's, key by key (``apply_overrides``)
    merged = {**(GPT2 if preset == "gpt2" else SPEEDRUN), **extra}
    started = time.process_time()
    run = blockdsl.train(
        preset,
        data=data,
        out=out,
        progress=False,
        train={
            "steps": steps,
            "batch_size": 12,
            "seq_len": 64,
            "eval_every": 0,
            "eval_batches": 20,
            "save_every": 0,
            "seed": seed,
        },
        **SIZE,
        **merged,
    )
    return run.val_loss, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="80,100")
    parser.add_argument("--baseline-steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--source", default=STDLIB_EMAIL)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budgets = sorted(int(b) for b in args.budgets.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        prepare([args.source], data, glob="*.py", tokenizer="byte", progress=False)
        target, gpt2_cpu = train("gpt2", data, work / "gpt2", args.baseline_steps, args.seed, {})
        print(f"gpt2, {args.baseline_steps} steps: val loss {target:.4f}, {gpt2_cpu:.0f} s CPU")
        tried = {}
        for steps in budgets:
            tried[steps] = train("speedrun", data, work / f"speedrun-{steps}", steps, args.seed, {})
            loss, cpu = tried[steps]
            print(f"speedrun, {steps} steps: val loss {loss:.4f}, {cpu:.0f} s CPU", flush=True)
        reached = [s for s in budgets if tried[s][0] <= target]
        chosen = reached[0] if reached else budgets[-1]
        ablations = {"speedrun recipe": tried[chosen][0]}
        for index, (name, extra) in enumerate(ABLATIONS.items()):
            loss, _ = train("speedrun", data, work / f"ablation-{index}", chosen, args.seed, extra)
            ablations[name] = loss
            print(f"{chosen} steps, {name}: val loss {loss:.4f}", flush=True)
    result = {
        "seed": args.seed,
        "target": {"steps": args.baseline_steps, "val_loss": target, "cpu_seconds": gpt2_cpu},
        "speedrun": {str(s): {"val_loss": v[0], "cpu_seconds": v[1]} for s, v in tried.items()},
        "fewest_steps_reaching_target": reached[0] if reached else None,
        "ablation_steps": chosen,
        "ablation": ablations,
        "machine": f"torch {torch.__version__}, {args.threads} thread(s)",
    }
    print(json.dumps(result, indent=1))
    if args.json:
        out = ROOT / "bench" / "results" / "speedrun.json"
        tmp_out = out.with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps(result, indent=1) + "\n")
        tmp_out.replace(out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
