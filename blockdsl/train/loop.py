"""The training loop: ``train(spec, data=..., out=...)``, read top to bottom.

1. resolve the configuration (``[model]`` ... ``[train]``, ``[optim]``) and check the data,
   the run directory and the memory budget, before anything is allocated;
2. build the model, optimizer(s) and schedule(s) from torch; load the newest checkpoint when
   resuming;
3. step: the ``(seed, step)`` batch, split into micro-batches (gradient accumulation), forward
   with the loss (auxiliary losses included, logged apart), backward, clip, optimizer and
   schedule step; log a metrics line; evaluate and checkpoint at their intervals;
4. stop at the budget (steps, tokens or time) or on SIGINT/SIGTERM, saving a checkpoint, and
   write ``summary.json``.

Everything a step depends on is either a pure function of ``(seed, step)`` (the batch) or in
the checkpoint (weights, optimizer and schedule state, RNG state), so a resumed run repeats an
uninterrupted one bit for bit (float32, same device and thread count).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockdsl.config import ModelConfig, load_config
from blockdsl.errors import BlockDSLError, BudgetError, ConfigError
from blockdsl.tasks.data import open_task
from blockdsl.train import checkpoint as ckpt
from blockdsl.train import distributed, memory
from blockdsl.train.autocompile import CompileChoice
from blockdsl.train.data import TokenData
from blockdsl.train.optim import build_optimizers, build_scheduler
from blockdsl.train.settings import (
    OptimSettings,
    TrainSettings,
    parse_bytes,
    resolve,
    to_tables,
    total_steps,
)

WALL_CLOCK_FIELDS = ("tokens_per_s", "elapsed")  # the metrics that differ between equal runs


class TrainingError(BlockDSLError):
    """Training cannot go on (a non-finite loss, a run directory in the way)."""


@dataclass
class Run:
    """A training run's directory and what it recorded. ``metrics``: one dict per step (the
    lines of ``metrics.jsonl``); ``summary``: ``summary.json``; ``model``: the trained model
    (None for ``Run.load``; see ``load_model``); ``interrupted``: the signal that stopped it."""

    dir: Path
    config: ModelConfig
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    interrupted: int | None = None

    @property
    def final_loss(self) -> float | None:
        return self.metrics[-1]["loss"] if self.metrics else None

    @property
    def val_loss(self) -> float | None:
        """The last validation loss."""
        values = [m["val_loss"] for m in self.metrics if "val_loss" in m]
        return values[-1] if values else None

    @property
    def steps(self) -> int:
        return self.metrics[-1]["step"] if self.metrics else 0

    @classmethod
    def load(cls, path: str | os.PathLike) -> Run:
        """A finished (or stopped) run read back from its directory."""
        path = Path(path)
        if not (path / "config.toml").is_file():
            raise TrainingError(f"{path} is not a training run (no config.toml)")
        config = load_config(path / "config.toml")
        metrics = read_metrics(path / "metrics.jsonl")
        summary_path = path / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        return cls(path, config, metrics, summary)

    def load_model(self, step: int | None = None) -> nn.Module:
        """The model with the weights of the newest checkpoint (or of ``step``)."""
        from blockdsl.model import build_model

        found = [c for c in ckpt.checkpoints(self.dir) if step is None or c.step == step]
        if not found:
            at = f" at step {step}" if step is not None else ""
            raise ckpt.CheckpointError(f"{self.dir} has no checkpoint{at}")
        model = build_model(self.config)
        ckpt.load_weights(found[-1].weights, model)
        return model


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a ``metrics.jsonl`` (a line cut short by a kill is dropped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def train(
    spec: Any = "tiny",
    *,
    data: str | os.PathLike,
    out: str | os.PathLike,
    resume: bool = False,
    max_memory: int | str | None = None,
    progress: bool | None = None,
    registry: Any = None,
    **overrides: Any,
) -> Run:
    """Train ``spec`` (anything ``build_model`` takes) on the prepared ``data`` directory,
    writing the run to ``out``. ``overrides`` set config keys as in ``build_model``, with
    ``train={...}`` and ``optim={...}`` for the run's tables (``train={"steps": 60}``).
    ``progress``: True a rich bar, False silent, None (default) a bar on a terminal and log
    lines otherwise. Returns the ``Run``. Under torchrun every rank calls it and trains its
    share (docs/distributed.md); rank 0 alone prints and writes."""
    # ---------------------------------------------------------------- 1. check everything
    config = load_config(spec, **overrides)
    settings, optim = resolve(config)
    task = open_task(data, settings.seed)  # --data task:NAME (blockdsl.tasks)
    if task is not None:
        task.configure(config, settings)
    tokens = task if task is not None else TokenData(data)
    tokens.check_length(settings.seq_len)
    if tokens.vocab > config.vocab:
        raise ConfigError(
            f"the data's tokenizer has {tokens.vocab:,} tokens but the model's vocab is "
            f"{config.vocab:,}",
            hint=f"set the model's vocab to at least {tokens.vocab} (--set vocab={tokens.vocab})",
            context=str(tokens.path / "meta.json"),
        )
    launch = distributed.detect_launch()
    if launch.distributed:
        _check_distributed(config, settings, launch.world_size)
    device = _device(settings.device, launch)
    with distributed.Group(launch, device, settings.collective_timeout) as group:
        return _train(
            config,
            settings,
            optim,
            task,
            tokens,
            Path(out),
            resume=resume,
            max_memory=max_memory,
            progress=progress,
            registry=registry,
            group=group,
        )


def _train(
    config: ModelConfig,
    settings: TrainSettings,
    optim: OptimSettings,
    task: Any,
    tokens: Any,
    run_dir: Path,
    *,
    resume: bool,
    max_memory: Any,
    progress: bool | None,
    registry: Any,
    group: distributed.Group,
) -> Run:
    latest = group.on_main(lambda: _claim_run_dir(run_dir, config, resume))

    from blockdsl.model import ModelPlan, build_model

    plan = ModelPlan(config, registry)
    device = group.device
    estimate = memory.estimate(
        plan, settings.batch_size, settings.seq_len, settings.precision, optim
    )
    limit = _memory_limit(max_memory, settings, device, group.launch)
    strategy = distributed.choose_strategy(settings.strategy, estimate.total, limit, group.world)
    if strategy == "fsdp" and optim.name == "muon":
        raise config.error(
            "Muon orthogonalises whole matrices, which FSDP shards across ranks",
            "strategy" if "strategy" in config.train else "name",
            hint='use [train] strategy = "ddp" with Muon, or [optim] name = "adamw"',
        )
    if strategy == "fsdp":
        meta = build_model(config, device=torch.device("meta"), registry=registry)
        estimate = distributed.per_rank_estimate(estimate, strategy, group.world, meta)
    if limit is not None and estimate.total > limit:
        sharded = " per rank under FSDP" if strategy == "fsdp" else ""
        raise BudgetError(
            f"training needs about {_gib(estimate.total)}{sharded} (parameters "
            f"{_gib(estimate.params)}, gradients {_gib(estimate.gradients)}, optimizer "
            f"{_gib(estimate.optimizer)}, activations {_gib(estimate.activations + estimate.loss)}"
            f" for a micro-batch of {settings.batch_size}×{settings.seq_len}), over the limit "
            f"of {_gib(limit)}",
            hint="lower [train] batch_size (raise global_batch_size to keep the batch), "
            "seq_len or the model's size, or raise --max-memory",
        )

    # ---------------------------------------------------------------- 2. build
    torch.manual_seed(settings.seed)
    # FSDP moves each block to the device as it shards it: the whole model never is on one
    build_device = torch.device("cpu") if strategy == "fsdp" else device
    module = build_model(config, device=build_device, registry=registry)
    if task is not None:
        module = task.wrap_model(module).to(build_device)
    state: dict[str, Any] = {"step": 0, "tokens": 0, "elapsed": 0.0, "compile": None}
    saved: dict[str, Any] | None = None
    full_optimizer_state = None
    if latest is not None:
        saved = ckpt.load_state(latest)
        if not saved.get("sharded"):  # a single process's checkpoint: whole weights
            ckpt.load_weights(latest.weights, module)
            if strategy is not None:  # optimizer state by position, for this model's names
                previous = build_optimizers(module, optim)
                for optimizer, sd in zip(previous, saved["optimizers"]):
                    optimizer.load_state_dict(sd)
                full_optimizer_state = distributed.full_optimizer_state(module, previous)
                del previous
    model = distributed.parallelize(module, strategy, group, settings.precision)
    optimizers = build_optimizers(model, optim)
    horizon = total_steps(settings)
    schedulers = [build_scheduler(o, optim, horizon) for o in optimizers]
    if latest is not None and saved is not None:  # resuming
        if saved.get("sharded"):
            distributed.load_sharded(latest.path / saved["sharded"], model, optimizers)
        elif full_optimizer_state is not None:
            distributed.load_full_optimizer_state(model, optimizers, full_optimizer_state)
        else:
            for optimizer, sd in zip(optimizers, saved["optimizers"]):
                optimizer.load_state_dict(sd)
        for scheduler, sd in zip(schedulers, saved["schedulers"]):
            scheduler.load_state_dict(sd)
        ckpt.set_rng_state(saved["rng"])
        state.update({k: saved[k] for k in ("step", "tokens", "elapsed", "compile")})
        if task is not None:
            task.recent.extend(saved.get("task_recent", []))
    elif group.main:
        _write_run_files(run_dir, config, settings, optim, tokens)
    metrics_path = run_dir / "metrics.jsonl"
    history = [m for m in read_metrics(metrics_path) if m["step"] <= state["step"]]
    if group.main:
        _write_atomic(metrics_path, "".join(json.dumps(m) + "\n" for m in history))

    # ---------------------------------------------------------------- 3. the loop
    step_tokens = settings.global_batch_size * settings.seq_len
    # each rank takes its rows of the step's batch and accumulates its share of micro-batches
    rank_rows = settings.global_batch_size // group.world
    mine = slice(group.rank * rank_rows, (group.rank + 1) * rank_rows)
    accumulation = rank_rows // settings.batch_size
    mixed_by_fsdp = strategy == "fsdp" and device.type == "cuda"
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if settings.precision == "bfloat16" and not mixed_by_fsdp
        else nullcontext()
    )
    # validation batches dealt out to the ranks; a rank short of one repeats batch 0 with
    # weight 0, so every rank runs as many forwards (FSDP's are collective)
    rounds = -(-settings.eval_batches // group.world)
    dealt = list(range(group.rank, settings.eval_batches, group.world))
    val_batches = [
        (tokens.batch(settings.seed, i, settings.batch_size, settings.seq_len, split="val"), 1.0)
        for i in dealt
    ]
    padding = tokens.batch(settings.seed, 0, settings.batch_size, settings.seq_len, split="val")
    val_batches += [(padding, 0.0)] * (rounds - len(dealt))
    report = _Reporter(progress if group.main else False, horizon, settings)
    chooser = CompileChoice(model, settings, horizon, state["step"], state["compile"], report.log)
    params = [p for p in model.parameters() if p.requires_grad]

    def train_step(step: int) -> tuple[float, float, float]:
        """One optimizer step on the batch of ``step``: (loss, aux loss, grad norm)."""
        inputs, targets = tokens.batch(
            settings.seed, step, settings.global_batch_size, settings.seq_len
        )
        inputs, targets = inputs[mine].to(device), targets[mine].to(device)
        forward = chooser.forward
        loss_sum = aux_sum = torch.zeros((), device=device)
        for micro in range(accumulation):
            rows = slice(micro * settings.batch_size, (micro + 1) * settings.batch_size)
            with distributed.gradient_sync(model, strategy, micro == accumulation - 1):
                with autocast:
                    logits, loss, aux = forward(inputs[rows], targets[rows])
                if task is not None:
                    task.observe(logits.detach(), targets[rows])
                (loss / accumulation).backward()
            loss_sum = loss_sum + loss.detach()
            aux_sum = aux_sum + aux.detach().float()
        limit = optim.grad_clip if optim.grad_clip > 0 else math.inf
        grad_norm = distributed.full_value(torch.nn.utils.clip_grad_norm_(params, limit))
        sums = group.sum(torch.stack([loss_sum.float(), aux_sum]))
        loss_value = (sums[0] / (accumulation * group.world)).item()
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm.item())):
            kept = ckpt.checkpoints(run_dir)
            raise TrainingError(
                f"the loss is {loss_value} at step {step + 1} (gradient norm "
                f"{grad_norm.item()}); training stopped",
                hint=(f"the last good checkpoint is {kept[-1].path}" if kept else "no checkpoint")
                + "; lower [optim] lr, raise warmup or set grad_clip",
            )
        for optimizer in optimizers:
            optimizer.step()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        for scheduler in schedulers:
            scheduler.step()
        return loss_value, (sums[1] / (accumulation * group.world)).item(), grad_norm.item()

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        total = torch.zeros((), device=device)
        for (inputs, targets), weight in val_batches:
            with autocast:
                loss = chooser.forward(inputs.to(device), targets.to(device)).loss
            total += weight * loss.float()
        model.train()
        return (group.sum(total) / settings.eval_batches).item()

    plain_copy: list[nn.Module] = []  # FSDP: rank 0's whole-weights model, built once

    def save(step: int) -> None:
        weights: nn.Module | None = module
        if strategy == "fsdp":  # rank 0 gathers the whole weights into its plain copy
            gathered = distributed.full_weights(model, group)
            weights = None
            if gathered is not None:
                if not plain_copy:
                    copy = build_model(config, registry=registry)
                    plain_copy.append(task.wrap_model(copy) if task is not None else copy)
                weights = plain_copy[0]
                weights.load_state_dict(gathered)
        shards = None
        if strategy is not None:  # the model and optimizer state, every rank its shards
            shards = partial(distributed.save_sharded, model=model, optimizers=optimizers)
        ckpt.save(
            run_dir,
            step,
            weights if group.main else None,
            {
                "tokens": state["tokens"],
                "elapsed": state["elapsed"],
                "compile": chooser.decision,
                "optimizers": [o.state_dict() for o in optimizers] if strategy is None else None,
                "schedulers": [s.state_dict() for s in schedulers],
                "rng": ckpt.rng_state([device]),
                "world_size": group.world,
                "strategy": strategy,
                "task_recent": list(task.recent) if task is not None else [],
            },
            settings.keep,
            group=group if strategy is not None else None,
            write_shards=shards,
        )

    def measure_memory() -> int:
        """The peak tensor memory of a training micro-step, measured once the run is over
        (the profiler it needs slows later steps of the same model): forward and backward
        of one micro-batch with the optimizer state in place (and, with accumulation, the
        gradients already there). Leaves weights, RNG state and optimizer untouched."""
        rng = ckpt.rng_state([device])
        inputs, targets = tokens.batch(settings.seed, 0, settings.batch_size, settings.seq_len)
        inputs, targets = inputs.to(device), targets.to(device)

        def forward_backward() -> None:
            with autocast:
                loss = chooser.forward(inputs, targets).loss
            loss.backward()

        if accumulation > 1:
            forward_backward()
        live = [params, [p.grad for p in params], [o.state_dict()["state"] for o in optimizers]]
        peak = memory.measure_peak(forward_backward, device, memory.live_bytes(*live))
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        ckpt.set_rng_state(rng)
        return peak

    stop: list[int] = []
    restore = _catch_signals(stop)
    has_aux = module.has_aux_loss
    model.train()
    started = time.perf_counter() - state["elapsed"]
    try:
        with _metrics_file(metrics_path, group.main) as metrics_file, report:
            report.start(state["step"])
            while not _done(state, settings, horizon):
                step = state["step"]
                distributed.inject_fault(group.rank, step)
                lr = optimizers[0].param_groups[0]["lr"]  # what this step uses
                tick = time.perf_counter()
                loss, aux, grad_norm = train_step(step)
                state["step"] = step + 1
                state["tokens"] += step_tokens
                took = time.perf_counter() - tick
                # between evaluations, score the test set once the training batches say the
                # target may be reached, so a run stops within a few steps of it
                ready = (
                    task is not None
                    and settings.target_accuracy is not None
                    and task.may_have_reached(settings.target_accuracy)
                )
                # the ranks agree on the clock (a time budget, compile="auto"), on a signal and
                # on scoring the test set (its forwards are collective under FSDP)
                took, elapsed, signum, ready = group.max(
                    took, time.perf_counter() - started, stop[0] if stop else 0, float(ready)
                )
                if signum and not stop:
                    stop.append(int(signum))
                chooser.observe(step, took)
                state["elapsed"] = elapsed
                line: dict[str, Any] = {
                    "step": state["step"],
                    "tokens": state["tokens"],
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": step_tokens / took,
                    "elapsed": state["elapsed"],
                }
                if has_aux:
                    line["aux_loss"] = aux
                final = _done(state, settings, horizon)
                reached = False
                due = settings.eval_every and state["step"] % settings.eval_every == 0
                if final or due or ready:
                    line["val_loss"] = evaluate()
                    if task is not None:
                        line["accuracy"] = task.evaluate(module, device)
                        target = settings.target_accuracy
                        reached = target is not None and line["accuracy"] >= target
                        final = final or reached
                metrics_file.write(json.dumps(line) + "\n")
                metrics_file.flush()
                history.append(line)
                report.step(line)
                periodic = settings.save_every and state["step"] % settings.save_every == 0
                if final or stop or periodic:
                    save(state["step"])
                if reached:
                    report.log(f"reached accuracy {line['accuracy']:.4f} at step {step + 1}")
                    break
                if stop:
                    report.log(
                        f"stopped by {signal.Signals(stop[0]).name} at step {state['step']}; "
                        f"checkpoint saved; continue with --resume"
                    )
                    break
            if not stop and state["step"] and not group.on_main(lambda: ckpt.checkpoints(run_dir)):
                save(state["step"])
        peak = measure_memory() if state["step"] and not stop else None
    finally:
        restore()

    # ---------------------------------------------------------------- 4. summary
    summary = {
        "params": module.num_params(),
        "flops_per_token": plan.flops(settings.seq_len) // settings.seq_len,
        "steps": state["step"],
        "tokens": state["tokens"],
        "elapsed": state["elapsed"],
        "final_loss": history[-1]["loss"] if history else None,
        "final_val_loss": next((m["val_loss"] for m in reversed(history) if "val_loss" in m), None),
        "device": str(device),
        "precision": settings.precision,
        "distributed": None
        if strategy is None
        else {"world_size": group.world, "strategy": strategy, "backend": group.backend},
        "compile": chooser.summary(),
        "memory": {
            "estimate": estimate.as_dict(),
            "measured_peak": peak,
            "measured_over_estimate": (peak / estimate.total) if peak else None,
            "method": "torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "torch.profiler allocator events (profile_memory) over one step + live tensors",
            "limit": limit,
        },
        "interrupted": signal.Signals(stop[0]).name if stop else None,
        "data": task.text if task is not None else str(tokens.path),
    }
    if task is not None:
        accuracies = [m["accuracy"] for m in history if "accuracy" in m]
        summary["final_accuracy"] = accuracies[-1] if accuracies else None
        summary["reached_target"] = bool(
            accuracies
            and settings.target_accuracy is not None
            and accuracies[-1] >= settings.target_accuracy
        )
    if group.main:
        _write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return Run(run_dir, config, history, summary, module, stop[0] if stop else None)


# ==================================================================== helpers
def _done(state: dict[str, Any], settings: TrainSettings, horizon: int | None) -> bool:
    if horizon is not None and state["step"] >= horizon:
        return True
    return settings.time is not None and state["elapsed"] >= settings.time


def _claim_run_dir(run_dir: Path, config: ModelConfig, resume: bool) -> ckpt.Checkpoint | None:
    """Check ``run_dir`` can be used; the checkpoint to resume from (None: start afresh)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"{run_dir} exists and is not a directory")
    if not resume:
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise TrainingError(
                f"{run_dir} already holds a run; nothing was overwritten",
                hint="pass --resume to continue it, or choose another --out",
            )
        return None
    saved = run_dir / "config.toml"
    if saved.is_file():
        previous = load_config(saved)
        if _model_tables(previous) != _model_tables(config):
            raise TrainingError(
                f"--resume: the model differs from the one {run_dir} was trained with",
                hint=f"resume with the run's own config: {saved}",
            )
    found = ckpt.checkpoints(run_dir)
    return found[-1] if found else None


def _model_tables(config: ModelConfig) -> dict[str, Any]:
    data = config.to_dict()
    return {k: data[k] for k in ("model", "blocks", "defaults")}


def _write_run_files(
    run_dir: Path,
    config: ModelConfig,
    settings: TrainSettings,
    optim: OptimSettings,
    tokens: Any,
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = load_config(config)
    resolved.train, resolved.optim = to_tables(settings, optim)
    _write_atomic(run_dir / "config.toml", resolved.to_toml())
    if tokens.path is not None and (tokens.path / "tokenizer.json").is_file():
        shutil.copyfile(tokens.path / "tokenizer.json", run_dir / "tokenizer.json")
    _write_atomic(run_dir / "data.json", json.dumps(tokens.meta, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _device(name: str, launch: distributed.Launch) -> torch.device:
    """The run's device; under torchrun on CUDA, this rank's GPU (``cuda:LOCAL_RANK``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError('[train] device = "cuda" but torch sees no CUDA device')
    if name == "cuda" and launch.distributed:
        if launch.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {launch.local_rank} has no GPU: torch sees "
                f"{torch.cuda.device_count()} on this node",
                hint="start at most one process per GPU (torchrun --nproc_per_node)",
            )
        return torch.device("cuda", launch.local_rank)
    return torch.device(name)


def _check_distributed(config: ModelConfig, settings: TrainSettings, world: int) -> None:
    """The global batch splits evenly into the ranks' micro-batches."""
    if settings.global_batch_size % (settings.batch_size * world):
        raise config.error(
            f"[train] global_batch_size {settings.global_batch_size} does not split into "
            f"micro-batches of {settings.batch_size} on {world} ranks",
            "global_batch_size",
            hint=f"make global_batch_size a multiple of batch_size × ranks = "
            f"{settings.batch_size * world}",
        )


def _memory_limit(
    given: Any, settings: TrainSettings, device: torch.device, launch: distributed.Launch
) -> int | None:
    """One rank's memory budget: the given size, else what is available (on CPU, the host's
    memory shared by this node's ranks)."""
    if given is not None:
        return parse_bytes(given)
    if settings.max_memory is not None:
        return parse_bytes(settings.max_memory, "[train] max_memory")
    available = memory.available(device)
    if available is not None and device.type == "cpu":
        return available // launch.local_world_size
    return available


class _NoFile:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def _metrics_file(path: Path, main: bool) -> Any:
    """``metrics.jsonl`` opened for appending on rank 0; a sink on the other ranks."""
    return open(path, "a") if main else nullcontext(_NoFile())


def _gib(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB"


def _catch_signals(stop: list[int]) -> Any:
    """SIGINT and SIGTERM ask the loop to save and stop after the current step."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        stop.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


class _Reporter:
    """A rich progress bar (loss, tokens/s) on a terminal; plain log lines otherwise."""

    def __init__(self, progress: bool | None, horizon: int | None, settings: TrainSettings):
        self.mode = (
            "bar"
            if (progress is None and sys.stdout.isatty()) or progress is True
            else ("quiet" if progress is False else "lines")
        )
        self.horizon, self.every = horizon, settings.log_every

    def __enter__(self) -> _Reporter:
        if self.mode == "bar":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self.bar.__enter__()
        return self

    def start(self, step: int) -> None:
        if self.mode == "bar":
            self.task = self.bar.add_task("train", total=self.horizon, completed=step, info="")

    def step(self, line: dict[str, Any]) -> None:
        text = f"loss {line['loss']:.4f}"
        if "val_loss" in line:
            text += f" val {line['val_loss']:.4f}"
        text += f" lr {line['lr']:.2e} {line['tokens_per_s']:,.0f} tok/s"
        if self.mode == "bar":
            self.bar.update(self.task, completed=line["step"], info=text)
        elif self.mode == "lines" and (
            line["step"] % self.every == 0 or "val_loss" in line or line["step"] == 1
        ):
            total = f"/{self.horizon}" if self.horizon else ""
            print(f"step {line['step']}{total} {text}", flush=True)

    def log(self, message: str) -> None:
        if self.mode == "bar":
            self.bar.console.print(message)
        elif self.mode == "lines":
            print(message, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self.mode == "bar":
            self.bar.__exit__(*exc)


__all__ = ["WALL_CLOCK_FIELDS", "Run", "TrainingError", "read_metrics", "train"]
