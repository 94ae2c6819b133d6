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

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["FORMAT_VERSION", "CheckpointError", "load", "read_metadata", "resolve", "save"]

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
    path = Path(path)
    if path.is_dir():
        if (path / "model.safetensors").is_file():
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
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file '{path}'")
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
) -> nn.Module:
    """The ``blockdsl.LanguageModel`` saved by ``blockdsl.save`` in ``path`` (a file, a
    checkpoint directory, or a training run directory: its newest checkpoint), in eval mode,
    with the stored dtype (or ``dtype``) on ``device`` (default: cpu)."""
    from blockdsl.config import from_dict
    from blockdsl.model import build_model

    path = resolve(path)
    metadata = read_metadata(path)
    origin = f"the config stored in '{path}'"
    text = metadata["blockdsl_config"]
    try:
        config = from_dict(tomllib.loads(text), origin=origin, text=text)
    except tomllib.TOMLDecodeError as exc:
        raise CheckpointError(f"the config stored in '{path}' is not TOML ({exc})") from None
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
