"""The ``Trainer``: one training run's state, and its phases as methods.

``setup`` checks the memory budget, takes the run directory (an OS lock: one owner), builds
the model, optimizer(s) and schedule(s) from torch and restores the newest checkpoint when
resuming; ``run`` steps until the budget (steps, tokens or time) or a signal, calling
``train_step`` (the ``(seed, step)`` batch in micro-batches: forward with the loss, backward,
clip, optimizer and schedule step), ``evaluate`` and ``checkpoint`` at their intervals, and
writes ``summary.json``. The data source (text or task, ``blockdsl.train.sources``) and the
parallel strategy (one process, DDP or FSDP, ``blockdsl.train.strategies``) are objects it is
handed, so no phase asks which one it has.

Everything a step depends on is either a pure function of ``(seed, step)`` (the batch) or in
the checkpoint (weights, optimizer and schedule state, RNG state, the metrics file's length),
so a resumed run repeats an uninterrupted one bit for bit (float32, same device and threads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shlex
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import blockdsl.checkpoint as runs
import blockdsl.plot as plot
from blockdsl._io import JsonlWriter, Progress, read_jsonl, scan_jsonl, write_atomic
from blockdsl.config import ModelConfig, load_config
from blockdsl.errors import BlockDSLError, BudgetError
from blockdsl.model import ModelPlan, build_model
from blockdsl.train import distributed, memory
from blockdsl.train.autocompile import CompileChoice
from blockdsl.train.distill import Distiller, resolve_distill
from blockdsl.train.loggers import Loggers
from blockdsl.train.optim import build_optimizers, build_scheduler
from blockdsl.train.settings import OptimSettings, TrainSettings, parse_bytes, to_tables
from blockdsl.train.settings import total_steps as horizon_of
from blockdsl.train.sources import DataSource
from blockdsl.train.strategies import SingleProcess, check_muon, make_strategy
from blockdsl.train.warmstart import (
    INIT_REPORT,
    InitReport,
    initialize,
    source_model,
    source_state,
)


class TrainingError(BlockDSLError):
    """Training cannot go on (a non-finite loss, a run directory in the way)."""


@dataclass
class Progressed:
    """The counters a checkpoint keeps: optimizer steps, tokens, seconds, compile decision."""

    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    compile: str | None = None


class Trainer:
    """One training run (see the module's docstring). ``Trainer(...).setup()`` then ``run()``
    returns the summary dict; ``close()`` releases the run directory."""

    def __init__(
        self,
        config: ModelConfig,
        settings: TrainSettings,
        optim: OptimSettings,
        source: DataSource,
        group: distributed.Group,
        run_dir: Path,
        *,
        resume: bool = False,
        max_memory: Any = None,
        progress: bool | None = None,
        registry: Any = None,
    ) -> None:
        self.config, self.settings, self.optim, self.source = config, settings, optim, source
        self.group, self.run_dir, self.resume = group, run_dir, resume
        self.max_memory, self.registry = max_memory, registry
        self.device = group.device
        self.horizon = horizon_of(settings)
        self.progress = Progress(progress if group.main else False)
        self.counters = Progressed()
        self.history: list[dict[str, Any]] = []
        self.stop: list[int] = []
        self._owned = contextlib.ExitStack()
        self.terms: dict[str, float] = {}
        self.distiller: Distiller | None = None
        self.init_report: InitReport | None = None  # what [train] init copied (init.json)
        self._fingerprint: dict[str, Any] | None = None

    # ================================================================ setup
    def setup(self) -> None:
        """Check the budget, own the run directory, build, restore or start the run files."""
        self.plan = ModelPlan(self.config, self.registry)
        self._plan_memory()
        self.group.on_main(self._own_run_dir)
        latest = self.group.on_main(self._claim)
        torch.manual_seed(self.settings.seed)
        built = build_model(
            self.config, device=self.parallel.build_device(self.device), registry=self.registry
        )
        saved = runs.load_state(latest) if latest is not None else None
        if saved is not None:
            self._check_fingerprint(saved)
        init_from = self._initialize(built) if saved is None and self.settings.init else None
        self.module = self.source.wrap_model(built).to(self.parallel.build_device(self.device))
        if saved is not None:
            self.parallel.load_whole(self.module, latest, saved, self.optim)
        self.model = self.parallel.wrap(self.module)
        self.distiller = self._load_teacher() if self.settings.teacher else None
        self.optimizers = build_optimizers(self.model, self.optim)
        self.schedulers = [build_scheduler(o, self.optim, self.horizon) for o in self.optimizers]
        if saved is not None:
            self._restore(latest, saved)
        else:
            if init_from is not None and self.settings.init_optimizer:
                self._keep_optimizer_state(*init_from)
            if self.group.main:
                self._write_run_files()
        self._open_metrics(saved)
        self._open_loggers()
        self._prepare_steps()

    def _load_teacher(self) -> Distiller:
        """``[train] teacher``: the model to distil from, on this device, frozen."""
        teacher = source_model(str(self.settings.teacher)).to(self.device)
        vocab = getattr(getattr(teacher, "config", None), "vocab", None)
        if vocab is not None and vocab != self.config.vocab:
            raise TrainingError(
                f"the teacher {self.settings.teacher} has a vocab of {vocab}, the student "
                f"{self.config.vocab}: their distributions cannot be compared",
                hint="distil between models of one tokenizer and vocab",
            )
        return Distiller(teacher, self.module, resolve_distill(self.config))

    def _initialize(self, model: nn.Module) -> tuple[InitReport, runs.Checkpoint | None]:
        """Copy ``[train] init``'s weights into the new model (every rank, before wrapping);
        the report is printed and, on rank 0, saved as ``init.json`` with the run files."""
        source = str(self.settings.init)
        source_model, checkpoint = source_state(source)
        report = initialize(model, source_model, source, strict=self.settings.init_strict)
        self.init_report = report
        for line in report.lines():
            self.progress.log(line)
        return report, checkpoint

    def _keep_optimizer_state(self, report: InitReport, checkpoint: runs.Checkpoint | None) -> None:
        """``init_optimizer``: the init run's optimizer moments, this run's hyperparameters."""
        source = self.settings.init
        if checkpoint is None or not report.same_parameters:
            why = "is not a run checkpoint" if checkpoint is None else "has other parameters"
            raise TrainingError(
                f"[train] init_optimizer: {source} {why}, so its optimizer state cannot be kept",
                hint="drop --init-optimizer to start the optimizer afresh",
            )
        saved = runs.load_state(checkpoint)
        states = saved.get("optimizers")
        if (
            saved.get("sharded")
            or not isinstance(states, list)
            or len(states) != len(self.optimizers)
        ):
            raise TrainingError(
                f"[train] init_optimizer: {checkpoint.path} holds no optimizer state this run "
                "can use (a sharded checkpoint, or another optimizer)",
                hint="drop --init-optimizer to start the optimizer afresh",
            )
        for optimizer, state in zip(self.optimizers, states):
            fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
            try:
                optimizer.load_state_dict(state)
            except (ValueError, KeyError) as exc:
                raise TrainingError(
                    f"[train] init_optimizer: the optimizer state of {checkpoint.path} does not "
                    f"fit this run ({exc})",
                    hint="drop --init-optimizer to start the optimizer afresh",
                ) from None
            for group, settings in zip(optimizer.param_groups, fresh):
                group.update(settings)  # lr, betas, weight decay: this run's, not the old one's

    def _plan_memory(self) -> None:
        """The strategy for this world and budget, and a refusal when training cannot fit."""
        settings, group = self.settings, self.group
        estimate = memory.estimate(
            self.plan, settings.batch_size, settings.seq_len, settings.precision, self.optim
        )
        self.limit = _memory_limit(self.max_memory, settings, self.device, group.launch)
        name = distributed.choose_strategy(
            settings.strategy, estimate.total, self.limit, group.world
        )
        check_muon(name, self.optim, self.config)
        self.parallel: SingleProcess = make_strategy(
            name, group, settings.precision, self._plain_model
        )
        if name == "fsdp":
            meta = build_model(self.config, device=torch.device("meta"), registry=self.registry)
            estimate = distributed.per_rank_estimate(estimate, name, group.world, meta)
        self.estimate = estimate
        if self.limit is not None and estimate.total > self.limit:
            sharded = " per rank under FSDP" if name == "fsdp" else ""
            raise BudgetError(
                f"training needs about {_gib(estimate.total)}{sharded} (parameters "
                f"{_gib(estimate.params)}, gradients {_gib(estimate.gradients)}, optimizer "
                f"{_gib(estimate.optimizer)}, activations "
                f"{_gib(estimate.activations + estimate.loss)} for a micro-batch of "
                f"{settings.batch_size}×{settings.seq_len}), over the limit of {_gib(self.limit)}",
                hint="lower [train] batch_size (raise global_batch_size to keep the batch), "
                "seq_len or the model's size, or raise --max-memory",
            )

    def _plain_model(self) -> nn.Module:
        """A whole, unsharded copy of the model (FSDP's rank 0 writes its weights)."""
        return self.source.wrap_model(build_model(self.config, registry=self.registry))

    def _own_run_dir(self) -> None:
        """Hold the run directory's lock until ``close`` (rank 0: the one that writes)."""
        self._owned.enter_context(runs.run_lock(self.run_dir))

    def _claim(self) -> runs.Checkpoint | None:
        """Check the run directory can be used; the checkpoint to resume from (None: afresh)."""
        run_dir = self.run_dir
        if not self.resume:
            if not runs.run_is_empty(run_dir):
                raise TrainingError(
                    f"{run_dir} already holds a run; nothing was overwritten",
                    hint="pass --resume to continue it, or choose another --out",
                )
            return None
        saved = run_dir / runs.CONFIG
        if saved.is_file() and _model_tables(load_config(saved)) != _model_tables(self.config):
            raise TrainingError(
                f"--resume: the model differs from the one {run_dir} was trained with",
                hint=f"resume with the run's own config: {saved}",
            )
        return runs.latest(run_dir)

    def _check_fingerprint(self, saved: dict[str, Any]) -> None:
        """Refuse to resume with settings that change the run's meaning (its checkpoint
        records them), naming the first that differs."""
        recorded = saved.get("fingerprint")
        if not isinstance(recorded, dict):
            return  # a checkpoint from before fingerprints: the model check above stands
        for key, now in self.fingerprint().items():
            then = recorded.get(key)
            if key in recorded and then != now:
                raise TrainingError(
                    f"--resume: {_describe_change(key, then, now)}; {self.run_dir} was trained "
                    "with other settings",
                    hint=f"resume with the run's own config ({self.run_dir / runs.CONFIG}) and "
                    "data; to train with the new settings, start a new run with a different "
                    f"--out from its weights: --init {self.run_dir}",
                )

    def fingerprint(self) -> dict[str, Any]:
        """What makes this run the run it is: model, data, tokenizer, optimizer and schedule,
        seed and batch. A checkpoint records it; ``--resume`` must match it."""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> dict[str, Any]:
        model = json.dumps(_model_tables(self.config), sort_keys=True, default=str)
        values: dict[str, Any] = {"model": hashlib.sha256(model.encode()).hexdigest()}
        values.update(self.source.fingerprint())
        values["seed"] = self.settings.seed
        values["global_batch_size"] = self.settings.global_batch_size
        values["seq_len"] = self.settings.seq_len
        for key, value in asdict(self.optim).items():
            values[f"optim.{key}"] = list(value) if isinstance(value, tuple) else value
        if self.optim.schedule != "constant":  # the schedule spans the budget
            values["steps"] = self.horizon
        if self.settings.init is not None:
            values["init"] = self.settings.init
        if self.settings.teacher is not None:
            values["teacher"] = self.settings.teacher
            for key, value in resolve_distill(self.config).as_dict().items():
                values[f"distill.{key}"] = value
        return values

    def _restore(self, latest: runs.Checkpoint, saved: dict[str, Any]) -> None:
        self.parallel.restore(self.model, self.optimizers, latest, saved)
        for scheduler, state in zip(self.schedulers, saved["schedulers"]):
            scheduler.load_state_dict(state)
        set_rng_state(saved["rng"])
        self.counters = Progressed(
            saved["step"], saved["tokens"], saved["elapsed"], saved.get("compile")
        )
        self.source.load_state_dict(saved)

    def _write_run_files(self) -> None:
        run_dir = self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = load_config(self.config)
        resolved.train, resolved.optim = to_tables(self.settings, self.optim)
        write_atomic(run_dir / runs.CONFIG, resolved.to_toml())
        path = self.source.path
        if path is not None and (path / runs.TOKENIZER).is_file():
            shutil.copyfile(path / runs.TOKENIZER, run_dir / runs.TOKENIZER)
        write_atomic(run_dir / runs.DATA, json.dumps(self.source.meta, indent=2) + "\n")
        report = self.init_report
        if report is not None:
            write_atomic(run_dir / INIT_REPORT, json.dumps(report.as_dict(), indent=2) + "\n")

    def _open_metrics(self, saved: dict[str, Any] | None) -> None:
        """Cut ``metrics.jsonl`` back to the checkpoint (the lines after it are done again);
        the lines before it stay as written, a damaged one included (reported, skipped)."""
        path = self.run_dir / runs.METRICS
        if self.resume:  # no checkpoint yet: every line is past it
            at = saved if saved is not None else {"step": 0, "metrics_offset": 0}
            self.group.on_main(lambda: _cut_metrics(path, at))
        self.history = [
            m
            for m in read_metrics(path, report=self.progress.log)
            if m["step"] <= self.counters.step
        ]

    def _open_loggers(self) -> None:
        """``[train] log``'s loggers beyond metrics.jsonl (rank 0), told where a resume
        continues, with the resolved configuration as their hyperparameters."""
        tables = self.config.to_dict()
        tables["train"], tables["optim"] = to_tables(self.settings, self.optim)
        self.loggers = Loggers(
            self.settings.log,
            self.run_dir,
            tables,
            resumed_at=self.counters.step if self.resume else None,
            enabled=self.group.main,
        )
        self._owned.callback(self.loggers.close)

    def _plot(self) -> None:
        """``curves.png`` in the run directory, redrawn at each evaluation (rank 0, when
        ``[train] plot`` and matplotlib is installed)."""
        if self.settings.plot and self.group.main:
            curve = plot.Curve(self.run_dir.name, self.history)
            plot.plot_curves([curve], self.run_dir / PLOT, title=str(self.run_dir))

    def _prepare_steps(self) -> None:
        """What every step reuses: micro-batch rows, autocast, validation batches, compile."""
        settings, group = self.settings, self.group
        self.step_tokens = settings.global_batch_size * settings.seq_len
        rank_rows = settings.global_batch_size // group.world
        self.rows = slice(group.rank * rank_rows, (group.rank + 1) * rank_rows)
        self.accumulation = rank_rows // settings.batch_size
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if settings.precision == "bfloat16" and not self.parallel.mixes_precision
            else nullcontext()
        )
        # validation batches dealt out to the ranks; a rank short of one repeats batch 0 with
        # weight 0, so every rank runs as many forwards (FSDP's are collective)
        rounds = -(-settings.eval_batches // group.world)
        dealt = list(range(group.rank, settings.eval_batches, group.world))
        batch = self.source.batch
        self.val_batches = [
            (batch(settings.seed, i, settings.batch_size, settings.seq_len, split="val"), 1.0)
            for i in dealt
        ]
        padding = batch(settings.seed, 0, settings.batch_size, settings.seq_len, split="val")
        self.val_batches += [(padding, 0.0)] * (rounds - len(dealt))
        self.chooser = CompileChoice(
            self.model,
            settings,
            self.horizon,
            self.counters.step,
            self.counters.compile,
            self.progress.log,
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.has_aux = self.module.has_aux_loss

    # ================================================================ phases
    def train_step(self, step: int) -> tuple[float, float, float]:
        """One optimizer step on the batch of ``step``: (loss, aux loss, grad norm)."""
        settings, device = self.settings, self.device
        inputs, targets = self.source.batch(
            settings.seed, step, settings.global_batch_size, settings.seq_len
        )
        inputs, targets = inputs[self.rows].to(device), targets[self.rows].to(device)
        loss_sum = aux_sum = torch.zeros((), device=device)
        distiller = self.distiller
        names = distiller.term_names() if distiller is not None else []
        term_sums = torch.zeros(len(names), device=device)
        for micro in range(self.accumulation):
            rows = slice(micro * settings.batch_size, (micro + 1) * settings.batch_size)
            last = micro == self.accumulation - 1
            with self.parallel.gradient_sync(self.model, last):
                with self.autocast:
                    if distiller is not None:
                        teacher = distiller.teacher_logits(inputs[rows], targets[rows])
                    logits, loss, aux = self.chooser.forward(inputs[rows], targets[rows])
                    if distiller is not None:
                        loss, terms = distiller.loss(logits, loss, aux, teacher)
                        term_sums = term_sums + torch.stack([terms[n] for n in names])
                self.source.observe(logits.detach(), targets[rows])
                (loss / self.accumulation).backward()
            loss_sum = loss_sum + loss.detach()
            aux_sum = aux_sum + aux.detach().float()
        limit = self.optim.grad_clip if self.optim.grad_clip > 0 else math.inf
        norm = distributed.full_value(torch.nn.utils.clip_grad_norm_(self.params, limit))
        sums = self.group.sum(torch.cat([torch.stack([loss_sum.float(), aux_sum]), term_sums]))
        shares = self.accumulation * self.group.world
        self.terms = {f"distill_{n}": (v / shares).item() for n, v in zip(names, sums[2:])}
        loss_value = (sums[0] / shares).item()
        if not (math.isfinite(loss_value) and math.isfinite(norm.item())):
            kept = runs.checkpoints(self.run_dir)
            raise TrainingError(
                f"the loss is {loss_value} at step {step + 1} (gradient norm "
                f"{norm.item()}); training stopped",
                hint=(f"the last good checkpoint is {kept[-1].path}" if kept else "no checkpoint")
                + "; lower [optim] lr, raise warmup or set grad_clip",
            )
        for optimizer in self.optimizers:
            optimizer.step()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        for scheduler in self.schedulers:
            scheduler.step()
        return loss_value, (sums[1] / shares).item(), norm.item()

    @torch.no_grad()
    def evaluate(self) -> float:
        """The validation loss (every rank's share of the fixed validation batches)."""
        self.model.eval()
        total = torch.zeros((), device=self.device)
        for (inputs, targets), weight in self.val_batches:
            with self.autocast:
                loss = self.chooser.forward(inputs.to(self.device), targets.to(self.device)).loss
            total += weight * loss.float()
        self.model.train()
        return (self.group.sum(total) / self.settings.eval_batches).item()

    def checkpoint(self, step: int, metrics_offset: int) -> None:
        """Save the checkpoint of ``step`` (every rank calls it; rank 0 writes the files)."""
        parallel = self.parallel
        weights = parallel.whole_weights(self.model, self.module)  # collective under FSDP
        runs.save_checkpoint(
            self.run_dir,
            step,
            weights if self.group.main else None,
            {
                "tokens": self.counters.tokens,
                "elapsed": self.counters.elapsed,
                "compile": self.chooser.decision,
                "optimizers": parallel.optimizer_state(self.optimizers),
                "schedulers": [s.state_dict() for s in self.schedulers],
                "rng": rng_state([self.device]),
                "world_size": self.group.world,
                "strategy": parallel.name,
                "metrics_offset": metrics_offset,
                "fingerprint": self.fingerprint(),
                **self.source.state_dict(),
            },
            self.settings.keep,
            group=parallel.save_group,
            write_shards=parallel.shard_writer(self.model, self.optimizers),
        )

    def run(self) -> dict[str, Any]:
        """Step to the end of the budget (or a signal, or the target accuracy); the summary."""
        restore = _catch_signals(self.stop)
        self.model.train()
        started = time.perf_counter() - self.counters.elapsed
        peak = None
        try:
            metrics = JsonlWriter(self.run_dir / runs.METRICS, enabled=self.group.main)
            with metrics, self.progress:
                self.progress.start("step", self.horizon, self.counters.step)
                while not self._done():
                    if self._one_step(metrics, started):
                        break
                if self.counters.step and not self.stop and not self._has_checkpoint():
                    self.checkpoint(self.counters.step, metrics.offset)
            if self.counters.step and not self.stop:
                peak = self._measure_memory()
        finally:
            restore()
        return self._summarise(peak)

    def _has_checkpoint(self) -> bool:
        return bool(self.group.on_main(lambda: runs.checkpoints(self.run_dir)))

    def _one_step(self, metrics: JsonlWriter, started: float) -> bool:
        """Train, log, evaluate and save as due; whether the run stops here."""
        counters, settings, group = self.counters, self.settings, self.group
        step = counters.step
        distributed.inject_fault(group.rank, step)
        lr = self.optimizers[0].param_groups[0]["lr"]  # what this step uses
        tick = time.perf_counter()
        loss, aux, grad_norm = self.train_step(step)
        counters.step, counters.tokens = step + 1, counters.tokens + self.step_tokens
        took = time.perf_counter() - tick
        # between evaluations, score the test set once the training batches say the target
        # may be reached, so a run stops within a few steps of it
        ready = self.source.may_have_reached(settings.target_accuracy)
        # the ranks agree on the clock (a time budget, compile="auto"), on a signal and on
        # scoring the test set (its forwards are collective under FSDP)
        took, elapsed, signum, ready = group.max(
            took, time.perf_counter() - started, self.stop[0] if self.stop else 0, float(ready)
        )
        if signum and not self.stop:
            self.stop.append(int(signum))
        self.chooser.observe(step, took)
        counters.elapsed = elapsed
        line: dict[str, Any] = {
            "step": counters.step,
            "tokens": counters.tokens,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": self.step_tokens / took,
            "elapsed": counters.elapsed,
        }
        if self.has_aux:
            line["aux_loss"] = aux
        line.update(self.terms)  # the distillation loss's terms, when there is a teacher
        final, reached = self._evaluate_if_due(line, ready)
        metrics.write(line)
        self.loggers.write(line)
        self.history.append(line)
        if "val_loss" in line:
            self.loggers.flush()
            self._plot()
        self._report(line)
        periodic = settings.save_every and counters.step % settings.save_every == 0
        if final or reached or self.stop or periodic:
            self.checkpoint(counters.step, metrics.offset)
        if reached:
            self.progress.log(f"reached accuracy {line['accuracy']:.4f} at step {step + 1}")
            return True
        if self.stop:
            self.progress.log(self._stopped_message())
            return True
        return False

    def _evaluate_if_due(self, line: dict[str, Any], ready: float) -> tuple[bool, bool]:
        """Add the validation loss (and a task's score) to ``line`` at the end, at
        ``eval_every`` or when the target may be reached; (final, target reached)."""
        final = self._done()
        every = self.settings.eval_every
        if not (final or (every and self.counters.step % every == 0) or ready):
            return final, False
        line["val_loss"] = self.evaluate()
        line.update(self.source.score(self.module, self.device))
        target = self.settings.target_accuracy
        reached = "accuracy" in line and target is not None and line["accuracy"] >= target
        return final, reached

    def _stopped_message(self) -> str:
        run, data = str(self.run_dir), self.source.text
        command = shlex.join(
            ["blockdsl", "train", f"{run}/config.toml", "--data", data, "--out", run, "--resume"]
        )
        return (
            f"stopped by {signal.Signals(self.stop[0]).name} at step {self.counters.step}; "
            f"checkpoint saved; continue with: {command}"
        )

    def _report(self, line: dict[str, Any]) -> None:
        text = f"loss {line['loss']:.4f}"
        if "val_loss" in line:
            text += f" val {line['val_loss']:.4f}"
        text += f" lr {line['lr']:.2e} {line['tokens_per_s']:,.0f} tok/s"
        self.progress.update(completed=line["step"], info=text)
        if line["step"] % self.settings.log_every == 0 or "val_loss" in line or line["step"] == 1:
            total = f"/{self.horizon}" if self.horizon else ""
            self.progress.line(f"step {line['step']}{total} {text}")

    def _done(self) -> bool:
        if self.horizon is not None and self.counters.step >= self.horizon:
            return True
        return self.settings.time is not None and self.counters.elapsed >= self.settings.time

    def _measure_memory(self) -> int:
        """The peak tensor memory of a training micro-step, measured once the run is over
        (the profiler it needs slows later steps of the same model): forward and backward
        of one micro-batch with the optimizer state in place (and, with accumulation, the
        gradients already there). Leaves weights, RNG state and optimizer untouched."""
        settings, device = self.settings, self.device
        rng = rng_state([device])
        inputs, targets = self.source.batch(settings.seed, 0, settings.batch_size, settings.seq_len)
        inputs, targets = inputs.to(device), targets.to(device)

        def forward_backward() -> None:
            with self.autocast:
                loss = self.chooser.forward(inputs, targets).loss
            loss.backward()

        if self.accumulation > 1:
            forward_backward()
        params, optimizers = self.params, self.optimizers
        live = [params, [p.grad for p in params], [o.state_dict()["state"] for o in optimizers]]
        peak = memory.measure_peak(forward_backward, device, memory.live_bytes(*live))
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        set_rng_state(rng)
        return peak

    def _summarise(self, peak: int | None) -> dict[str, Any]:
        """``summary.json`` (rank 0 writes it); the last validation loss with its step."""
        history, settings, counters = self.history, self.settings, self.counters
        evaluated = next((m for m in reversed(history) if "val_loss" in m), None)
        name = self.parallel.name
        summary = {
            "params": self.module.num_params(),
            "flops_per_token": self.plan.flops(settings.seq_len) // settings.seq_len,
            "steps": counters.step,
            "tokens": counters.tokens,
            "elapsed": counters.elapsed,
            "final_loss": history[-1]["loss"] if history else None,
            "final_val_loss": evaluated["val_loss"] if evaluated else None,
            "final_val_loss_step": evaluated["step"] if evaluated else None,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "log": list(settings.log),
            "precision": settings.precision,
            "distributed": None
            if name is None
            else {"world_size": self.group.world, "strategy": name, "backend": self.group.backend},
            "compile": self.chooser.summary(),
            "memory": {
                "estimate": self.estimate.as_dict(),
                "measured_peak": peak,
                "measured_over_estimate": (peak / self.estimate.total) if peak else None,
                "method": _MEASURED_CUDA if self.device.type == "cuda" else _MEASURED_CPU,
                "limit": self.limit,
            },
            "interrupted": signal.Signals(self.stop[0]).name if self.stop else None,
            "data": self.source.text,
            **self.source.summary(history, settings),
        }
        if self.group.main:
            write_atomic(self.run_dir / runs.SUMMARY, json.dumps(summary, indent=2) + "\n")
        return summary

    def close(self) -> None:
        """Release the run directory."""
        self._owned.close()


# ==================================================================== helpers
PLOT = "curves.png"  # RUN/curves.png: the run's curves, redrawn at each evaluation
_MEASURED_CUDA = "torch.cuda.max_memory_allocated"
_MEASURED_CPU = "torch.profiler allocator events (profile_memory) over one step + live tensors"


def read_metrics(path: Path, report: Any = None) -> list[dict[str, Any]]:
    """The step records of a ``metrics.jsonl``: a damaged line is reported (``report``, else
    a warning) and skipped, a line cut short by a kill dropped."""
    return plot.step_records(read_jsonl(path, report=report))


def _cut_metrics(path: Path, saved: dict[str, Any]) -> None:
    """Truncate ``metrics.jsonl`` to where it stood at the checkpoint: at the byte offset the
    checkpoint recorded when the line ending there is still the checkpoint's step; else (an
    older checkpoint, or a file edited since) before the first line past that step. A file
    that no longer reaches the checkpoint's step lost lines: refused, not resumed with a gap."""
    if not path.is_file():
        if saved["step"]:
            raise TrainingError(
                f"{path} is missing but the run has a checkpoint of step {saved['step']}",
                hint="restore the file, or start a new run with a different --out",
            )
        return
    step, offset = saved["step"], saved.get("metrics_offset")
    reached, cut = 0, None
    for start, end, record in scan_jsonl(path):
        at = record.get("step") if record is not None else None
        if not isinstance(at, int):
            continue
        if end == offset and at == step:
            JsonlWriter.truncate(path, offset)
            return
        if at > step:
            cut = start
            break
        reached = max(reached, at)
    if reached < step:
        raise TrainingError(
            f"{path} ends at step {reached} but the checkpoint is of step {step}: metrics "
            "were lost",
            hint="restore the file, or start a new run with a different --out",
        )
    if cut is not None:
        JsonlWriter.truncate(path, cut)


def _describe_change(key: str, then: Any, now: Any) -> str:
    if key in ("model", "data", "tokenizer"):
        what = {"model": "the model", "data": "the data", "tokenizer": "the data's tokenizer"}
        return f"{what[key]} differs from the one the run was trained with"
    if key == "steps":
        return (
            f"[train] steps is {now!r}, but the run was trained with {then!r} and its learning-"
            "rate schedule spans those (only a constant schedule's run may grow)"
        )
    table = key.split(".")[0] if key.startswith(("optim.", "distill.")) else "train"
    name = key.split(".", 1)[-1]
    return f"[{table}] {name} is {now!r}, but the run was trained with {then!r}"


def _model_tables(config: ModelConfig) -> dict[str, Any]:
    data = config.to_dict()
    return {k: data[k] for k in ("model", "blocks", "defaults")}


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


def rng_state(devices: Any = ()) -> dict[str, Any]:
    """The RNG states a checkpoint keeps (torch's, and CUDA's on a CUDA run)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if any(d.type == "cuda" for d in devices):
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["Progressed", "Trainer", "TrainingError", "read_metrics"]
