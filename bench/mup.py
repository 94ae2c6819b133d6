"""μP (issue 28 item 3): the coordinate check and learning-rate transfer (docs/experiments.md).

``coord``: Tensor Programs V's coordinate check. The ``tiny`` preset (Llama-style, untied
head) at widths 64 to 512, 4 heads, 2 layers, trained a few AdamW steps (lr 1e-2) on batches of
the standard library corpus; after each of steps 0..``--steps`` the RMS of one coordinate of
the last layer's attention output, MLP output and the logits, averaged over the batch. Under
μP (``[init] scheme = "mup"``, ``base_width = 64``) the sizes stay flat across widths; under
the standard parametrisation (``llama``: the same init and learning rate at every width) they
grow with width. Writes ``docs/img/mup_coord.png`` (``--plot``).

``transfer``: a learning-rate sweep (powers of 2) at widths 64 and 256 under both
parametrisations, ``blockdsl.train`` on the corpus, the validation loss after ``--steps``
steps: under μP the best learning rate at width 64 should be the best at 256 within one
grid step.

    PYTHONPATH=. python bench/mup.py coord [--steps 5] [--plot] [--json]
    PYTHONPATH=. python bench/mup.py transfer [--steps 200] [--seeds 0] [--json]

``--json`` writes ``bench/results/mup_coord.json`` / ``bench/results/mup_transfer.json``.
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
from blockdsl.train.data import TokenData, prepare
from blockdsl.train.optim import param_groups
from blockdsl.train.settings import OptimSettings

ROOT = Path(__file__).resolve().parent.parent
STDLIB_EMAIL = str(Path(sysconfig.get_paths()["stdlib"]) / "email")
BASE_WIDTH = 64
SCHEMES = {"μP": {"scheme": "mup", "base_width": BASE_WIDTH}, "SP": {"scheme": "llama"}}


def model_overrides(width: int, scheme: dict) -> dict:
    """The ``tiny`` preset at ``width``: byte vocabulary, 2 layers, 4 heads (head size grows
    with the width), MLP hidden 3 × width, untied head."""
    return {
        "vocab": 256,
        "d_model": width,
        "context": 64,
        "layers": "block*2",
        "defaults": {"Attn": {"heads": 4, "kv_heads": 4}, "MLP": {"hidden": 3 * width}},
        "init": scheme,
    }


def coordinate_sizes(
    tokens: TokenData, width: int, scheme: dict, steps: int, lr: float
) -> list[list[float]]:
    """``[step][attention, MLP, logits]`` RMS coordinate sizes, steps 0..steps."""
    torch.manual_seed(0)
    model = blockdsl.build_model("tiny", **model_overrides(width, scheme))
    groups = param_groups(model, OptimSettings(lr=lr, weight_decay=0.0))["adamw"]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    captured: list[torch.Tensor] = []
    last = model.layers[-1]
    for module in (last.attn, last.mlp):
        module.register_forward_hook(lambda m, i, o, kept=captured: kept.append(o.detach()))
    sizes = []
    for step in range(steps + 1):
        x, y = tokens.batch(0, step, 8, 64)
        captured.clear()
        out = model(x, y)  # the sizes of this forward: after `step` updates
        attn, mlp = captured
        sizes.append([t.pow(2).mean().sqrt().item() for t in (attn, mlp, out.logits.detach())])
        if step < steps:
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return sizes


def run_coord(args: argparse.Namespace, data: Path) -> dict:
    tokens = TokenData(data)
    widths = [64, 128, 256, 512]
    result: dict = {"widths": widths, "steps": args.steps, "lr": args.lr, "sizes": {}}
    for name, scheme in SCHEMES.items():
        result["sizes"][name] = {}
        for width in widths:
            sizes = coordinate_sizes(tokens, width, scheme, args.steps, args.lr)
            result["sizes"][name][width] = sizes
            final = ", ".join(f"{v:.3f}" for v in sizes[-1])
            print(f"{name} width {width}: after {args.steps} steps attn, mlp, logits {final}")
    if args.plot:
        plot_coord(result, ROOT / "docs" / "img" / "mup_coord.png")
    return result


def plot_coord(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from blockdsl._io import save_figure

    names = ["attention output", "MLP output", "logits"]
    figure, axes = plt.subplots(2, 3, figsize=(11, 6), sharex=True)
    for row, scheme in enumerate(SCHEMES):
        for col, what in enumerate(names):
            ax = axes[row][col]
            for step in range(result["steps"] + 1):
                ys = [result["sizes"][scheme][w][step][col] for w in result["widths"]]
                ax.plot(result["widths"], ys, marker="o", label=f"step {step}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{scheme}: {what}", fontsize=10)
            if row == 1:
                ax.set_xlabel("width (d_model)")
            if col == 0:
                ax.set_ylabel("RMS of a coordinate")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(
        f"Coordinate check: tiny preset, 2 layers, AdamW lr {result['lr']}, base width "
        f"{BASE_WIDTH}",
        fontsize=11,
    )
    figure.tight_layout()
    save_figure(figure, path)
    print(f"wrote {path}")


def run_transfer(args: argparse.Namespace, data: Path, work: Path) -> dict:
    widths = [64, 256]
    grid = [2.0**k * 1e-3 for k in range(0, 6)]  # 1e-3 .. 3.2e-2, one grid step = ×2
    seeds = [int(s) for s in args.seeds.split(",")]
    losses: dict = {}
    for name, scheme in SCHEMES.items():
        losses[name] = {}
        for width in widths:
            row = []
            for lr in grid:
                values = []
                for seed in seeds:
                    run = blockdsl.train(
                        "tiny",
                        data=data,
                        out=work / f"{scheme['scheme']}-{width}-{lr}-{seed}",
                        progress=False,
                        train={
                            "steps": args.steps,
                            "batch_size": 8,
                            "seq_len": 64,
                            "eval_every": 0,
                            "eval_batches": 16,
                            "save_every": 0,
                            "seed": seed,
                        },
                        optim={"lr": lr, "warmup": 20, "min_lr": lr / 10},
                        **model_overrides(width, scheme),
                    )
                    values.append(run.val_loss)
                row.append(sum(values) / len(values))
                print(f"{name} width {width} lr {lr:.1e}: val loss {row[-1]:.4f}", flush=True)
            losses[name][width] = row
    best = {
        name: {
            width: grid[min(range(len(grid)), key=row.__getitem__)] for width, row in rows.items()
        }
        for name, rows in losses.items()
    }
    for name in SCHEMES:
        print(
            f"{name}: best lr " + ", ".join(f"width {w}: {lr:.1e}" for w, lr in best[name].items())
        )
    return {"widths": widths, "grid": grid, "seeds": seeds, "steps": args.steps,
            "val_loss": losses, "best_lr": best}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["coord", "transfer"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=1e-2, help="coord: AdamW's learning rate")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--source", default=STDLIB_EMAIL)
    parser.add_argument("--plot", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.steps = args.steps if args.steps is not None else (5 if args.what == "coord" else 200)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare([args.source], data, glob="*.py", tokenizer="byte", progress=False)
        if args.what == "coord":
            result = run_coord(args, data)
        else:
            result = run_transfer(args, data, Path(tmp))
    result["seconds"] = time.perf_counter() - started
    result["machine"] = f"torch {torch.__version__}, {args.threads} thread(s)"
    if args.json:
        out = ROOT / "bench" / "results" / f"mup_{args.what}.json"
        tmp_out = out.with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps(result, indent=1) + "\n")
        tmp_out.replace(out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
