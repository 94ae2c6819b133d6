"""Model configurations (docs/configs.md): TOML files, dicts, keyword overrides and presets.

A configuration has three tables::

    [model]     vocab, d_model, context, layers, embed, head, max_params, description
    [blocks]    name = "block string"  or  name = ["branch", "branch"]   (parallel branches)
    [defaults]  Component = { arg = value, ... }

and an optional ``[init]`` (the initialisation scheme, validated by ``blockdsl.initialisation``
when the model is built).

Unknown keys are errors that list the valid ones. Overrides (``build_model(spec, d_model=512,
defaults={"Attn": {"heads": 4}})``) replace ``[model]`` keys and merge into ``[blocks]`` and
``[defaults]`` per key.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockdsl.errors import ConfigError, Span, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODEL_KEYS: dict[str, type] = {
    "vocab": int,
    "d_model": int,
    "context": int,
    "layers": str,
    "embed": str,
    "head": str,
    "max_params": int,
    "description": str,
}
# [init], [train], [optim] and [distill] are kept here as raw tables: blockdsl.initialisation
# validates [init] when the model is built, blockdsl.train the others when a run starts (the
# configuration of a training run lives in the model's TOML).
RUN_TABLES = ("init", "train", "optim", "distill")
TABLES = ("model", "blocks", "defaults", *RUN_TABLES)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model: ``build_model(config)`` or
    ``build_model(config.to_dict())``."""

    vocab: int = 4096
    d_model: int = 256
    context: int = 256
    layers: str = "block*4"
    embed: str = "Embed"
    head: str = "Norm->Head"
    max_params: int | None = None
    description: str = ""
    blocks: dict[str, str | list[str]] = field(default_factory=dict)
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)
    # Where the configuration came from and its text, for error messages; not part of it.
    origin: str = field(default="", compare=False)
    text: str = field(default="", compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        model = {k: getattr(self, k) for k in MODEL_KEYS if getattr(self, k) not in (None, "")}
        data = {
            "model": model,
            "blocks": copy.deepcopy(self.blocks),
            "defaults": copy.deepcopy(self.defaults),
        }
        for table in RUN_TABLES:
            if getattr(self, table):
                data[table] = copy.deepcopy(getattr(self, table))
        return data

    def to_toml(self) -> str:
        """The configuration as TOML text that loads back to an equal configuration."""
        data = self.to_dict()
        out = ["[model]"]
        out += [f"{key} = {_toml_value(value)}" for key, value in data["model"].items()]
        out += ["", "[blocks]"]
        out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data["blocks"].items()]
        out += ["", "[defaults]"]
        for component, args in data["defaults"].items():
            inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in args.items())
            out.append(f"{_toml_key(component)} = {{ {inner} }}")
        for table in RUN_TABLES:
            if table in data:
                out += ["", f"[{table}]"]
                out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data[table].items()]
        return "\n".join(out) + "\n"

    def locate(self, *path: str) -> Span:
        """The span of a key in the configuration's text (the whole text if not found)."""
        return _locate(self.text, path)

    def error(self, message: str, *path: str, hint: str | None = None) -> ConfigError:
        """An error pointing at the key in the text, or at nothing when the text does not hold
        it (a key given as an override, not written in the file)."""
        span = _find(self.text, path)
        return ConfigError(
            message,
            self.text if span is not None else None,
            span,
            hint=hint,
            context=self.origin or None,
        )


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    return repr(value)


def _find(text: str, path: tuple[str, ...]) -> Span | None:
    """The span of the last key of ``path`` found in ``text``: a ``key =`` line or a
    ``[key]`` table header (comments are not searched)."""
    if not text:
        return None
    code = re.sub(r"#[^\n]*", lambda m: " " * len(m.group()), text)  # offsets kept
    for key in reversed(path):
        table = re.search(rf"(?m)^[ \t]*\[[ \t]*({re.escape(key)})[ \t]*\]", code)
        if table:
            return Span.at(text, table.start(1), table.end(1))
        match = re.search(rf"(?m)(?<![\w.-])\"?{re.escape(key)}\"?\s*=", code)
        if match:
            start = match.start() + (1 if code[match.start()] == '"' else 0)
            return Span.at(text, start, start + len(key))
    return None


def _locate(text: str, path: tuple[str, ...]) -> Span:
    if not text:
        return Span(1, 1, 0, 0)
    found = _find(text, path)
    return found if found is not None else Span.at(text, 0, len(text.split("\n", 1)[0]))


# ==================================================================== presets
def presets_dir() -> Path:
    """The folder of preset TOML files: inside the installed package, or the repository's
    ``examples/`` when running from a checkout."""
    packaged = Path(__file__).parent / "examples"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "examples"


def list_presets() -> dict[str, Path]:
    return {path.stem: path for path in sorted(presets_dir().glob("*.toml"))}


# ==================================================================== loading
def load_config(spec: Any = "tiny", **overrides: Any) -> ModelConfig:
    """A ``ModelConfig`` from a preset name, a ``.toml`` path, a dict, a ``ModelConfig``, a
    block string or a list of strings (both: the ``tiny`` preset with that block), then
    ``overrides`` applied."""
    if isinstance(spec, ModelConfig):
        config = copy.deepcopy(spec)
    elif isinstance(spec, Mapping):
        config = from_dict(spec, origin="config dict")
    elif isinstance(spec, (list, tuple)):
        config = _preset("tiny")
        config.blocks = {"block": list(spec)}
    elif isinstance(spec, Path) or (
        isinstance(spec, str) and (spec.endswith(".toml") or Path(spec).is_file())
    ):
        config = load_toml(Path(spec))
    elif isinstance(spec, str) and spec in list_presets():
        config = _preset(spec)
    elif isinstance(spec, str):
        _refuse_mistyped_preset(spec)
        config = _preset("tiny")
        config.blocks = {"block": spec}
    else:
        raise ConfigError(f"cannot build a model from {type(spec).__name__}")
    return apply_overrides(config, overrides) if overrides else config


def _refuse_mistyped_preset(spec: str) -> None:
    """A bare name that is no component but close to a preset (``lama``) was meant as the
    preset: say so, instead of reporting an unknown component of the ``tiny`` block."""
    if not re.fullmatch(r"[A-Za-z_]\w*", spec):
        return
    from blockdsl.registry import REGISTRY

    presets = list(list_presets())
    if spec in REGISTRY or not did_you_mean(spec, presets):
        return
    raise ConfigError(
        f"unknown preset or component '{spec}'",
        spec,
        Span.at(spec, 0, len(spec)),
        hint=f"{did_you_mean(spec, presets)} (a preset; presets: {', '.join(presets)})",
    )


def _preset(name: str) -> ModelConfig:
    return load_toml(list_presets()[name], origin=f"preset '{name}'")


def load_toml(path: Path, origin: str | None = None) -> ModelConfig:
    from blockdsl.untrusted import require_regular_file

    require_regular_file(path, "config file")  # a FIFO named x.toml would block the read
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+), column (\d+)", str(exc))
        span = Span(1, 1, 0, 0)
        if match:
            line, column = int(match.group(1)), int(match.group(2))
            offset = sum(len(x) + 1 for x in text.split("\n")[: line - 1]) + column - 1
            span = Span.at(text, offset, offset + 1)
        message = str(exc).split(" (at")[0]
        raise ConfigError(f"invalid TOML: {message}", text, span, context=str(path)) from exc
    return from_dict(data, origin=origin or str(path), text=text)


def from_dict(data: Mapping[str, Any], *, origin: str = "", text: str = "") -> ModelConfig:
    """Validate a ``{"model": ..., "blocks": ..., "defaults": ...}`` mapping."""
    config = ModelConfig(origin=origin, text=text)
    for table in data:
        if table not in TABLES:
            raise config.error(
                f"unknown table [{table}]",
                table,
                hint=_valid_hint(table, TABLES, "valid tables"),
            )
    model = data.get("model", {})
    if not isinstance(model, Mapping):
        raise config.error("[model] must be a table", "model")
    for key, value in model.items():
        _set_model_key(config, key, value)
    blocks = data.get("blocks", {})
    if not isinstance(blocks, Mapping):
        raise config.error("[blocks] must be a table of block strings", "blocks")
    for name, value in blocks.items():
        _set_block(config, name, value)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise config.error("[defaults] must be a table of component tables", "defaults")
    for component, args in defaults.items():
        _set_defaults(config, component, args)
    for table in RUN_TABLES:
        _set_run_table(config, table, data.get(table, {}))
    return config


def _set_run_table(config: ModelConfig, table: str, values: Any) -> None:
    if not isinstance(values, Mapping):
        raise config.error(f"[{table}] must be a table, got {values!r}", table)
    getattr(config, table).update(dict(values))


def _valid_hint(name: str, valid: Any, what: str) -> str:
    close = did_you_mean(name, valid)
    listing = f"{what}: {', '.join(valid)}"
    return f"{close}\n{listing}" if close else listing


def _set_model_key(config: ModelConfig, key: str, value: Any) -> None:
    if key not in MODEL_KEYS:
        raise config.error(
            f"unknown [model] key '{key}'", key, hint=_valid_hint(key, MODEL_KEYS, "valid keys")
        )
    want = MODEL_KEYS[key]
    if want is int and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise config.error(f"[model] {key} must be a positive integer, got {value!r}", key)
    if want is str and not isinstance(value, str):
        raise config.error(f"[model] {key} must be a string, got {value!r}", key)
    setattr(config, key, value)


def _set_block(config: ModelConfig, name: str, value: Any) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise config.error(f"block name '{name}' is not a valid name", name)
    ok = isinstance(value, str) or (
        isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value)
    )
    if not ok:
        raise config.error(
            f"[blocks] {name} must be a block string or a list of them, got {value!r}", name
        )
    config.blocks[name] = list(value) if isinstance(value, (list, tuple)) else value


def _set_defaults(config: ModelConfig, component: str, args: Any) -> None:
    if not isinstance(args, Mapping):
        raise config.error(
            f"[defaults] {component} must be a table of arguments, got {args!r}", component
        )
    config.defaults.setdefault(component, {}).update(dict(args))


def apply_overrides(config: ModelConfig, overrides: Mapping[str, Any]) -> ModelConfig:
    """A copy of ``config`` with ``[model]`` keys replaced and ``blocks``/``defaults`` merged.
    Errors point at the override (``d_model = "abc"``), not at the file it overrides."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        text = f"{key} = {_toml_value(value)}"
        try:
            if key == "blocks":
                for name, block in dict(value).items():
                    _set_block(config, name, block)
            elif key == "defaults":
                for component, args in dict(value).items():
                    _set_defaults(config, component, args)
            elif key in RUN_TABLES:
                _set_run_table(config, key, value)
            elif key in MODEL_KEYS:
                _set_model_key(config, key, value)
            else:
                valid = [*MODEL_KEYS, "blocks", "defaults", *RUN_TABLES]
                raise ConfigError(
                    f"unknown configuration key '{key}'",
                    text,
                    Span.at(text, 0, len(key)),
                    hint=_valid_hint(key, valid, "valid keys"),
                    context="overrides",
                )
        except ConfigError as exc:
            if exc.context == "overrides":
                raise
            raise ConfigError(
                exc.message,
                text,
                Span.at(text, len(key) + 3, len(text)),
                hint=exc.hint,
                context="overrides",
            ) from None
        except (TypeError, ValueError) as exc:  # blocks/defaults that are not tables
            raise ConfigError(
                f"{key} must be a table, got {value!r}", text, context="overrides"
            ) from exc
    return config


def set_path(overrides: dict[str, Any], dotted: str, value: Any) -> None:
    """Record ``--set defaults.Attn.heads=4`` as ``{"defaults": {"Attn": {"heads": 4}}}``."""
    parts = dotted.split(".")
    if parts[0] == "model":
        parts = parts[1:]
    target = overrides
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"'{dotted}' sets inside a value that is not a table")
    target[parts[-1]] = value


__all__ = [
    "ModelConfig",
    "apply_overrides",
    "from_dict",
    "list_presets",
    "load_config",
    "load_toml",
    "set_path",
]
