"""Count the ATen operators of one training step (forward + backward) of blockdsl's ``llama``
model and of the hand-written reference, op by op: a deterministic view of the overhead the
compiler adds (extra copies, concatenations, masks), unaffected by a busy machine.

    PYTHONPATH=. python bench/profile_ops.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.models import Config, build_blockdsl, logits_of, reference_from_blockdsl


def op_counts(model: torch.nn.Module, idx: torch.Tensor, targets: torch.Tensor) -> Counter:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        logits = logits_of(model(idx))
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return Counter({e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny model")
    args = ap.parse_args(argv)
    cfg = Config()
    if args.quick:
        cfg = Config(vocab=512, d_model=64, layers=2, heads=4, kv_heads=2, hidden=176, seq=64)
    torch.manual_seed(0)
    bd = build_blockdsl(cfg)
    ref = reference_from_blockdsl(cfg, bd)
    idx = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq))
    targets = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq))
    a, b = op_counts(bd, idx, targets), op_counts(ref, idx, targets)
    print(f"ATen ops per training step: blockdsl {a.total()}, reference {b.total()}")
    print(f"{'op':<44}{'blockdsl':>9}{'reference':>10}")
    for op in sorted(set(a) | set(b), key=lambda op: (a[op] - b[op], op), reverse=True):
        if a[op] != b[op]:
            print(f"{op:<44}{a[op]:>9}{b[op]:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
