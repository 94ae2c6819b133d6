"""The base of the Hugging Face interop: what every architecture module builds on.

``Architecture`` (one record per ``config.model_type``), the registry (``ARCHITECTURES``,
``SUPPORTED``, ``register_architecture``), ``WeightMapper`` (takes checkpoint tensors by name
and records what is missing) and ``HFImportError``, plus the helpers the family modules share:
activation and RoPE mapping, the ``[model]`` section of a config, layer-pattern compression,
and the Llama layout several families reuse (its config, attention and MLP weights, routed
experts stacked in memory or one per expert on disk, shared experts).

Family modules (``blockdsl.hf.classic``, ``dense``, ``moe``, ``hybrid``, ``ssm``) import only
this module and register their records when imported; ``blockdsl.hf`` imports them all.
``transformers`` is imported only inside functions (``require_transformers``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from blockdsl.components.ssm import mamba2_norm_weight, split_mamba2_conv, split_mamba2_in_proj
from blockdsl.errors import ConfigError
from blockdsl.printer import format_value

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "NON_PERSISTENT_BUFFERS",
    "ROPE_SCALINGS",
    "SUPPORTED",
    "Architecture",
    "HFImportError",
    "Tensor",
    "WeightMapper",
    "activation",
    "compress_layers",
    "default_rope",
    "expert_weights",
    "gated_shared_expert_weights",
    "head_chain",
    "layer_kinds",
    "llama_attention_weights",
    "llama_like_config",
    "llama_mlp_weights",
    "llama_weights",
    "model_config",
    "qk_norm_slots",
    "qk_norm_weights",
    "register_architecture",
    "require_transformers",
    "rope_args",
    "rotary_fraction",
    "shared_expert_args",
    "sink_layers",
    "sink_weights",
    "unsupported",
]


class HFImportError(ConfigError):
    """A Hugging Face model or checkpoint cannot be imported: unsupported option, missing or
    unused weights, or ``transformers`` not installed."""

    def _render_one(self) -> str:  # no source text to point into: no position
        where = f" in {self.context}" if self.context else ""
        head = f"blockdsl: {self.message}{where}"
        return head if not self.hint else f"{head}\n  {self.hint}"


def require_transformers() -> Any:
    """The ``transformers`` module, or an ``HFImportError`` saying how to install it: every
    function that needs it calls this, so ``import blockdsl.hf`` never imports it."""
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
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",  # NewGELUActivation: the tanh approximation
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_accurate": "gelu_tanh",  # AccurateGELUActivation: the same tanh formula
    "gelu_python": "gelu",  # GELUActivation(use_gelu_python=True): the erf GELU in Python
    "relu": "relu",
    "relu2": "relu2",
    "silu": "silu",
    "swish": "silu",
}


def activation(name: str, model_type: str) -> str:
    """The blockdsl ``act`` of a Hugging Face activation name (``hidden_act``)."""
    if name not in ACTIVATIONS:
        raise HFImportError(
            f"{model_type}: activation '{name}' has no blockdsl equivalent",
            hint=f"supported: {', '.join(sorted(ACTIVATIONS))}",
        )
    return ACTIVATIONS[name]


def unsupported(model_type: str, what: str) -> HFImportError:
    """The error for an option of ``model_type`` that blockdsl cannot express."""
    return HFImportError(f"{model_type}: {what} is not supported by the blockdsl import")


def default_rope(cfg: Any, model_type: str) -> tuple[float, float]:
    """``(rope_theta, partial_rotary_factor)`` of a default (unscaled) RoPE config."""
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise unsupported(model_type, f"rope_type '{kind}' (RoPE scaling)")
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return float(theta), float(params.get("partial_rotary_factor", 1.0))


#: HF ``rope_type`` -> ``Attn(rope_scaling=...)``.
ROPE_SCALINGS = ("linear", "dynamic", "llama3", "yarn", "longrope")


def rope_args(cfg: Any, model_type: str, params: Mapping | None = None) -> tuple[dict, float]:
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


def rotary_fraction(rotary: int, head_dim: int) -> float:
    """A ``rope_fraction`` with ``int(head_dim * fraction) == rotary`` exactly."""
    fraction = rotary / head_dim
    if int(head_dim * fraction) != rotary:
        fraction = math.nextafter(fraction, 2.0)
    assert int(head_dim * fraction) == rotary
    return fraction


def compress_layers(names: list[str]) -> str:
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


def head_chain(tied: bool) -> str:
    """The ``[model] head`` chain: a final norm and the output projection, tied or not."""
    return "Norm->Head(tie=true)" if tied else "Norm->Head"


def model_config(
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
            "head": head_chain(tied),
        },
        "blocks": blocks,
        "defaults": defaults,
    }


# ---------------------------------------------------------------- shared weight helpers

#: Non-persistent buffers that old checkpoints may still carry: not weights.
NON_PERSISTENT_BUFFERS = re.compile(
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

#: model_type -> what blockdsl lacks to import it, for causal LMs of transformers that have no
#: record: the refusal names the missing part, so a user knows whether a string could do it.
MISSING_PARTS: dict[str, str] = {
    "deepseek_v32": "DeepSeek sparse attention (the lightning indexer that picks the keys)",
    "glm_moe_dsa": "DeepSeek sparse attention (the lightning indexer that picks the keys)",
    "diffllama": "differential attention (two softmax maps subtracted with a learned lambda)",
    "doge": "dynamic mask attention and cross-domain MoE",
    "jetmoe": "mixture-of-attention-heads (MoA) routing of the attention projections",
    "kimi_linear": "Kimi delta attention (KDA: the delta rule with a decay per channel)",
    "bailing_hybrid": "Kimi delta attention (KDA: the delta rule with a decay per channel)",
    "minimax": "lightning attention (linear attention with a fixed decay per head and layer, "
    "a sigmoid output gate)",
    "rwkv": "RWKV-4 time mixing (blockdsl has RWKV-7)",
    "zamba2": "shared transformer blocks that read the embeddings beside the hidden state, "
    "with per-use LoRA adapters",
    "axk2": "DeepSeek sparse attention (the lightning indexer that picks the keys) and RMSNorms "
    "gated by a low-rank MLP",
    "ergo": "learned residual gates (a per-feature mix of the branch and the residual stream) "
    "and a learned RMSNorm per expert after each expert",
    "zaya": "compressed convolutional attention (CCA) and an MLP router with a skip expert",
    "minimax_m3_vl_text": "block-sparse attention (a lightning indexer that picks key blocks)",
    "deepseek_v4": "hyper-connections (several residual streams mixed per layer), compressed "
    "sparse attention (a key compressor and an indexer) and hash-routed experts",
    "beam": "depth-scaled residual adds (h/sqrt(n) + r*sqrt((n-1)/n) at the n-th add) and a "
    "bias per head on the attention's output gate",
    "lfm3": "proportional RoPE (the first frequencies of each half of a head rotated, at the "
    "whole head's frequency scale, the rest not)",
    "phimoe": "SparseMixer routing (each chosen expert weighted by a softmax over the experts "
    "within a relative margin of it, the best one masked out for the second)",
    "bitnet": "norm inside the MLP before down_proj (BitNet's ffn_sub_norm; MLP has no slots)",
    "llama4_text": "chunked attention (nor experts whose input the router's sigmoid score scales)",
    "hy_v4": "DeepSeek sparse attention (the lightning indexer) and hyper-connections",
    "kolibri1": "selection bias on the router logits (MoE's score_bias adds to the sigmoid scores)",
    "laguna": "softplus output gate (Act has no softplus)",
    "inkling_text": "relative position logits mixed per token from a learned bank of profiles",
    "hrm_text": "HRM's two recurrent stacks, iterated in cycles",
}


def unsupported_model_type(model_type: str, where: str = "") -> HFImportError:
    """The refusal of a ``model_type`` without a record: it names the missing part if known."""
    missing = MISSING_PARTS.get(model_type)
    return HFImportError(
        f"{where}Hugging Face model_type '{model_type}' is not supported"
        + (f": blockdsl has no {missing}" if missing else ""),
        hint="supported: " + ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items()),
    )


# ---------------------------------------------------------------- shared layouts


def layer_kinds(cfg: Any, model_type: str, allowed: dict[str, str]) -> list[str]:
    """The config's ``layer_types``, one per layer, each one of ``allowed`` (mapped to a
    block name)."""
    kinds = list(getattr(cfg, "layer_types", None) or [])
    if len(kinds) != cfg.num_hidden_layers or not set(kinds) <= set(allowed):
        raise unsupported(
            model_type, f"layer_types {kinds} (expected one of {sorted(allowed)} per layer)"
        )
    return [allowed[kind] for kind in kinds]


def llama_like_config(
    cfg: Any, model_type: str, mlp: dict | None = None, window: bool = False
) -> dict:
    """The Llama layout (Llama, Mistral, Mixtral): pre-norm RMSNorm, GQA with RoPE (scaled or
    not), SwiGLU (or MoE)."""
    rope, fraction = rope_args(cfg, model_type)
    if fraction != 1.0:
        raise unsupported(model_type, "partial_rotary_factor")
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
            "act": activation(cfg.hidden_act, model_type),
            "gated": True,
            "bias": bool(getattr(cfg, "mlp_bias", False)),
        }
        block = "Norm->Attn->+->Norm->MLP->+"
    else:
        defaults["MoE"] = mlp
        block = "Norm->Attn->+->Norm->MoE->+"
    return model_config(
        cfg,
        layers=f"block*{cfg.num_hidden_layers}",
        blocks={"block": block},
        defaults=defaults,
    )


def llama_attention_weights(cfg: Any, m: WeightMapper, p: str, q: str) -> None:
    """Llama's ``self_attn.{q,k,v,o}_proj`` of HF layer ``p`` -> ``attn.{q,k,v,o}`` of ``q``."""
    bias = bool(getattr(cfg, "attention_bias", False))
    for n in "qkvo":
        m.linear(f"{q}.attn.{n}", f"{p}.self_attn.{n}_proj", bias)


def llama_mlp_weights(cfg: Any, m: WeightMapper, p: str, q: str) -> None:
    """Llama's gated ``mlp.{gate,up,down}_proj`` of HF layer ``p`` -> ``mlp.*`` of ``q``."""
    bias = bool(getattr(cfg, "mlp_bias", False))
    for n in ("gate", "up", "down"):
        m.linear(f"{q}.mlp.{n}", f"{p}.mlp.{n}_proj", bias)


def llama_weights(
    cfg: Any,
    m: WeightMapper,
    feed_forward: Callable[[Any, WeightMapper, str, str], None] = llama_mlp_weights,
) -> None:
    """Llama's checkpoint layout (also Mistral's and, with its MoE as ``feed_forward``,
    Mixtral's): embedding, pre-norm layers, final norm, head."""
    m.put("embed.embed.tok.weight", "model.embed_tokens.weight")
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        m.norm(f"{q}.norm", f"{p}.input_layernorm", bias=False)
        llama_attention_weights(cfg, m, p, q)
        m.norm(f"{q}.norm_1", f"{p}.post_attention_layernorm", bias=False)
        feed_forward(cfg, m, p, q)
    m.norm("head.norm", "model.norm", bias=False)
    m.head(cfg, "model.embed_tokens.weight", getattr(cfg, "tie_word_embeddings", False))


def qk_norm_slots(
    eps: float,
    *,
    kind: str = "rms",
    affine: bool = True,
    after_rope: bool = False,
    **others: str,
) -> str:
    """The slots of an attention that normalises each head's queries and keys, to append to
    ``Attn``: ``[q=Norm(...), k=Norm(...)]``, or, with ``after_rope``, ``[q=Rope->Norm(...),
    k=Rope->Norm(...)]`` (the norm of the rotated heads: HunYuan, nanochat); ``others``: more
    slots, ``scores="Sink"``. Every argument of the norm is written out: a config's
    ``[defaults]`` for ``Norm`` reach slot blocks too."""
    args = f"kind={kind}, eps={format_value(float(eps))}, affine={format_value(bool(affine))}"
    step = f"Rope->Norm({args})" if after_rope else f"Norm({args})"
    slots = [f"q={step}", f"k={step}", *(f"{name}={block}" for name, block in others.items())]
    return f"[{', '.join(slots)}]"


def qk_norm_weights(
    m: WeightMapper,
    src: str,
    dst: str,
    names: tuple[str, str] = ("q_norm", "k_norm"),
    bias: bool = False,
) -> None:
    """An attention's q/k norms ``{src}.{names}`` (HF: ``...self_attn.q_norm``) -> the norms of
    its q and k slots, ``{dst}.slots.{q,k}.norm`` (``dst``: ``layers.{i}.attn``), whether the
    slots were written out (``qk_norm_slots``) or filled by the ``qk_norm`` shorthand."""
    for slot, name in zip("qk", names, strict=True):
        m.norm(f"{dst}.slots.{slot}.norm", f"{src}.{name}", bias)


def expert_weights(
    m: WeightMapper,
    src: str,
    dst: str,
    *,
    experts: int,
    inter: int,
    names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
) -> None:
    """Routed experts ``src`` (``...mlp.experts``) -> ``w_gate``, ``w_up``, ``w_down`` of the
    MoE ``dst``, from either layout a checkpoint has:

    * in memory (transformers 5.x modules): stacked ``gate_up_proj [E, 2I, D]`` (gate first)
      and ``down_proj [E, D, I]``;
    * on disk (``save_pretrained``, Hub checkpoints): one ``nn.Linear`` per expert,
      ``{e}.gate_proj.weight [I, D]``, ``{e}.up_proj.weight``, ``{e}.down_proj.weight [D, I]``
      (``names``: Mixtral's ``w1``, ``w3``, ``w2``), which transformers' loader stacks.

    The stacked layout wins when the checkpoint has it, so the export's probe (built from the
    in-memory modules) maps the tensors it holds."""
    if m.has(f"{src}.gate_up_proj"):
        m.split(
            [f"{dst}.w_gate", f"{dst}.w_up"],
            f"{src}.gate_up_proj",
            lambda w: [w[:, :inter], w[:, inter:]],
        )
        m.put(f"{dst}.w_down", f"{src}.down_proj")
        return
    for target, name in zip(("w_gate", "w_up", "w_down"), names, strict=True):
        per_expert = [f"{src}.{e}.{name}.weight" for e in range(experts)]
        m.put(f"{dst}.{target}", *per_expert, fn=lambda *ws: torch.stack(ws))


def gated_shared_expert_weights(m: WeightMapper, src: str, dst: str) -> None:
    """Qwen's sigmoid-gated shared expert: ``shared_expert.{gate,up,down}_proj`` and
    ``shared_expert_gate`` -> ``shared.*`` and ``shared_gate``."""
    for n in ("gate", "up", "down"):
        m.linear(f"{dst}.shared.{n}", f"{src}.shared_expert.{n}_proj", bias=False)
    m.linear(f"{dst}.shared_gate", f"{src}.shared_expert_gate", bias=False)


def deepseek_v3_routing(cfg: Any) -> dict[str, Any]:
    """``MoE`` arguments of DeepSeek-V3's routing: sigmoid scores, experts chosen by the scores
    plus ``e_score_correction_bias`` within the ``topk_group`` best of ``n_group`` groups (a
    group's score is the sum of its two best), weighted by the unbiased scores (renormalised
    with ``norm_topk_prob``) times ``routed_scaling_factor`` (DeepSeek-V3, the records that
    reuse it, Nemotron-H, MiMo-V2-Flash)."""
    return {
        "score": "sigmoid",
        "score_bias": True,
        "norm_topk": bool(cfg.norm_topk_prob),
        "routed_scale": float(cfg.routed_scaling_factor),
        "groups": cfg.n_group,
        "topk_groups": cfg.topk_group,
        "group_top": 2,
    }


def shared_expert_args(shared_size: int, expert_size: int) -> dict[str, int]:
    """The ``MoE`` arguments of an always-on shared expert ``shared_size`` wide next to routed
    experts ``expert_size`` wide: ``shared=n`` for a multiple ``n`` of the expert width, else
    one shared expert of its own width (``shared_hidden``); none for a width of 0."""
    if not shared_size:
        return {"shared": 0}
    multiple, rest = divmod(shared_size, expert_size)
    if rest or not multiple:
        return {"shared": 1, "shared_hidden": shared_size}
    return {"shared": multiple}


def mamba2_weights(
    m: WeightMapper,
    src: str,
    dst: str,
    *,
    inner: int,
    groups: int,
    state: int,
    bias: bool,
    conv_bias: bool,
    norm: bool = True,
) -> None:
    """transformers' ``Mamba2Mixer`` tensors under ``src`` as blockdsl's ``Mamba2`` under
    ``dst``: ``in_proj``'s z rows are the gate slot's projection, ``conv1d`` the q (C), k (B)
    and v (x) slots' convs, ``norm`` the o slot's per-group norm (every record with a Mamba2
    mixer: Mamba2, Bamba, the hybrids). A rearrangement only, so the export runs it backwards."""
    for kind, present in (("weight", True), ("bias", bias)):
        if present:
            m.split(
                [f"{dst}.slots.gate.linear.{kind}", f"{dst}.in_proj.{kind}"],
                f"{src}.in_proj.{kind}",
                partial(split_mamba2_in_proj, inner=inner),
            )
    for kind, present in (("weight", True), ("bias", conv_bias)):
        if present:
            m.split(
                [f"{dst}.slots.{n}.conv.{kind}" for n in "qkv"],
                f"{src}.conv1d.{kind}",
                partial(split_mamba2_conv, inner=inner, group_state=groups * state),
            )
    for n in ("dt_bias", "A_log", "D"):
        m.put(f"{dst}.{n}", f"{src}.{n}")
    if norm:
        m.put(
            f"{dst}.slots.o.norm.weight",
            f"{src}.norm.weight",
            fn=partial(mamba2_norm_weight, groups=groups),
        )
    m.linear(f"{dst}.out_proj", f"{src}.out_proj", bias)


def sink_layers(cfg: Any, model_type: str, block: str, theta: float) -> tuple[dict, str]:
    """``(blocks, layers)`` of Granite-SWA's layers (Granite and Granite-MoE-Shared with
    windows and attention sinks): ``Attn`` in ``block`` becomes ``Attn(...)[scores=Sink]``
    (a learned logit per head in the softmax's denominator, which transformers applies as the
    factor ``sigmoid(logsumexp(logits) - sink)``), with a window on ``sliding_attention``
    layers (``layer_types``) and each layer's rotary base from ``layer_rope_theta`` (0: no
    positions; ``theta``, the config's own base, is the ``[defaults]`` one)."""
    from blockdsl.printer import format_value

    L = cfg.num_hidden_layers
    kinds = layer_kinds(cfg, model_type, {"sliding_attention": "local", "full_attention": ""})
    windows = [cfg.sliding_window if kind == "local" else None for kind in kinds]
    thetas = list(getattr(cfg, "layer_rope_theta", None) or [theta] * L)
    if len(thetas) != L:
        raise unsupported(model_type, f"layer_rope_theta {thetas} (expected one per layer)")
    others = sorted({float(t) for t in thetas if t and float(t) != theta})
    blocks: dict[str, str] = {}
    names: list[str] = []
    for window, layer_theta in zip(windows, thetas, strict=True):
        args, name = [], ["global" if window is None else "local"]
        if window is not None:
            args.append(f"window={int(window)}")
        if not layer_theta:
            args.append("pos=none")
            name.append("nope")
        elif float(layer_theta) != theta:
            args.append(f"rope_theta={format_value(float(layer_theta))}")
            name.append(f"theta{others.index(float(layer_theta)) + 1}")
        call = f"Attn({', '.join(args)})[scores=Sink]" if args else "Attn[scores=Sink]"
        blocks["_".join(name)] = block.replace("Attn", call, 1)
        names.append("_".join(name))
    return blocks, compress_layers(names)


def sink_weights(cfg: Any, m: WeightMapper) -> None:
    """Each layer's ``self_attn.sinks`` -> its ``Attn``'s ``Sink`` in the scores slot."""
    for i in range(cfg.num_hidden_layers):
        m.put(f"layers.{i}.attn.slots.scores.sink.sinks", f"model.layers.{i}.self_attn.sinks")
