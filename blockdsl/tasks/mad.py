"""The six MAD tasks (Poli et al., "Mechanistic Design and Scaling of Hybrid Architectures",
2024), following ``mad/data/instances.py`` and ``mad/configs.py`` of athms/mad-lab.

Each generator makes one instance ``(inputs, targets)`` of ``seq`` tokens, drawing from the
``numpy.random.Generator`` it is given in the order the source draws. A data set is
``train`` instances then ``test`` instances from one ``default_rng(seed)`` (the source's
single ``instance_fn_kwargs`` rng). Recall tasks train on next-token targets at every
position (``inputs[1:]``) and are scored at the probed values only; the other tasks train and
score on the same targets. Selective copying draws its blank positions from the legacy numpy
generator, which the source seeds with the same seed (``np.random.seed`` in ``train.py``);
here that is a ``RandomState(seed)`` of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import permutations
from typing import Any

import numpy as np

from blockdsl.tasks.metrics import IGNORE_INDEX

Instance = tuple[np.ndarray, np.ndarray]


def _vocab_permutations(vocab: np.ndarray, size: int, rng: np.random.Generator | None) -> list:
    values = list(permutations(vocab, size))
    if rng is not None:
        rng.shuffle(values)
    return values


def _pick(rng: np.random.Generator, population: Any) -> Any:
    """``rng.choice(population)`` (an int n meaning ``range(n)``): the same draw, as
    ``Generator.choice`` picks index ``rng.integers(0, len)``, at a quarter of the cost."""
    if isinstance(population, (int, np.integer)):
        return rng.integers(0, population)
    return population[rng.integers(0, len(population))]


def _permutation_table(vocab: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``np.array(_vocab_permutations(vocab, size, rng))`` without building and shuffling a
    list of tuples: a shuffle draws the same numbers for a list as for an index array of its
    length, and ``rng.choice`` of the list picks the row it would pick of this array."""
    table = _PERMUTATIONS.get((tuple(vocab.tolist()), size))
    if table is None:
        table = np.array(list(permutations(vocab, size)))
        _PERMUTATIONS[(tuple(vocab.tolist()), size)] = table
    order = np.arange(len(table))
    rng.shuffle(order)
    return table[order]


_PERMUTATIONS: dict[tuple, np.ndarray] = {}


# ------------------------------------------------------------------ in-context recall
def in_context_recall(
    rng: np.random.Generator,
    *,
    vocab: int,
    seq: int,
    training: bool,
    multi_query: bool = True,
    noise_vocab: int = 0,
    frac_noise: float = 0.0,
    **_: Any,
) -> Instance:
    copy_prefix = vocab - 1
    non_special = (vocab - 1 if not multi_query else vocab) - noise_vocab
    key_vocab = np.arange(non_special // 2)
    value_vocab = np.arange(non_special // 2, non_special)
    noise_tokens = np.arange(non_special, non_special + noise_vocab)

    kv_map: dict = {}
    inputs: list = []
    targets: list = []
    presented: dict = {}
    num_pairs = seq // 2
    not_noise = _pick(rng, num_pairs)  # at least one key-value pair
    for i in range(num_pairs - 1):
        is_noise = rng.random() < frac_noise if i != not_noise and frac_noise > 0 else False
        if is_noise:
            inputs += list(rng.choice(noise_tokens, size=2, replace=True))
            targets += [IGNORE_INDEX] * 2
            continue
        k = _pick(rng, key_vocab)
        if k not in kv_map:
            kv_map[k] = _pick(rng, value_vocab)
        v = kv_map[k]
        inputs += [k, v]
        targets.append(IGNORE_INDEX)
        targets.append(v if k in presented and multi_query else IGNORE_INDEX)
        presented[k] = v

    k_probe = _pick(rng, list(presented.keys()))
    v_probe = presented[k_probe]
    if not multi_query:
        inputs.append(copy_prefix)
        targets.append(IGNORE_INDEX)
    inputs += [k_probe, v_probe]
    targets += [IGNORE_INDEX, v_probe]
    x = np.array(inputs).astype(int)
    y = np.array(targets).astype(int)
    return (x[:-1], x[1:]) if training else (x[:-1], y[1:])


def noisy_recall(rng: np.random.Generator, **kwargs: Any) -> Instance:
    return in_context_recall(rng, **kwargs)


def fuzzy_recall(
    rng: np.random.Generator,
    *,
    vocab: int,
    seq: int,
    training: bool,
    k_motif: int = 3,
    v_motif: int = 3,
    multi_query: bool = True,
    noise_vocab: int = 0,
    frac_noise: float = 0.0,
    **_: Any,
) -> Instance:
    copy_prefix = vocab - 1
    pad_token = vocab - 2 if not multi_query else vocab - 1
    non_special = (vocab - 2 if not multi_query else vocab - 1) - noise_vocab
    key_vocab = np.arange(non_special // 2)
    value_vocab = np.arange(non_special // 2, non_special)
    if training:
        keys = {m: _permutation_table(key_vocab, m, rng) for m in range(1, k_motif + 1)}
    else:  # probed at the largest key motif only
        keys = {k_motif: _permutation_table(key_vocab, k_motif, rng)}
    values = {m: _permutation_table(value_vocab, m, rng) for m in range(1, v_motif + 1)}
    noise_tokens = np.arange(non_special, non_special + noise_vocab)

    k_probe_size = _pick(rng, list(keys.keys())) if training else k_motif
    v_probe_size = _pick(rng, list(values.keys()))
    k_probe = tuple(_pick(rng, keys[k_probe_size]))
    v_probe = tuple(_pick(rng, values[v_probe_size]))
    probe_size = k_probe_size + v_probe_size
    probe_at = _pick(rng, seq - probe_size - probe_size)
    probe_added = False

    kv_map: dict = {s: {} for s in range(1, k_motif + 1)}
    inputs: list = []
    targets: list = []
    presented: dict = {}
    while len(inputs) < seq - probe_size - (k_motif + v_motif):
        k_size = _pick(rng, list(keys.keys())) if training else k_motif
        v_size = _pick(rng, list(values.keys()))
        if len(inputs) >= probe_at and not probe_added:
            inputs.extend(k_probe)
            inputs.extend(v_probe)
            targets.extend([IGNORE_INDEX] * (k_probe_size + len(v_probe)))
            kv_map[k_probe_size][k_probe] = v_probe
            presented[k_probe] = v_probe
            probe_added = True
            continue
        is_noise = rng.random() < frac_noise if frac_noise > 0 else False
        if is_noise:
            size = k_size + v_size
            inputs.extend(rng.choice(noise_tokens, size=size, replace=True))
            targets.extend([IGNORE_INDEX] * size)
            continue
        k = tuple(_pick(rng, keys[k_size]))
        inputs.extend(k)
        if k == k_probe:
            v = v_probe
            probe_added = True
        elif k not in kv_map[k_size]:
            v = tuple(_pick(rng, values[v_size]))
            kv_map[k_size][k] = v
        else:
            v = kv_map[k_size][k]
        inputs.extend(v)
        targets.extend([IGNORE_INDEX] * k_size)
        if k in presented and multi_query:
            targets.extend(v)
        else:
            targets.extend([IGNORE_INDEX] * len(v))
        presented[k] = v

    if not multi_query:
        inputs.append(copy_prefix)
        targets.append(IGNORE_INDEX)
    inputs.extend(k_probe)
    inputs.extend(v_probe)
    targets.extend([IGNORE_INDEX] * k_probe_size)
    targets.extend(v_probe)
    x = np.array(inputs).astype(int)
    y = np.array(targets).astype(int)
    if len(x) < seq + 1:  # left-pad to seq + 1 (one for the shift)
        pad = seq + 1 - len(x)
        x = np.concatenate([np.array([pad_token] * pad), x])
        y = np.concatenate([np.array([IGNORE_INDEX] * pad), y])
    return (x[:-1], x[1:]) if training else (x[:-1], y[1:])


# ------------------------------------------------------------------ memorization
def memorization_map(vocab: int, seed: int) -> dict:
    """The fixed key → value map (``generate_kv_map``): keys from the first half of the
    non-special vocabulary, values from the second, paired by two shuffles of
    ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    keys = _vocab_permutations(np.arange(vocab // 2), 1, rng)
    values = _vocab_permutations(np.arange(vocab // 2, vocab), 1, rng)
    return dict(zip(keys, values))


def memorization(
    rng: np.random.Generator,
    *,
    vocab: int,
    seq: int,
    kv_map: dict,
    noise_vocab: int = 0,
    frac_noise: float = 0.0,
    **_: Any,
) -> Instance:
    insert_token = vocab - 1
    non_special = vocab - 1 - noise_vocab
    keys = list(kv_map.keys())
    noise_tokens = np.arange(non_special, non_special + noise_vocab)
    inputs: list = []
    targets: list = []
    num_pairs = seq // 2
    not_noise = _pick(rng, num_pairs)
    for i in range(num_pairs):
        is_noise = rng.random() < frac_noise if i != not_noise and frac_noise > 0 else False
        if is_noise:
            inputs.append(rng.choice(noise_tokens, size=2, replace=True))
            targets.append([IGNORE_INDEX] * 2)
            continue
        k = tuple(_pick(rng, keys))
        inputs += [k, [insert_token]]
        targets += [[IGNORE_INDEX], kv_map[k]]
    return np.concatenate(inputs).astype(int), np.concatenate(targets).astype(int)


# ------------------------------------------------------------------ compression
def compression(
    rng: np.random.Generator,
    *,
    vocab: int,
    seq: int,
    noise_vocab: int = 0,
    frac_noise: float = 0.0,
    **_: Any,
) -> Instance:
    """``seq - 1`` random tokens and the compression token; the target is the input itself
    (the model must rebuild the sequence from its encoding at the last position). As in the
    source, noise replaces inputs but the returned targets are the inputs."""
    compression_token = vocab - 1
    non_special = vocab - 1 - noise_vocab
    x = rng.choice(np.arange(non_special), size=(seq - 1,), replace=True).reshape(-1)
    x = np.concatenate([x, np.array([compression_token])])
    if frac_noise > 0:
        noise_tokens = np.arange(non_special, non_special + noise_vocab)
        for i in range(seq - 1):
            if rng.random() < frac_noise:
                x[i : i + 1] = rng.choice(noise_tokens)
    return x, x


# ------------------------------------------------------------------ selective copying
def selective_copying(
    rng: np.random.Generator,
    *,
    vocab: int,
    seq: int,
    copy: int,
    legacy: np.random.RandomState,
    **_: Any,
) -> Instance:
    copy_token = vocab - 1
    blank_token = vocab - 2
    num_blank = seq - copy * 2 - 1
    to_copy = rng.choice(np.arange(vocab - 2), size=(copy,), replace=True).reshape(-1)
    at = legacy.randint(0, len(to_copy), num_blank)
    inputs = np.insert(np.array(to_copy), at, [blank_token] * num_blank).tolist()
    inputs += [copy_token] + [blank_token] * copy
    targets = [IGNORE_INDEX] * (copy + num_blank + 1) + list(to_copy)
    return np.array(inputs), np.array(targets)


GENERATORS: dict[str, Callable[..., Instance]] = {
    "in_context_recall": in_context_recall,
    "fuzzy_recall": fuzzy_recall,
    "noisy_recall": noisy_recall,
    "selective_copying": selective_copying,
    "compression": compression,
    "memorization": memorization,
}


def generate(name: str, params: dict[str, Any], seed: int) -> tuple[np.ndarray, ...]:
    """Train inputs, train targets, test inputs, test targets of MAD task ``name``: the
    train instances then the test instances from one ``default_rng(seed)``."""
    make = GENERATORS[name]
    rng = np.random.default_rng(seed)
    extra: dict[str, Any] = {}
    if name == "memorization":
        extra["kv_map"] = memorization_map(params["vocab"] - 1, seed)
    if name == "selective_copying":
        extra["legacy"] = np.random.RandomState(seed % 2**32)
    out = []
    for training, count in ((True, params["train"]), (False, params["test"])):
        pairs = [make(rng, training=training, **params, **extra) for _ in range(count)]
        out += [np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])]
    return tuple(out)
