"""Multi-query associative recall (MQAR), Zoology's generator.

Arora, Eyuboglu et al., "Zoology: Measuring and improving recall in efficient language
models" (2023); ``zoology/data/multiquery_ar.py`` and ``zoology/data/utils.py``. Each example
is ``pairs`` key-value pairs (keys from ``1 .. vocab/2 - 1``, values from ``vocab/2 .. vocab -
1``, each key and value at most once per example), then the keys again as queries at gaps
drawn without replacement from a power law ``p(g) ∝ a·g^(a-1)`` (``power_a``); the label of a
query position is its key's value, every other position is ``-100``. Positions that are not
part of a pair or a query hold uniformly random tokens.

The random streams are the source's: the train and test segments' seeds are drawn from
``RandomState(seed)`` (train in ``[0, 2^31)``, test in ``[2^31, 2^32)``), each segment draws
keys, values and gaps from a ``RandomState`` of its seed. The filler tokens come from a
``torch.Generator`` seeded with the segment's seed where Zoology uses the process-global torch
generator (that one depends on what ran before; ours depends only on the seed).
"""

from __future__ import annotations

import numpy as np
import torch

from blockdsl.tasks.metrics import IGNORE_INDEX


def segment_seeds(seed: int) -> tuple[int, int]:
    """The train and test segments' seeds, as ``zoology.data.utils.prepare_data`` draws them."""
    state = np.random.RandomState(seed % 2**32)
    train = state.randint(0, 2**31, size=1)
    test = state.randint(2**31, 2**32, size=1)
    return int(train[0]), int(test[0])


def multiquery_ar(
    vocab: int,
    examples: int,
    seq: int,
    seed: int,
    *,
    pairs: int = 8,
    power_a: float = 0.01,
    random_non_queries: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``examples`` MQAR examples: inputs and labels, both ``(examples, seq)`` int64; the
    label at position ``t`` is the answer the model must give after reading ``inputs[:, :t+1]``."""
    state = np.random.RandomState(seed)
    context = pairs * 2
    key_choices = np.arange(1, vocab // 2)
    value_choices = np.arange(vocab // 2, vocab)
    keys = np.stack([state.choice(key_choices, replace=False, size=pairs) for _ in range(examples)])
    values = np.stack(
        [state.choice(value_choices, replace=False, size=pairs) for _ in range(examples)]
    )
    kvs = np.zeros((examples, context), dtype=np.int64)
    kvs[:, 0::2] = keys
    kvs[:, 1::2] = values

    space = (seq - context) // 2
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    p = p / p.sum()
    slots = np.arange(space, dtype=int)
    gaps = np.stack([state.choice(slots, replace=False, p=p, size=pairs) for _ in range(examples)])

    queries = np.zeros((examples, seq - context + 1), dtype=np.int64)
    np.put_along_axis(queries, gaps * 2, values=keys, axis=1)
    full = np.concatenate([kvs, queries], axis=1)
    labels = np.full((examples, seq + 1), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(labels, gaps * 2 + context + 1, values=values, axis=1)

    inputs = torch.from_numpy(full[:, :-1].copy())
    targets = torch.from_numpy(labels[:, 1:].copy())
    if random_non_queries:
        generator = torch.Generator().manual_seed(seed)
        filler = torch.randint(vocab, size=inputs.shape, generator=generator)
        inputs = torch.where(inputs == 0, filler, inputs)
    return inputs, targets
