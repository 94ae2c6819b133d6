"""A task as a data source: a fixed training set served in batches that are a pure function
of (seed, step), a test set, and the source's score."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockdsl.tasks.metrics import IGNORE_INDEX, macro_accuracy, per_example_accuracy
from blockdsl.tasks.spec import TaskSpec, parse_task

_CACHE: OrderedDict[tuple, tuple[torch.Tensor, ...]] = OrderedDict()
_CACHE_SIZE = 4


class Task:
    """A generated task. ``Task("task:mqar,vocab=256,seq=64,pairs=4", seed=0)``.

    ``batch(step, batch_size)`` returns ``(inputs, targets)``, both ``(batch_size, seq)``
    int64, ``targets[:, t]`` the label of the prediction made after ``inputs[:, :t+1]`` or
    ``IGNORE_INDEX``: the training examples in a fresh random order each epoch, the order
    drawn from (seed, epoch) alone, so batch ``step`` needs no loader state.
    """

    def __init__(self, spec: str | TaskSpec, seed: int = 0) -> None:
        self.spec = parse_task(spec) if isinstance(spec, str) else spec
        self.seed = self.spec.seed if self.spec.seed is not None else int(seed)
        self.params: dict[str, Any] = dict(self.spec.params)
        self._orders: dict[int, torch.Tensor] = {}

    # ---------------------------------------------------------------- description
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def vocab(self) -> int:
        return int(self.params["vocab"])

    @property
    def seq_len(self) -> int:
        """The length of the examples: ``seq``, except MAD's multi-query recall, whose
        examples are ``seq - 1`` tokens long in the source too."""
        return int(self.train_set[0].shape[1])

    @property
    def metric(self) -> str:
        return self.spec.definition.metric

    @property
    def text(self) -> str:
        return self.spec.text()

    def __repr__(self) -> str:
        return f"Task({self.text!r}, seed={self.seed})"

    # ---------------------------------------------------------------- data
    def _data(self) -> tuple[torch.Tensor, ...]:
        key = (self.name, tuple(sorted(self.params.items())), self.seed)
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        data = self.spec.definition.generate(self.params, self.seed)
        _CACHE[key] = data
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return data

    @property
    def train_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets, _, _ = self._data()
        return inputs, targets

    @property
    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, inputs, targets = self._data()
        return inputs, targets

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.clear()
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            self._orders[epoch] = torch.randperm(self.params["train"], generator=generator)
        return self._orders[epoch]

    def batch_indices(self, step: int, batch_size: int) -> torch.Tensor:
        """Which training examples batch ``step`` holds."""
        count = self.params["train"]
        flat = torch.arange(step * batch_size, (step + 1) * batch_size)
        epochs, within = flat // count, flat % count
        out = torch.empty(batch_size, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            out[mask] = self._order(epoch)[within[mask]]
        return out

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.train_set
        index = self.batch_indices(step, batch_size)
        return inputs[index], targets[index]

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        inputs, targets = self.test_set
        for start in range(0, len(inputs), batch_size):
            yield inputs[start : start + batch_size], targets[start : start + batch_size]

    # ---------------------------------------------------------------- scoring
    def score(self, preds: torch.Tensor, targets: torch.Tensor) -> float:
        """The source's score of argmax predictions against targets (rows are examples)."""
        if self.metric == "per_example_accuracy":
            return per_example_accuracy(preds, targets)
        return macro_accuracy(preds, targets, self.vocab)

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, batch_size: int = 256, device: torch.device | str | None = None
    ) -> dict[str, float]:
        """``{"accuracy": score, "loss": mean cross-entropy}`` of ``model`` on the test set,
        the head computed only at labelled positions."""
        from blockdsl.model import labelled_positions

        was_training = model.training
        model.eval()
        preds, kept = [], []
        loss_sum, labels = 0.0, 0
        try:
            for inputs, targets in self.test_batches(batch_size):
                if device is not None:
                    inputs, targets = inputs.to(device), targets.to(device)
                logits = model(inputs, targets).logits
                order = labelled_positions(targets)
                if order is not None:
                    targets = targets.gather(1, order)
                loss_sum += float(
                    F.cross_entropy(
                        logits.flatten(0, 1).float(),
                        targets.flatten(),
                        ignore_index=IGNORE_INDEX,
                        reduction="sum",
                    )
                )
                labels += int((targets != IGNORE_INDEX).sum())
                preds.append(logits.argmax(-1).cpu())
                kept.append(targets.cpu())
        finally:
            model.train(was_training)
        width = max(p.shape[1] for p in preds)
        pad = [
            (F.pad(p, (0, width - p.shape[1])), F.pad(t, (0, width - t.shape[1]), value=-100))
            for p, t in zip(preds, kept)
        ]
        accuracy = self.score(torch.cat([p for p, _ in pad]), torch.cat([t for _, t in pad]))
        return {"accuracy": accuracy, "loss": loss_sum / labels if labels else math.nan}

    # ---------------------------------------------------------------- model
    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The model to train: ``model`` itself, or for tasks the source trains on an encoder
        (compression) the model as MAD's ``AutoEncoder`` encoder."""
        if self.spec.definition.autoencoder:
            from blockdsl.tasks.autoencoder import AutoEncoder

            return AutoEncoder(model, self.seq_len)
        return model
