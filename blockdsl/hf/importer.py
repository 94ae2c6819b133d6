"""Import Hugging Face ``transformers`` causal language models into blockdsl: the entry points.

>>> from blockdsl import hf
>>> model = hf.from_hf(hf_model)              # a transformers model object
>>> config = hf.to_config(hf_model.config)    # the blockdsl dict config alone
>>> model = hf.from_pretrained_dir("ckpt/")   # config.json + *.safetensors

Each architecture is one ``Architecture`` record in ``blockdsl.hf.base.ARCHITECTURES``
(registered by the family modules). Its config mapping makes an ordinary blockdsl config (a
block string, ``[defaults]``, embed and head chains) built with ``build_model``; then every
weight is mapped by name. A weight the config expects but the checkpoint lacks, or one the
checkpoint has but nothing uses, is an error that names it: nothing is silently dropped.
Non-persistent HF buffers (rotary ``inv_freq``, causal-mask ``bias``) are not weights; tied
weights (``lm_head`` = token embedding) are one parameter.

Dropout rates are not carried over (blockdsl's built-ins have no residual/embedding dropout);
evaluation is identical.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from blockdsl.hf import checks
from blockdsl.hf.base import (
    ARCHITECTURES,
    NON_PERSISTENT_BUFFERS,
    HFImportError,
    Tensor,
    WeightMapper,
    require_transformers,
    unsupported_model_type,
)

__all__ = [
    "config_from_dir",
    "convert_weights",
    "from_hf",
    "from_pretrained_dir",
    "load_generator",
    "load_weights",
    "to_config",
]


def _as_hf_config(hf_config: Any) -> Any:
    """A ``PretrainedConfig`` from a config, a model (its ``.config``) or a config.json dict."""
    if hasattr(hf_config, "config") and hasattr(hf_config, "state_dict"):
        hf_config = hf_config.config
    if isinstance(hf_config, Mapping):
        data = dict(hf_config)
        model_type = data.pop("model_type", None)
        if model_type is None:
            raise HFImportError("a Hugging Face config dict needs a 'model_type'")
        hf_config = require_transformers().AutoConfig.for_model(model_type, **data)
    if not hasattr(hf_config, "model_type"):
        raise HFImportError(
            f"expected a transformers config, model or config dict, got {type(hf_config).__name__}"
        )
    return hf_config


def _model_type(cfg: Any) -> str:
    model_type = cfg.model_type
    if model_type not in ARCHITECTURES:
        raise unsupported_model_type(model_type)
    return model_type


def to_config(hf_config: Any) -> dict:
    """The blockdsl dict config (``{"model", "blocks", "defaults"}``) equivalent to a Hugging Face
    config (a ``PretrainedConfig``, a model, or a ``config.json`` dict)."""
    cfg = _as_hf_config(hf_config)
    model_type = _model_type(cfg)
    arch = ARCHITECTURES[model_type]
    config = arch.config(cfg)
    config["model"]["description"] = f"imported from Hugging Face {arch.hf_class}"
    return config


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def convert_weights(hf_config: Any, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a Hugging Face state dict to blockdsl parameter names (the model of
    ``to_config(hf_config)``). Raises ``HFImportError`` naming every missing or unused weight."""
    cfg = _as_hf_config(hf_config)
    model_type = _model_type(cfg)
    source = {k: v for k, v in state_dict.items() if not NON_PERSISTENT_BUFFERS.search(k)}
    arch = ARCHITECTURES[model_type]
    prefix = arch.prefix + "."
    if source and not any(k.startswith(prefix) for k in source):  # saved from the base model
        source = {
            k if k.split(".")[0] in arch.outside else prefix + k: v for k, v in source.items()
        }
    m = WeightMapper(source)
    arch.weights(cfg, m)
    problems = []
    if m.missing:
        problems.append(f"missing weights: {_listing(m.missing)}")
    unused = sorted(set(source) - m.used)
    if unused:
        problems.append(f"unused weights: {_listing(unused)}")
    if problems:
        raise HFImportError(
            f"{model_type} checkpoint does not match its config: " + "; ".join(problems),
            hint="every weight must be used exactly once (nothing is silently dropped)",
        )
    return m.out


def load_weights(model: torch.nn.Module, weights: Mapping[str, Tensor]) -> None:
    """Copy converted weights into a blockdsl model's parameters and persistent buffers
    (shared parameters once); every one must be given, with its exact shape."""
    params = dict(model.named_parameters())
    persistent = model.state_dict(keep_vars=True)
    params.update((n, b) for n, b in model.named_buffers() if n in persistent)
    missing = sorted(set(params) - set(weights))
    extra = sorted(set(weights) - set(params))
    wrong = sorted(
        f"{n} (checkpoint {list(weights[n].shape)}, model {list(params[n].shape)})"
        for n in set(params) & set(weights)
        if tuple(weights[n].shape) != tuple(params[n].shape)
    )
    problems = []
    if missing:
        problems.append(f"parameters without a weight: {_listing(missing)}")
    if extra:
        problems.append(f"weights for no parameter: {_listing(extra)}")
    if wrong:
        problems.append(f"shape mismatches: {_listing(wrong)}")
    if problems:
        raise HFImportError("converted weights do not fit the built model: " + "; ".join(problems))
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name].to(device=param.device, dtype=param.dtype))


def _build(config: dict, dtype: torch.dtype | None, device: Any = None) -> torch.nn.Module:
    from blockdsl.model import build_model  # the model stage; imported on use, as transformers

    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device is not None:
        kwargs["device"] = device
    return build_model(config, **kwargs)


def _floating_dtype(tensors: Mapping[str, Tensor]) -> torch.dtype | None:
    for t in tensors.values():
        if t.is_floating_point():
            return t.dtype
    return None


def from_hf(hf_model: torch.nn.Module, *, dtype: torch.dtype | None = None, device: Any = None):
    """A ``blockdsl.LanguageModel`` computing the same function as a transformers causal LM
    (``GPT2LMHeadModel``, ``LlamaForCausalLM``, ``MistralForCausalLM``, ``MixtralForCausalLM``,
    ``Gemma2ForCausalLM``, ``GPTNeoXForCausalLM``, ``GPTJForCausalLM``), with its weights.

    ``dtype`` defaults to the HF model's; the result is in eval mode if the HF model is."""
    cfg = _as_hf_config(hf_model.config)
    config = to_config(cfg)
    weights_too = ARCHITECTURES[cfg.model_type].buffers
    buffers = {
        name
        for name, _ in hf_model.named_buffers()
        if not (weights_too and name.endswith(weights_too))
    }
    state = {k: v for k, v in hf_model.state_dict().items() if k not in buffers}
    weights = convert_weights(cfg, state)
    model = _build(config, dtype or _floating_dtype(state), device)
    load_weights(model, weights)
    model.train(hf_model.training)
    return model


def config_from_dir(path: str | os.PathLike) -> dict:
    """The blockdsl config of a local Hugging Face checkpoint folder, from its ``config.json``
    alone: enough to check, tabulate or emit the model without reading any weights."""
    path = os.fspath(path)
    require_transformers()  # without it nothing below can work: say so first
    checks.read_hf_config(path, tuple(ARCHITECTURES))  # untrusted: checked before parsing
    return to_config(_auto_config(path))


def _auto_config(path: str) -> Any:
    """``AutoConfig.from_pretrained`` on a folder whose config.json ``checks`` passed; what
    transformers' own validation still refuses (an odd rotary dimension...) is an
    ``HFImportError`` naming the file, not transformers' exception."""
    transformers = require_transformers()
    try:
        return transformers.AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise HFImportError(
            f"transformers refuses {path}/config.json: {str(exc).strip().splitlines()[0]}"
        ) from None


def from_pretrained_dir(
    path: str | os.PathLike, *, dtype: torch.dtype | None = None, device: Any = None
):
    """A ``blockdsl.LanguageModel`` from a local Hugging Face checkpoint folder: ``config.json``
    (read with ``transformers.AutoConfig``) and ``*.safetensors`` weights (all shards). The
    folder is untrusted: its config, the weight files' headers, the layer count and the
    memory the model needs are checked before any tensor is read."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise HFImportError(f"'{path}' is not a folder (expected config.json + *.safetensors)")
    require_transformers()  # without it nothing below can work: say so first
    checks.read_hf_config(path, tuple(ARCHITECTURES))  # untrusted: checked before parsing
    cfg = _auto_config(path)
    files = [f.name for f in checks.weight_files(path)]  # regular, complete files only
    try:
        from safetensors.torch import load_file
    except ImportError as error:  # pragma: no cover
        raise HFImportError(
            "reading checkpoints needs the optional dependency 'safetensors'",
            hint="install it with: pip install 'blockdsl[hf]'",
        ) from error
    config = to_config(cfg)
    shapes = {k: v for f in files for k, v in checks.check_safetensors_file(f"{path}/{f}").items()}
    checks.check_layer_count(config, shapes, f"{path}/config.json")
    checks.check_model_memory(config, dtype, device, f"{path}/config.json")
    state: dict[str, Tensor] = {}
    for name in files:
        state.update(load_file(os.path.join(path, name)))
    weights = convert_weights(cfg, state)
    model = _build(config, dtype or _floating_dtype(state), device)
    load_weights(model, weights)
    model.eval()
    return model


def load_generator(path: str | os.PathLike, *, device: Any = None) -> tuple[Any, Any]:
    """The model (eval mode) and ``tokenizers.Tokenizer`` of a Hugging Face checkpoint folder
    (``config.json``, ``*.safetensors``, ``tokenizer.json``), to generate from."""
    from blockdsl.checkpoint import TOKENIZER, load_tokenizer

    if not os.path.exists(path):
        raise HFImportError(f"'{path}' does not exist", hint="give a Hugging Face folder")
    return from_pretrained_dir(path, device=device), load_tokenizer(os.path.join(path, TOKENIZER))
