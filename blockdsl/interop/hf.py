"""Import Hugging Face ``transformers`` causal language models into blockdsl.

>>> from blockdsl.interop import hf
>>> model = hf.from_hf(hf_model)              # a transformers model object
>>> config = hf.to_config(hf_model.config)    # the blockdsl dict config alone
>>> model = hf.from_pretrained_dir("ckpt/")   # config.json + *.safetensors

Supported (``config.model_type``): ``gpt2``, ``llama``, ``mistral``, ``mixtral``, ``gemma2``,
``gpt_neox``, ``gptj``, ``lfm2`` and ``qwen3_next`` (the ``...ForCausalLM`` / ``GPT2LMHeadModel``
classes); ``opt``, ``bloom``, ``mpt``, ``falcon``, ``phi`` and ``gpt_bigcode``
(``blockdsl.interop.hf_classic``); the state-space and hybrid ``mamba``, ``mamba2``,
``recurrent_gemma``, ``jamba``, ``bamba`` and ``falcon_h1`` (``blockdsl.interop.hf_ssm``,
docs/hybrids.md); the dense decoders ``qwen2``, ``qwen3``, ``gemma``, ``gemma3_text``, ``olmo``,
``olmo2``, ``cohere``, ``stablelm``, ``phi3``, ``granite``, ``starcoder2``, ``persimmon`` and
``nemotron`` (``blockdsl.interop.hf_dense``); the mixture-of-experts ``qwen2_moe``, ``olmoe``,
``dbrx``, ``deepseek_v2`` and ``deepseek_v3`` (``blockdsl.interop.hf_moe``). Each architecture
is one ``Architecture`` record (its transformers class, weight prefix, config mapping and weight
mapping) in ``ARCHITECTURES``: adding an architecture is adding one record with
``register_architecture``. Each becomes an ordinary blockdsl config (a block string,
``[defaults]``, embed and head chains) built with ``blockdsl.build_model``; then every weight is
mapped by name. A weight the config expects but the
checkpoint lacks, or one the checkpoint has but nothing uses, is an error that names it: nothing
is silently dropped. Non-persistent HF buffers (rotary ``inv_freq``, causal-mask ``bias``) are
not weights; tied weights (``lm_head`` = token embedding) are one parameter.

``transformers`` is an optional dependency (``pip install 'blockdsl[hf]'``): ``import blockdsl``
never imports it, and this module only imports it where it is needed (reading a checkpoint folder).

Dropout rates are not carried over (blockdsl's built-ins have no residual/embedding dropout);
evaluation is identical.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from blockdsl.errors import ConfigError
from blockdsl.interop import hf_checks

__all__ = [
    "ARCHITECTURES",
    "SUPPORTED",
    "Architecture",
    "HFImportError",
    "WeightMapper",
    "config_from_dir",
    "convert_weights",
    "from_hf",
    "from_pretrained_dir",
    "load_weights",
    "register_architecture",
    "to_config",
]


class HFImportError(ConfigError):
    """A Hugging Face model or checkpoint cannot be imported: unsupported option, missing or
    unused weights, or ``transformers`` not installed."""

    def _render_one(self) -> str:  # no source text to point into: no position
        where = f" in {self.context}" if self.context else ""
        head = f"blockdsl: {self.message}{where}"
        return head if not self.hint else f"{head}\n  {self.hint}"


def _transformers():
    try:
        import transformers
    except ImportError as error:
        raise HFImportError(
            "importing Hugging Face checkpoints needs the optional dependency 'transformers'",
            hint="install it with: pip install 'blockdsl[hf]'",
        ) from error
    return transformers


# ---------------------------------------------------------------- shared config helpers

# HF activation names (ACT2FN keys) -> blockdsl MLP/MoE ``act``.
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",  # NewGELUActivation: the tanh approximation
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "relu2": "relu2",
    "silu": "silu",
    "swish": "silu",
}


def _act(name: str, model_type: str) -> str:
    if name not in _ACTIVATIONS:
        raise HFImportError(
            f"{model_type}: activation '{name}' has no blockdsl equivalent",
            hint=f"supported: {', '.join(sorted(_ACTIVATIONS))}",
        )
    return _ACTIVATIONS[name]


def _unsupported(model_type: str, what: str) -> HFImportError:
    return HFImportError(f"{model_type}: {what} is not supported by the blockdsl import")


def _rope(cfg: Any, model_type: str) -> tuple[float, float]:
    """``(rope_theta, partial_rotary_factor)`` of a default (unscaled) RoPE config."""
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise _unsupported(model_type, f"rope_type '{kind}' (RoPE scaling)")
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return float(theta), float(params.get("partial_rotary_factor", 1.0))


#: HF ``rope_type`` -> ``Attn(rope_scaling=...)``.
ROPE_SCALINGS = ("linear", "dynamic", "llama3", "yarn", "longrope")


def _rope_args(cfg: Any, model_type: str, params: Mapping | None = None) -> tuple[dict, float]:
    """``(Attn arguments, partial_rotary_factor)`` of a RoPE config, scaled or not: the
    ``rope_theta`` and, for a ``rope_type`` blockdsl implements, ``rope_scaling`` with its
    factors (the attention factor resolved as transformers resolves it). ``params``: one layer
    type's entry of a per-layer ``rope_parameters`` (Gemma 3); default the config's."""
    if params is None:
        params = getattr(cfg, "rope_parameters", None) or {}
    params = dict(params)
    kind = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    fraction = float(params.get("partial_rotary_factor", 1.0))
    args: dict[str, Any] = {"rope_theta": theta}
    if kind == "default":
        return args, fraction
    if kind not in ROPE_SCALINGS:
        raise HFImportError(
            f"{model_type}: rope_type '{kind}' (RoPE scaling) is not supported by the blockdsl "
            "import",
            hint=f"supported: default, {', '.join(ROPE_SCALINGS)}",
        )
    args["rope_scaling"] = kind
    max_positions = cfg.max_position_embeddings
    original = params.get("original_max_position_embeddings") or getattr(
        cfg, "original_max_position_embeddings", None
    )
    factor = params.get("factor")
    if kind == "dynamic":  # transformers grows from max_position_embeddings
        original = max_positions
    original = int(original or max_positions)
    if factor is None:
        if kind not in ("yarn", "longrope"):
            raise HFImportError(f"{model_type}: rope_type '{kind}' without a 'factor'")
        factor = max_positions / original
    args["rope_factor"] = float(factor)
    if kind != "linear":
        args["rope_original_context"] = original
    if kind == "llama3":
        args["rope_low_freq"] = float(params["low_freq_factor"])
        args["rope_high_freq"] = float(params["high_freq_factor"])
    elif kind == "yarn":
        attention = params.get("attention_factor")
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")

        def get_mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if attention is None:
            attention = (
                get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
                if mscale and mscale_all_dim
                else get_mscale(factor)
            )
        args["rope_attention_factor"] = float(attention)
        args["rope_beta_fast"] = float(params.get("beta_fast") or 32.0)
        args["rope_beta_slow"] = float(params.get("beta_slow") or 1.0)
        args["rope_truncate"] = bool(params.get("truncate", True))
    elif kind == "longrope":
        attention = params.get("attention_factor")
        if attention is None:
            attention = (
                1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
            )
        args["rope_attention_factor"] = float(attention)
        args["rope_short_factor"] = [float(f) for f in params["short_factor"]]
        args["rope_long_factor"] = [float(f) for f in params["long_factor"]]
    return args, fraction


def _fraction(rotary: int, head_dim: int) -> float:
    """A ``rope_fraction`` with ``int(head_dim * fraction) == rotary`` exactly."""
    fraction = rotary / head_dim
    if int(head_dim * fraction) != rotary:
        fraction = math.nextafter(fraction, 2.0)
    assert int(head_dim * fraction) == rotary
    return fraction


def _compress(names: list[str]) -> str:
    """A layers chain for a list of block names: ``block*4``, ``(local->global)*3``, or runs."""

    def runs(seq: list[str]) -> str:
        out: list[str] = []
        i = 0
        while i < len(seq):
            j = i
            while j < len(seq) and seq[j] == seq[i]:
                j += 1
            out.append(seq[i] if j - i == 1 else f"{seq[i]}*{j - i}")
            i = j
        return "->".join(out)

    n = len(names)
    for period in range(1, n + 1):
        if n % period == 0 and names == names[:period] * (n // period):
            unit, count = names[:period], n // period
            if count == 1:
                return runs(unit)
            if period == 1:
                return f"{unit[0]}*{count}"
            return f"({runs(unit)})*{count}"
    raise AssertionError("unreachable")


def _head(tied: bool) -> str:
    return "Norm->Head(tie=true)" if tied else "Norm->Head"


def _config(
    cfg: Any,
    *,
    layers: str,
    blocks: dict,
    defaults: dict,
    d_model: int | None = None,
    context: int | None = None,
    embed: str = "Embed",
    tied_by_default: bool = False,
) -> dict:
    """The blockdsl dict config: ``[model]`` from the HF config's common fields, then the
    architecture's blocks and defaults. ``tied_by_default`` is the architecture's default for
    ``tie_word_embeddings`` (GPT-2 and Gemma 2 tie unless told otherwise)."""
    tied = getattr(cfg, "tie_word_embeddings", tied_by_default)
    return {
        "model": {
            "vocab": cfg.vocab_size,
            "d_model": cfg.hidden_size if d_model is None else d_model,
            "context": cfg.max_position_embeddings if context is None else context,
            "layers": layers,
            "embed": embed,
            "head": _head(tied),
        },
        "blocks": blocks,
        "defaults": defaults,
    }


# ---------------------------------------------------------------- shared weight helpers

# Non-persistent buffers that old checkpoints may still carry: not weights.
_BUFFERS = re.compile(
    r"(\.attn\.(bias|masked_bias)|\.attention\.(bias|masked_bias)|\.rotary_emb\.inv_freq"
    r"|\.embed_positions|\.embed_scale)$"
)


Tensor = torch.Tensor


class WeightMapper:
    """Takes HF tensors by name, records missing ones, and collects blockdsl tensors."""

    def __init__(self, source: Mapping[str, Tensor]) -> None:
        self.source = dict(source)
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.out: dict[str, Tensor] = {}

    def has(self, name: str) -> bool:
        return name in self.source

    def get(self, name: str) -> Tensor | None:
        if name not in self.source:
            self.missing.append(name)
            return None
        self.used.add(name)
        return self.source[name]

    def put(self, dst: str, *srcs: str, fn: Callable[..., Tensor] | None = None) -> None:
        tensors = [self.get(s) for s in srcs]
        if any(t is None for t in tensors):
            return
        self.out[dst] = fn(*tensors) if fn is not None else tensors[0]

    def split(self, dsts: list[str], src: str, fn: Callable[[Tensor], list[Tensor]]) -> None:
        tensor = self.get(src)
        if tensor is not None:
            self.out.update(zip(dsts, fn(tensor)))

    def linear(self, dst: str, src: str, bias: bool) -> None:
        self.put(f"{dst}.weight", f"{src}.weight")
        if bias:
            self.put(f"{dst}.bias", f"{src}.bias")

    def norm(self, dst: str, src: str, bias: bool) -> None:
        self.linear(dst, src, bias)

    def head(self, cfg: Any, embed: str, tied: bool, bias: bool = False, name="lm_head") -> None:
        if not tied:
            self.put("head.head.weight", f"{name}.weight")
        elif self.has(f"{name}.weight"):  # the tied copy: it must be the embedding itself
            head, tok = self.get(f"{name}.weight"), self.get(embed)
            if tok is not None and not (head is tok or torch.equal(head, tok)):
                raise HFImportError(
                    f"'{name}.weight' differs from the tied embedding '{embed}' although the "
                    "config says tie_word_embeddings=True"
                )
        if bias:
            self.put("head.head.bias", f"{name}.bias")


# ---------------------------------------------------------------- architectures


@dataclass(frozen=True)
class Architecture:
    """Everything the importer knows about one Hugging Face architecture.

    ``config`` maps the HF config to a blockdsl dict config; ``weights`` maps the checkpoint's
    tensors (names under ``prefix``, plus the top-level ``outside`` names such as ``lm_head``)
    to blockdsl parameter names through a ``WeightMapper``."""

    model_type: str
    hf_class: str
    prefix: str
    config: Callable[[Any], dict]
    weights: Callable[[Any, WeightMapper], None]
    outside: tuple[str, ...] = ("lm_head",)
    #: name endings of the HF model's persistent buffers that are weights (state the model
    #: computes with, such as DeepSeek-V3's ``e_score_correction_bias``); other buffers are not
    buffers: tuple[str, ...] = ()


#: ``config.model_type`` -> its record.
ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture, *, replace: bool = False) -> Architecture:
    """Add an architecture to the importer (``replace=True`` to override an existing one)."""
    if arch.model_type in ARCHITECTURES and not replace:
        raise ValueError(f"architecture '{arch.model_type}' is already registered")
    ARCHITECTURES[arch.model_type] = arch
    return arch


class _Supported(Mapping[str, str]):
    """``model_type -> transformers class``: a live view of ``ARCHITECTURES``."""

    def __getitem__(self, key: str) -> str:
        return ARCHITECTURES[key].hf_class

    def __iter__(self) -> Iterator[str]:
        return iter(ARCHITECTURES)

    def __len__(self) -> int:
        return len(ARCHITECTURES)

    def __repr__(self) -> str:
        return repr(dict(self))


#: model_type -> the transformers class it is read from (a view of ``ARCHITECTURES``).
SUPPORTED: Mapping[str, str] = _Supported()


# ---------------------------------------------------------------- gpt2


def _config_gpt2(cfg: Any) -> dict:
    return _gpt2_like_config(cfg, "gpt2")


def _gpt2_like_config(cfg: Any, t: str, kv_heads: int | None = None) -> dict:
    """GPT-2's layout (learned positions, biased LayerNorms and linears, ungated MLP), also
    GPT-BigCode's, whose multi-query attention sets ``kv_heads``."""
    if getattr(cfg, "add_cross_attention", False):
        raise _unsupported(t, "add_cross_attention")
    d, heads, L = cfg.n_embd, cfg.n_head, cfg.n_layer
    hd = d // heads
    block = "Norm->Attn->+->Norm->MLP->+"
    attn: dict[str, Any] = {"heads": heads}
    if kv_heads is not None:
        attn["kv_heads"] = kv_heads
    attn.update(pos="none", bias=True)
    scale = hd**-0.5 if getattr(cfg, "scale_attn_weights", True) else 1.0
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        # one block per layer: layer i divides the scores by (i + 1)
        blocks = {
            f"layer{i}": f"Norm->Attn(scale={scale / (i + 1)!r})->+->Norm->MLP->+" for i in range(L)
        }
        layers = "->".join(blocks)
    else:
        if scale != hd**-0.5:
            attn["scale"] = scale
        blocks, layers = {"block": block}, f"block*{L}"
    return _config(
        cfg,
        layers=layers,
        blocks=blocks,
        defaults={
            "Norm": {"kind": "layer", "eps": cfg.layer_norm_epsilon, "bias": True},
            "Attn": attn,
            "MLP": {
                "hidden": cfg.n_inner if cfg.n_inner is not None else 4 * d,
                "act": _act(cfg.activation_function, t),
                "gated": False,
                "bias": True,
            },
        },
        d_model=d,
        context=cfg.n_positions,
        embed="Embed(pos=learned)",
        tied_by_default=True,
    )


def _weights_gpt2(cfg: Any, m: WeightMapper) -> None:
    d = cfg.n_embd
    m.put("embed.embed.tok.weight", "transformer.wte.weight")
    m.put("embed.embed.pos.weight", "transformer.wpe.weight")
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.ln_1", bias=True)
        # Conv1D stores [in, out]; c_attn's outputs are [q | k | v]
        m.split(
            [f"{q}.attn.{n}.weight" for n in "qkv"],
            f"{p}.attn.c_attn.weight",
            lambda w: [t.t() for t in w.split(d, dim=1)],
        )
        m.split(
            [f"{q}.attn.{n}.bias" for n in "qkv"],
            f"{p}.attn.c_attn.bias",
            lambda b: list(b.split(d)),
        )
        m.put(f"{q}.attn.o.weight", f"{p}.attn.c_proj.weight", fn=lambda w: w.t())
        m.put(f"{q}.attn.o.bias", f"{p}.attn.c_proj.bias")
        m.norm(f"{q}.norm_1", f"{p}.ln_2", bias=True)
        m.put(f"{q}.mlp.up.weight", f"{p}.mlp.c_fc.weight", fn=lambda w: w.t())
        m.put(f"{q}.mlp.up.bias", f"{p}.mlp.c_fc.bias")
        m.put(f"{q}.mlp.down.weight", f"{p}.mlp.c_proj.weight", fn=lambda w: w.t())
        m.put(f"{q}.mlp.down.bias", f"{p}.mlp.c_proj.bias")
    m.norm("head.norm", "transformer.ln_f", bias=True)
    m.head(cfg, "transformer.wte.weight", getattr(cfg, "tie_word_embeddings", True))


register_architecture(
    Architecture(
        "gpt2", "GPT2LMHeadModel", "transformer", config=_config_gpt2, weights=_weights_gpt2
    )
)


# ---------------------------------------------------------------- llama, mistral, mixtral


def _llama_like(cfg: Any, model_type: str, mlp: dict | None = None, window: bool = False) -> dict:
    """Llama, Mistral and Mixtral: pre-norm RMSNorm, GQA with RoPE (scaled or not), SwiGLU (or
    MoE)."""
    rope, fraction = _rope_args(cfg, model_type)
    if fraction != 1.0:
        raise _unsupported(model_type, "partial_rotary_factor")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn: dict[str, Any] = {
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads or cfg.num_attention_heads,
        "head_dim": head_dim,
        "pos": "rope",
        **rope,
        "bias": bool(getattr(cfg, "attention_bias", False)),
    }
    if window and getattr(cfg, "sliding_window", None) is not None:
        attn["window"] = int(cfg.sliding_window)
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps},
        "Attn": attn,
    }
    if mlp is None:
        defaults["MLP"] = {
            "hidden": cfg.intermediate_size,
            "act": _act(cfg.hidden_act, model_type),
            "gated": True,
            "bias": bool(getattr(cfg, "mlp_bias", False)),
        }
        block = "Norm->Attn->+->Norm->MLP->+"
    else:
        defaults["MoE"] = mlp
        block = "Norm->Attn->+->Norm->MoE->+"
    return _config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": block},
        defaults=defaults,
    )


def _config_llama(cfg: Any) -> dict:
    return _llama_like(cfg, "llama")


def _config_mistral(cfg: Any) -> dict:
    return _llama_like(cfg, "mistral", window=True)


def _config_mixtral(cfg: Any) -> dict:
    moe = {
        "experts": cfg.num_local_experts,
        "k": cfg.num_experts_per_tok,
        "hidden": cfg.intermediate_size,
        "act": _act(cfg.hidden_act, "mixtral"),
        "gated": True,
        "norm_topk": True,
        "aux_loss": float(cfg.router_aux_loss_coef),
    }
    jitter = float(getattr(cfg, "router_jitter_noise", 0.0) or 0.0)
    if jitter:  # transformers multiplies the whole MoE input, which the experts see too
        moe.update(jitter=jitter, jitter_scope="input")
    return _llama_like(cfg, "mixtral", mlp=moe, window=True)


def _attn_llama(cfg: Any, m: WeightMapper, p: str, q: str) -> None:
    bias = bool(getattr(cfg, "attention_bias", False))
    for n in "qkvo":
        m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", bias)


def _mlp_llama(cfg: Any, m: WeightMapper, p: str, q: str) -> None:
    bias = bool(getattr(cfg, "mlp_bias", False))
    for n in ("gate", "up", "down"):
        m.linear(f"{q}.mlp.{n}", f"{p}.mlp.{n}_proj", bias)


def _weights_llama(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        _attn_llama(cfg, m, p, q)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        if cfg.model_type == "mixtral":
            _moe_mixtral(cfg, m, p, q)
        else:
            _mlp_llama(cfg, m, p, q)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


def _stacked_experts(m: WeightMapper, src: str, dst: str, inter: int) -> None:
    """transformers 5.x stacked experts: ``gate_up_proj [E, 2I, D]`` (gate first) and
    ``down_proj [E, D, I]`` -> ``w_gate``, ``w_up``, ``w_down``."""
    m.split(
        [f"{dst}.w_gate", f"{dst}.w_up"],
        f"{src}.gate_up_proj",
        lambda w: [w[:, :inter], w[:, inter:]],
    )
    m.put(f"{dst}.w_down", f"{src}.down_proj")


def _gated_shared_expert(m: WeightMapper, src: str, dst: str) -> None:
    """Qwen's sigmoid-gated shared expert: ``shared_expert.{gate,up,down}_proj`` and
    ``shared_expert_gate`` -> ``shared.*`` and ``shared_gate``."""
    for n in ("gate", "up", "down"):
        m.linear(f"{dst}.shared.{n}", f"{src}.shared_expert.{n}_proj", bias=False)
    m.linear(f"{dst}.shared_gate", f"{src}.shared_expert_gate", bias=False)


def _shared_multiple(t: str, shared_size: int, expert_size: int, field: str) -> int:
    """The shared expert's width as a number of expert widths (MoE's ``shared``)."""
    shared, rest = divmod(shared_size, expert_size)
    if rest:
        raise _unsupported(
            t,
            f"{field}={shared_size} that is not a multiple of moe_intermediate_size={expert_size}",
        )
    return shared


def _moe_mixtral(cfg: Any, m: WeightMapper, p: str, q: str) -> None:
    E, inter = cfg.num_local_experts, cfg.intermediate_size
    legacy = f"{p}.block_sparse_moe"
    if m.has(f"{legacy}.gate.weight") and not m.has(f"{p}.mlp.gate.weight"):
        # checkpoints on disk: per-expert w1 (gate), w3 (up), w2 (down)
        m.put(f"{q}.moe.router.weight", f"{legacy}.gate.weight")
        for dst, w in (("w_gate", "w1"), ("w_up", "w3"), ("w_down", "w2")):
            srcs = [f"{legacy}.experts.{e}.{w}.weight" for e in range(E)]
            m.put(f"{q}.moe.{dst}", *srcs, fn=lambda *ws: torch.stack(ws))
        return
    m.put(f"{q}.moe.router.weight", f"{p}.mlp.gate.weight")
    _stacked_experts(m, f"{p}.mlp.experts", f"{q}.moe", inter)


register_architecture(
    Architecture("llama", "LlamaForCausalLM", "model", config=_config_llama, weights=_weights_llama)
)
register_architecture(
    Architecture(
        "mistral", "MistralForCausalLM", "model", config=_config_mistral, weights=_weights_llama
    )
)
register_architecture(
    Architecture(
        "mixtral", "MixtralForCausalLM", "model", config=_config_mixtral, weights=_weights_llama
    )
)


# ---------------------------------------------------------------- gemma2


def _config_gemma2(cfg: Any) -> dict:
    t = "gemma2"
    if getattr(cfg, "use_bidirectional_attention", False):
        raise _unsupported(t, "use_bidirectional_attention")
    theta, fraction = _rope(cfg, t)
    if fraction != 1.0:
        raise _unsupported(t, "partial_rotary_factor")
    L = cfg.num_hidden_layers
    kinds = list(cfg.layer_types or [])
    if len(kinds) != L or not set(kinds) <= {"sliding_attention", "full_attention"}:
        raise _unsupported(t, f"layer_types {kinds}")
    sandwich = "Norm->Attn{}->Norm->+->Norm->MLP->Norm->+"
    blocks: dict[str, str] = {}
    names = []
    for kind in kinds:
        if kind == "sliding_attention" and cfg.sliding_window is not None:
            blocks["local"] = sandwich.format(f"(window={int(cfg.sliding_window)})")
            names.append("local")
        else:
            blocks["global"] = sandwich.format("")
            names.append("global")
    softcap = getattr(cfg, "attn_logit_softcapping", None)
    final_softcap = getattr(cfg, "final_logit_softcapping", None)
    act = getattr(cfg, "hidden_activation", None) or cfg.hidden_act
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps, "unit_offset": True},
        "Attn": {
            "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "pos": "rope",
            "rope_theta": theta,
            "scale": float(cfg.query_pre_attn_scalar) ** -0.5,
            "bias": bool(getattr(cfg, "attention_bias", False)),
        },
        "MLP": {
            "hidden": cfg.intermediate_size,
            "act": _act(act, t),
            "gated": True,
            "bias": False,
        },
        "Embed": {"scale": "sqrt_d"},
    }
    if softcap is not None:
        defaults["Attn"]["softcap"] = float(softcap)
    if final_softcap is not None:
        defaults["Head"] = {"softcap": float(final_softcap)}
    return _config(
        cfg,
        layers=_compress(names),
        blocks=blocks,
        defaults=defaults,
        tied_by_default=True,
    )


def _weights_gemma2(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        _attn_llama(cfg, m, p, q)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        m.norm(f"{q}.norm_2", f"{p}.pre_feedforward_layernorm", bias=False)
        _mlp_llama(cfg, m, p, q)
        m.norm(f"{q}.norm_3", f"{p}.post_feedforward_layernorm", bias=False)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", True))


register_architecture(
    Architecture(
        "gemma2", "Gemma2ForCausalLM", "model", config=_config_gemma2, weights=_weights_gemma2
    )
)


# ---------------------------------------------------------------- gpt_neox


def _config_gpt_neox(cfg: Any) -> dict:
    t = "gpt_neox"
    theta, fraction = _rope(cfg, t)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    rotary = int(head_dim * fraction)  # odd counts too: Attn follows transformers' arithmetic
    parallel = bool(getattr(cfg, "use_parallel_residual", True))
    block = "Norm->Attn->+ | Norm->MLP->+" if parallel else "Norm->Attn->+->Norm->MLP->+"
    return _config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": block},
        defaults={
            "Norm": {"kind": "layer", "eps": cfg.layer_norm_eps, "bias": True},
            "Attn": {
                "heads": cfg.num_attention_heads,
                "pos": "rope",
                "rope_theta": theta,
                "rope_fraction": _fraction(rotary, head_dim),
                "bias": bool(getattr(cfg, "attention_bias", True)),
            },
            "MLP": {
                "hidden": cfg.intermediate_size,
                "act": _act(cfg.hidden_act, t),
                "gated": False,
                "bias": True,
            },
        },
    )


def _weights_gpt_neox(cfg: Any, m: WeightMapper) -> None:
    H = cfg.num_attention_heads
    d = cfg.hidden_size
    bias = bool(getattr(cfg, "attention_bias", True))
    m.put("embed.embed.tok.weight", "gpt_neox.embed_in.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"gpt_neox.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=True)
        # fused per head: rows are [q_0 | k_0 | v_0 | q_1 | k_1 | v_1 | ...]
        m.split(
            [f"{q}.attn.{n}.weight" for n in "qkv"],
            f"{p}.attention.query_key_value.weight",
            lambda w: [t.reshape(d, d) for t in w.reshape(H, 3, -1, d).unbind(1)],
        )
        if bias:
            m.split(
                [f"{q}.attn.{n}.bias" for n in "qkv"],
                f"{p}.attention.query_key_value.bias",
                lambda b: [t.reshape(d) for t in b.reshape(H, 3, -1).unbind(1)],
            )
        m.linear(f"{q}.attn.o", f"{p}.attention.dense", bias)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=True)
        m.linear(f"{q}.mlp.up", f"{p}.mlp.dense_h_to_4h", bias=True)
        m.linear(f"{q}.mlp.down", f"{p}.mlp.dense_4h_to_h", bias=True)
    m.norm("head.norm", "gpt_neox.final_layer_norm", bias=True)
    name = "embed_out" if m.has("embed_out.weight") and not m.has("lm_head.weight") else "lm_head"
    m.head(cfg, "gpt_neox.embed_in.weight", getattr(cfg, "tie_word_embeddings", False), name=name)


register_architecture(
    Architecture(
        "gpt_neox",
        "GPTNeoXForCausalLM",
        "gpt_neox",
        config=_config_gpt_neox,
        weights=_weights_gpt_neox,
        outside=("lm_head", "embed_out"),
    )
)


# ---------------------------------------------------------------- gptj


def _config_gptj(cfg: Any) -> dict:
    t = "gptj"
    d, heads, L = cfg.n_embd, cfg.n_head, cfg.n_layer
    head_dim = d // heads
    rotary = cfg.rotary_dim if cfg.rotary_dim is not None else head_dim
    # One LayerNorm feeds both parallel branches: a #label is one module per layer.
    return _config(
        cfg,
        layers=f"block*{L}",
        blocks={"block": "Norm#ln->Attn->+ | Norm#ln->MLP->+"},
        defaults={
            "Norm": {"kind": "layer", "eps": cfg.layer_norm_epsilon, "bias": True},
            "Attn": {
                "heads": heads,
                "pos": "rope",
                "rope_theta": 10000.0,
                "rope_fraction": _fraction(rotary, head_dim),
                "rope_interleaved": True,
                "bias": False,
            },
            "MLP": {
                "hidden": cfg.n_inner if cfg.n_inner is not None else 4 * d,
                "act": _act(cfg.activation_function, t),
                "gated": False,
                "bias": True,
            },
            "Head": {"bias": True},
        },
        d_model=d,
        context=cfg.n_positions,
    )


def _weights_gptj(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "transformer.wte.weight")
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}", f"layers.{i}"
        m.norm(f"{q}.ln", f"{p}.ln_1", bias=True)
        for n, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
            m.linear(f"{q}.attn.{n}", f"{p}.attn.{hf}", bias=False)
        m.linear(f"{q}.mlp.up", f"{p}.mlp.fc_in", bias=True)
        m.linear(f"{q}.mlp.down", f"{p}.mlp.fc_out", bias=True)
    m.norm("head.norm", "transformer.ln_f", bias=True)
    m.head(cfg, "transformer.wte.weight", getattr(cfg, "tie_word_embeddings", False), bias=True)


register_architecture(
    Architecture(
        "gptj", "GPTJForCausalLM", "transformer", config=_config_gptj, weights=_weights_gptj
    )
)


# ---------------------------------------------------------------- hybrids: lfm2, qwen3_next


def _layer_kinds(cfg: Any, model_type: str, allowed: dict[str, str]) -> list[str]:
    """The config's ``layer_types``, one per layer, each one of ``allowed`` (mapped to a
    block name)."""
    kinds = list(getattr(cfg, "layer_types", None) or [])
    if len(kinds) != cfg.num_hidden_layers or not set(kinds) <= set(allowed):
        raise _unsupported(
            model_type, f"layer_types {kinds} (expected one of {sorted(allowed)} per layer)"
        )
    return [allowed[kind] for kind in kinds]


def _config_lfm2(cfg: Any) -> dict:
    """LFM2: gated short-conv layers (``ShortConv``) and GQA attention layers with q/k RMSNorm,
    from ``layer_types``; SwiGLU feed-forward everywhere; the final norm is HF's
    ``embedding_norm``."""
    t = "lfm2"
    theta, fraction = _rope(cfg, t)
    if fraction != 1.0:
        raise _unsupported(t, "partial_rotary_factor")
    names = _layer_kinds(cfg, t, {"conv": "conv", "full_attention": "attn"})
    hidden = cfg.intermediate_size
    if cfg.block_auto_adjust_ff_dim:  # as Lfm2MLP
        hidden = int(2 * hidden / 3)
        if cfg.block_ffn_dim_multiplier is not None:
            hidden = int(cfg.block_ffn_dim_multiplier * hidden)
            multiple = cfg.block_multiple_of
            hidden = multiple * ((hidden + multiple - 1) // multiple)
    mlp = "->+->Norm->MLP->+"
    blocks = {"conv": "Norm->ShortConv" + mlp, "attn": "Norm->Attn" + mlp}
    return _config(
        cfg,
        layers=_compress(names),
        blocks={name: blocks[name] for name in dict.fromkeys(names)},
        defaults={
            "Norm": {"kind": "rms", "eps": cfg.norm_eps},
            "Attn": {
                "heads": cfg.num_attention_heads,
                "kv_heads": cfg.num_key_value_heads,
                "head_dim": cfg.hidden_size // cfg.num_attention_heads,
                "pos": "rope",
                "rope_theta": theta,
                "qk_norm": True,
                "qk_norm_eps": cfg.norm_eps,
            },
            "ShortConv": {"kernel": cfg.conv_L_cache, "bias": bool(cfg.conv_bias)},
            "MLP": {"hidden": hidden, "act": "silu", "gated": True},
        },
        tied_by_default=True,
    )


def _weights_lfm2(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    bias = bool(cfg.conv_bias)
    for i, kind in enumerate(cfg.layer_types):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.operator_norm", bias=False)
        if kind == "conv":
            for n in ("in_proj", "conv", "out_proj"):
                m.linear(f"{q}.short_conv.{n}", f"{p}.conv.{n}", bias)
        else:
            for n, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
                m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{hf}", bias=False)
            m.norm(f"{q}.attn.q_norm", f"{p}.self_attn.q_layernorm", bias=False)
            m.norm(f"{q}.attn.k_norm", f"{p}.self_attn.k_layernorm", bias=False)
        m.norm(f"{q}.norm_1", f"{p}.ffn_norm", bias=False)
        for n, hf in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
            m.linear(f"{q}.mlp.{n}", f"{p}.feed_forward.{hf}", bias=False)
    m.norm("head.norm", "model.embedding_norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", True))


register_architecture(
    Architecture("lfm2", "Lfm2ForCausalLM", "model", config=_config_lfm2, weights=_weights_lfm2)
)


def _qwen3_next_sparse(cfg: Any, layer: int) -> bool:
    """Whether Qwen3-Next's layer ``layer`` has the MoE (as ``Qwen3NextDecoderLayer``)."""
    return (
        layer not in (cfg.mlp_only_layers or [])
        and cfg.num_experts > 0
        and (layer + 1) % cfg.decoder_sparse_step == 0
    )


def _config_qwen3_next(cfg: Any) -> dict:
    """Qwen3-Next: Gated DeltaNet layers and gated full-attention layers (``layer_types``),
    each followed by the MoE with a gated shared expert (or a dense MLP on ``mlp_only_layers``
    and between ``decoder_sparse_step``s); RMSNorms with a unit offset."""
    t = "qwen3_next"
    act = _act(cfg.hidden_act, t)
    if act != "silu":  # the DeltaNet conv and gate are hard-wired SiLU in blockdsl
        raise _unsupported(t, f"hidden_act '{cfg.hidden_act}' (GatedDeltaNet uses SiLU)")
    theta, fraction = _rope(cfg, t)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rotary = int(head_dim * fraction)
    if rotary % 2:
        raise _unsupported(t, f"an odd number of rotary dims ({rotary})")
    mixers = _layer_kinds(cfg, t, {"linear_attention": "linear", "full_attention": "full"})
    ffn = {True: "MoE", False: "MLP"}
    names = [f"{mixer}_{ffn[_qwen3_next_sparse(cfg, i)].lower()}" for i, mixer in enumerate(mixers)]
    mixer_of = {"linear": "GatedDeltaNet", "full": "Attn"}
    blocks = {}
    for name in dict.fromkeys(names):
        mixer, kind = name.split("_")
        blocks[name] = f"Norm->{mixer_of[mixer]}->+->Norm->{ffn[kind == 'moe']}->+"
    defaults: dict[str, dict] = {
        "Norm": {"kind": "rms", "eps": cfg.rms_norm_eps, "unit_offset": True},
        "GatedDeltaNet": {
            "heads": cfg.linear_num_key_heads,
            "v_heads": cfg.linear_num_value_heads,
            "head_dim": cfg.linear_key_head_dim,
            "v_head_dim": cfg.linear_value_head_dim,
            "kernel": cfg.linear_conv_kernel_dim,
            "eps": cfg.rms_norm_eps,
        },
        "Attn": {
            "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": head_dim,
            "pos": "rope",
            "rope_theta": theta,
            "rope_fraction": _fraction(rotary, head_dim),
            "qk_norm": True,
            "qk_norm_eps": cfg.rms_norm_eps,
            "gate": True,
            "bias": bool(getattr(cfg, "attention_bias", False)),
        },
        "MLP": {"hidden": cfg.intermediate_size, "act": act, "gated": True},
    }
    if any(name.endswith("_moe") for name in names):
        shared = _shared_multiple(
            t,
            cfg.shared_expert_intermediate_size,
            cfg.moe_intermediate_size,
            "shared_expert_intermediate_size",
        )
        defaults["MoE"] = {
            "experts": cfg.num_experts,
            "k": cfg.num_experts_per_tok,
            "hidden": cfg.moe_intermediate_size,
            "act": act,
            "gated": True,
            "shared": shared,
            "shared_gate": shared > 0,
            "norm_topk": bool(cfg.norm_topk_prob),
            "aux_loss": float(cfg.router_aux_loss_coef),
        }
    return _config(cfg, layers=_compress(names), blocks=blocks, defaults=defaults)


def _unit_offset(w: Tensor) -> Tensor:
    """HF's ``(1 + weight)`` RMSNorm weight as blockdsl's plain RMSNorm weight."""
    return 1.0 + w


def _weights_qwen3_next(cfg: Any, m: WeightMapper) -> None:
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    H = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    bias = bool(getattr(cfg, "attention_bias", False))
    inter = cfg.moe_intermediate_size

    def query_and_gate(w: Tensor) -> list[Tensor]:  # per head: [q (hd) | gate (hd)] rows
        halves = w.reshape(H, 2, head_dim, *w.shape[1:]).unbind(1)
        return [t.reshape(H * head_dim, *w.shape[1:]) for t in halves]

    for i, kind in enumerate(cfg.layer_types):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        if kind == "linear_attention":  # GatedDeltaNet keeps HF's parameter names
            g, src = f"{q}.gated_delta_net", f"{p}.linear_attn"
            for n in ("in_proj_qkvz", "in_proj_ba", "conv1d", "out_proj", "norm"):
                m.put(f"{g}.{n}.weight", f"{src}.{n}.weight")
            for n in ("dt_bias", "A_log"):
                m.put(f"{g}.{n}", f"{src}.{n}")
        else:
            a, src = f"{q}.attn", f"{p}.self_attn"
            m.split([f"{a}.q.weight", f"{a}.gate.weight"], f"{src}.q_proj.weight", query_and_gate)
            if bias:
                m.split([f"{a}.q.bias", f"{a}.gate.bias"], f"{src}.q_proj.bias", query_and_gate)
            for n in "kvo":
                m.linear(f"{a}.{n}", f"{src}.{n}_proj", bias)
            for n in "qk":  # Attn's q/k norms are plain RMSNorms: fold HF's unit offset in
                m.put(f"{a}.{n}_norm.weight", f"{src}.{n}_norm.weight", fn=_unit_offset)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        if _qwen3_next_sparse(cfg, i):
            e, src = f"{q}.moe", f"{p}.mlp"
            m.put(f"{e}.router.weight", f"{src}.gate.weight")
            _stacked_experts(m, f"{src}.experts", e, inter)
            if cfg.shared_expert_intermediate_size:
                _gated_shared_expert(m, src, e)
        else:
            _mlp_llama(cfg, m, p, q)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


register_architecture(
    Architecture(
        "qwen3_next",
        "Qwen3NextForCausalLM",
        "model",
        config=_config_qwen3_next,
        weights=_weights_qwen3_next,
    )
)


# ---------------------------------------------------------------- public API


def _as_hf_config(hf_config: Any) -> Any:
    """A ``PretrainedConfig`` from a config, a model (its ``.config``) or a config.json dict."""
    if hasattr(hf_config, "config") and hasattr(hf_config, "state_dict"):
        hf_config = hf_config.config
    if isinstance(hf_config, Mapping):
        data = dict(hf_config)
        model_type = data.pop("model_type", None)
        if model_type is None:
            raise HFImportError("a Hugging Face config dict needs a 'model_type'")
        hf_config = _transformers().AutoConfig.for_model(model_type, **data)
    if not hasattr(hf_config, "model_type"):
        raise HFImportError(
            f"expected a transformers config, model or config dict, got {type(hf_config).__name__}"
        )
    return hf_config


def _model_type(cfg: Any) -> str:
    model_type = cfg.model_type
    if model_type not in ARCHITECTURES:
        raise HFImportError(
            f"Hugging Face model_type '{model_type}' is not supported",
            hint="supported: " + ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items()),
        )
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
    source = {k: v for k, v in state_dict.items() if not _BUFFERS.search(k)}
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
    import blockdsl

    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device is not None:
        kwargs["device"] = device
    return blockdsl.build_model(config, **kwargs)


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
    _transformers()  # without it nothing below can work: say so first
    hf_checks.read_hf_config(path, tuple(ARCHITECTURES))  # untrusted: checked before parsing
    return to_config(_auto_config(path))


def _auto_config(path: str) -> Any:
    """``AutoConfig.from_pretrained`` on a folder whose config.json ``hf_checks`` passed;
    what transformers' own validation still refuses (an odd rotary dimension...) is an
    ``HFImportError`` naming the file, not transformers' exception."""
    transformers = _transformers()
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
    (read with ``transformers.AutoConfig``) and ``*.safetensors`` weights (all shards)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise HFImportError(f"'{path}' is not a folder (expected config.json + *.safetensors)")
    _transformers()  # without it nothing below can work: say so first
    hf_checks.read_hf_config(path, tuple(ARCHITECTURES))  # untrusted: checked before parsing
    cfg = _auto_config(path)
    files = [f.name for f in hf_checks.weight_files(path)]  # regular, complete files only
    try:
        from safetensors.torch import load_file
    except ImportError as error:  # pragma: no cover
        raise HFImportError(
            "reading checkpoints needs the optional dependency 'safetensors'",
            hint="install it with: pip install 'blockdsl[hf]'",
        ) from error
    config = to_config(cfg)
    shapes = {
        k: v for f in files for k, v in hf_checks.check_safetensors_file(f"{path}/{f}").items()
    }
    hf_checks.check_layer_count(config, shapes, f"{path}/config.json")
    hf_checks.check_model_memory(config, dtype, device, f"{path}/config.json")
    state: dict[str, Tensor] = {}
    for name in files:
        state.update(load_file(os.path.join(path, name)))
    weights = convert_weights(cfg, state)
    model = _build(config, dtype or _floating_dtype(state), device)
    load_weights(model, weights)
    model.eval()
    return model


# More architectures are records in their own modules; importing one registers them: OPT,
# BLOOM, MPT, Falcon, Phi and GPT-BigCode (hf_classic); the dense decoders Qwen2/3, Gemma,
# Gemma 3, OLMo, OLMo 2, Cohere, StableLM, Phi-3, Granite, StarCoder2, Persimmon, Nemotron
# (hf_dense); the mixture-of-experts Qwen2-MoE, OLMoE, DBRX, DeepSeek-V2/V3 (hf_moe); the
# state-space and hybrid Mamba, Mamba2, RecurrentGemma, Jamba, Bamba, Falcon-H1 (hf_ssm).
from blockdsl.interop import hf_classic as _hf_classic  # noqa: E402, F401
from blockdsl.interop import hf_dense as _hf_dense  # noqa: E402, F401
from blockdsl.interop import hf_moe as _hf_moe  # noqa: E402, F401
from blockdsl.interop import hf_ssm as _hf_ssm  # noqa: E402, F401
