"""Model files, checkpoints and run directories: the one module that knows their layout.

* **Model files**: ``blockdsl.save(model, path)`` and ``blockdsl.load(path)``;
* **run directories** (``blockdsl.train``): ``RUN/config.toml``, ``metrics.jsonl``,
  ``summary.json``, ``tokenizer.json``, ``data.json`` and ``RUN/checkpoints/step_NNNNNNN/``
  (``model.safetensors``, a model file, and ``state.pt``, the training state), owned by one
  process at a time (``run_lock``);
* **generation inputs**: ``load_generator(path)``, the model and tokenizer a path stands for.

``load(path)`` takes a model file, a checkpoint directory or a run directory (its newest
checkpoint); every reader (generate, export, resume, ``Run.load_model``) goes through it.

A model file is one safetensors file. Its tensors are the model's ``state_dict``
(a tied or shared weight stored once); its metadata (string to string, in the file's JSON
header) describes the model completely:

=====================  ========================================================================
``format``             ``"blockdsl"``
``blockdsl_format``    the version of this layout (``"1"``)
``blockdsl_version``   the blockdsl that wrote the file
``blockdsl_config``    the resolved configuration as TOML (``ModelConfig.to_toml()``)
``blockdsl_modules``   JSON: component name -> the Python module that registered it
=====================  ========================================================================

plus any ``metadata`` the caller adds (a training step, a run id). ``load`` rebuilds the model
from the embedded TOML with ``blockdsl.build_model`` and fills it from the tensors: no config
file is needed and nothing in the file is executed (TOML is data; safetensors holds raw
tensors only, never pickles). A component registered by a plugin must be registered before
loading (importing the plugin is the user's decision, never the file's); ``blockdsl_modules``
says which module that is.

``safetensors`` is an optional dependency (``pip install 'blockdsl[hf]'``), imported on use.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from blockdsl._version import __version__
from blockdsl.errors import BlockDSLError, ConfigError
from blockdsl.untrusted import require_regular_file, writing

if TYPE_CHECKING:
    from blockdsl.model import LanguageModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


FORMAT_VERSION = 1
_RESERVED = ("format", "blockdsl_format", "blockdsl_version", "blockdsl_config", "blockdsl_modules")


class CheckpointError(ConfigError):
    """A file that is not a readable blockdsl checkpoint (missing, truncated, foreign, from a
    newer format), or a save that would overwrite a file."""

    def _render_one(self) -> str:  # about a file, not a text: no position
        where = f" in {self.context}" if self.context else ""
        head = f"blockdsl: {self.message}{where}"
        return head if not self.hint else f"{head}\n  {self.hint}"


def _misfit(
    path: object,
    verdict: str,
    missing: Iterable[str],
    unexpected: Iterable[str],
    wrong: Iterable[str],
) -> CheckpointError:
    """The error for a weights file whose tensors do not fit the model: up to eight names of
    each kind of misfit."""
    problems = []
    for what, names in (
        ("missing tensors", missing),
        ("unexpected tensors", unexpected),
        ("shape mismatches", wrong),
    ):
        names = sorted(names)
        if names:
            problems.append(f"{what}: {', '.join(names[:8])}")
    return CheckpointError(f"the tensors of '{path}' {verdict}: " + "; ".join(problems))


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError as error:  # pragma: no cover
        raise CheckpointError(
            "blockdsl checkpoints need the optional dependency 'safetensors'",
            hint="install it with: pip install 'blockdsl[hf]'",
        ) from error
    return safetensors.torch


def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (a ``blockdsl.LanguageModel``) to ``path`` as a self-describing
    safetensors file; returns the path. The write is atomic (a temporary file renamed into
    place); an existing file is replaced only with ``overwrite=True``."""
    from blockdsl.model import LanguageModel

    if not isinstance(model, LanguageModel):
        raise CheckpointError(
            f"blockdsl.save expects a blockdsl LanguageModel, got {type(model).__name__}",
            hint="for any other module use safetensors.torch.save_model",
        )
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(
            f"'{path}' exists; not overwriting it", hint="pass overwrite=True to replace it"
        )
    extra = dict(metadata or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise CheckpointError(
            "metadata must map strings to strings and not use the reserved keys "
            + ", ".join(_RESERVED)
            + (f" (got {', '.join(clash)})" if clash else "")
        )
    modules = {}  # which Python module registered each component the model uses
    for module in model.modules():
        graph = getattr(module, "block_graph", None)
        for spec in getattr(graph, "modules", {}).values():
            modules[spec.component.name] = spec.component.cls.__module__
    header = {
        **extra,
        "format": "blockdsl",
        "blockdsl_format": str(FORMAT_VERSION),
        "blockdsl_version": __version__,
        "blockdsl_config": model.config.to_toml(),
        "blockdsl_modules": json.dumps(dict(sorted(modules.items()))),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        # save_model stores a weight shared by several names (a tied head) once
        with writing(path, "model file"):
            _safetensors().save_model(model, str(tmp), metadata=header)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ==================================================================== where a path points
WEIGHTS = "model.safetensors"  # a checkpoint directory's model file
STATE = "state.pt"  # a checkpoint directory's training state
CONFIG = "config.toml"  # a run's resolved configuration ([model] ... [train], [optim])
TOKENIZER = "tokenizer.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
DATA = "data.json"
LOCK = ".lock"  # held (flock) by the process that owns the run directory
CHECKPOINTS = "checkpoints"
SHARDED_DIR = "sharded"  # a distributed run's torch.distributed.checkpoint directory
_STEP_DIR = re.compile(r"step_(\d+)")
_TMP_PREFIX = ".tmp-step_"


def _step_name(step: int) -> str:
    return f"step_{step:07d}"


@dataclass
class Located:
    """What a path given to ``load`` stands for: the model file, and the training run it
    belongs to (None for a file of its own)."""

    weights: Path
    run_dir: Path | None


def locate(path: str | os.PathLike) -> Located:
    """The model file ``path`` stands for and its run: the file itself; ``DIR/model.safetensors``
    for a checkpoint directory; the newest checkpoint's for a training run directory."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"a model path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint file '{path}': it does not exist",
            hint="give a model file, a checkpoint directory or a training run directory",
        )
    if path.is_dir() and (path / WEIGHTS).is_file():  # RUN/checkpoints/step_N
        return Located(path / WEIGHTS, _run_of(path))
    if path.is_dir():
        newest = latest(path)
        if newest is not None:
            return Located(newest.weights, path)
        if (path / CONFIG).is_file():
            raise CheckpointError(
                f"the run '{path}' has no checkpoint yet",
                hint="a run writes one at [train] save_every and when it ends",
            )
        raise CheckpointError(
            f"'{path}' is neither a training run (no {CONFIG}) nor a checkpoint: a directory "
            f"with no {WEIGHTS} and no {CHECKPOINTS}/step_*",
            hint="give a model file, a checkpoint directory or a training run directory "
            "(for a Hugging Face folder: --from-hf)",
        )
    return Located(path, _run_of(path.parent))


def _run_of(step_dir: Path) -> Path | None:
    """The run a checkpoint directory belongs to (``RUN/checkpoints/step_N``), if any."""
    if _STEP_DIR.fullmatch(step_dir.name) and step_dir.parent.name == CHECKPOINTS:
        run = step_dir.parent.parent
        return run if (run / CONFIG).is_file() else None
    return None


def resolve(path: str | os.PathLike) -> Path:
    """The model file ``path`` stands for (see ``locate``)."""
    return locate(path).weights


def _header(path: Path) -> dict[str, str]:
    """A safetensors file's metadata (the header only)."""
    if not path.exists():
        raise CheckpointError(f"no checkpoint file '{path}'")
    require_regular_file(path, "model file")
    _safetensors()
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # safetensors' own errors: the header is unreadable
        raise CheckpointError(
            f"'{path}' is not a readable safetensors file ({_reason(exc)})",
            hint="the file is truncated or of another format",
        ) from None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a blockdsl checkpoint (reads the header only). Raises
    ``CheckpointError`` naming the file when it is missing, not safetensors, truncated, not a
    blockdsl checkpoint or written in a newer format."""
    path = Path(path)
    path = resolve(path) if path.exists() else path
    metadata = _header(path)
    if metadata.get("format") != "blockdsl" or "blockdsl_config" not in metadata:
        raise CheckpointError(
            f"'{path}' is a safetensors file but not a blockdsl checkpoint (no blockdsl "
            "config in its metadata)",
            hint="blockdsl.save writes checkpoints; a Hugging Face checkpoint folder imports "
            "with blockdsl.hf.from_pretrained_dir",
        )
    version = metadata.get("blockdsl_format", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' has checkpoint format {version!r}; this blockdsl reads format "
            f"{FORMAT_VERSION} or older",
            hint=f"it was written by blockdsl {metadata.get('blockdsl_version', '?')}; upgrade",
        )
    return metadata


def _reason(exc: BaseException) -> str:
    return (str(exc).strip().split("\n")[0] or type(exc).__name__)[:200]


# ==================================================================== loading a model
def load(
    path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    max_memory: int | str | None = None,
) -> LanguageModel:
    """The ``blockdsl.LanguageModel`` saved in ``path`` (a model file, a checkpoint directory,
    or a training run directory: its newest checkpoint), in eval mode, with the stored dtype
    (or ``dtype``) on ``device`` (default: cpu). A file's own config describes the model; a
    file of a run without one (written by other tools) takes the run's ``config.toml``.

    The stored config is untrusted: before anything is allocated, the model is built on the
    meta device and its tensors' shapes compared with the file's header, and a model larger
    than ``max_memory`` (bytes or "8GiB"; default: 80% of the memory available) is refused."""
    from blockdsl.model import build_model

    device, dtype = check_load_arguments(device, dtype)
    located = locate(path)
    path = located.weights
    config, origin, modules = _stored_config(located)
    header = read_tensor_header(path)
    try:
        check_sizes_before_allocation(
            config, header, path, device=device, dtype=dtype, max_memory=max_memory, origin=origin
        )
    except CheckpointError:
        raise
    except BlockDSLError as exc:
        raise _in_file(exc, origin, modules) from None
    state = _read_tensors(path)
    stored = next((t.dtype for t in state.values() if t.is_floating_point()), None)
    try:
        model = build_model(config, device=device, dtype=dtype or stored)
    except BlockDSLError as exc:
        raise _in_file(exc, origin, modules) from None
    _fill(model, state, path, "do not fit its config")
    return model.eval()


def read_config(path: str | os.PathLike) -> Any:
    """The model config of what ``load(path)`` loads, from the file's header (or its run's
    ``config.toml``): nothing is allocated (``blockdsl eval`` sizes its batches with it)."""
    return _stored_config(locate(path))[0]


def _stored_config(located: Located) -> tuple[Any, str, dict[str, str]]:
    """The model config of a located file: its own (a blockdsl model file), else its run's
    ``config.toml``; with a description of where it came from and the components' modules."""
    from blockdsl.config import from_dict, load_config

    path = located.weights
    header = _header(path)
    if "blockdsl_config" not in header and located.run_dir is not None:
        return load_config(located.run_dir / CONFIG), f"'{located.run_dir / CONFIG}'", {}
    metadata = read_metadata(path)
    origin = f"the config stored in '{path}'"
    text = metadata["blockdsl_config"]
    try:
        config = from_dict(tomllib.loads(text), origin=origin, text=text)
    except tomllib.TOMLDecodeError as exc:
        raise CheckpointError(f"the config stored in '{path}' is not TOML ({exc})") from None
    return config, origin, _modules(metadata)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return _safetensors().load_file(str(path))
    except Exception as exc:
        raise CheckpointError(
            f"cannot read the tensors of '{path}' ({_reason(exc)})",
            hint="the file is truncated or damaged",
        ) from None


def load_weights(path: str | os.PathLike, model: nn.Module) -> None:
    """Copy the tensors of the model file ``path`` into ``model`` (every parameter and buffer,
    with its shape; a weight stored once for several names fills them all)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    _fill(model, _read_tensors(path), path, "cannot be loaded into this model")


# ==================================================================== untrusted sizes
#: largest safetensors header read (the JSON listing of the tensors); real ones are kilobytes
MAX_HEADER_BYTES = 100 * 2**20
#: layers a stored config may declare beyond those the file holds tensors for before it is
#: refused without expanding its plan (parameter-free layers store no tensors)
LAYER_SLACK = 1024
#: share of the free memory a loaded model may take by default: the rest is the room its
#: forward passes and the file's tensors (read before they are copied in) need
USABLE_FRACTION = 0.8
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}


def check_load_arguments(device: Any, dtype: Any) -> tuple[torch.device | None, torch.dtype | None]:
    """``device`` and ``dtype`` checked before anything is read: a device torch knows and this
    machine has, a floating-point dtype."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise CheckpointError(
            f"dtype must be a floating-point torch.dtype, got {dtype!r}",
            hint="e.g. dtype=torch.bfloat16",
        )
    if device is None:
        return None, dtype
    if not isinstance(device, (str, torch.device, int)) or isinstance(device, bool):
        raise CheckpointError(f"device must be a string or torch.device, got {device!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise CheckpointError(
            f"unknown device {device!r}", hint="cpu, cuda or cuda:N (or mps)"
        ) from None
    usable = {
        "cpu": True,
        "meta": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not usable.get(parsed.type, False):
        raise CheckpointError(
            f"device {device!r} is not available on this machine", hint="e.g. device='cpu'"
        )
    return parsed, dtype


def read_tensor_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``name -> (dtype, shape)`` of every tensor in the safetensors file ``path``, from the
    JSON header alone (no tensor is read). Raises ``CheckpointError`` for a header that is
    missing, oversized, cut short or malformed."""
    path = require_regular_file(path, "model file")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"'{path}' is not a readable safetensors file (header length {length} in a "
                f"file of {size:,} bytes)",
                hint="the file is truncated or of another format",
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"'{path}' has a malformed safetensors header")
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if (
            not isinstance(dtype, str)
            or not isinstance(shape, list)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        ):
            raise CheckpointError(f"'{path}' has a malformed entry for tensor '{name}'")
        tensors[name] = (dtype, tuple(shape))
    return tensors


def declared_layers(layers: str) -> int:
    """How many layers the ``[model] layers`` text expands to, counted on its syntax tree
    (repeat counts multiplied, never iterated): what expanding it would cost, known first."""
    from blockdsl import ast
    from blockdsl.parser import parse

    def count_block(block: ast.Block) -> int:
        if block.is_parallel:
            return 1
        return sum(count_step(step) for step in block.chains[0].steps)

    def count_step(step: ast.Node) -> int:
        if isinstance(step, ast.Repeat):
            return max(step.count, 0) * count_step(step.body)
        if isinstance(step, ast.Group):
            return count_block(step.block)
        return 1

    return count_block(parse(layers))


def _file_layers(header: Mapping[str, Any]) -> int:
    """Layers the file holds tensors for: one more than the largest ``layers.N.`` index."""
    indices = [
        int(parts[1])
        for parts in (name.split(".", 2) for name in header)
        if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit()
    ]
    return max(indices) + 1 if indices else 0


def check_sizes_before_allocation(
    config: Any,
    header: Mapping[str, tuple[str, tuple[int, ...]]],
    path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    max_memory: int | str | None = None,
    origin: str | None = None,
) -> None:
    """Refuse an untrusted ``config`` (described as ``origin`` in messages; default: the
    config stored in ``path``) whose model does not match the tensors the file's
    ``header`` lists, or does not fit ``max_memory`` (default: ``USABLE_FRACTION`` of the
    memory available on ``device``), before any real allocation: the layer count is compared
    first (without expanding the plan), then the model is built on the meta device and every
    tensor's shape compared, and its parameters and buffers are counted in bytes."""
    from blockdsl.model import build_model

    origin = origin or f"the config stored in '{path}'"
    declared, stored = declared_layers(config.layers), _file_layers(header)
    if declared > stored + LAYER_SLACK:
        raise CheckpointError(
            f"{origin} declares {declared:,} layers, but '{path}' holds tensors for {stored:,}",
            hint="the file's config was altered or the file is not what it claims to be",
        )
    if dtype is None:
        dtype = next(
            (_SAFETENSORS_DTYPES[d] for d, _ in header.values() if d in _SAFETENSORS_DTYPES),
            None,
        )
    model = build_model(config, device="meta", dtype=dtype)
    state = model.state_dict(keep_vars=True)  # the tensors themselves: a tie is one object
    expected = {name: tuple(t.shape) for name, t in state.items()}
    aliases: dict[int, list[str]] = {}
    for name, tensor in state.items():
        aliases.setdefault(id(tensor), []).append(name)
    missing = [
        name for names in aliases.values() if not any(a in header for a in names) for name in names
    ]
    unexpected = sorted(set(header) - set(expected))
    wrong = [
        f"{name} (file {list(header[name][1])}, model {list(shape)})"
        for name, shape in expected.items()
        if name in header and header[name][1] != shape
    ]
    if missing or unexpected or wrong:
        raise _misfit(path, "do not fit its config", missing, unexpected, wrong)
    check_memory_budget(model, device=device, max_memory=max_memory, origin=origin)


def check_memory_budget(
    model: nn.Module,
    *,
    device: torch.device | str | None = None,
    max_memory: int | str | None = None,
    origin: str = "the model",
) -> None:
    """Refuse a model (built on the meta device) whose parameters and buffers would not fit
    ``max_memory`` (bytes or "8GiB"; default: ``USABLE_FRACTION`` of the memory available
    on ``device``) once allocated there."""
    from blockdsl.train import memory
    from blockdsl.train.settings import parse_bytes

    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    needed = sum(t.numel() * t.element_size() for t in tensors.values())
    target = torch.device(device) if device is not None else torch.device("cpu")
    if max_memory is not None:
        limit: int | None = parse_bytes(max_memory, "max_memory")
    elif target.type == "meta":
        limit = None
    else:
        free = memory.available(target)
        limit = None if free is None else int(free * USABLE_FRACTION)
    if limit is not None and needed > limit:
        raise CheckpointError(
            f"the model of {origin} needs {needed:,} bytes of weights and buffers, over the "
            f"budget of {limit:,} bytes",
            hint="load it on a machine with more memory, or raise max_memory if this is wrong",
        )


def _in_file(exc: BlockDSLError, origin: str, modules: Mapping[str, str]) -> BlockDSLError:
    """Say that the error is in the stored config, and for a component no longer registered,
    which Python module had registered it."""
    for problem in exc.problems:
        problem.context = f"{problem.context} of {origin}" if problem.context else origin
        for name, module in modules.items():
            if f"'{name}'" in problem.message and not module.startswith("blockdsl."):
                problem.hint = f"'{name}' was registered by {module}: import it before loading"
    if exc.problems != [exc]:
        exc.context = exc.problems[0].context
    exc.args = (str(exc),)
    return exc


def _modules(metadata: Mapping[str, str]) -> dict[str, str]:
    try:
        modules = json.loads(metadata.get("blockdsl_modules", "{}"))
    except ValueError:
        return {}
    return modules if isinstance(modules, dict) else {}


def _fill(model: nn.Module, state: dict[str, torch.Tensor], path: Path, verdict: str) -> None:
    """Copy the stored tensors in; a name stored once for several aliases (tied weights)
    fills them all. Every parameter and buffer must be given, with its shape."""
    expected = model.state_dict()
    aliases: dict[Any, list[str]] = {}  # names of one tensor (a tied head and its embedding)
    for name, tensor in expected.items():
        key = (tensor.data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        aliases.setdefault(key if tensor.numel() else name, []).append(name)
    missing, wrong = [], []
    filled: dict[str, torch.Tensor] = {}
    for names in aliases.values():
        source = next((n for n in names if n in state), None)
        if source is None:
            missing.extend(names)
            continue
        for name in names:
            filled[name] = state[source]
    unexpected = sorted(set(state) - set(expected))
    for name, tensor in filled.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            wrong.append(f"{name} (file {list(tensor.shape)}, model {list(expected[name].shape)})")
    if missing or unexpected or wrong:
        raise _misfit(path, verdict, missing, unexpected, wrong)
    model.load_state_dict(filled, strict=True)


# ==================================================================== generation inputs
def load_tokenizer(path: str | os.PathLike) -> Any:
    """The ``tokenizers.Tokenizer`` of a ``tokenizer.json`` file."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no tokenizer: {path} is missing", hint="generation needs the tokenizer.json"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path} is not a tokenizer.json: {_reason(exc)}") from None


def tokenizer_file(path: str | os.PathLike) -> Path | None:
    """The ``tokenizer.json`` that goes with what ``load(path)`` loads: its run's, or the one
    beside a model file of its own; None when there is none."""
    located = locate(path)
    home = located.run_dir if located.run_dir is not None else located.weights.parent
    return home / TOKENIZER if (home / TOKENIZER).is_file() else None


def load_generator(
    path: str | os.PathLike, *, device: torch.device | str | None = None
) -> tuple[LanguageModel, Any]:
    """The model (eval mode) and ``tokenizers.Tokenizer`` to generate from: what ``load``
    takes (a run: its newest checkpoint and its tokenizer; a checkpoint directory; a model
    file with a ``tokenizer.json`` beside it). For a Hugging Face folder:
    ``blockdsl.hf.load_generator``."""
    path = Path(path)
    model = load(path, device=device)
    tokenizer = tokenizer_file(path)
    if tokenizer is None:
        raise CheckpointError(
            f"no tokenizer: no {TOKENIZER} in the run of '{path}' or beside its model file",
            hint="generation needs the tokenizer.json the model was trained with",
        )
    return model, load_tokenizer(tokenizer)


# ==================================================================== run directories
@dataclass
class Checkpoint:
    """One complete checkpoint of a run: ``RUN/checkpoints/step_NNNNNNN``."""

    path: Path
    step: int

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def state(self) -> Path:
        return self.path / STATE

    @property
    def run_dir(self) -> Path:
        return self.path.parent.parent


def checkpoints(run_dir: str | os.PathLike) -> list[Checkpoint]:
    """The run's complete checkpoints, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.fullmatch(child.name)
        if match and child.is_dir():
            found.append(Checkpoint(child, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest(run_dir: str | os.PathLike, step: int | None = None) -> Checkpoint | None:
    """The run's newest checkpoint (or the one of ``step``); None when there is none."""
    found = [c for c in checkpoints(run_dir) if step is None or c.step == step]
    return found[-1] if found else None


def is_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run directory (it has a ``config.toml``)."""
    return (Path(path) / CONFIG).is_file()


def run_is_empty(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds nothing but (possibly) its lock file."""
    return not run_dir.is_dir() or all(p.name == LOCK for p in run_dir.iterdir())


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module | None,
    state: dict[str, Any],
    keep: int,
    group: Any = None,
    write_shards: Callable[[Path], None] | None = None,
) -> Checkpoint:
    """Write the checkpoint of ``step`` atomically, then drop all but the newest ``keep``.

    The checkpoint goes into a temporary directory beside the others, renamed into place with
    ``os.replace``: a kill during a write leaves the previous checkpoints intact, and a
    directory named ``step_*`` is always complete. ``state.pt`` records the weights' SHA-256,
    checked on loading.

    In a distributed run every rank calls it with its ``group``: ``write_shards(directory)``
    (collective) writes the sharded state into the temporary directory, rank 0 alone writes
    ``model`` (its whole-weights copy; None elsewhere) and ``state``, renames and prunes."""
    main = group is None or group.main
    root = Path(run_dir) / CHECKPOINTS
    final = root / _step_name(step)
    tmp = root / f"{_TMP_PREFIX}{step:07d}-{os.getpid()}"
    if group is not None:
        # one temporary directory for all ranks, and one answer to "saved already?"
        tmp, done = group.on_main(lambda: (tmp, final.is_dir()))
    else:
        done = final.is_dir()
    if done:  # already saved at this step (the end of a run that saved at save_every)
        return Checkpoint(final, step)
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    if write_shards is not None:
        group.barrier()  # the directory exists before any rank writes into it
        write_shards(tmp / SHARDED_DIR)  # collective: returns once every rank's shards are in
    if main:
        assert model is not None
        save(model, tmp / WEIGHTS, metadata={"step": str(step)})
        payload = {
            "format": STATE_FORMAT,
            "version": 1,
            "step": step,
            "weights_sha256": _sha256(tmp / WEIGHTS),
            **state,
        }
        if write_shards is not None:
            payload["sharded"] = SHARDED_DIR
        with writing(tmp / STATE, "training state"):  # a full disk: a BlockDSLError
            torch.save(payload, tmp / STATE)
        for name in (WEIGHTS, STATE):
            _fsync(tmp / name)
        os.replace(tmp, final)
        _fsync(root)
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old.path, ignore_errors=True)
        for stale in root.glob(f"{_TMP_PREFIX}*"):  # left by a run killed while writing
            if stale != tmp:
                shutil.rmtree(stale, ignore_errors=True)
    if group is not None:
        group.barrier()  # no rank goes on (or reads checkpoints) before the rename
    return Checkpoint(final, step)


STATE_FORMAT = "blockdsl-train-state"
MAX_STEP = 10**12  # far beyond any run: a larger step in a state.pt is damage, not progress


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """The training state of ``checkpoint`` (``state.pt``, read with ``weights_only``),
    validated: its step is the directory's, its counters are in range, and the weights file
    has the checksum it recorded. ``state["sharded"]`` names the directory of a distributed
    run's sharded state."""
    try:
        state = torch.load(checkpoint.state, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint.state} is missing") from None
    except Exception as exc:  # truncated or foreign pickles fail in many ways
        raise CheckpointError(
            f"{checkpoint.state} is not a readable training state (truncated or foreign): "
            f"{_reason(exc)}",
            hint=_older_hint(checkpoint),
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"{checkpoint.state} is not a blockdsl training state", hint=_older_hint(checkpoint)
        )
    _check_counters(checkpoint, state)
    recorded = state.get("weights_sha256")
    if recorded is not None and _sha256(checkpoint.weights) != recorded:
        raise CheckpointError(
            f"{checkpoint.weights} is not the file this checkpoint saved (its SHA-256 differs "
            f"from the one {checkpoint.state} records): damaged or replaced",
            hint=_older_hint(checkpoint),
        )
    sharded = state.get("sharded")
    if sharded is not None and not (checkpoint.path / str(sharded) / ".metadata").is_file():
        raise CheckpointError(
            f"{checkpoint.path / str(sharded)} is missing or incomplete (no .metadata)",
            hint=_older_hint(checkpoint),
        )
    return state


def _check_counters(checkpoint: Checkpoint, state: dict[str, Any]) -> None:
    """The step, token and time counters of a state are numbers in range, the step the
    directory's own."""
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_STEP:
        raise CheckpointError(
            f"{checkpoint.state} records step {step!r}, not a step count",
            hint=_older_hint(checkpoint),
        )
    if step != checkpoint.step:
        raise CheckpointError(
            f"{checkpoint.state} records step {step} but sits in {checkpoint.path.name}",
            hint=_older_hint(checkpoint),
        )
    for key in ("tokens", "elapsed", "metrics_offset"):
        value = state.get(key, 0)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 2**62:
            raise CheckpointError(
                f"{checkpoint.state} records {key} {value!r}, out of range",
                hint=_older_hint(checkpoint),
            )


def _older_hint(checkpoint: Checkpoint) -> str | None:
    older = [c for c in checkpoints(checkpoint.run_dir) if c.step < checkpoint.step]
    if older:
        return f"move it away to resume from the previous checkpoint ({older[-1].path.name})"
    return None


def load_checkpoint(checkpoint: Checkpoint, model: nn.Module) -> dict[str, Any]:
    """Load the weights of ``checkpoint`` into ``model`` and return its training state."""
    state = load_state(checkpoint)
    load_weights(checkpoint.weights, model)
    return state


# ==================================================================== one owner per run
class RunInUse(CheckpointError):
    """Another live process owns the run directory."""


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Own ``run_dir`` for the life of the ``with``: an OS lock (``flock``) on ``RUN/.lock``,
    which holds this process's pid. A second owner gets ``RunInUse`` naming the holder's pid.
    The OS drops the lock when its process dies, so a lock left by a killed process is
    simply taken over. Creates ``run_dir``."""
    import fcntl

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} exists and is not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise CheckpointError(f"cannot lock {path}: {exc.strerror}") from None
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise RunInUse(
                f"{run_dir} is in use by another process (pid {holder})",
                hint="wait for it to finish, or choose another --out",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = [
    "CONFIG",
    "DATA",
    "FORMAT_VERSION",
    "METRICS",
    "SUMMARY",
    "TOKENIZER",
    "Checkpoint",
    "CheckpointError",
    "Located",
    "RunInUse",
    "checkpoints",
    "is_run",
    "latest",
    "load",
    "load_checkpoint",
    "load_generator",
    "load_state",
    "load_tokenizer",
    "load_weights",
    "locate",
    "read_config",
    "read_metadata",
    "resolve",
    "run_is_empty",
    "run_lock",
    "save",
    "save_checkpoint",
    "tokenizer_file",
]
