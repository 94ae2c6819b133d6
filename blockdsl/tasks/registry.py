"""The task table: every task's parameters (name, type, default, the source's name for it),
its generator, its metric, and MAD's difficulty settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from blockdsl.tasks import mad, mqar
from blockdsl.tasks.recipe import Recipe


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: Any
    source_name: str
    help: str


@dataclass(frozen=True)
class TaskDef:
    name: str
    source: str
    description: str
    params: tuple[Param, ...]
    metric: str
    generate: Callable[[dict[str, Any], int], tuple[torch.Tensor, ...]]
    check: Callable[[dict[str, Any]], str | None]
    #: how the task trains when the run's config does not say (docs/tasks.md, "Recipes")
    recipe: Recipe
    #: MAD's difficulty settings: one parameter changed at a time from the defaults.
    difficulties: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    #: The model is an encoder with a decoder from its last position (MAD's AutoEncoder).
    autoencoder: bool = False

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


def _mqar_generate(params: dict[str, Any], seed: int) -> tuple[torch.Tensor, ...]:
    train_seed, test_seed = mqar.segment_seeds(seed)
    common = dict(
        vocab=params["vocab"],
        seq=params["seq"],
        pairs=params["pairs"],
        power_a=params["power_a"],
        random_non_queries=params["random_non_queries"],
    )
    train = mqar.multiquery_ar(examples=params["train"], seed=train_seed, **common)
    test = mqar.multiquery_ar(examples=params["test"], seed=test_seed, **common)
    return (*train, *test)


def _mqar_check(p: dict[str, Any]) -> str | None:
    if p["seq"] % 2:
        return f"seq must be even, got {p['seq']}"
    if p["vocab"] <= p["seq"]:
        return f"vocab must exceed seq (as Zoology asserts), got {p['vocab']} <= {p['seq']}"
    if p["pairs"] < 1 or p["pairs"] * 4 > p["seq"]:
        return f"pairs must be between 1 and seq/4 = {p['seq'] // 4}, got {p['pairs']}"
    if p["pairs"] > p["vocab"] // 2 - 1:
        return f"pairs must be at most vocab/2 - 1 = {p['vocab'] // 2 - 1}, got {p['pairs']}"
    if not 0 < p["power_a"] <= 1:
        return f"power_a must be in (0, 1], got {p['power_a']}"
    return None


def _mad_generate(name: str) -> Callable[[dict[str, Any], int], tuple[torch.Tensor, ...]]:
    def generate(params: dict[str, Any], seed: int) -> tuple[torch.Tensor, ...]:
        arrays = mad.generate(name, params, seed)
        return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in arrays)

    return generate


def _mad_check(name: str) -> Callable[[dict[str, Any]], str | None]:
    def check(p: dict[str, Any]) -> str | None:
        vocab, seq = p["vocab"], p["seq"]
        even = ("in_context_recall", "noisy_recall", "fuzzy_recall", "memorization")
        if name in even and seq % 2:
            return f"seq must be even, got {seq}"
        noise = p.get("noise_vocab", 0)
        frac = p.get("frac_noise", 0.0)
        if not 0 <= frac < 1:
            return f"frac_noise must be in [0, 1), got {frac}"
        if frac > 0 and noise < 1:
            return "frac_noise > 0 needs noise_vocab > 0"
        special = {"selective_copying": 2, "fuzzy_recall": 1, "compression": 1}.get(name, 1)
        if vocab - special - noise < (4 if name != "compression" else 1):
            return f"vocab={vocab} leaves too few tokens besides the special and noise ones"
        if name == "selective_copying" and seq <= 2 * p["copy"] + 1:
            return f"seq must exceed 2*copy + 1 = {2 * p['copy'] + 1}, got {seq}"
        if name == "selective_copying" and p["copy"] < 1:
            return f"copy must be at least 1, got {p['copy']}"
        if name == "fuzzy_recall":
            if p["k_motif"] < 1 or p["v_motif"] < 1:
                return "k_motif and v_motif must be at least 1"
            if seq <= 2 * (p["k_motif"] + p["v_motif"]):
                return f"seq must exceed 2*(k_motif + v_motif), got {seq}"
        if name in ("in_context_recall", "noisy_recall") and seq < 4:
            return f"seq must be at least 4, got {seq}"
        return None

    return check


def _common(vocab: int, seq: int, train: int, test: int = 1280) -> tuple[Param, ...]:
    return (
        Param("vocab", int, vocab, "vocab_size", "vocabulary size, special tokens included"),
        Param("seq", int, seq, "seq_len", "sequence length"),
        Param("train", int, train, "num_train_examples", "training examples"),
        Param("test", int, test, "num_test_examples", "test examples"),
    )


def _noise(noise_vocab: int = 0, frac_noise: float = 0.0) -> tuple[Param, ...]:
    return (
        Param("noise_vocab", int, noise_vocab, "noise_vocab_size", "noise tokens in the vocab"),
        Param("frac_noise", float, frac_noise, "frac_noise", "fraction of noise"),
    )


_MULTI_QUERY = Param(
    "multi_query", bool, True, "multi_query", "probe every repeated key, not only the last"
)
_RECALL_CHANGES = {
    "vocab": (32, 64, 128),
    "seq": (256, 512, 1024),
    "train": (6400, 3200, 1600, 800),
}
_MAD = "MAD (Poli et al. 2024, athms/mad-lab mad/data/instances.py)"


def _mad_recipe(train_examples: int) -> Recipe:
    """MAD's own training settings (``mad/configs.py``, ``MADConfig``): batch 128, AdamW at lr
    5e-4 (the middle of its 1e-4, 5e-4, 1e-3 sweep), no weight decay, cosine decay over 200
    epochs of the task's default training examples."""
    return Recipe(batch_size=128, lr=5e-4, steps=200 * train_examples // 128, weight_decay=0.0)


#: MQAR's recipe, measured (docs/tasks.md, "Recipes"): attention solves the issue-28 setting
#: (two layers of width 64, vocab 128, seq 64, 4 pairs) and the short convolution does not
MQAR_RECIPE = Recipe(batch_size=64, lr=3e-3, steps=4_000, schedule="wsd")

TASKS: dict[str, TaskDef] = {
    "mqar": TaskDef(
        name="mqar",
        source="Zoology (Arora et al. 2023, HazyResearch/zoology zoology/data/multiquery_ar.py)",
        description="multi-query associative recall: key-value pairs, then queried keys",
        params=(
            Param("vocab", int, 8192, "vocab_size", "vocabulary size"),
            Param("seq", int, 64, "input_seq_len", "sequence length"),
            Param("pairs", int, 8, "num_kv_pairs", "key-value pairs per example"),
            Param("train", int, 100_000, "num_examples (train)", "training examples"),
            Param("test", int, 3_000, "num_examples (test)", "test examples"),
            Param("power_a", float, 0.01, "power_a", "power law of the query gaps"),
            Param(
                "random_non_queries",
                bool,
                True,
                "random_non_queries",
                "fill the other positions with random tokens",
            ),
        ),
        metric="per_example_accuracy",
        generate=_mqar_generate,
        check=_mqar_check,
        recipe=MQAR_RECIPE,
    ),
    "in_context_recall": TaskDef(
        name="in_context_recall",
        source=_MAD,
        description="recall the value of a key seen earlier in the sequence",
        params=(*_common(16, 128, 12_800), _MULTI_QUERY, *_noise()),
        metric="macro_accuracy",
        generate=_mad_generate("in_context_recall"),
        check=_mad_check("in_context_recall"),
        recipe=_mad_recipe(12_800),
        difficulties=dict(_RECALL_CHANGES),
    ),
    "fuzzy_recall": TaskDef(
        name="fuzzy_recall",
        source=_MAD,
        description="in-context recall with keys and values of 1 to 3 tokens",
        params=(
            *_common(16, 128, 12_800),
            Param("k_motif", int, 3, "k_motif_size", "largest key length in tokens"),
            Param("v_motif", int, 3, "v_motif_size", "largest value length in tokens"),
            _MULTI_QUERY,
            *_noise(),
        ),
        metric="macro_accuracy",
        generate=_mad_generate("fuzzy_recall"),
        check=_mad_check("fuzzy_recall"),
        recipe=_mad_recipe(12_800),
        difficulties=dict(_RECALL_CHANGES),
    ),
    "noisy_recall": TaskDef(
        name="noisy_recall",
        source=_MAD,
        description="in-context recall with noise tokens between the pairs",
        params=(*_common(32, 128, 12_800), _MULTI_QUERY, *_noise(16, 0.2)),
        metric="macro_accuracy",
        generate=_mad_generate("noisy_recall"),
        check=_mad_check("noisy_recall"),
        recipe=_mad_recipe(12_800),
        difficulties={
            "vocab": (48, 80, 144),
            "seq": (256, 512, 1024),
            "train": (6400, 3200, 1600, 800),
            "frac_noise": (0.4, 0.6, 0.8),
        },
    ),
    "selective_copying": TaskDef(
        name="selective_copying",
        source=_MAD,
        description="copy the tokens scattered among blanks, in order, after a copy token",
        params=(
            *_common(16, 256, 12_800),
            Param("copy", int, 16, "num_tokens_to_copy", "tokens to copy"),
        ),
        metric="macro_accuracy",
        generate=_mad_generate("selective_copying"),
        check=_mad_check("selective_copying"),
        recipe=_mad_recipe(12_800),
        difficulties={
            "vocab": (32, 64, 128),
            "seq": (512, 1024),
            "train": (6400, 3200, 1600, 800),
            "copy": (32, 64, 96),
        },
    ),
    "compression": TaskDef(
        name="compression",
        source=_MAD,
        description="rebuild the whole sequence from the encoding at its last position",
        params=(*_common(16, 32, 12_800), *_noise()),
        metric="macro_accuracy",
        generate=_mad_generate("compression"),
        check=_mad_check("compression"),
        recipe=_mad_recipe(12_800),
        difficulties={
            "vocab": (32, 64, 128),
            "seq": (64, 128, 256),
            "train": (6400, 3200, 1600, 800),
        },
        autoencoder=True,
    ),
    "memorization": TaskDef(
        name="memorization",
        source=_MAD,
        description="recall values of a fixed key-value map learned in training",
        params=(*_common(256, 32, 256), *_noise()),
        metric="macro_accuracy",
        generate=_mad_generate("memorization"),
        check=_mad_check("memorization"),
        recipe=_mad_recipe(256),
        difficulties={"vocab": (512, 1024, 2048, 4096, 8192)},
    ),
}
