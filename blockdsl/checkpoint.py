"""Self-describing model files: ``blockdsl.save(model, path)`` and ``blockdsl.load(path)``.

A blockdsl checkpoint is one safetensors file. Its tensors are the model's ``state_dict``
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

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockdsl.errors import BlockDSLError, ConfigError
from blockdsl.untrusted import require_regular_file, writing

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "check_load_arguments",
    "check_memory_budget",
    "check_sizes_before_allocation",
    "declared_layers",
    "load",
    "read_metadata",
    "read_tensor_header",
    "resolve",
    "save",
]

FORMAT_VERSION = 1
_RESERVED = ("format", "blockdsl_format", "blockdsl_version", "blockdsl_config", "blockdsl_modules")


class CheckpointError(ConfigError):
    """A file that is not a readable blockdsl checkpoint (missing, truncated, foreign, from a
    newer format), or a save that would overwrite a file."""

    def _render_one(self) -> str:  # about a file, not a text: no position
        where = f" in {self.context}" if self.context else ""
        head = f"blockdsl: {self.message}{where}"
        return head if not self.hint else f"{head}\n  {self.hint}"


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
    from blockdsl import __version__
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


def resolve(path: str | os.PathLike) -> Path:
    """The model file ``path`` stands for: the file itself; ``DIR/model.safetensors`` for a
    checkpoint directory; the newest checkpoint's for a training run directory
    (``RUN/checkpoints/step_NNNNNNN/model.safetensors``)."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"a model path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        if (path / "model.safetensors").exists():
            return path / "model.safetensors"
        steps = sorted(
            (int(p.name[5:]), p)
            for p in (path / "checkpoints").glob("step_*")
            if p.name[5:].isdigit() and (p / "model.safetensors").is_file()
        )
        if steps:
            return steps[-1][1] / "model.safetensors"
        raise CheckpointError(
            f"'{path}' is a directory with no model.safetensors and no checkpoints/step_*",
            hint="give a checkpoint file, a checkpoint directory or a training run directory",
        )
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a blockdsl checkpoint (reads the header only). Raises
    ``CheckpointError`` naming the file when it is missing, not safetensors, truncated, not a
    blockdsl checkpoint or written in a newer format."""
    path = resolve(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint file '{path}'")
    require_regular_file(path, "model file")
    from safetensors import safe_open

    _safetensors()
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors' own errors: the header is unreadable
        raise CheckpointError(
            f"'{path}' is not a readable safetensors file ({_reason(exc)})",
            hint="the file is truncated or of another format",
        ) from None
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
    return dict(metadata)


def _reason(exc: Exception) -> str:
    return str(exc).strip().split("\n")[0] or type(exc).__name__


def load(
    path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    max_memory: int | str | None = None,
) -> nn.Module:
    """The ``blockdsl.LanguageModel`` saved by ``blockdsl.save`` in ``path`` (a file, a
    checkpoint directory, or a training run directory: its newest checkpoint), in eval mode,
    with the stored dtype (or ``dtype``) on ``device`` (default: cpu).

    The stored config is untrusted: before anything is allocated, the model is built on the
    meta device and its tensors' shapes compared with the file's header, and a model larger
    than ``max_memory`` (bytes or "8GiB"; default: 80% of the memory available) is refused."""
    from blockdsl.config import from_dict
    from blockdsl.model import build_model

    device, dtype = check_load_arguments(device, dtype)
    path = resolve(path)
    metadata = read_metadata(path)
    origin = f"the config stored in '{path}'"
    text = metadata["blockdsl_config"]
    try:
        config = from_dict(tomllib.loads(text), origin=origin, text=text)
    except tomllib.TOMLDecodeError as exc:
        raise CheckpointError(f"the config stored in '{path}' is not TOML ({exc})") from None
    header = read_tensor_header(path)
    try:
        check_sizes_before_allocation(
            config, header, path, device=device, dtype=dtype, max_memory=max_memory
        )
    except CheckpointError:
        raise
    except BlockDSLError as exc:
        raise _in_file(exc, origin, _modules(metadata)) from None
    st = _safetensors()
    try:
        state = st.load_file(str(path))
    except Exception as exc:
        raise CheckpointError(
            f"cannot read the tensors of '{path}' ({_reason(exc)})",
            hint="the file is truncated or damaged",
        ) from None
    stored = next((t.dtype for t in state.values() if t.is_floating_point()), None)
    try:
        model = build_model(config, device=device, dtype=dtype or stored)
    except BlockDSLError as exc:
        raise _in_file(exc, origin, _modules(metadata)) from None
    _fill(model, state, path)
    return model.eval()


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
        problems = []
        if missing:
            problems.append(f"missing tensors: {', '.join(sorted(missing)[:8])}")
        if unexpected:
            problems.append(f"unexpected tensors: {', '.join(unexpected[:8])}")
        if wrong:
            problems.append(f"shape mismatches: {', '.join(sorted(wrong)[:8])}")
        raise CheckpointError(
            f"the tensors of '{path}' do not fit its config: " + "; ".join(problems)
        )
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


def _fill(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
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
        problems = []
        if missing:
            problems.append(f"missing tensors: {', '.join(sorted(missing)[:8])}")
        if unexpected:
            problems.append(f"unexpected tensors: {', '.join(unexpected[:8])}")
        if wrong:
            problems.append(f"shape mismatches: {', '.join(sorted(wrong)[:8])}")
        raise CheckpointError(
            f"the tensors of '{path}' do not fit its config: " + "; ".join(problems)
        )
    model.load_state_dict(filled, strict=True)
