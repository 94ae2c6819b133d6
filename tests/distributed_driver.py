"""Several distributed trainings in one torchrun launch (tests/test_distributed.py).

    python -m torch.distributed.run --nproc_per_node=2 --standalone tests/distributed_driver.py PLAN

PLAN is a JSON file: ``{"data": DIR, "model": {...}, "train": {...}, "runs": [...]}``; each run
is ``{"out": RUN, "strategy": "ddp" | "fsdp", "resume_from": RUN, "fault": SPEC}`` (the last
two optional). A run with ``resume_from`` continues a copy of that run cut back to its
checkpoint of ``cut_at`` steps; one with ``fault`` fails as ``$BLOCKDSL_FAULT=SPEC`` says.
The process group is opened here once for all runs (``blockdsl.train`` uses a group it finds
open and leaves it open), so the runs cost one launch.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

import blockdsl
from blockdsl import checkpoint as ckpt
from blockdsl.train.distributed import FAULT_ENV


def cut_copy(source: Path, target: Path, step: int) -> None:
    """A copy of the run ``source`` as if it had been stopped after its checkpoint of
    ``step``: later checkpoints removed (``--resume`` drops the metrics past it)."""
    shutil.copytree(source, target)
    for later in ckpt.checkpoints(target):
        if later.step > step:
            shutil.rmtree(later.path)
    (target / "summary.json").unlink()


@record
def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    dist.init_process_group("gloo")
    try:
        for run in plan["runs"]:
            out = Path(run["out"])
            if "resume_from" in run:
                if dist.get_rank() == 0:
                    cut_copy(Path(run["resume_from"]), out, plan["cut_at"])
                dist.barrier()
            if "fault" in run:
                os.environ[FAULT_ENV] = run["fault"]
            blockdsl.train(
                "tiny",
                data=plan["data"],
                out=out,
                resume="resume_from" in run,
                progress=None,  # log lines (not a terminal): rank 0 alone prints them
                train={**plan["train"], "strategy": run["strategy"]},
                **plan["model"],
            )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
