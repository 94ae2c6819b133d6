"""Initialisation schemes: the ``[init]`` table of a model (docs/configs.md, "Initialisation").

A scheme initialises the parameters of every component that declares ``init_roles``
(``register``): each parameter plays a role, and the scheme gives each role its distribution.
Biases of those parameters start at zero. Components that declare no roles (Mamba's dt and A,
RWKV-7's decays, long convolutions, norms) keep the initialisation of their reference under
every scheme, as their constructors draw it.

==========  ===============================================================================
``torch``   nothing is redrawn: each component's constructor init (``nn.Linear``'s uniform
            ``±1/sqrt(fan_in)``, embeddings N(0, 0.02)); the default
``gpt2``    GPT-2 / nanoGPT: weights N(0, ``std``), residual output projections (attention
            ``o``, MLP ``down``) N(0, ``std / sqrt(2 * layers)``), embeddings N(0,
            ``embed_std``), zero biases
``llama``   Hugging Face ``LlamaPreTrainedModel``: every weight N(0, ``std``)
            (``initializer_range``), embeddings too, zero biases; no depth scaling
``xavier``  the original Transformer (fairseq, tensor2tensor): weights Xavier-uniform
            (``±sqrt(6 / (fan_in + fan_out))``), embeddings N(0, ``embed_std``, default
            ``d_model ** -0.5``), zero biases
``mup``     maximal update parametrisation (Tensor Programs V) around ``base_width``:
            hidden weights N(0, ``std * sqrt(base_width / d_model)``) (variance 1/fan_in),
            AdamW learning rate of hidden weights times ``base_width / d_model`` (Muon's:
            ``sqrt(base_width / d_model)``, see ``lr_multipliers``), embeddings and the readout
            at constant ``std`` and learning rate, attention scores scaled by 1/head_dim and
            logits by ``readout_mult * base_width / d_model`` (``parametrised_defaults``);
            at ``d_model == base_width`` it is the standard parametrisation
==========  ===============================================================================

Keys: ``scheme``, ``std`` (0.02), ``fan_in_gain`` (hidden and output weights N(0,
``fan_in_gain / sqrt(fan_in)``) instead of N(0, ``std``): variance 1/fan_in, modded-nanogpt's
0.5), ``embed_std`` (default: ``std``), ``depth_scaled`` (output
projections divided by ``sqrt(2 * layers)``; default true for ``gpt2`` only), ``zero_out``
(output projections start at zero, modded-nanogpt), ``zero_readout`` (an untied head starts at
zero), ``base_width`` and ``readout_mult`` (``mup`` only). A call's own ``init_std``
(``MLP(init_std=0)``) overrides the scheme for that call's weights. Importing weights
(``from_hf``, ``--init``) replaces whatever was drawn here.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass, fields
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

import torch
from torch import nn

from blockdsl.config import ModelConfig, _valid_hint
from blockdsl.errors import ConfigError
from blockdsl.lower import component_modules
from blockdsl.registry import Registry

SCHEMES = ("torch", "gpt2", "llama", "xavier", "mup")


@dataclass(frozen=True)
class InitScheme:
    """A resolved ``[init]`` table (the module docstring describes each key)."""

    scheme: str = "torch"
    std: float = 0.02
    fan_in_gain: float | None = None
    embed_std: float | None = None
    depth_scaled: bool | None = None
    zero_out: bool = False
    zero_readout: bool = False
    base_width: int | None = None
    readout_mult: float = 1.0

    def embedding_std(self, d_model: int) -> float:
        if self.embed_std is not None:
            return self.embed_std
        return d_model**-0.5 if self.scheme == "xavier" else self.std

    @property
    def scales_by_depth(self) -> bool:
        return self.scheme == "gpt2" if self.depth_scaled is None else self.depth_scaled

    def width_ratio(self, d_model: int) -> float:
        """``base_width / d_model`` under ``mup`` (1 otherwise): how much smaller a hidden
        weight's init variance and AdamW step are than at the base width."""
        if self.scheme != "mup" or self.base_width is None:
            return 1.0
        return self.base_width / d_model


_FLOAT_KEYS = ("std", "fan_in_gain", "embed_std", "readout_mult")
_BOOL_KEYS = ("depth_scaled", "zero_out", "zero_readout")
_MUP_ONLY = ("base_width", "readout_mult")


def resolve_init(config: ModelConfig) -> InitScheme:
    """The validated ``[init]`` table of ``config`` (errors point at the key)."""
    table = dict(config.init)
    valid = [f.name for f in fields(InitScheme)]
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in valid:
            raise config.error(
                f"unknown [init] key '{key}'", key, hint=_valid_hint(key, valid, "valid keys")
            )
        values[key] = _coerce(config, key, value)
    scheme = values.get("scheme", "torch")
    if scheme == "torch" and set(values) - {"scheme"}:
        key = sorted(set(values) - {"scheme"})[0]
        raise config.error(
            f"[init] {key} has no effect under scheme 'torch' (each component's own init)",
            key,
            hint="choose a scheme: " + ", ".join(s for s in SCHEMES if s != "torch"),
        )
    if scheme == "mup" and "base_width" not in values:
        raise config.error(
            "[init] scheme 'mup' needs base_width: the width whose hyperparameters transfer",
            "scheme",
            hint=f"e.g. base_width = {config.d_model} (the standard parametrisation at this width)",
        )
    for key in _MUP_ONLY:
        if key in values and scheme != "mup":
            raise config.error(f"[init] {key} is a setting of scheme 'mup' only", key)
    return InitScheme(**values)


def _coerce(config: ModelConfig, key: str, value: Any) -> Any:
    def bad(what: str) -> ConfigError:
        return config.error(f"[init] {key} must be {what}, got {value!r}", key)

    if key == "scheme":
        if value not in SCHEMES:
            raise config.error(
                f"[init] scheme must be one of {', '.join(SCHEMES)}, got {value!r}",
                key,
                hint=_valid_hint(str(value), SCHEMES, "schemes"),
            )
        return value
    if key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if key == "base_width":
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad("a positive integer")
        return value
    if key in _FLOAT_KEYS:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise bad("a finite number >= 0")
        return float(value)
    raise AssertionError(f"unhandled [init] key {key}")  # every field is handled above


# ==================================================================== call arguments
def parametrised_defaults(config: ModelConfig, registry: Registry) -> dict[str, dict[str, Any]]:
    """``config.defaults`` with what the scheme sets per call: under ``mup``, ``Attn`` scores
    scaled by 1/head_dim (``sqrt(base_head_dim) / head_dim``, equal to the usual
    ``head_dim ** -0.5`` at the base width) and the ``Head``'s logits multiplied by
    ``readout_mult * base_width / d_model``. An argument the configuration sets itself (in
    ``[defaults]`` or in a call) is kept: a call that changes ``heads`` should set its own
    ``scale``."""
    scheme = resolve_init(config)
    defaults = {name: dict(args) for name, args in config.defaults.items()}
    if scheme.scheme != "mup":
        return defaults
    ratio = scheme.width_ratio(config.d_model)
    head = defaults.setdefault("Head", {})
    head["scale"] = head.get("scale", 1.0) * scheme.readout_mult * ratio
    for name in ("Attn", "CrossAttn"):
        if name not in registry:
            continue
        args = defaults.setdefault(name, {})
        if args.get("scale") is not None or args.get("head_dim") is not None:
            continue  # a fixed head size: 1/sqrt(head_dim) does not change with width
        heads = args.get("heads", registry.get(name).params["heads"].default)
        head_dim = config.d_model // heads
        base_head_dim = max(1.0, head_dim * ratio)
        args["scale"] = math.sqrt(base_head_dim) / head_dim
    return defaults


# ==================================================================== parameters
class RoledParameter(NamedTuple):
    """One parameter of a component that declares ``init_roles``: its path in the model,
    role, whether it is a bias, and the ``init_std`` of its call (None: the scheme's)."""

    path: str
    parameter: nn.Parameter
    role: str
    bias: bool
    call_std: float | None


def roled_parameters(model: nn.Module) -> Iterator[RoledParameter]:
    """Every distinct parameter that some component's ``init_roles`` names, embedding first
    (a tied head's weight is the embedding's, met as the embedding). ``model`` is a
    ``LanguageModel`` (read by its ``blocks()``)."""
    seen: set[int] = set()
    paths = ["embed", *(f"layers.{i}" for i in range(len(model.layers))), "head"]
    for prefix, block in zip(paths, model.blocks()):
        for where, spec, module in component_modules(block, f"{prefix}."):
            roles = spec.component.init_roles
            if not roles:
                continue
            call_std = spec.args.get("init_std")
            for name, parameter in module.named_parameters():
                if id(parameter) in seen:
                    continue
                role = next((r for pattern, r in roles.items() if fnmatchcase(name, pattern)), None)
                if role is None:
                    continue
                seen.add(id(parameter))
                bias = name == "bias" or name.endswith(".bias")
                yield RoledParameter(f"{where}.{name}", parameter, role, bias, call_std)


def role_std(scheme: InitScheme, role: str, d_model: int, layers: int, fan_in: int) -> float:
    """The standard deviation the scheme draws a weight of ``role`` (``fan_in`` inputs) from
    (0: zeros)."""
    if role in ("embedding", "position"):
        return scheme.embedding_std(d_model)
    if role == "readout":
        return 0.0 if scheme.zero_readout else scheme.std
    if role == "router":
        return scheme.std
    if scheme.fan_in_gain is not None:  # hidden and output: variance 1/fan_in at any width
        std = scheme.fan_in_gain / math.sqrt(fan_in)
    else:
        std = scheme.std * math.sqrt(scheme.width_ratio(d_model))
    if role == "output":
        if scheme.zero_out:
            return 0.0
        if scheme.scales_by_depth:
            std /= math.sqrt(2 * layers)
    return std


@torch.no_grad()
def initialise(model: nn.Module) -> None:
    """Draw the parameters of ``model`` (a ``LanguageModel``) as its ``[init]`` scheme says.
    Under ``torch`` nothing is drawn; parameters on the meta device are left alone."""
    scheme = resolve_init(model.config)
    first = next(model.parameters(), None)
    if scheme.scheme == "torch" or first is None or first.is_meta:  # meta: shapes only
        return
    d_model, layers = model.config.d_model, len(model.layers)
    embedding_ids = set()
    for item in roled_parameters(model):
        if item.parameter.is_meta:
            continue
        if item.role == "embedding":
            embedding_ids.add(id(item.parameter))
        if item.bias:
            nn.init.zeros_(item.parameter)
            continue
        std = (
            item.call_std
            if item.call_std is not None
            else role_std(scheme, item.role, d_model, layers, item.parameter.shape[-1])
        )
        xavier = scheme.scheme == "xavier" and item.role not in ("embedding", "position")
        if item.call_std is None and xavier:
            nn.init.xavier_uniform_(item.parameter)
            continue
        if std == 0:
            nn.init.zeros_(item.parameter)
        else:
            nn.init.normal_(item.parameter, std=std)
    if scheme.zero_readout and not any(
        item.role == "readout" and not item.bias for item in roled_parameters(model)
    ):
        raise model.config.error(
            "[init] zero_readout zeroes an untied head, but this model's head is tied to the "
            "token embedding (or has no Head)",
            "zero_readout",
            hint='untie it: head = "Norm->Head"',
        )


def lr_multipliers(model: nn.Module, muon: Collection[int] = ()) -> dict[int, float]:
    """``{id(parameter): multiplier of the learning rate}`` for the parameters whose learning
    rate the scheme scales (the others: 1); ``muon`` are the ids of the parameters Muon
    trains. Under ``mup``: hidden and output weights trained by AdamW get ``base_width /
    d_model`` (Tensor Programs V, Table 3: matrix-like parameters); those trained by Muon get
    ``sqrt(base_width / d_model)``: Muon's orthogonalised update has spectral norm 1 and
    torch's ``match_rms_adamw`` multiplies it by ``0.2 * sqrt(max(fan_in, fan_out))``, so this
    keeps the update's spectral norm at a width-independent multiple of ``sqrt(fan_out /
    fan_in)``, the spectral condition for feature learning (Yang, Simon & Bernstein 2023).
    Embeddings, the readout, norms and biases are vector-like and keep 1."""
    scheme = resolve_init(model.config)
    ratio = scheme.width_ratio(model.config.d_model)
    if ratio == 1.0:
        return {}
    muon = set(muon)
    return {
        id(item.parameter): math.sqrt(ratio) if id(item.parameter) in muon else ratio
        for item in roled_parameters(model)
        if item.role in ("hidden", "output") and not item.bias
    }


__all__ = [
    "SCHEMES",
    "InitScheme",
    "RoledParameter",
    "initialise",
    "lr_multipliers",
    "parametrised_defaults",
    "resolve_init",
    "role_std",
    "roled_parameters",
]
