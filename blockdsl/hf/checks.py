"""Checks of a Hugging Face checkpoint folder before it is parsed, converted or allocated.

A folder is untrusted input: its ``config.json`` may hold strings or fractions where sizes
belong, zero heads, JSON of another shape, an unknown ``model_type``; its ``eos_token_id``
anything; its weight files may be truncated, or be FIFOs that block a reader forever; and its
sizes may declare a model far larger than the weights it ships. Each is refused here with an
``HFImportError`` naming the file and the field, before transformers, safetensors or torch see
it. The importer calls these functions (one line each).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from blockdsl.errors import BlockDSLError
from blockdsl.hf.base import HFImportError, unsupported_model_type
from blockdsl.untrusted import read_json_object, require_regular_file

#: integer sizes a config.json may hold that must be at least 1 where present
POSITIVE_SIZE_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "n_embd",
    "n_layer",
    "n_head",
    "n_positions",
    "d_model",
)
#: integer sizes that may be 0 (no experts, no rotary part, no window) but nothing else
SIZE_KEYS = (
    "intermediate_size",
    "n_inner",
    "ffn_dim",
    "moe_intermediate_size",
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "rotary_dim",
    "sliding_window",
    "state_size",
    "conv_kernel",
)
#: positive finite numbers a config.json may hold
POSITIVE_KEYS = (
    "rms_norm_eps",
    "layer_norm_eps",
    "layer_norm_epsilon",
    "norm_eps",
    "rope_theta",
    "rotary_emb_base",
)
#: the largest size accepted in any field (sizes beyond it are not models this runs)
MAX_SIZE = 2**31 - 1
#: the largest token id accepted as an end-of-sequence id
MAX_TOKEN_ID = 2**31 - 1
#: layers a config may declare beyond those its weights hold before it is refused unexpanded
LAYER_SLACK = 1024


def _error(message: str, hint: str | None = None) -> BlockDSLError:
    return HFImportError(message, hint=hint)


def read_hf_config(folder: str | os.PathLike, supported: Sequence[str] = ()) -> dict[str, Any]:
    """``config.json`` of ``folder`` as a dict, refused unless it is a regular file holding a
    JSON object with a string ``model_type`` (one of ``supported`` when given), integer sizes
    ``≥ 1`` and positive finite epsilons and rotary bases."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise _error(f"no config.json in '{folder}' (expected a Hugging Face checkpoint)")
    data = read_json_object(path, "Hugging Face config")
    model_type = data.get("model_type")
    if not isinstance(model_type, str):
        raise _error(f"{path}: 'model_type' must be a string, got {model_type!r}")
    if supported and model_type not in supported:
        raise unsupported_model_type(model_type, where=f"{path}: ")
    check_hf_values(data, str(path))
    return data


def check_hf_values(data: Mapping[str, Any], where: str = "config.json") -> None:
    """Sizes are integers in ``1 ... MAX_SIZE``; epsilons and rotary bases finite and > 0 (a
    zero base or a NaN epsilon makes every output NaN). Nested sub-configs (``text_config``)
    are checked the same way."""
    for key in (*POSITIVE_SIZE_KEYS, *SIZE_KEYS):
        if key not in data or data[key] is None:
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error(f"{where}: '{key}' must be an integer, got {value!r}")
        low = 1 if key in POSITIVE_SIZE_KEYS else 0
        if not low <= value <= MAX_SIZE:
            raise _error(f"{where}: '{key}' must be between {low} and {MAX_SIZE:,}, got {value}")
    for key in POSITIVE_KEYS:
        if key not in data or data[key] is None:
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _error(f"{where}: '{key}' must be a number, got {value!r}")
        if not 0 < value < math.inf:
            raise _error(f"{where}: '{key}' must be a finite number > 0, got {value!r}")
    for key, value in data.items():
        if key.endswith("_config") and isinstance(value, Mapping):
            check_hf_values(value, f"{where} ({key})")


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The ``*.safetensors`` files of ``folder``, sorted, each a regular file whose header
    parses and whose tensors lie exactly within it (a truncated shard is refused here, not
    half-read)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".safetensors"))
    if not files:
        raise _error(f"no *.safetensors weights in '{folder}'")
    for path in files:
        check_safetensors_file(path)
    return files


def check_safetensors_file(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """``name -> shape`` of a safetensors file, after checking that it is a regular file, that
    its header parses, and that the header's data offsets cover the rest of the file exactly."""
    from blockdsl.checkpoint import CheckpointError, read_tensor_header

    path = require_regular_file(path, "weights file")
    try:
        header = read_tensor_header(path)
    except CheckpointError as exc:
        raise _error(exc.message, hint="the file is truncated or damaged") from None
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
    end = _data_end(path, length)
    if 8 + length + end != size:
        raise _error(
            f"'{path}' is {size:,} bytes but its header describes {8 + length + end:,}",
            hint="the file is truncated or damaged: download it again",
        )
    return {name: shape for name, (_, shape) in header.items()}


def weight_shapes(paths: Sequence[str | os.PathLike]) -> dict[str, tuple[int, ...]]:
    """``name -> shape`` of every tensor in the safetensors files ``paths`` (headers only)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in paths:
        shapes.update(check_safetensors_file(path))
    return shapes


def _data_end(path: Path, length: int) -> int:
    """The largest end offset the header gives any tensor's data."""
    import json

    with open(path, "rb") as handle:
        handle.seek(8)
        header = json.loads(handle.read(length))
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__"
        and isinstance(entry.get("data_offsets"), list)
        and len(entry["data_offsets"]) == 2
        and all(isinstance(n, int) for n in entry["data_offsets"])
    ]
    if len(ends) != sum(1 for name in header if name != "__metadata__"):
        raise _error(f"'{path}' has a tensor without valid data offsets in its header")
    return max(ends, default=0)


def check_layer_count(config: Mapping[str, Any], shapes: Mapping[str, Any], where: str) -> None:
    """Refuse a converted config that declares far more layers than the weights hold, before
    its plan is expanded (a 100 KB folder may declare 100,000 layers)."""
    from blockdsl.checkpoint import declared_layers

    declared = declared_layers(str(config["model"]["layers"]))
    stored = _weight_layers(shapes)
    if declared > stored + LAYER_SLACK:
        raise _error(
            f"{where} declares {declared:,} layers, but its weights hold {stored:,}",
            hint="config.json was altered, or the weights belong to another model",
        )


def _weight_layers(names: Mapping[str, Any]) -> int:
    """Layers the weights hold: one more than the largest first numeric part of a name
    (``model.layers.11.mlp...``, ``transformer.h.11...``)."""
    indices = []
    for name in names:
        match = re.search(r"(?:^|\.)(\d+)\.", name)
        if match:
            indices.append(int(match.group(1)))
    return max(indices) + 1 if indices else 0


def check_model_memory(
    config: Mapping[str, Any], dtype: Any, device: Any, where: str, max_memory: Any = None
) -> None:
    """Refuse a converted config whose model would not fit the memory budget (as
    ``blockdsl.load``: ``max_memory``, default a share of the memory available), counted on
    the meta device."""
    from blockdsl.checkpoint import check_memory_budget
    from blockdsl.model import build_model

    model = build_model(dict(config), device="meta", dtype=dtype)
    check_memory_budget(model, device=device, max_memory=max_memory, origin=where)


def eos_token_ids(value: Any, where: str = "config.json") -> list[int]:
    """The end-of-sequence ids of a ``eos_token_id`` value (an id, a list of ids, or None):
    each an integer in ``0 ... MAX_TOKEN_ID``."""
    if value is None:
        return []
    ids = value if isinstance(value, list) else [value]
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token <= MAX_TOKEN_ID:
            raise _error(
                f"{where}: eos_token_id must be a token id or a list of token ids, got {value!r}"
            )
    return list(ids)


__all__ = [
    "LAYER_SLACK",
    "MAX_SIZE",
    "MAX_TOKEN_ID",
    "POSITIVE_KEYS",
    "POSITIVE_SIZE_KEYS",
    "SIZE_KEYS",
    "check_hf_values",
    "check_layer_count",
    "check_model_memory",
    "check_safetensors_file",
    "eos_token_ids",
    "read_hf_config",
    "weight_files",
    "weight_shapes",
]


def eos_ids(path: str | os.PathLike) -> list[int]:
    """The end-of-sequence token ids a Hugging Face folder's ``config.json`` names (its
    ``generation_config.json`` first), for ``stop``; empty when it names none."""
    for name in ("generation_config.json", "config.json"):
        file = Path(path) / name
        if file.exists():
            ids = eos_token_ids(read_json_object(file).get("eos_token_id"), str(file))
            if ids:
                return ids
    return []
