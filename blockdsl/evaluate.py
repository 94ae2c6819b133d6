"""``blockdsl eval``: score trained models side by side on the same batches (docs/evaluate.md).

Every model (a run directory, a checkpoint directory or a model file: what
``blockdsl.checkpoint.load`` takes) sees the same ``batches`` batches of the data's ``split``,
drawn as training draws its validation batches (``(seed, batch) -> rows``), and gets, per
scored token: the loss (mean cross-entropy, nats), perplexity, bits per byte, and top-1 /
top-k teacher-forcing accuracy; on a task also the task's own score on its test set.

Bits per byte divide the loss by the bytes of text the scored tokens stand for, so that runs
with byte, character and BPE tokenizers compare: ``bits per byte = Σ nats / (ln 2 × Σ
bytes)`` over the targets that stand for text (a special token such as ``<|endoftext|>``
stands for none, and is left out of both sums). A token's bytes come from the tokenizer: a
byte-level tokenizer (byte, ``bpe:N``, GPT-2 style files) maps each character of a token to
one byte, exactly; any other decodes each token alone (``char`` exactly, others closely).

A model trained with another tokenizer than the data's, or with a smaller vocabulary than
the data's ids need, is refused: its ids mean other text.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys
import types
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockdsl._io import write_atomic
from blockdsl.errors import BlockDSLError
from blockdsl.threads import cpu_threads

__all__ = ["COLUMNS", "Evaluation", "EvaluationError", "Scores", "evaluate", "token_bytes"]

SPLITS = ("val", "train")
IGNORE_INDEX = -100  # an unlabelled target (a task's prompt positions)
#: the columns of eval.csv, in order
COLUMNS = (
    "name",
    "params",
    "tokens",
    "loss",
    "perplexity",
    "bits_per_byte",
    "bytes_per_token",
    "top1",
    "topk",
    "accuracy",
    "path",
)


class EvaluationError(BlockDSLError):
    """A model cannot be scored on the data (another tokenizer, a smaller vocab, bad options)."""


@dataclass
class Scores:
    """One model's row. ``tokens``: the targets scored; ``bits_per_byte`` and
    ``bytes_per_token`` are None without a tokenizer (a task); ``accuracy``: a task's score."""

    name: str
    path: str
    params: int
    tokens: int
    loss: float
    perplexity: float
    top1: float
    topk: float
    bits_per_byte: float | None = None
    bytes_per_token: float | None = None
    accuracy: float | None = None

    def row(self) -> dict[str, Any]:
        values = asdict(self)
        return {name: values[name] for name in COLUMNS}


@dataclass
class Evaluation:
    """What ``evaluate`` returns: one ``Scores`` per model, in the order given, the settings
    they were scored under, and the files written to ``out`` (names)."""

    data: str
    split: str
    batches: int
    batch_size: int
    seq_len: int
    top_k: int
    scores: list[Scores]
    out: Path | None = None
    files: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Scores:
        found = [s for s in self.scores if s.name == name]
        if not found:
            raise KeyError(f"no model named {name!r}: {', '.join(s.name for s in self.scores)}")
        return found[0]

    def headers(self) -> list[str]:
        headers = ["model", "params", "loss", "ppl", "bits/byte", "bytes/token"]
        headers += ["top-1", f"top-{self.top_k}"]
        if any(s.accuracy is not None for s in self.scores):
            headers.append("task accuracy")
        return headers

    def cells(self, scores: Scores) -> list[str]:
        def optional(value: float | None, spec: str) -> str:
            return "—" if value is None else format(value, spec)

        cells = [
            scores.name,
            f"{scores.params:,}",
            f"{scores.loss:.4f}",
            f"{scores.perplexity:.2f}",
            optional(scores.bits_per_byte, ".4f"),
            optional(scores.bytes_per_token, ".3f"),
            f"{scores.top1:.4f}",
            f"{scores.topk:.4f}",
        ]
        if len(self.headers()) > len(cells):
            cells.append(optional(scores.accuracy, ".4f"))
        return cells

    def caption(self) -> str:
        return (
            f"{self.data} ({self.split}): {self.batches} batches of {self.batch_size}×"
            f"{self.seq_len}, the same for every model"
        )

    def table(self) -> Any:
        """A ``rich`` table, the best value of each score in bold (several models)."""
        from rich.table import Table
        from rich.text import Text

        table = Table(title=self.caption())
        headers = self.headers()
        for header in headers:
            table.add_column(header, justify="left" if header == "model" else "right")
        best = self._best()
        for scores in self.scores:
            cells: list[Any] = self.cells(scores)
            for column in best.get(scores.name, ()):
                cells[column] = Text(cells[column], style="bold green")
            table.add_row(*cells)
        return table

    def _best(self) -> dict[str, list[int]]:
        """model name -> the columns where it is best or tied for best (several models)."""
        if len(self.scores) < 2:
            return {}
        columns = {2: ("loss", min), 4: ("bits_per_byte", min), 6: ("top1", max)}
        columns[7] = ("topk", max)
        if len(self.headers()) > 8:
            columns[8] = ("accuracy", max)
        found: dict[str, list[int]] = {}
        for column, (attr, pick) in columns.items():
            values = {s.name: getattr(s, attr) for s in self.scores}
            known = [v for v in values.values() if v is not None]
            if not known:
                continue
            for name, value in values.items():
                if value == pick(known):
                    found.setdefault(name, []).append(column)
        return found

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for scores in self.scores:
            writer.writerow({k: "" if v is None else v for k, v in scores.row().items()})
        return buffer.getvalue()

    def to_markdown(self) -> str:
        headers = self.headers()
        lines = [
            self.caption() + ".",
            "",
            "| " + " | ".join(headers) + " |",
            "|---|" + "---:|" * (len(headers) - 1),
        ]
        lines += ["| " + " | ".join(self.cells(s)) + " |" for s in self.scores]
        return "\n".join(lines) + "\n"


def evaluate(
    models: Sequence[str | os.PathLike],
    *,
    data: str | os.PathLike,
    split: str = "val",
    batches: int = 8,
    batch_size: int = 8,
    seq_len: int | None = None,
    top_k: int = 5,
    seed: int = 0,
    device: str | torch.device | None = None,
    threads: int | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Evaluation:
    """Score ``models`` (runs, checkpoint directories or model files; ``NAME=PATH`` names one)
    on ``batches`` batches of ``batch_size`` sequences of ``seq_len`` tokens (default: the
    shortest length the models were trained at, a run's ``[train] seq_len`` or a model
    file's context; a task's own length) from ``data``'s ``split`` (a prepared data directory
    or ``task:NAME``), drawn with ``seed`` as training draws its validation batches (a run
    trained with seed 0, batch_size 8 and eval_batches 8 gets its own val_loss back).
    ``top_k``: the k of top-k accuracy. ``device``: default cuda when present; ``threads``:
    torch's CPU threads meanwhile. With ``out``, writes ``eval.csv`` and ``eval.md`` there
    (existing files only with ``overwrite``)."""
    from blockdsl.train.sources import TextSource, open_source

    if not models:
        raise EvaluationError("give at least one model: a run, a checkpoint or a model file")
    if split not in SPLITS:
        raise EvaluationError(f"--split must be val or train, got {split!r}")
    for flag, value in (("--batches", batches), ("--batch-size", batch_size), ("--top-k", top_k)):
        _check_positive(flag, value)
    if seq_len is not None:
        _check_positive("--seq-len", seq_len)
    named = _names(models)
    out_dir = _check_out(out, overwrite)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    source = open_source(data, seed)
    with cpu_threads(threads):
        configs = {name: _config(path) for name, path in named}
        trained = {name: _trained_length(path, configs[name]) for name, path in named}
        length = _seq_len(source, configs, seq_len, min(trained.values()))
        if isinstance(source, TextSource):
            source.data.check_length(length, (split,))
        else:
            source.task.check_length(length)
        bytes_table = _data_token_bytes(source)
        for name, path in named:
            _check_fits(name, path, configs[name], source, top_k)
        drawn = [source.batch(seed, i, batch_size, length, split=split) for i in range(batches)]
        scores = []
        for name, path in named:
            scores.append(_score(name, path, source, drawn, bytes_table, top_k, device))
    evaluation = Evaluation(
        source.text, split, batches, batch_size, length, top_k, scores, out=out_dir
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "eval.csv", evaluation.to_csv())
        write_atomic(out_dir / "eval.md", evaluation.to_markdown())
        evaluation.files = ["eval.csv", "eval.md"]
    return evaluation


# ==================================================================== checks
def _check_positive(flag: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvaluationError(f"{flag} must be a whole number ≥ 1, got {value!r}")


def _names(models: Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    """(name, path) per model: ``NAME=PATH`` as named, else the path as given."""
    named = []
    for model in models:
        text = os.fspath(model)
        name, sep, path = text.partition("=")
        if not sep or not name or Path(text).exists():
            name, path = text, text
        named.append((name, Path(path)))
    seen = [n for n, _ in named]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise EvaluationError(
            f"the model {twice[0]!r} is given twice", hint="name each once (NAME=PATH)"
        )
    return named


def _check_out(out: str | os.PathLike | None, overwrite: bool) -> Path | None:
    if out is None:
        return None
    out = Path(out)
    there = [name for name in ("eval.csv", "eval.md") if (out / name).exists()]
    if there and not overwrite:
        raise EvaluationError(
            f"{out} already holds {' and '.join(there)}; nothing was overwritten",
            hint="pass --force to replace them, or choose another --out",
        )
    return out


def _config(path: Path) -> Any:
    """The model config of what ``load(path)`` would load (headers only, nothing allocated)."""
    from blockdsl.checkpoint import read_config

    return read_config(path)


def _trained_length(path: Path, config: Any) -> int:
    """The sequence length a model was trained at: its run's ``[train] seq_len`` (a run or
    one of its checkpoints), else its context (a model file of its own)."""
    from blockdsl.checkpoint import CONFIG, locate
    from blockdsl.config import load_config

    run = locate(path).run_dir
    if run is None:
        return config.context
    length = load_config(run / CONFIG).train.get("seq_len")
    if isinstance(length, int) and not isinstance(length, bool) and length > 0:
        return min(length, config.context)
    return config.context


def _seq_len(source: Any, configs: dict[str, Any], seq_len: int | None, trained: int) -> int:
    from blockdsl.train.sources import TaskSource

    shortest = min(c.context for c in configs.values())
    if isinstance(source, TaskSource):
        if seq_len is not None and seq_len != source.task.seq_len:
            raise EvaluationError(
                f"--seq-len {seq_len}: the task's sequences are {source.task.seq_len} tokens",
                hint="leave --seq-len out for a task",
            )
        seq_len = source.task.seq_len
    elif seq_len is None:
        return trained
    too_short = [name for name, c in configs.items() if c.context < seq_len]
    if too_short:
        name = too_short[0]
        raise EvaluationError(
            f"sequences of {seq_len} tokens are longer than the context of {name!r} "
            f"({configs[name].context})",
            hint=f"--seq-len {shortest} (the shortest context) or less",
        )
    return seq_len


def _check_fits(name: str, path: Path, config: Any, source: Any, top_k: int) -> None:
    """Refuse a model whose ids are not the data's: a smaller vocab, another tokenizer."""
    from blockdsl.checkpoint import tokenizer_file

    if source.vocab > config.vocab:
        raise EvaluationError(
            f"the model {name!r} has a vocab of {config.vocab:,} but the data's tokenizer has "
            f"{source.vocab:,} tokens: it was trained on other data",
            hint="score a model on data prepared with the tokenizer it was trained with",
        )
    if top_k > config.vocab:
        raise EvaluationError(
            f"--top-k {top_k} is more than the vocab of {name!r} ({config.vocab})"
        )
    if source.path is None:
        return
    data_tokenizer = source.path / "tokenizer.json"
    model_tokenizer = tokenizer_file(path)
    if model_tokenizer is None or not data_tokenizer.is_file():
        return  # a model file of its own: the vocab check above is all there is to go on
    if _digest(model_tokenizer) != _digest(data_tokenizer):
        raise EvaluationError(
            f"the model {name!r} was trained with another tokenizer than the data's "
            f"({model_tokenizer} differs from {data_tokenizer}): the same ids stand for "
            "other text",
            hint="evaluate on data prepared with the model's tokenizer: blockdsl data prepare "
            f"SOURCE --tokenizer {model_tokenizer} --out DIR",
        )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ==================================================================== bytes per token
def token_bytes(tokenizer: Any, vocab: int) -> torch.Tensor:
    """The bytes of text each id in ``range(vocab)`` stands for (int64; 0 for special tokens
    and ids the tokenizer does not have). Exact for byte-level tokenizers (each character of
    a token is one byte) and for tokens that decode alone to whole characters."""
    specials = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
    decoder = (json.loads(tokenizer.to_str()).get("decoder") or {}).get("type")
    sizes = torch.zeros(vocab, dtype=torch.int64)
    for i in range(min(vocab, tokenizer.get_vocab_size(with_added_tokens=True))):
        token = tokenizer.id_to_token(i)
        if token is None or i in specials:
            continue
        if decoder == "ByteLevel":
            sizes[i] = len(token)
        else:
            sizes[i] = len(tokenizer.decode([i], skip_special_tokens=False).encode("utf-8"))
    return sizes


def _data_token_bytes(source: Any) -> torch.Tensor | None:
    """The data's bytes-per-id table, or None (a task, or data without a tokenizer.json)."""
    from blockdsl.checkpoint import load_tokenizer

    if source.path is None or not (source.path / "tokenizer.json").is_file():
        return None
    return token_bytes(load_tokenizer(source.path / "tokenizer.json"), source.vocab)


# ==================================================================== scoring
@torch.no_grad()
def _score(
    name: str,
    path: Path,
    source: Any,
    drawn: list[tuple[torch.Tensor, torch.Tensor]],
    bytes_table: torch.Tensor | None,
    top_k: int,
    device: torch.device,
) -> Scores:
    from blockdsl.checkpoint import load
    from blockdsl.model import labelled_positions

    model: nn.Module = load(path, device=device).float()
    wrapped = source.wrap_model(model)
    if wrapped is not model:
        raise EvaluationError(
            f"{source.text} trains a model wrapped in another (an AutoEncoder): blockdsl eval "
            "scores language models",
            hint="compare such runs with blockdsl compare",
        )
    nats = torch.zeros((), dtype=torch.float64)
    text_nats = torch.zeros((), dtype=torch.float64)
    count = text_bytes = top1 = topk = 0
    for inputs, targets in drawn:
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs, targets).logits.float()
        order = labelled_positions(targets)
        if order is not None:  # a task: the logits are the labelled positions'
            targets = targets.gather(1, order)
        kept = targets != IGNORE_INDEX
        logits, targets = logits[kept], targets[kept]
        token_nats = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        nats += token_nats.double().sum().cpu()
        count += targets.numel()
        best = logits.topk(top_k, dim=-1).indices
        top1 += int((best[:, 0] == targets).sum())
        topk += int((best == targets[:, None]).any(dim=-1).sum())
        if bytes_table is not None:
            sizes = bytes_table.to(device)[targets]
            text_nats += token_nats[sizes > 0].double().sum().cpu()
            text_bytes += int(sizes.sum())
    if count == 0:
        raise EvaluationError(f"the batches of {source.text} hold no labelled target to score")
    loss = float(nats) / count
    scores = Scores(
        name,
        str(path),
        model.num_params(),
        count,
        loss,
        math.exp(min(loss, 700.0)),  # past exp's range a model is simply wrong
        top1 / count,
        topk / count,
    )
    if bytes_table is not None and text_bytes:
        scores.bits_per_byte = float(text_nats) / (math.log(2) * text_bytes)
        scores.bytes_per_token = text_bytes / count
    accuracy = source.score(model, device).get("accuracy")
    scores.accuracy = accuracy
    return scores


class _CallableModule(types.ModuleType):
    """``blockdsl.evaluate(...)`` calls ``evaluate`` whether ``blockdsl.evaluate`` names this
    module (once imported, Python binds the package attribute to it) or the function."""

    def __call__(self, models: Sequence[str | os.PathLike], **kwargs: Any) -> Evaluation:
        return evaluate(models, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
