"""Loss parity with nanoGPT at equal steps (issue 28 item 2).

``blockdsl train gpt2`` scaled to nanoGPT's Shakespeare-char CPU configuration (4 layers, 4
heads, width 128, context 64, batch 12, dropout 0, biases on; nanoGPT's ``GELU``, the exact
one) against nanoGPT's own model and loop, written out below as karpathy/nanoGPT's
``model.py`` and ``train.py`` do it (GPT-2 init: N(0, 0.02), ``c_proj`` weights N(0, 0.02 /
sqrt(2 * n_layer)), zero biases, embeddings N(0, 0.02), head tied to the token embedding;
AdamW with decay on >= 2-D parameters, betas (0.9, 0.99), lr 1e-3 warmed up over 100 steps and
cosine-decayed to 1e-4, gradient clipping at 1.0: ``config/train_shakespeare_char.py``).

Both see the same batches: step ``s`` of seed ``k`` is ``TokenData.batch(k, s, 12, 64)`` on a
byte-level corpus of the Python standard library (``email`` package, as
``bench/init_experiment.py``); the validation loss is the mean over the same 20 validation
batches (``eval_iters = 20``). A seed sets both models' init and the batches. Before training,
the bench copies blockdsl's initial weights into a nanoGPT model and checks the logits agree
(the two are one architecture). A third row, blockdsl with ``[init] scheme = "torch"`` (each
component's PyTorch default, what the ``gpt2`` preset did before it named its scheme), shows
what the initialisation is worth.

    PYTHONPATH=. python bench/nanogpt_parity.py [--steps 500] [--seeds 0,1,2] [--threads 1]
        [--runs FILE] [--json]
    PYTHONPATH=. python bench/nanogpt_parity.py --combine FILE... [--json]

``--runs`` appends each finished run to a JSON-lines file, so that seeds can run as parallel
processes; ``--combine`` tabulates such files without training.

``--json`` writes ``bench/results/nanogpt_parity.json`` for ``bench/report.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import blockdsl
from blockdsl.train.data import TokenData, prepare

STDLIB_EMAIL = str(Path(sysconfig.get_paths()["stdlib"]) / "email")
BATCH, EVAL_ITERS = 12, 20
LR, MIN_LR, WARMUP, BETAS, WD, CLIP = 1e-3, 1e-4, 100, (0.9, 0.99), 0.1, 1.0


# ==================================================================== nanoGPT's model.py
@dataclass
class GPTConfig:
    block_size: int = 64
    vocab_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True


class LayerNorm(nn.Module):
    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        dropout = self.dropout if self.training else 0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.block_size, config.n_embd),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                "ln_f": LayerNorm(config.n_embd, bias=config.bias),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        # apply special scaled init to the residual projections, per GPT-2 paper
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = idx.size(1)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1
            )
        return logits, loss

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float]
    ) -> torch.optim.AdamW:
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        nodecay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": nodecay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


# ==================================================================== nanoGPT's train.py
def get_lr(it: int, max_iters: int) -> float:
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > max_iters:
        return MIN_LR
    decay_ratio = (it - WARMUP) / (max_iters - WARMUP)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return MIN_LR + coeff * (LR - MIN_LR)


def get_batch(tokens: TokenData, seed: int, step: int, seq: int, split: str = "train"):
    """blockdsl's batch of ``(seed, step)``, as contiguous tensors (nanoGPT stacks x and y
    separately, and its loss ``view``s them)."""
    x, y = tokens.batch(seed, step, BATCH, seq, split=split)
    return x.contiguous(), y.contiguous()


@torch.no_grad()
def estimate_val_loss(model: nn.Module, tokens: TokenData, seed: int, seq: int) -> float:
    model.eval()
    losses = [
        model(*get_batch(tokens, seed, i, seq, split="val"))[1].item() for i in range(EVAL_ITERS)
    ]
    model.train()
    return sum(losses) / len(losses)


def train_nanogpt(tokens: TokenData, seed: int, steps: int, config: GPTConfig) -> float:
    torch.manual_seed(seed)
    model = GPT(config)
    optimizer = model.configure_optimizers(WD, LR, BETAS)
    for iter_num in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(iter_num, steps)
        x, y = get_batch(tokens, seed, iter_num, config.block_size)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return estimate_val_loss(model, tokens, seed, config.block_size)


# ==================================================================== blockdsl
def blockdsl_overrides(config: GPTConfig, scheme: str) -> dict:
    """The ``gpt2`` preset at nanoGPT's Shakespeare-char size (nanoGPT's exact GELU)."""
    return {
        "vocab": config.vocab_size,
        "d_model": config.n_embd,
        "context": config.block_size,
        "layers": f"block*{config.n_layer}",
        "defaults": {"Attn": {"heads": config.n_head}, "MLP": {"act": "gelu"}},
        "init": {"scheme": scheme},
    }


def train_blockdsl(data: Path, out: Path, seed: int, steps: int, config: GPTConfig, scheme: str):
    run = blockdsl.train(
        "gpt2",
        data=data,
        out=out,
        progress=False,
        train={
            "steps": steps,
            "batch_size": BATCH,
            "seq_len": config.block_size,
            "eval_every": 0,
            "eval_batches": EVAL_ITERS,
            "save_every": 0,
            "seed": seed,
        },
        optim={
            "lr": LR,
            "min_lr": MIN_LR,
            "warmup": WARMUP,
            "weight_decay": WD,
            "betas": list(BETAS),
            "grad_clip": CLIP,
            "schedule": "cosine",
        },
        **blockdsl_overrides(config, scheme),
    )
    return run.val_loss


def nanogpt_from_blockdsl(model: nn.Module, config: GPTConfig) -> GPT:
    """A nanoGPT model holding ``model``'s weights (the ``gpt2`` preset's names)."""
    ref = GPT(config)
    ours = model.state_dict()
    theirs = {"transformer.wte.weight": ours["embed.embed.tok.weight"]}
    theirs["transformer.wpe.weight"] = ours["embed.embed.pos.weight"]
    theirs["lm_head.weight"] = ours["embed.embed.tok.weight"]
    for i in range(config.n_layer):
        a, b = f"layers.{i}.", f"transformer.h.{i}."
        for kind in ("weight", "bias"):
            theirs[f"{b}ln_1.{kind}"] = ours[f"{a}norm.{kind}"]
            theirs[f"{b}ln_2.{kind}"] = ours[f"{a}norm_1.{kind}"]
            qkv = [ours[f"{a}attn.{p}.{kind}"] for p in "qkv"]
            theirs[f"{b}attn.c_attn.{kind}"] = torch.cat(qkv)
            theirs[f"{b}attn.c_proj.{kind}"] = ours[f"{a}attn.o.{kind}"]
            theirs[f"{b}mlp.c_fc.{kind}"] = ours[f"{a}mlp.up.{kind}"]
            theirs[f"{b}mlp.c_proj.{kind}"] = ours[f"{a}mlp.down.{kind}"]
    for kind in ("weight", "bias"):
        theirs[f"transformer.ln_f.{kind}"] = ours[f"head.norm.{kind}"]
    ref.load_state_dict(theirs)
    return ref


def check_same_architecture(config: GPTConfig) -> float:
    """Max |logit difference| of blockdsl's model and nanoGPT's holding its weights."""
    torch.manual_seed(0)
    model = blockdsl.build_model("gpt2", **blockdsl_overrides(config, "gpt2"))
    ref = nanogpt_from_blockdsl(model, config)
    assert sum(p.numel() for p in ref.parameters()) == model.num_params()
    idx = torch.randint(0, config.vocab_size, (2, config.block_size))
    with torch.no_grad():
        return (model(idx).logits - ref(idx)[0]).abs().max().item()


LOOPS = ("nanoGPT", "blockdsl gpt2", "blockdsl torch")


def run_seeds(args: argparse.Namespace, config: GPTConfig, seeds: list[int]) -> list[dict]:
    """Every loop on every seed; each finished run appended to ``--runs`` (JSON lines)."""
    done = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare([args.source], data, glob="*.py", tokenizer="byte", progress=False)
        tokens = TokenData(data)
        for seed in seeds:
            # alternating order, so a load that drifts weighs on each alike
            order = LOOPS if seed % 2 == 0 else tuple(reversed(LOOPS))
            for name in order:
                start = time.perf_counter()
                if name == "nanoGPT":
                    loss = train_nanogpt(tokens, seed, args.steps, config)
                else:
                    scheme = name.split()[1]
                    out = Path(tmp) / f"{scheme}-{seed}"
                    loss = train_blockdsl(data, out, seed, args.steps, config, scheme)
                row = {"loop": name, "seed": seed, "val_loss": loss, "steps": args.steps,
                       "seconds": time.perf_counter() - start}  # fmt: skip
                done.append(row)
                if args.runs:
                    with open(args.runs, "a") as f:
                        f.write(json.dumps(row) + "\n")
                print(f"seed {seed} {name:15s} val loss {loss:.4f}", flush=True)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--source", default=STDLIB_EMAIL)
    parser.add_argument("--runs", help="append each run to this JSON-lines file")
    parser.add_argument(
        "--combine", nargs="+", metavar="RUNS",
        help="train nothing: tabulate the runs files of processes that ran the seeds in parallel",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = GPTConfig()
    difference = check_same_architecture(config)
    print(f"same architecture: max |logits difference| with copied weights {difference:.2e}")
    assert difference < 1e-4, difference
    if args.combine:
        runs = [
            json.loads(line)
            for path in args.combine
            for line in Path(path).read_text().splitlines()
        ]
    else:
        runs = run_seeds(args, config, [int(s) for s in args.seeds.split(",")])
    # the seeds every loop finished (a combined file of unfinished processes has others)
    seeds = sorted(s for s in {r["seed"] for r in runs} if all(
        any(r["loop"] == name and r["seed"] == s for r in runs) for name in LOOPS))  # fmt: skip
    assert seeds, "no seed has all three loops finished"
    steps = {r["steps"] for r in runs}
    assert len(steps) == 1, f"runs of different lengths: {steps}"
    losses = {name: [next(r["val_loss"] for r in runs if r["loop"] == name and r["seed"] == s)
                     for s in seeds] for name in LOOPS}  # fmt: skip
    seconds = {
        name: statistics.mean(
            r["seconds"] for r in runs if r["loop"] == name and r["seed"] in seeds
        )
        for name in LOOPS
    }
    reference = losses["nanoGPT"]
    low, high = min(reference), max(reference)
    rows = []
    for name, values in losses.items():
        mean = statistics.mean(values)
        inside = "yes" if low <= mean <= high else "no"
        rows.append(
            [
                name,
                " / ".join(f"{v:.3f}" for v in values),
                mean,
                statistics.stdev(values) if len(values) > 1 else 0.0,
                mean - statistics.mean(reference),
                "reference" if name == "nanoGPT" else inside,
                seconds[name],
            ]
        )
        print(f"{name:15s} mean {mean:.4f}, within nanoGPT's [{low:.4f}, {high:.4f}]: {inside}")
    if args.json:
        from bench.record import Record

        record = Record("nanogpt_parity", "Loss parity with nanoGPT at equal steps")
        if args.combine:  # the seeds ran as parallel processes: say how
            record.command = (
                "for s in " + " ".join(map(str, seeds)) + "; do OMP_NUM_THREADS=1 PYTHONPATH=. "
                "python bench/nanogpt_parity.py --seeds $s --runs runs-$s.jsonl & done; wait; "
                "PYTHONPATH=. python bench/nanogpt_parity.py --combine runs-*.jsonl --json"
            )
        record.table(
            [
                "loop",
                "val loss per seed " + ", ".join(map(str, seeds)),
                "mean",
                "stdev",
                "mean − nanoGPT's",
                "mean within nanoGPT's seed range",
                "s per run",
            ],
            rows,
            caption=f"{steps.pop()} steps, batch {BATCH} × {config.block_size} tokens, "
            f"4 layers × 128 wide, byte vocabulary, {EVAL_ITERS} validation batches",
        )
        record.note(
            f"Same architecture: blockdsl's initial weights copied into nanoGPT's model give "
            f"logits within {difference:.1e}. `blockdsl torch` is the `gpt2` preset with "
            '`[init] scheme = "torch"` (PyTorch\'s default init of every linear layer). '
            "Seconds per run are wall time on the shared machine, the seeds run as parallel "
            "processes: not a speed comparison (bench/train.py is)."
        )
        print(f"wrote {record.write()}")


if __name__ == "__main__":
    main()
