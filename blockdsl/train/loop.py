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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockdsl.config import ModelConfig, load_config
from blockdsl.errors import BlockDSLError, BudgetError, ConfigError
from blockdsl.tasks.data import open_task
from blockdsl.train import checkpoint as ckpt
from blockdsl.train import memory
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
    lines otherwise. Returns the ``Run``."""
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
    run_dir = Path(out)
    latest = _claim_run_dir(run_dir, config, resume)

    from blockdsl.model import ModelPlan, build_model

    plan = ModelPlan(config, registry)
    device = _device(settings.device)
    estimate = memory.estimate(
        plan, settings.batch_size, settings.seq_len, settings.precision, optim
    )
    limit = _memory_limit(max_memory, settings, device)
    if limit is not None and estimate.total > limit:
        raise BudgetError(
            f"training needs about {_gib(estimate.total)} (parameters {_gib(estimate.params)}, "
            f"gradients {_gib(estimate.gradients)}, optimizer {_gib(estimate.optimizer)}, "
            f"activations {_gib(estimate.activations + estimate.loss)} for a micro-batch of "
            f"{settings.batch_size}×{settings.seq_len}), over the limit of {_gib(limit)}",
            hint="lower [train] batch_size (raise global_batch_size to keep the batch), "
            "seq_len or the model's size, or raise --max-memory",
        )

    # ---------------------------------------------------------------- 2. build
    torch.manual_seed(settings.seed)
    model = build_model(config, device=device, registry=registry)
    if task is not None:
        model = task.wrap_model(model).to(device)
    optimizers = build_optimizers(model, optim)
    horizon = total_steps(settings)
    schedulers = [build_scheduler(o, optim, horizon) for o in optimizers]
    state: dict[str, Any] = {"step": 0, "tokens": 0, "elapsed": 0.0, "compile": None}
    if latest is not None:
        saved = ckpt.load(latest, model)
        for optimizer, sd in zip(optimizers, saved["optimizers"]):
            optimizer.load_state_dict(sd)
        for scheduler, sd in zip(schedulers, saved["schedulers"]):
            scheduler.load_state_dict(sd)
        ckpt.set_rng_state(saved["rng"])
        state.update({k: saved[k] for k in ("step", "tokens", "elapsed", "compile")})
        if task is not None:
            task.recent.extend(saved.get("task_recent", []))
    else:
        _write_run_files(run_dir, config, settings, optim, tokens)
    metrics_path = run_dir / "metrics.jsonl"
    history = [m for m in read_metrics(metrics_path) if m["step"] <= state["step"]]
    _write_atomic(metrics_path, "".join(json.dumps(m) + "\n" for m in history))

    # ---------------------------------------------------------------- 3. the loop
    step_tokens = settings.global_batch_size * settings.seq_len
    accumulation = settings.accumulation
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if settings.precision == "bfloat16"
        else nullcontext()
    )
    val_batches = [
        tokens.batch(settings.seed, i, settings.batch_size, settings.seq_len, split="val")
        for i in range(settings.eval_batches)
    ]
    report = _Reporter(progress, horizon, settings)
    chooser = CompileChoice(model, settings, horizon, state["step"], state["compile"], report.log)
    params = [p for p in model.parameters() if p.requires_grad]

    def train_step(step: int) -> tuple[float, float, float]:
        """One optimizer step on the batch of ``step``: (loss, aux loss, grad norm)."""
        inputs, targets = tokens.batch(
            settings.seed, step, settings.global_batch_size, settings.seq_len
        )
        inputs, targets = inputs.to(device), targets.to(device)
        forward = chooser.forward
        loss_sum = aux_sum = torch.zeros((), device=device)
        for micro in range(accumulation):
            rows = slice(micro * settings.batch_size, (micro + 1) * settings.batch_size)
            with autocast:
                logits, loss, aux = forward(inputs[rows], targets[rows], return_aux=True)
            if task is not None:
                task.observe(logits.detach(), targets[rows])
            (loss / accumulation).backward()
            loss_sum = loss_sum + loss.detach()
            aux_sum = aux_sum + aux.detach().float()
        limit = optim.grad_clip if optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, limit)
        loss_value = (loss_sum / accumulation).item()
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
        return loss_value, (aux_sum / accumulation).item(), grad_norm.item()

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        total = torch.zeros((), device=device)
        for inputs, targets in val_batches:
            with autocast:
                _, loss = chooser.forward(inputs.to(device), targets.to(device))
            total += loss.float()
        model.train()
        return (total / len(val_batches)).item()

    def save(step: int) -> None:
        ckpt.save(
            run_dir,
            step,
            model,
            {
                "tokens": state["tokens"],
                "elapsed": state["elapsed"],
                "compile": chooser.decision,
                "optimizers": [o.state_dict() for o in optimizers],
                "schedulers": [s.state_dict() for s in schedulers],
                "rng": ckpt.rng_state([device]),
                "task_recent": list(task.recent) if task is not None else [],
            },
            settings.keep,
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
                _, loss = chooser.forward(inputs, targets)
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
    has_aux = bool(model._combiners)
    model.train()
    started = time.perf_counter() - state["elapsed"]
    try:
        with open(metrics_path, "a") as metrics_file, report:
            report.start(state["step"])
            while not _done(state, settings, horizon):
                step = state["step"]
                lr = optimizers[0].param_groups[0]["lr"]  # what this step uses
                tick = time.perf_counter()
                loss, aux, grad_norm = train_step(step)
                state["step"] = step + 1
                state["tokens"] += step_tokens
                took = time.perf_counter() - tick
                chooser.observe(step, took)
                state["elapsed"] = time.perf_counter() - started
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
                # between evaluations, score the test set once the training batches say
                # the target may be reached, so a run stops within a few steps of it
                ready = (
                    task is not None
                    and settings.target_accuracy is not None
                    and task.may_have_reached(settings.target_accuracy)
                )
                if final or due or ready:
                    line["val_loss"] = evaluate()
                    if task is not None:
                        line["accuracy"] = task.evaluate(model, device)
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
            if not stop and state["step"] and not ckpt.checkpoints(run_dir):
                save(state["step"])
        peak = measure_memory() if state["step"] and not stop else None
    finally:
        restore()

    # ---------------------------------------------------------------- 4. summary
    summary = {
        "params": model.num_params(),
        "flops_per_token": plan.flops(settings.seq_len) // settings.seq_len,
        "steps": state["step"],
        "tokens": state["tokens"],
        "elapsed": state["elapsed"],
        "final_loss": history[-1]["loss"] if history else None,
        "final_val_loss": next((m["val_loss"] for m in reversed(history) if "val_loss" in m), None),
        "device": str(device),
        "precision": settings.precision,
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
    _write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return Run(run_dir, config, history, summary, model, stop[0] if stop else None)


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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError('[train] device = "cuda" but torch sees no CUDA device')
    return torch.device(name)


def _memory_limit(given: Any, settings: TrainSettings, device: torch.device) -> int | None:
    if given is not None:
        return parse_bytes(given)
    if settings.max_memory is not None:
        return parse_bytes(settings.max_memory, "[train] max_memory")
    return memory.available(device)


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
