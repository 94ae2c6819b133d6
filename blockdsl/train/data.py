"""Token data: ``blockdsl data prepare`` writes it, the training loop samples batches from it.

A data directory holds (nanoGPT's layout, plus what makes it self-describing)::

    train.bin       token ids, little-endian uint16 (uint32 when the vocabulary is larger)
    val.bin         the validation split, same layout
    tokenizer.json  a Hugging Face ``tokenizers`` tokenizer that encodes and decodes the ids
    meta.json       vocab, dtype, token counts, the tokenizer's kind, each source's sha256

Preparation streams: documents are read one at a time (a file over BIG_FILE bytes in pieces,
a ``.jsonl`` line by line), encoded in chunks and appended to the bin files, so a corpus larger
than memory is fine (``char`` and ``bpe:N`` read the sources
twice: once to build the vocabulary, once to encode). Each document goes to ``val.bin`` with
probability ``val_fraction`` (drawn from ``seed``); when that leaves the validation split empty
(a single file), the last ``val_fraction`` of the training tokens become it.

Batches are a pure function of ``(seed, step)``: ``TokenData.batch(seed, step, rows, seq_len)``
draws ``rows`` random windows with a generator seeded from ``(seed, step)`` alone. Every variant
trained on the same data with the same seed sees the same batches in the same order, a resumed
run needs no loader state, and rank ``r`` of ``w`` can take its rows of the same batch.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import random
import sys
import sysconfig
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from blockdsl._io import Progress, write_atomic
from blockdsl.errors import BlockDSLError
from blockdsl.untrusted import require_regular_file

META_FORMAT = "blockdsl-data"
EOT = "<|endoftext|>"
NAMED_SOURCES = {
    "stdlib": "the Python standard library's own source (*.py files, no site-packages), "
    "present wherever Python is installed",
}
CHUNK_CHARS = 1 << 20  # documents are encoded in pieces of about this many characters
BIG_FILE = 64 << 20  # files larger than this are streamed (a corpus may exceed memory)


class DataError(BlockDSLError):
    """A data source, tokenizer or data directory is unusable."""


# ==================================================================== sources
@dataclass
class Source:
    """One SOURCE argument: yields ``(name, text)`` documents and hashes what it read."""

    spec: str
    glob: str = "*"
    documents: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    _sha: Any = field(default_factory=hashlib.sha256, repr=False)

    def size_hint(self) -> int | None:
        """Bytes to read (for the progress bar); None when unknown (``hf:``)."""
        if self.spec.startswith("hf:"):
            return None
        return sum(path.stat().st_size for path in self._paths())

    def _paths(self) -> list[Path]:
        if self.spec in NAMED_SOURCES:
            return stdlib_files()
        path = Path(self.spec)
        if path.is_dir():
            pattern = Path(self.glob)
            if pattern.is_absolute() or ".." in pattern.parts:
                raise DataError(
                    f"--glob {self.glob!r} reaches outside the source directory {path}",
                    hint="a pattern relative to the directory, e.g. --glob '*.py'",
                )
            return sorted(p for p in path.rglob(self.glob) if p.is_file())
        if path.exists():  # a FIFO or device is refused before it is opened
            return [require_regular_file(path, "data source")]
        hint = "a file, a directory, hf:NAME[:split], or one of: " + ", ".join(NAMED_SOURCES)
        raise DataError(f"data source '{self.spec}' does not exist", hint=hint)

    def pieces(self, progress: Callable[[int], None] | None = None) -> Iterator[tuple[bool, str]]:
        """The documents as ``(starts_a_document, text)`` pieces of about CHUNK_CHARS, in a
        fixed order; hashes and counts what it reads. Files are read whole up to BIG_FILE
        bytes (a directory's non-UTF-8 files are skipped) and streamed above it; ``.jsonl``
        is read line by line."""
        self.documents, self.bytes, self.skipped = 0, 0, []
        self._sha = hashlib.sha256()
        advance = progress or (lambda n: None)
        if self.spec.startswith("hf:"):
            for text in self._hf_documents():
                yield from _pieces(text)
            return
        explicit = Path(self.spec).is_file()
        for path in self._paths():
            if path.suffix == ".jsonl":
                yield from self._jsonl(path, advance)
            elif path.stat().st_size > BIG_FILE:
                yield from self._stream(path, advance)
            else:
                raw = path.read_bytes()
                advance(len(raw))
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    if explicit:
                        raise DataError(f"{path} is not UTF-8 text") from None
                    self.skipped.append(str(path))
                    continue
                self._count(raw)
                yield from _pieces(text)

    def _count(self, raw: bytes, document: bool = True) -> None:
        self._sha.update(raw)
        self.bytes += len(raw)
        self.documents += document

    def _jsonl(self, path: Path, advance: Callable[[int], None]) -> Iterator[tuple[bool, str]]:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                advance(len(line))
                text = _jsonl_text(path, number, line)
                self._count(line, text is not None)
                if text is not None:
                    yield from _pieces(text)

    def _stream(self, path: Path, advance: Callable[[int], None]) -> Iterator[tuple[bool, str]]:
        """A file larger than BIG_FILE, one document, decoded incrementally."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        first, carry = True, ""
        self.documents += 1
        with open(path, "rb") as f:
            while True:
                raw = f.read(CHUNK_CHARS)
                advance(len(raw))
                self._count(raw, document=False)
                try:
                    text = carry + decoder.decode(raw, final=not raw)
                except UnicodeDecodeError:
                    raise DataError(f"{path} is not UTF-8 text") from None
                cut = text.rfind("\n") + 1 if raw else len(text)  # pieces end at a newline
                piece, carry = (text[:cut], text[cut:]) if cut else ("", text)
                if piece:
                    yield first, piece
                    first = False
                if not raw:
                    return

    def _hf_documents(self) -> Iterator[str]:
        name, _, split = self.spec[3:].partition(":")
        try:
            import datasets
        except ImportError:
            raise DataError(
                f"'{self.spec}' needs the optional datasets package",
                hint="pip install 'blockdsl[datasets]'",
            ) from None
        try:
            dataset = datasets.load_dataset(name, split=split or "train", streaming=True)
        except Exception as exc:  # datasets raises many kinds: report them all as one
            raise DataError(f"cannot load '{self.spec}' with datasets: {exc}") from None
        for row in dataset:
            text = row.get("text")
            if not isinstance(text, str):
                raise DataError(f"'{self.spec}' has rows without a 'text' string field")
            raw = text.encode("utf-8")
            self._sha.update(raw)
            self.bytes += len(raw)
            self.documents += 1
            yield text

    def describe(self) -> dict[str, Any]:
        out = {
            "source": self.spec,
            "sha256": self._sha.hexdigest(),
            "documents": self.documents,
            "bytes": self.bytes,
        }
        if self.skipped:
            out["skipped_not_utf8"] = len(self.skipped)
        return out


def stdlib_files() -> list[Path]:
    """The ``*.py`` files of the running Python's standard library, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def _jsonl_text(path: Path, number: int, line: bytes) -> str | None:
    """The ``text`` of one ``.jsonl`` line (None for a blank line)."""
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise DataError(f"{path}:{number}: not JSON ({exc})") from None
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise DataError(f"{path}:{number}: a .jsonl line needs a 'text' string field")
    return row["text"]


def _pieces(text: str) -> Iterator[tuple[bool, str]]:
    for index, piece in enumerate(_chunks([text])):
        yield index == 0, piece


# ==================================================================== tokenizers
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from bytes to printable characters (what ``tokenizers``' ByteLevel uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def byte_tokenizer() -> Any:
    """256 ids, id = the byte's value (UTF-8), as a ``tokenizers`` byte-level tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def char_tokenizer(chars: set[str]) -> Any:
    """One id per character seen in the data (sorted by code point), ``<unk>`` last."""
    from tokenizers import Tokenizer, decoders, models

    vocab = {char: i for i, char in enumerate(sorted(chars))}
    vocab["<unk>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def bpe_tokenizer(size: int, texts: Iterator[str]) -> Any:
    """A byte-level BPE of ``size`` tokens trained on ``texts`` (GPT-2's recipe)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOT],
        show_progress=False,
    )
    tokenizer.train_from_iterator(_chunks(texts), trainer=trainer)
    return tokenizer


def _chunks(texts: Iterator[str]) -> Iterator[str]:
    """Long documents in pieces of about CHUNK_CHARS, cut after a newline."""
    for text in texts:
        start = 0
        while start < len(text):
            end = start + CHUNK_CHARS
            if end < len(text):
                cut = text.rfind("\n", start, end)
                end = cut + 1 if cut > start else end
            yield text[start:end]
            start = end


#: the largest BPE vocabulary ``bpe:N`` trains (2**20 tokens, far beyond any corpus here)
MAX_BPE_VOCAB = 2**20


def parse_tokenizer(spec: str) -> tuple[str, int | None]:
    """``byte`` | ``char`` | ``bpe:N`` | a path to a tokenizer.json → (kind, size)."""
    if spec in ("byte", "char"):
        return spec, None
    if spec.startswith("bpe:"):
        size = spec[4:]
        # checked here: the tokenizers library aborts the process (no exception) when it
        # cannot allocate the tables of a huge vocabulary
        if not size.isdigit() or not 257 <= int(size) <= MAX_BPE_VOCAB:
            raise DataError(
                f"--tokenizer {spec}: N must be an integer from 257 to {MAX_BPE_VOCAB:,}",
                hint="e.g. bpe:4096",
            )
        return "bpe", int(size)
    if Path(spec).is_file():
        return "file", None
    raise DataError(
        f"unknown tokenizer '{spec}'",
        hint="byte, char, bpe:N (e.g. bpe:4096) or a path to a tokenizer.json",
    )


# ==================================================================== prepare
def prepare(
    sources: Sequence[str],
    out: str | os.PathLike,
    *,
    tokenizer: str = "byte",
    val_fraction: float = 0.05,
    seed: int = 0,
    glob: str = "*",
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Tokenize ``sources`` into ``out`` (train.bin, val.bin, tokenizer.json, meta.json);
    returns the meta dict. ``progress``: a rich bar (default: when stderr is a terminal)."""
    if not sources:
        raise DataError("give at least one SOURCE", hint=f"e.g. {', '.join(NAMED_SOURCES)}")
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    out = Path(out)
    if (out / "meta.json").exists() and not overwrite:
        raise DataError(f"{out} already holds prepared data", hint="pass --force to replace it")
    kind, size = parse_tokenizer(tokenizer)
    items = [Source(spec, glob=glob) for spec in sources]
    total = None
    if all(s.size_hint() is not None for s in items):
        total = sum(s.size_hint() or 0 for s in items)

    bar = Progress(progress, columns="bytes", fallback="quiet", stream=sys.stderr)
    with bar:

        def advance(n: int) -> None:
            bar.update(advance=n)

        def pieces(label: str) -> Iterator[tuple[bool, str]]:
            bar.start(label, total)
            for source in items:
                yield from source.pieces(advance)

        def texts(label: str) -> Iterator[str]:
            return (piece for _, piece in pieces(label))

        tok = _tokenizer_for(kind, size, tokenizer, texts)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        eot = tok.token_to_id(EOT)
        dtype = "uint16" if vocab <= 2**16 else "uint32"
        out.mkdir(parents=True, exist_ok=True)

        def encode(text: str) -> Sequence[int] | bytes:  # byte ids are the UTF-8 bytes
            return text.encode("utf-8") if kind == "byte" else tok.encode(text).ids

        counts, docs = _write_splits(
            out,
            pieces("tokenizing"),
            encode,
            eot,
            dtype,
            val_fraction,
            seed,
        )
    if counts["train"] == 0:
        raise DataError("the sources hold no text to train on", hint=", ".join(sources))
    meta = {
        "format": META_FORMAT,
        "version": 1,
        "vocab": vocab,
        "dtype": dtype,
        "tokenizer": tokenizer if kind != "file" else f"file:{Path(tokenizer).name}",
        "eot": eot,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "train_documents": docs["train"],
        "val_documents": docs["val"],
        "val_fraction": val_fraction,
        "seed": seed,
        "sources": [s.describe() for s in items],
    }
    tok.save(str(out / "tokenizer.json.tmp"))
    # the ids mean something only with this tokenizer: bind it, so a swapped file is refused
    meta["tokenizer_sha256"] = hashlib.sha256((out / "tokenizer.json.tmp").read_bytes()).hexdigest()
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        os.replace(out / f"{name}.tmp", out / name)
    write_atomic(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


class _BinWriter:
    def __init__(self, path: Path, dtype: str) -> None:
        self.path, self.code = path, _array_code(dtype)

    def __enter__(self) -> _BinWriter:
        self.file = open(self.path, "wb")  # closed in __exit__
        return self

    def write(self, ids: Sequence[int] | bytes) -> None:
        values = array(self.code, array("B", ids) if isinstance(ids, bytes) else ids)
        if sys.byteorder != "little":
            values.byteswap()
        values.tofile(self.file)

    def __exit__(self, *exc: Any) -> None:
        self.file.close()


def _tokenizer_for(
    kind: str, size: int | None, spec: str, texts: Callable[[str], Iterator[str]]
) -> Any:
    """The tokenizer of ``--tokenizer``: byte, char (the characters of the text), a BPE
    trained on the text, or a tokenizer.json file."""
    if kind == "byte":
        return byte_tokenizer()
    if kind == "char":
        chars: set[str] = set()
        for text in texts("reading characters"):
            chars.update(text)
        return char_tokenizer(chars)
    if kind == "bpe":
        return bpe_tokenizer(size or 0, texts(f"training a {size}-token BPE"))
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(spec)
    except Exception as exc:
        raise DataError(f"{spec} is not a tokenizer.json: {exc}") from None


def _write_splits(
    out: Path,
    pieces: Iterator[tuple[bool, str]],
    encode: Callable[[str], Sequence[int] | bytes],
    eot: int | None,
    dtype: str,
    val_fraction: float,
    seed: int,
) -> tuple[dict[str, int], dict[str, int]]:
    """Encode the documents into ``train.bin.tmp`` and ``val.bin.tmp`` (each document to one
    split, drawn with ``seed``, an EOT after it); the tokens and documents of each split."""
    rng = random.Random(seed)
    counts = {"train": 0, "val": 0}
    docs = {"train": 0, "val": 0}
    with (
        _BinWriter(out / "train.bin.tmp", dtype) as train_bin,
        _BinWriter(out / "val.bin.tmp", dtype) as val_bin,
    ):
        writers = {"train": train_bin, "val": val_bin}
        split = None
        for starts, piece in pieces:
            if starts:
                if split is not None and eot is not None:
                    writers[split].write([eot])
                    counts[split] += 1
                split = "val" if rng.random() < val_fraction else "train"
                docs[split] += 1
            ids = encode(piece)
            writers[split].write(ids)
            counts[split] += len(ids)
        if split is not None and eot is not None:
            writers[split].write([eot])
            counts[split] += 1
    if counts["val"] == 0 and val_fraction > 0 and counts["train"] > 1:
        counts["val"] = max(1, int(counts["train"] * val_fraction))
        counts["train"] -= counts["val"]
        _split_tail(out / "train.bin.tmp", out / "val.bin.tmp", counts["val"], dtype)
    return counts, docs


def _array_code(dtype: str) -> str:
    if dtype == "uint16":
        return "H"
    return next(code for code in "IL" if array(code).itemsize == 4)


def _split_tail(train: Path, val: Path, tokens: int, dtype: str) -> None:
    itemsize = 2 if dtype == "uint16" else 4
    size = train.stat().st_size
    with open(train, "r+b") as src, open(val, "wb") as dst:
        src.seek(size - tokens * itemsize)
        while chunk := src.read(1 << 24):
            dst.write(chunk)
        src.truncate(size - tokens * itemsize)


# ==================================================================== reading
class TokenData:
    """A prepared data directory, memory-mapped (never read whole into memory)."""

    def __init__(self, path: str | os.PathLike) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise DataError(
                f"data must be a prepared data directory or task:NAME,..., got "
                f"{type(path).__name__}",
                hint="e.g. data='data/stdlib' or data='task:mqar'",
            )
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not self.path.is_dir():
            raise DataError(
                f"data directory {self.path} does not exist",
                hint=f"prepare one: blockdsl data prepare stdlib --out {self.path}",
            )
        if not meta_path.is_file():
            raise DataError(
                f"{self.path} has no meta.json: not a prepared data directory",
                hint=f"prepare one: blockdsl data prepare SOURCE --out {self.path}",
            )
        try:
            self.meta = json.loads(meta_path.read_text())
            assert self.meta["format"] == META_FORMAT
            self.vocab = int(self.meta["vocab"])
            self.dtype = self.meta["dtype"]
            assert self.dtype in ("uint16", "uint32")
        except (ValueError, KeyError, TypeError, AssertionError):
            raise DataError(f"{meta_path} is not a blockdsl data meta.json") from None
        self._check_tokenizer()
        self.splits = {name: self._map(name) for name in ("train", "val")}

    def _check_tokenizer(self) -> None:
        """The tokenizer.json beside the ids is the one they were made with (meta.json records
        its SHA-256; directories prepared before that record are taken as they are)."""
        expected = self.meta.get("tokenizer_sha256")
        path = self.path / "tokenizer.json"
        if expected is None or not path.is_file():
            return
        if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise DataError(
                f"{path} is not the tokenizer the data's tokens were made with (its SHA-256 "
                "differs from the one meta.json records)",
                hint="restore the original tokenizer.json, or prepare the data again with "
                "the new one",
            )

    def _map(self, split: str) -> torch.Tensor:
        path = self.path / f"{split}.bin"
        count = int(self.meta[f"{split}_tokens"])
        itemsize = 2 if self.dtype == "uint16" else 4
        if not path.is_file() or path.stat().st_size != count * itemsize:
            raise DataError(
                f"{path} does not hold the {count:,} tokens meta.json records "
                "(missing or truncated)"
            )
        if count == 0:
            return torch.empty(0, dtype=torch.int64)
        dtype = torch.uint16 if self.dtype == "uint16" else torch.uint32
        return torch.from_file(str(path), shared=False, size=count, dtype=dtype)

    def tokens(self, split: str) -> int:
        return self.splits[split].numel()

    def check_length(self, seq_len: int, splits: Sequence[str] = ("train", "val")) -> None:
        for split in splits:
            if self.tokens(split) < seq_len + 1:
                raise DataError(
                    f"{self.path / (split + '.bin')} holds {self.tokens(split):,} tokens, "
                    f"shorter than one sequence of {seq_len} (+1 for the targets)",
                    hint="use more data, a smaller [train] seq_len, or a larger --val-fraction",
                )

    def batch(
        self, seed: int, step: int, rows: int, seq_len: int, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows`` windows of ``seq_len`` inputs and their next-token targets (int64), drawn
        from ``split`` with a generator seeded by ``(seed, step, split)`` only."""
        data = self.splits[split]
        generator = torch.Generator().manual_seed(batch_seed(seed, step, split))
        starts = torch.randint(0, data.numel() - seq_len, (rows,), generator=generator)
        windows = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()]).long()
        return windows[:, :-1], windows[:, 1:]


def batch_seed(seed: int, step: int, split: str) -> int:
    digest = hashlib.sha256(f"{seed}:{step}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


__all__ = [
    "NAMED_SOURCES",
    "DataError",
    "Source",
    "TokenData",
    "batch_seed",
    "byte_tokenizer",
    "prepare",
    "stdlib_files",
]
