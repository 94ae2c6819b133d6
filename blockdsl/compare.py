"""``blockdsl compare``: is my block better? Train every variant on the same batches under the
same budget, over seeds and learning rates, and tabulate (docs/compare.md).

Each variant is a spec ``compile`` takes (a preset, a ``.toml``, a config), or a block string
put in the ``base`` model in place of its ``block``; ``NAME=SPEC`` names it. Every run is a
``blockdsl.train`` run in ``OUT/runs/``; a finished one is reused, an interrupted one resumed,
so a comparison stopped half-way continues where it stopped. A variant whose memory estimate
exceeds the budget is skipped with the reason. With several learning rates each variant
reports its best (highest task score, or lowest validation loss), as the papers do.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import statistics
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blockdsl.plot as plot
from blockdsl._io import Progress, write_atomic
from blockdsl.checkpoint import run_lock
from blockdsl.config import ModelConfig, list_presets, load_config
from blockdsl.errors import BudgetError, ConfigError
from blockdsl.plot import Curve
from blockdsl.tasks.recipe import unset_entries, with_recipe
from blockdsl.threads import cpu_threads
from blockdsl.train.settings import parse_bytes
from blockdsl.untrusted import read_json_object

COLUMNS = (
    "name",
    "status",
    "params",
    "flops_per_token",
    "state_per_token",
    "metric_mean",
    "metric_std",
    "loss_mean",
    "tokens_per_s",
    "peak_memory",
    "best_lr",
    "seeds",
    "spec",
)


@dataclass
class Variant:
    name: str
    spec: Any
    config: ModelConfig


@dataclass
class Result:
    """One variant's row: its best learning rate's runs summarised over seeds."""

    name: str
    spec: str
    status: str = "ok"
    params: int | None = None
    flops_per_token: int | None = None
    state_per_token: float | None = None
    metric_mean: float | None = None
    metric_std: float | None = None
    loss_mean: float | None = None
    tokens_per_s: float | None = None
    peak_memory: int | None = None
    best_lr: float | None = None
    seeds: int = 0
    #: every learning rate tried: lr -> (metric mean, metric std)
    by_lr: dict[float, tuple[float, float]] = field(default_factory=dict)
    #: the run directories of the best learning rate, one per seed
    runs: list[Path] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in COLUMNS}


@dataclass
class Comparison:
    """What ``compare`` returns: ``results`` (one per variant, in the order given), the metric's
    name and direction, and where everything was written (``files``: the names in ``out``)."""

    out: Path
    data: str
    metric: str
    higher_is_better: bool
    results: list[Result]
    files: list[str] = field(default_factory=list)
    #: without ``--lr``: the learning rates each variant was swept over (name -> grid)
    lr_sweep: dict[str, list[float]] = field(default_factory=dict)
    #: on a task: the entries of its recipe that the variants' configs left unset and took
    #: (``"optim.lr": 0.003``, ...)
    recipe: dict[str, Any] = field(default_factory=dict)

    def result(self, name: str) -> Result:
        return next(r for r in self.results if r.name == name)

    def best(self) -> Result | None:
        ok = [r for r in self.results if r.status == "ok" and r.metric_mean is not None]
        if not ok:
            return None
        key = (lambda r: r.metric_mean) if self.higher_is_better else (lambda r: -r.metric_mean)
        return max(ok, key=key)

    def notes(self) -> list[str]:
        """What the table does not show and a reader must know: the task recipe the runs
        used where the config left settings unset, the learning rates swept when none were
        given, and a best learning rate at the edge of its sweep (the sweep may be too
        narrow for that variant)."""
        notes = []
        if self.recipe:
            entries = ", ".join(f"{key}={_value(value)}" for key, value in self.recipe.items())
            notes.append(f"from the task's recipe (not set otherwise): {entries}")
        grids = {tuple(grid) for grid in self.lr_sweep.values()}
        if len(grids) == 1:
            (grid,) = grids
            notes.append(
                f"no --lr given: every variant swept lr {_lr_list(grid)} (its default lr "
                f"{grid[1]:g} ÷3, ×1, ×3) and is shown at its best"
            )
        elif grids:
            swept = "; ".join(f"{name} {_lr_list(g)}" for name, g in self.lr_sweep.items())
            notes.append(f"no --lr given: each variant swept lr around its default ({swept})")
        for r in self.results:
            grid = self.lr_sweep.get(r.name)
            if r.status == "ok" and grid and r.best_lr in (grid[0], grid[-1]):
                notes.append(
                    f"{r.name}: the best lr {r.best_lr:g} is the sweep's edge; a wider --lr "
                    "may find a better one"
                )
        return notes

    def table(self) -> Any:
        """A ``rich`` table of the results (the notes as its caption)."""
        from rich.table import Table
        from rich.text import Text

        arrow = "↑" if self.higher_is_better else "↓"
        table = Table(
            title=f"{self.data}: {self.metric} {arrow}",
            caption="\n".join(self.notes()) or None,
            caption_justify="left",
        )
        headers = self._headers()
        headers[4] = f"{self.metric} (mean ± std)"
        for header in headers:
            table.add_column(header, justify="left" if header == "variant" else "right")
        best = self.best()
        for r in self.results:
            if r.status != "ok":
                blank = [""] * (len(headers) - 5)
                table.add_row(r.name, *[""] * 3, Text(r.status, style="yellow"), *blank)
                continue
            cells: list[Any] = self._cells(r)
            if best is not None and r is best:
                cells[4] = Text(cells[4], style="bold green")
            table.add_row(*cells)
        return table

    def _headers(self) -> list[str]:
        """The table's columns; "val loss" only when the metric is not the validation loss
        itself (a task's accuracy), where it would repeat the metric's column."""
        headers = ["variant", "params", "FLOPs/token", "state/token", self.metric, "val loss"]
        headers += ["tokens/s", "peak memory", "best lr"]
        if self.metric == "val_loss":
            headers.remove("val loss")
        return headers

    def _cells(self, r: Result) -> list[str]:
        cells = _cells(r)
        if self.metric == "val_loss":
            del cells[5]
        return cells

    def skipped(self) -> list[Result]:
        """The variants that did not train (over the memory budget) or gave no result."""
        return [r for r in self.results if r.status != "ok"]

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in self.results:
            writer.writerow({k: ("" if v is None else v) for k, v in r.row().items()})
        return buffer.getvalue()

    def to_markdown(self) -> str:
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        headers = self._headers()
        lines = [
            f"Data: `{self.data}`; metric: {self.metric} ({arrow}), mean ± std over seeds at "
            "each variant's best learning rate.",
            "",
            "| " + " | ".join(headers) + " |",
            "|---|" + "---:|" * (len(headers) - 1),
        ]
        for r in self.results:
            if r.status != "ok":
                cells = [r.name, "", "", "", r.status] + [""] * (len(headers) - 5)
            else:
                cells = self._cells(r)
            lines.append("| " + " | ".join(cells) + " |")
        notes = self.notes()
        if notes:  # under the table, as the printed table has them in its caption
            lines += ["", *(f"- {note}" for note in notes)]
        return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _lr_list(grid: Sequence[float]) -> str:
    return ", ".join(f"{lr:g}" for lr in grid)


def _cells(r: Result) -> list[str]:
    metric = "—" if r.metric_mean is None else f"{r.metric_mean:.4f}"
    if r.metric_std is not None and r.seeds > 1:
        metric += f" ± {r.metric_std:.4f}"
    return [
        r.name,
        f"{r.params:,}" if r.params is not None else "",
        f"{r.flops_per_token:,}" if r.flops_per_token is not None else "",
        f"{r.state_per_token:,.0f}" if r.state_per_token is not None else "",
        metric,
        f"{r.loss_mean:.4f}" if r.loss_mean is not None else "",
        f"{r.tokens_per_s:,.0f}" if r.tokens_per_s is not None else "",
        _bytes(r.peak_memory),
        f"{r.best_lr:g}" if r.best_lr is not None else "",
    ]


def _bytes(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# ==================================================================== variants
def parse_variants(
    specs: Sequence[Any], base: Any = "tiny", overrides: dict[str, Any] | None = None
) -> list[Variant]:
    """``NAME=SPEC`` or ``SPEC`` → named, validated variants (names unique)."""
    overrides = overrides or {}
    variants: list[Variant] = []
    for index, item in enumerate(specs):
        name, spec = _split_name(item, index)
        if any(v.name == name for v in variants):
            raise ConfigError(
                f"two variants are named '{name}'",
                hint="name them: NAME=SPEC (e.g. attn='Norm->Attn->+')",
            )
        config = _variant_config(spec, base, overrides)
        variants.append(Variant(name, spec, config))
    if not variants:
        raise ConfigError("compare needs at least one SPEC", hint="e.g. blockdsl compare tiny")
    return variants


#: What a variant name may be: it names the variant's run directories and table row, so a
#: safe file name (letters, digits, '-', '_', '.'; not starting with '.' or '-').
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_NAME_RULE = (
    "a variant name may contain letters, digits, '-', '_' and '.', and starts with a letter, "
    "a digit or '_'"
)


def _split_name(item: Any, index: int) -> tuple[str, Any]:
    if isinstance(item, tuple) and len(item) == 2:
        return _checked_name(str(item[0])), item[1]
    if isinstance(item, str):
        name, sep, rest = item.partition("=")
        name = name.strip()
        # In a block string '=' only appears inside a call's parentheses after '->' or '(',
        # so text before the first '=' without them is a name.
        if sep and not Path(item).is_file() and not any(c in name for c in "(>[{"):
            return _checked_name(name), rest.strip()
        if _is_block_string(item):
            return item.replace(" ", ""), item
        return Path(item).stem if item.endswith(".toml") else item, item
    return f"variant{index + 1}", item


def _checked_name(name: str) -> str:
    if not _NAME.fullmatch(name) or len(name) > 60:
        raise ConfigError(
            f"'{name}' is not a usable variant name: {_NAME_RULE} (at most 60 characters)",
            hint="e.g. llama-like='Norm->Attn->+->Norm->MLP->+'",
        )
    return name


def _is_block_string(spec: Any) -> bool:
    return isinstance(spec, str) and not (
        spec in list_presets() or spec.endswith(".toml") or Path(spec).is_file()
    )


def _variant_config(spec: Any, base: Any, overrides: dict[str, Any]) -> ModelConfig:
    if _is_block_string(spec) or isinstance(spec, list):
        config = load_config(base)
        if "block" not in config.blocks:
            raise ConfigError(
                f"the base model {base!r} has no [blocks] block to put '{spec}' in",
                hint="give a base whose layers repeat a block named 'block' (e.g. tiny)",
            )
        config = load_config(config, blocks={"block": spec})
    else:
        config = load_config(spec)
    return load_config(config, **overrides) if overrides else config


# ==================================================================== running
def compare(
    specs: Sequence[Any],
    *,
    data: str | os.PathLike,
    out: str | os.PathLike,
    base: Any = "tiny",
    steps: int | None = None,
    tokens: int | None = None,
    time: float | None = None,
    seeds: Sequence[int] = (0,),
    lrs: Sequence[float] | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
    plot: bool = True,
    threads: int | None = None,
    **overrides: Any,
) -> Comparison:
    """Train every variant of ``specs`` on ``data`` (a prepared directory or ``task:...``)
    for each seed and learning rate under one budget (``steps``, ``tokens`` or ``time``),
    writing runs, ``summary.csv``, ``summary.md`` and ``curves.png`` (with matplotlib) to
    ``out``. ``overrides`` set config keys of every variant (``d_model=64``,
    ``train={"batch_size": 32}``); ``threads``: torch's CPU threads while training (default:
    torch's choice). Returns the ``Comparison``."""
    from blockdsl.tasks.data import open_task
    from blockdsl.train.data import TokenData

    out = Path(out)
    data_text = str(data)
    task = open_task(data_text, 0)
    overrides = dict(overrides)
    # The data fixes the vocabulary (a task's, or a prepared directory's tokenizer), as
    # ``train`` requires; the models follow unless told (``vocab=``), so a byte corpus does
    # not train the base preset's 4096-token embedding. A task also fixes the sequence length.
    overrides.setdefault("vocab", task.vocab if task is not None else TokenData(data_text).vocab)
    variants = parse_variants(specs, base, overrides)
    budget = _check_budget(steps, tokens, time)
    recipe_used: dict[str, Any] = {}  # the task recipe's entries some variant trains with
    if task is not None:
        for v in variants:
            if "context" not in overrides and v.config.context < task.seq_len:
                v.config = load_config(v.config, context=task.seq_len)
            if "seq_len" not in v.config.train:
                v.config = load_config(v.config, train={**v.config.train, "seq_len": task.seq_len})
            # The budget first, so that the recipe's steps apply only when none is given.
            given = load_config(v.config, train={**v.config.train, **budget})
            for table, entries in zip(
                ("train", "optim"), unset_entries(task.recipe, given.train, given.optim)
            ):
                recipe_used.update({f"{table}.{key}": value for key, value in entries.items()})
            v.config = with_recipe(given, task.recipe)
    if not budget and not any(k in v.config.train for v in variants for k in _BUDGETS):
        raise ConfigError(
            "compare needs a budget: --steps, --tokens or --time",
            hint="every variant gets the same budget, e.g. --steps 200",
        )
    seeds = _check_seeds(seeds)
    grids = _lr_grids(variants, budget, _check_lrs(lrs) if lrs else None)
    if max_memory is not None:
        parse_bytes(max_memory)
    _check_runs(variants, budget, seeds, grids, data_text, task)
    metric = "accuracy" if task is not None else "val_loss"
    higher = task is not None
    out.mkdir(parents=True, exist_ok=True)

    with run_lock(out), cpu_threads(threads):  # one process owns a comparison's directory
        results = _train_variants(
            variants, grids, seeds, data_text, out, budget, max_memory, higher, progress
        )
        comparison = Comparison(out, data_text, metric, higher, results)
        if not lrs:
            comparison.lr_sweep = grids
        # the learning rates are --lr's or the sweep's (whose note names its centre)
        comparison.recipe = {k: v for k, v in recipe_used.items() if k != "optim.lr"}
        _write_summaries(comparison, variants, budget, seeds, lrs)
    skipped = comparison.skipped()
    if skipped:
        _warn_skipped(skipped, len(results))
    if len(skipped) == len(results):
        raise BudgetError(
            f"nothing to compare: all {len(results)} variant(s) were skipped ("
            + "; ".join(f"{r.name}: {r.status}" for r in skipped)
            + ")",
            hint="raise --max-memory, shrink the models (e.g. --set d_model=...) or lower "
            "train.batch_size",
        )
    comparison.files = ["summary.csv", "summary.md", "compare.json"]
    if plot and plot_curves(comparison, out / "curves.png"):
        comparison.files.append("curves.png")
    return comparison


#: without ``--lr`` each variant is trained at its default learning rate times these, the
#: half-decade steps of the papers' sweeps (Zoology's ``np.logspace(-4, -2, 4)``, MAD's 1e-4,
#: 5e-4, 1e-3): a default that happens to under-train one variant would invert a ranking
SWEEP_FACTORS = (1 / 3, 1.0, 3.0)


def sweep_around(lr: float) -> list[float]:
    """The learning rates swept around ``lr`` (``lr/3, lr, 3·lr``, to two significant digits):
    ``sweep_around(3e-3) == [0.001, 0.003, 0.009]``."""
    return [float(f"{lr * factor:.2g}") for factor in SWEEP_FACTORS]


def _lr_grids(
    variants: list[Variant], budget: dict[str, Any], lrs: list[float] | None
) -> dict[str, list[float]]:
    """Each variant's learning rates: the ones given, or the sweep around the variant's own
    (its ``[optim] lr``: the task recipe's, the config's, or the default)."""
    from blockdsl.train.settings import resolve

    if lrs:
        return {v.name: list(lrs) for v in variants}
    return {v.name: sweep_around(resolve(_run_config(v, budget, 0, None))[1].lr) for v in variants}


def _train_variants(
    variants: list[Variant],
    grids: dict[str, list[float]],
    seeds: list[int],
    data_text: str,
    out: Path,
    budget: dict[str, Any],
    max_memory: int | str | None,
    higher: bool,
    progress: bool | None,
) -> list[Result]:
    """Every variant trained for each learning rate and seed (a variant over the memory budget
    skipped), summarised at its best learning rate."""
    runs = [(v, lr, seed) for v in variants for lr in grids[v.name] for seed in seeds]
    reporter = Progress(progress)
    results: list[Result] = []
    with reporter:
        reporter.start("runs", len(runs))
        for variant in variants:
            result = Result(variant.name, str(variant.spec))
            results.append(result)
            per_lr: dict[float, list[dict[str, Any]]] = {}
            lr_grid = grids[variant.name]
            over = _over_budget(_run_config(variant, budget, seeds[0], lr_grid[0]), max_memory)
            if over is not None:
                result.status = f"skipped: {over}"
                reporter.log(f"{variant.name}: {result.status}")
                reporter.done += len(lr_grid) * len(seeds)
                continue
            for lr in lr_grid:
                for seed in seeds:
                    reporter.item(f"{variant.name} lr={lr:g} seed={seed}")
                    try:
                        record = _run(variant, data_text, out, budget, seed, lr, max_memory)
                    except BudgetError as exc:  # e.g. a measured limit the estimate missed
                        result.status = f"skipped: {exc.message}"
                        break
                    per_lr.setdefault(lr, []).append(record)
                if result.status != "ok":
                    break
            if result.status == "ok":
                _summarise(result, per_lr, higher)
    return results


def _write_summaries(
    comparison: Comparison,
    variants: list[Variant],
    budget: dict[str, Any],
    seeds: list[int],
    lrs: Sequence[float] | None,
) -> None:
    out, data_text, metric = comparison.out, comparison.data, comparison.metric
    write_atomic(out / "summary.csv", comparison.to_csv())
    write_atomic(out / "summary.md", comparison.to_markdown())
    write_atomic(
        out / "compare.json",
        json.dumps(
            {
                "data": data_text,
                "metric": metric,
                "budget": budget,
                "seeds": seeds,
                "lrs": lrs and list(lrs),
                # without --lr: the learning rates each variant was swept over
                "lr_sweep": comparison.lr_sweep or None,
                # on a task: the recipe's entries the runs took (nothing else set them)
                "recipe": comparison.recipe or None,
                "variants": [{"name": v.name, "spec": str(v.spec)} for v in variants],
            },
            indent=2,
        )
        + "\n",
    )


def _warn_skipped(skipped: list[Result], total: int) -> None:
    """Skipped variants are said on stderr whatever the progress setting: a table that
    silently lacks a variant reads as a comparison of everything asked for."""
    print(
        f"warning: {len(skipped)} of {total} variants not compared: "
        + "; ".join(f"{r.name} ({r.status})" for r in skipped),
        file=sys.stderr,
        flush=True,
    )


_BUDGETS = ("steps", "tokens", "time")


def _whole(value: Any) -> Any:
    """``2e6`` as ``2000000``: a float that is a whole number, as the integer it is."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _check_budget(steps: Any, tokens: Any, time: Any) -> dict[str, Any]:
    """The budget options that are given, each checked: whole steps and tokens ≥ 1, a finite
    positive time."""
    budget: dict[str, Any] = {}
    for name, value in (("steps", _whole(steps)), ("tokens", _whole(tokens))):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"--{name} must be a whole number ≥ 1, got {value!r}")
        budget[name] = value
    if time is not None:
        if not isinstance(time, (int, float)) or isinstance(time, bool):
            raise ConfigError(f"--time must be a number of seconds, got {time!r}")
        if not 0 < time < math.inf:
            raise ConfigError(f"--time must be a finite number of seconds > 0, got {time!r}")
        budget["time"] = time
    return budget


def _check_seeds(seeds: Sequence[Any]) -> list[int]:
    from blockdsl.train.settings import MAX_SEED

    checked = [_whole(seed) for seed in seeds] or [0]
    for seed in checked:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"--seeds must be whole numbers from 0 to {MAX_SEED}, got {seed!r}")
    if len(set(checked)) != len(checked):
        raise ConfigError(f"--seeds lists a seed twice: {checked}")
    return checked


def _check_lrs(lrs: Sequence[Any]) -> list[float]:
    for lr in lrs:
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr < math.inf:
            raise ConfigError(
                f"--lr must be finite learning rates > 0, got {lr!r}", hint="e.g. --lr 3e-4,1e-3"
            )
    return [float(lr) for lr in lrs]


def _check_runs(
    variants: Sequence[Variant],
    budget: dict[str, Any],
    seeds: Sequence[int],
    grids: dict[str, list[float]],
    data: str,
    task: Any,
) -> None:
    """Everything that can be checked before the first run, so that a mistake in the last
    variant or in the data does not surface after the others trained: the data directory
    opens, and every variant's training settings resolve and fit the data's vocabulary."""
    from blockdsl.train.data import TokenData
    from blockdsl.train.settings import resolve

    vocab = task.vocab if task is not None else TokenData(data).vocab
    for variant in variants:
        config = _run_config(variant, budget, seeds[0], grids[variant.name][0])
        resolve(config)
        if vocab > config.vocab:
            raise ConfigError(
                f"variant '{variant.name}' has vocab {config.vocab:,} but the data has "
                f"{vocab:,} tokens",
                hint=f"--set vocab={vocab}",
            )


def _run(
    variant: Variant,
    data: str,
    out: Path,
    budget: dict[str, Any],
    seed: int,
    lr: float | None,
    max_memory: Any,
) -> dict[str, Any]:
    """Train one (variant, lr, seed), or read it back when ``out`` holds it finished."""
    from blockdsl.train.loop import Run, train

    config = _run_config(variant, budget, seed, lr)
    key = hashlib.sha256((config.to_toml() + data).encode()).hexdigest()[:10]
    lr_text = f"-lr{lr:g}" if lr is not None else ""
    run_dir = out / "runs" / f"{_safe(variant.name)}-seed{seed}{lr_text}-{key}"
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = read_json_object(summary_path, "run summary")
        if summary.get("interrupted") is None:
            return _record(Run.load(run_dir), lr)
    run = train(
        config,
        data=data,
        out=run_dir,
        resume=run_dir.is_dir(),
        max_memory=max_memory,
        progress=False,
        plot=False,  # the comparison draws every variant in its own curves.png
    )
    if run.interrupted:
        raise KeyboardInterrupt
    return _record(Run.load(run_dir), lr)


def _run_config(variant: Variant, budget: dict[str, Any], seed: int, lr: float | None) -> Any:
    train_table = {**variant.config.train, **budget, "seed": seed}
    optim_table = dict(variant.config.optim)
    if lr is not None:
        optim_table["lr"] = lr
    return load_config(variant.config, train=train_table, optim=optim_table)


def _over_budget(config: ModelConfig, max_memory: Any) -> str | None:
    """Why ``config``'s training would not fit the memory budget (None: it fits), from the
    training loop's own estimate, before anything is built or trained."""
    import torch

    from blockdsl.model import ModelPlan
    from blockdsl.train import memory
    from blockdsl.train.settings import parse_bytes, resolve

    settings, optim = resolve(config)
    plan = ModelPlan(config)
    estimate = memory.estimate(
        plan, settings.batch_size, settings.seq_len, settings.precision, optim
    )
    if max_memory is not None:
        limit = parse_bytes(max_memory)
    elif settings.max_memory is not None:
        limit = parse_bytes(settings.max_memory, "[train] max_memory")
    else:
        cuda = settings.device == "cuda" or (
            settings.device == "auto" and torch.cuda.is_available()
        )
        limit = memory.available(torch.device("cuda" if cuda else "cpu"))
    if limit is None or estimate.total <= limit:
        return None
    return (
        f"memory estimate {_bytes(estimate.total)} (batch {settings.batch_size}×"
        f"{settings.seq_len}) over the budget of {_bytes(limit)}"
    )


def _record(run: Any, lr: float | None) -> dict[str, Any]:
    metrics, summary = run.metrics, run.summary
    evals = [m for m in metrics if "val_loss" in m]
    accuracy = [m["accuracy"] for m in metrics if "accuracy" in m]
    speeds = [m["tokens_per_s"] for m in metrics[1:]] or [m["tokens_per_s"] for m in metrics]
    return {
        "dir": run.dir,
        "lr": lr if lr is not None else run.config.optim.get("lr"),
        "accuracy": accuracy[-1] if accuracy else None,
        "val_loss": evals[-1]["val_loss"] if evals else None,
        "tokens_per_s": statistics.median(speeds) if speeds else None,
        "peak_memory": (summary.get("memory") or {}).get("measured_peak"),
        "params": summary.get("params"),
        "flops_per_token": summary.get("flops_per_token"),
        "state_per_token": state_per_token(run.config),
    }


def state_per_token(config: ModelConfig) -> float:
    """Decoding-state elements (KV cache, recurrent and convolution state) a sequence of
    ``[train] seq_len`` (default: the context) holds, per token of that sequence."""
    from blockdsl.model import ModelPlan

    seq = int(config.train.get("seq_len", config.context))
    plan = ModelPlan(config)

    def elements(graph: Any) -> int:
        total = 0
        for spec in graph.modules.values():
            total += spec.component.state_size(spec.d_in, spec.args, seq)
            total += sum(elements(child) for child in spec.children)
        return total

    return sum(elements(g) for g in plan.graphs()) / seq


def _summarise(result: Result, per_lr: dict[Any, list[dict[str, Any]]], higher: bool) -> None:
    metric_key = "accuracy" if higher else "val_loss"

    def stats(records: list[dict[str, Any]], key: str) -> tuple[float | None, float | None]:
        values = [r[key] for r in records if r[key] is not None and math.isfinite(r[key])]
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    scored = {}
    for lr, records in per_lr.items():
        mean, std = stats(records, metric_key)
        scored[lr] = (mean, std)
        if mean is not None and lr is not None:
            result.by_lr[lr] = (mean, std or 0.0)
    candidates = [lr for lr, (mean, _) in scored.items() if mean is not None]
    if not candidates:
        result.status = "failed: no finite metric"
        return
    pick = max if higher else min
    best = pick(candidates, key=lambda lr: scored[lr][0])
    records = per_lr[best]
    first = records[0]
    result.best_lr = first["lr"]
    result.metric_mean, result.metric_std = scored[best]
    result.loss_mean = stats(records, "val_loss")[0]
    result.tokens_per_s = stats(records, "tokens_per_s")[0]
    peaks = [r["peak_memory"] for r in records if r["peak_memory"]]
    result.peak_memory = max(peaks) if peaks else None
    result.params = first["params"]
    result.flops_per_token = first["flops_per_token"]
    result.state_per_token = first["state_per_token"]
    result.seeds = len(records)
    result.runs = [r["dir"] for r in records]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


# ==================================================================== plot
def plot_curves(comparison: Comparison, path: Path) -> bool:
    """``curves.png``: loss and the metric against tokens and against wall time, one line per
    variant (its best learning rate, first seed). False when matplotlib is not installed
    (the ``plot`` extra) or when no variant has a curve to draw (nothing is written then)."""
    from blockdsl.train.trainer import read_metrics

    drawn = [r for r in comparison.results if r.status == "ok" and r.runs]
    curves = [Curve(r.name, read_metrics(Path(r.runs[0]) / "metrics.jsonl")) for r in drawn]
    metrics = ("loss",) if comparison.metric == "val_loss" else ("loss", comparison.metric)
    return plot.plot_curves(
        curves, path, metrics=metrics, axes=("tokens", "elapsed"), title=comparison.data
    )


class _CallableModule(types.ModuleType):
    """``blockdsl.compare(...)`` calls ``compare`` whether ``blockdsl.compare`` names this
    module (once imported, Python binds the package attribute to it) or the function."""

    def __call__(self, specs: Sequence[Any], **kwargs: Any) -> Comparison:
        return compare(specs, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["COLUMNS", "Comparison", "Result", "Variant", "compare", "parse_variants"]
