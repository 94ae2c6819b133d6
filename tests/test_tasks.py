"""Synthetic tasks: deterministic generators, labels where the sources put them, the sources'
scores on hand-computed cases, task-text parsing, and the labelled-positions head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import blockdsl
from blockdsl.tasks import (
    TASKS,
    Task,
    TaskError,
    difficulties,
    is_task,
    macro_accuracy,
    parse_task,
    per_example_accuracy,
)
from blockdsl.tasks.mad import memorization_map

SMALL = {
    "mqar": "task:mqar,vocab=64,seq=32,pairs=4,train=40,test=10",
    "in_context_recall": "task:in_context_recall,seq=32,train=40,test=10",
    "fuzzy_recall": "task:fuzzy_recall,seq=48,train=20,test=10",
    "noisy_recall": "task:noisy_recall,seq=32,train=40,test=10",
    "selective_copying": "task:selective_copying,seq=40,copy=6,train=40,test=10",
    "compression": "task:compression,seq=16,train=40,test=10",
    "memorization": "task:memorization,vocab=32,seq=16,train=40,test=10",
}


def test_every_task_has_a_small_case():
    assert set(SMALL) == set(TASKS)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_generators_are_deterministic_in_the_seed(name):
    a = Task(SMALL[name], seed=3)
    b = Task(SMALL[name] + ",seed=3", seed=99)  # an explicit data seed wins
    c = Task(SMALL[name], seed=4)
    for x, y in zip(a.train_set + a.test_set, b.train_set + b.test_set):
        assert torch.equal(x, y)
    assert not torch.equal(a.train_set[0], c.train_set[0])
    x, y = a.train_set
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape
    assert int(x.min()) >= 0 and int(x.max()) < a.vocab
    labelled = y[y != -100]
    assert labelled.numel() > 0 and int(labelled.max()) < a.vocab


def test_batches_are_a_pure_function_of_seed_and_step():
    task = Task(SMALL["mqar"], seed=1)
    x1, y1 = task.batch(7, 8)
    x2, y2 = Task(SMALL["mqar"], seed=1).batch(7, 8)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # every epoch is a permutation of the training set: 40 examples in 5 steps of 8
    seen = torch.cat([task.batch_indices(step, 8) for step in range(5)])
    assert sorted(seen.tolist()) == list(range(40))
    across = task.batch_indices(4, 16)  # examples 64..79: epoch 1 and epoch 2
    assert across.shape == (16,)
    assert not torch.equal(task.batch_indices(0, 40), task.batch_indices(1, 40))


def test_mqar_labels_sit_at_the_queries():
    task = Task("task:mqar,vocab=64,seq=32,pairs=4,train=50,test=5", seed=0)
    inputs, targets = task.train_set
    for x, y in zip(inputs.tolist(), targets.tolist()):
        pairs = {x[i]: x[i + 1] for i in range(0, 8, 2)}
        assert all(1 <= k < 32 for k in pairs) and all(32 <= v < 64 for v in pairs.values())
        labelled = [t for t, label in enumerate(y) if label != -100]
        assert len(labelled) == 4 and min(labelled) >= 8
        assert all(t % 2 == 0 for t in labelled)  # queries sit at even offsets after the pairs
        for t in labelled:
            assert pairs[x[t]] == y[t]  # the query is a key; the label its value
        assert sorted(x[t] for t in labelled) == sorted(pairs)


def test_mad_in_context_recall_labels():
    task = Task("task:in_context_recall,seq=32,train=20,test=20", seed=0)
    x, y = task.train_set
    assert torch.equal(y[:, :-1], x[:, 1:])  # trained on next tokens everywhere
    x, y = task.test_set
    assert x.shape[1] == 31  # multi-query examples are seq - 1 long, as in the source
    for row, labels in zip(x.tolist(), y.tolist()):
        seen: dict[int, int] = {}
        for t in range(0, len(row) - 1, 2):
            key, value = row[t], row[t + 1]
            if labels[t] != -100:  # position t holds a repeated key: label its value
                assert key in seen and labels[t] == seen[key] == value
            else:
                assert key not in seen or t == len(row) - 1
            seen[key] = value
        assert labels[-1] != -100 or labels[-2] != -100  # the final probe is labelled


def test_mad_noisy_recall_never_labels_noise():
    task = Task("task:noisy_recall,seq=64,train=5,test=30", seed=2)
    x, y = task.test_set
    assert bool((x >= 32 - 16).any())  # noise tokens are the last noise_vocab ids
    labelled = y != -100
    assert bool((x[labelled] < 8).all())  # a labelled position holds a key, never noise
    assert bool((y[labelled] >= 8).all() and (y[labelled] < 16).all())  # labels are values


def test_mad_selective_copying_labels_the_copied_tokens():
    task = Task("task:selective_copying,seq=40,copy=6,train=5,test=10", seed=0)
    x, y = task.test_set
    for row, labels in zip(x.tolist(), y.tolist()):
        tokens = [t for t in row[: 40 - 7] if t != 14]  # 14: blank, 15: copy
        assert row[40 - 7] == 15 and len(tokens) == 6
        assert labels[-6:] == tokens and all(v == -100 for v in labels[:-6])


def test_mad_memorization_labels_after_insert_tokens():
    task = Task("task:memorization,vocab=32,seq=16,train=30,test=5", seed=5)
    mapping = memorization_map(31, 5)
    x, y = task.train_set
    assert bool((x[:, 1::2] == 31).all()) and bool((y[:, 0::2] == -100).all())
    for row, labels in zip(x.tolist(), y.tolist()):
        for t in range(0, 16, 2):
            assert mapping[(row[t],)] == (labels[t + 1],)


def test_mad_compression_targets_are_the_inputs():
    x, y = Task("task:compression,seq=16,train=10,test=5", seed=0).train_set
    assert torch.equal(x, y) and bool((x[:, -1] == 15).all())


def test_mad_fuzzy_recall_pads_on_the_left_and_labels_values():
    x, y = Task("task:fuzzy_recall,seq=48,train=5,test=20", seed=1).test_set
    assert x.shape == (20, 48)
    assert bool((y[:, -1] != -100).all())  # the probe's last value token


def test_per_example_accuracy_by_hand():
    preds = torch.tensor([[1, 2, 3], [4, 5, 6], [0, 0, 0]])
    targets = torch.tensor([[1, -100, 0], [4, 5, -100], [-100, -100, -100]])
    assert per_example_accuracy(preds, targets) == pytest.approx(0.75)  # (1/2 + 2/2) / 2


def test_macro_accuracy_by_hand():
    targets = torch.tensor([[0, 0, 1, 2, -100]])
    preds = torch.tensor([[0, 1, 1, 0, 2]])
    # recall: class 0 1/2, class 1 1/1, class 2 0/1; class 3 absent everywhere
    assert macro_accuracy(preds, targets, 4) == pytest.approx(0.5)
    # a class predicted but never a label counts, with recall 0 (torchmetrics' weights)
    assert macro_accuracy(torch.tensor([[0, 3]]), torch.tensor([[0, 0]]), 4) == pytest.approx(0.25)


def test_task_text_parsing_and_errors():
    spec = parse_task("task:mqar,vocab=256,seq=64,pairs=4")
    assert spec.params["vocab"] == 256 and spec.params["train"] == 100_000
    assert spec.text() == "task:mqar,vocab=256,pairs=4"
    assert is_task("task:mqar") and not is_task("data/shakespeare")
    with pytest.raises(TaskError, match="unknown task 'mqr'") as info:
        parse_task("task:mqr,vocab=256")
    assert "did you mean 'mqar'" in str(info.value) and info.value.column == 6
    with pytest.raises(TaskError, match="unknown key 'vocab_size'") as info:
        parse_task("task:mqar,vocab_size=256")
    assert "did you mean 'vocab'" in str(info.value)
    with pytest.raises(TaskError, match="pairs must be an integer, got 'four'"):
        parse_task("task:mqar,pairs=four")
    with pytest.raises(TaskError, match="pairs must be between"):
        parse_task("task:mqar,seq=16,pairs=8")
    with pytest.raises(TaskError, match="given twice"):
        parse_task("task:mqar,seq=16,seq=32")
    with pytest.raises(TaskError, match="expected key=value"):
        parse_task("task:mqar,seq")
    assert isinstance(TaskError("x"), blockdsl.BlockDSLError)


def test_mad_difficulty_settings():
    settings = difficulties("selective_copying")
    assert settings[0] == "task:selective_copying"
    assert "task:selective_copying,copy=96" in settings and len(settings) == 1 + 3 + 2 + 4 + 3
    assert all(parse_task(s) for s in settings)


def _tiny(vocab: int, **overrides):
    torch.manual_seed(0)
    return blockdsl.build_model(
        "tiny",
        vocab=vocab,
        d_model=32,
        layers="block*1",
        context=64,
        defaults={"Attn": {"heads": 2, "kv_heads": 1}, "MLP": {"hidden": 64}},
        **overrides,
    )


def test_head_runs_only_at_labelled_positions_with_the_same_loss():
    task = Task(SMALL["mqar"], seed=0)
    model = _tiny(64)
    x, y = task.batch(0, 6)
    logits, loss, _ = model(x, y)
    assert logits.shape == (6, 4, 64)  # 4 labels per row, not 32 positions
    full = model(x).logits
    reference = F.cross_entropy(full.flatten(0, 1), y.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, reference)
    dense_x, dense_y = x, torch.roll(x, -1, dims=1)  # every position labelled: full logits
    assert model(dense_x, dense_y)[0].shape == (6, 32, 64)


def test_evaluate_scores_the_test_set():
    task = Task(SMALL["in_context_recall"], seed=0)
    model = _tiny(16)
    result = task.evaluate(model, batch_size=4)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["loss"] > 0
    assert model.training  # restored


def test_compression_trains_an_autoencoder_around_the_model():
    task = Task(SMALL["compression"], seed=0)
    model = task.wrap_model(_tiny(16))
    x, y = task.batch(0, 4)
    logits, loss, _ = model(x, y)
    assert logits.shape == (4, 16, 16) and loss.requires_grad
    assert task.evaluate(model)["accuracy"] <= 1.0


def _train_overrides(**train):
    return dict(
        vocab=64,
        d_model=16,
        layers="block*1",
        defaults={"Attn": {"heads": 2, "kv_heads": 2}, "MLP": {"hidden": 32}},
        train={"batch_size": 4, "save_every": 0, **train},
    )


def test_train_on_a_task_logs_accuracy_and_stops_at_the_target(tmp_path):
    from blockdsl.train import train

    run = train(
        "tiny",
        data=SMALL["mqar"],
        out=tmp_path / "r",
        progress=False,
        **_train_overrides(steps=6, eval_every=2, target_accuracy=0.0),
    )
    assert run.steps == 2  # the first evaluation reached the target
    assert "accuracy" in run.metrics[-1] and "val_loss" in run.metrics[-1]
    assert run.summary["reached_target"] is True
    assert run.summary["data"].startswith("task:mqar")
    saved = type(run).load(run.dir)  # config.toml: the resolved tables
    assert saved.config.train["seq_len"] == 32  # taken from the task


def test_training_batches_gate_the_test_evaluation():
    from blockdsl.model import labelled_positions
    from blockdsl.tasks.data import TaskData

    data = TaskData(SMALL["mqar"])
    _, targets = data.batch(0, 0, 4, 32)
    labels = targets.gather(1, labelled_positions(targets))
    right = F.one_hot(labels, 64).float()  # (B, K, vocab): every label predicted
    wrong = F.one_hot((labels + 1) % 64, 64).float()
    for _ in range(data.GATE_BATCHES - 1):
        data.observe(right, targets)
    assert not data.may_have_reached(0.99)  # too few batches yet
    data.observe(right, targets)
    assert data.may_have_reached(0.99)
    assert not data.may_have_reached(0.0)  # a yes starts the window afresh
    for _ in range(data.GATE_BATCHES // 2):
        data.observe(right, targets)
        data.observe(wrong, targets)
    assert data.may_have_reached(0.5) and len(data.recent) == 0
    for _ in range(data.GATE_BATCHES):
        data.observe(right, targets)
        data.observe(wrong, targets)
    assert not data.may_have_reached(0.51)
    dense = F.one_hot(targets.clamp(min=0), 64).float()  # (B, T, vocab): the full logits
    data.observe(dense, targets)
    assert data.recent[-1] == 1.0


def test_early_stop_between_evaluations(tmp_path):
    """With evaluations only at the end (eval_every 0), the training batches' score calls
    the test evaluation that stops the run as soon as the gate's window is full."""
    from blockdsl.tasks.data import TaskData
    from blockdsl.train import train

    run = train(
        "tiny",
        data=SMALL["mqar"],
        out=tmp_path / "r",
        progress=False,
        **_train_overrides(steps=30, eval_every=0, target_accuracy=0.0),
    )
    assert run.steps == TaskData.GATE_BATCHES
    assert [m["step"] for m in run.metrics if "accuracy" in m] == [TaskData.GATE_BATCHES]
    assert run.summary["reached_target"] is True


@pytest.mark.slow
def test_the_gate_window_survives_a_resume(tmp_path):
    from blockdsl.tasks.data import TaskData
    from blockdsl.train import train

    common = dict(data=SMALL["mqar"], progress=False, optim={"schedule": "constant"})
    whole = train(
        "tiny",
        out=tmp_path / "a",
        **common,
        **_train_overrides(steps=30, eval_every=0, target_accuracy=0.0),
    )
    train("tiny", out=tmp_path / "b", **common, **_train_overrides(steps=5, eval_every=0))
    resumed = train(
        "tiny",
        out=tmp_path / "b",
        resume=True,
        **common,
        **_train_overrides(steps=30, eval_every=0, target_accuracy=0.0),
    )
    assert whole.steps == resumed.steps == TaskData.GATE_BATCHES
    assert [m["loss"] for m in resumed.metrics] == [m["loss"] for m in whole.metrics]


def test_train_on_a_task_refuses_a_mismatched_length(tmp_path):
    from blockdsl.errors import ConfigError
    from blockdsl.train import train

    with pytest.raises(ConfigError, match="differs from the task's sequence length 32"):
        train(
            "tiny",
            data=SMALL["mqar"],
            out=tmp_path / "a",
            progress=False,
            **_train_overrides(steps=1, seq_len=16),
        )
    with pytest.raises(ConfigError, match="longer than the model's context 16"):
        train(
            "tiny",
            data=SMALL["mqar"],
            out=tmp_path / "b",
            progress=False,
            context=16,
            **_train_overrides(steps=1),
        )
    with pytest.raises(TaskError, match="unknown task"):
        train("tiny", data="task:mqarr", out=tmp_path / "c", **_train_overrides(steps=1))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_train_on_compression_trains_the_autoencoder(tmp_path):
    from blockdsl.train import train

    run = train(
        "tiny",
        data=SMALL["compression"],
        out=tmp_path / "r",
        progress=False,
        **{**_train_overrides(steps=2, eval_every=2), "vocab": 16},
    )
    assert run.model.__class__.__name__ == "AutoEncoder" and "accuracy" in run.metrics[-1]
    from safetensors import safe_open

    from blockdsl.checkpoint import checkpoints

    with safe_open(str(checkpoints(run.dir)[-1].weights), "pt") as f:
        keys = set(f.keys())
    assert "decoder.1.weight" in keys and any(k.startswith("layers.0.") for k in keys)
