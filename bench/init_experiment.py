"""Architecture surgery from trained weights (issue 29 item 6, docs/experiments.md).

Train an attention model on part of the Python standard library's source; make the hybrid by
editing its block string (Gated DeltaNet in every other layer); then train the hybrid for the
same number of steps three ways, each over several seeds:

(a) **scratch**: random init;
(b) **mapped**: ``init`` from the attention model: every tensor that still fits is copied and
    each Gated DeltaNet takes the q, k, v, o of the attention it replaces (MIXER_MAPS);
(c) **distilled**: (b) plus distillation from the attention model (``teacher``, KL at T = 2
    weighted 0.8 with the next-token loss weighted 0.2);

and, as the reference the hybrids are measured against, (d) **attention, continued**: the
attention model itself trained the same further steps (``init`` from it, no surgery).

Reported: the validation loss of each after the same steps (mean and each seed; a seed sets
the hybrid's fresh weights, the batch order and the validation windows, the same for every
variant of that seed), the attention teacher's own, and the mapped hybrid's validation loss
before any step (the surgery's immediate cost). Everything runs in one process on CPU; the
numbers are tiny-scale.

    PYTHONPATH=. python bench/init_experiment.py [--teacher-steps 300] [--steps 100]
        [--seeds 0,1] [--threads 2] [--json]

``--json`` writes ``bench/results/init_experiment.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
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
ATTENTION = "Norm->Attn->+->Norm->MLP->+"
GATED_DELTANET = "Norm->GatedDeltaNet->+->Norm->MLP->+"
MODEL = {
    "vocab": 256,
    "d_model": 64,
    "context": 128,
    "defaults": {
        "Attn": {"heads": 4, "kv_heads": 2},
        "GatedDeltaNet": {"heads": 4},  # lines up with Attn: 4 heads of 16
        "MLP": {"hidden": 176},
    },
}
TEACHER = {**MODEL, "layers": "attn*4", "blocks": {"attn": ATTENTION}}
HYBRID = {
    **MODEL,
    "layers": "attn->gdn->attn->gdn",
    "blocks": {"attn": ATTENTION, "gdn": GATED_DELTANET},
}
DISTILL = {"kl": 0.8, "ce": 0.2, "temperature": 2.0}


def _budget(steps: int, seed: int) -> dict:
    return {
        "steps": steps,
        "batch_size": 8,
        "seq_len": 128,
        "eval_every": steps,
        "eval_batches": 16,
        "save_every": 0,
        "seed": seed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--source", default=str(Path(sysconfig.get_paths()["stdlib"]) / "email"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    optim = {"lr": 3e-3, "warmup": 10}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        meta = prepare([args.source], data, glob="*.py", tokenizer="byte", progress=False)
        teacher = work / "teacher"
        taught = blockdsl.train(
            "tiny", data=data, out=teacher, progress=False,
            train=_budget(args.teacher_steps, 0), optim=optim, **TEACHER,
        )  # fmt: skip
        rows: dict[str, list] = {"scratch": [], "mapped": [], "distilled": [], "continued": []}
        at_start = []
        for seed in seeds:
            for variant in rows:
                extra: dict = {}
                if variant != "scratch":
                    extra["init"] = teacher
                if variant == "distilled":
                    extra.update(teacher=teacher, distill=DISTILL)
                model = TEACHER if variant == "continued" else HYBRID
                run = blockdsl.train(
                    "tiny", data=data, out=work / f"{variant}-{seed}", progress=False,
                    train=_budget(args.steps, seed), optim=optim, **extra, **model,
                )  # fmt: skip
                rows[variant].append(run.val_loss)
                print(f"seed {seed} {variant}: val loss {run.val_loss:.4f}", flush=True)
            # the surgery's immediate cost: the mapped hybrid before any step (lr 0, 1 step)
            frozen = blockdsl.train(
                "tiny", data=data, out=work / f"step0-{seed}", progress=False, init=teacher,
                train=_budget(1, seed), optim={"lr": 0.0, "schedule": "constant"}, **HYBRID,
            )  # fmt: skip
            at_start.append(frozen.val_loss)
    result = {
        "source": args.source,
        "train_tokens": meta.get("train_tokens") if isinstance(meta, dict) else None,
        "teacher": {"steps": args.teacher_steps, "val_loss": taught.val_loss},
        "hybrid_steps": args.steps,
        "seeds": seeds,
        "val_loss": {k: {"mean": statistics.mean(v), "runs": v} for k, v in rows.items()},
        "mapped_at_step_0": at_start,
        "seconds": time.perf_counter() - started,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        out = ROOT / "bench" / "results" / "init_experiment.json"
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
