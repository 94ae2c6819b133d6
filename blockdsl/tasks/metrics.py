"""Task scores, each computed exactly as its source computes it.

- ``per_example_accuracy`` (Zoology, ``zoology/train.py`` ``compute_metrics``): for each
  example, the fraction of its labelled positions whose argmax prediction equals the label;
  the score is the mean over examples (examples without any label are left out, as pandas'
  ``mean`` leaves out their NaN).
- ``macro_accuracy`` (MAD, ``mad/metrics.py``: torchmetrics ``MulticlassAccuracy`` with its
  default ``average="macro"`` and ``ignore_index=-100``, accumulated over the whole test set):
  positions labelled ``-100`` are dropped; for each class ``c`` the recall
  ``tp_c / (tp_c + fn_c)`` (0 where the class never is a label); the score is the mean over
  the classes that occur as a label or as a prediction (``tp + fp + fn > 0``).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def per_example_accuracy(preds: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over examples (rows) of the accuracy at the row's labelled positions."""
    labelled = targets != IGNORE_INDEX
    counts = labelled.sum(dim=1)
    correct = ((preds == targets) & labelled).sum(dim=1)
    scored = counts > 0
    if not bool(scored.any()):
        return float("nan")
    return float((correct[scored].double() / counts[scored].double()).mean())


def macro_accuracy(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """Macro-averaged accuracy (per-class recall) over the classes present at the scored
    positions, as torchmetrics' ``MulticlassAccuracy(average="macro")`` computes it."""
    labelled = targets != IGNORE_INDEX
    pred = preds[labelled].long()
    true = targets[labelled].long()
    if true.numel() == 0:
        return float("nan")
    hit = pred == true
    tp = torch.bincount(true[hit], minlength=num_classes)[:num_classes].double()
    support = torch.bincount(true, minlength=num_classes)[:num_classes].double()
    predicted = torch.bincount(pred.clamp(0, num_classes - 1), minlength=num_classes).double()
    fn = support - tp
    fp = predicted[:num_classes] - tp
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    present = (tp + fp + fn) > 0
    return float(recall[present].mean())


METRICS = {"per_example_accuracy": per_example_accuracy, "macro_accuracy": macro_accuracy}
