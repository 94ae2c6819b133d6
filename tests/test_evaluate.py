"""``blockdsl eval`` / ``blockdsl.evaluate``: the numbers against a hand computation on a tiny
model, bits per byte for byte and BPE tokenizers, several models on the same batches, the
tables and files, and the refusals (another tokenizer, a smaller vocab, bad options)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
import torch

import blockdsl
from blockdsl.cli import main
from blockdsl.evaluate import EvaluationError, evaluate, token_bytes
from blockdsl.train.data import TokenData, prepare

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "vocab": 256,
    "d_model": 32,
    "context": 64,
    "layers": "block*2",
    "defaults": {"Attn": {"heads": 2, "kv_heads": 1}, "MLP": {"hidden": 64}},
}
TEXT = (
    "The quick brown fox jumps over the lazy dog. Café au lait, naïve façade: ünïcödé bytes.\n"
    "def add(a, b):\n    return a + b  # a small function, and its doc\n"
)


@pytest.fixture(scope="module")
def byte_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bytes")
    prepare([str(ROOT / "blockdsl")], out, glob="*.py", tokenizer="byte", progress=False)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for index in range(40):  # forty documents: some go to the validation split
        (folder / f"doc{index:02d}.txt").write_text(TEXT * (1 + index % 3), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    out = tmp_path_factory.mktemp("bpe")
    prepare([str(corpus)], out, tokenizer="bpe:300", val_fraction=0.2, progress=False)
    return out


@pytest.fixture(scope="module")
def char_data(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    out = tmp_path_factory.mktemp("char")
    prepare([str(corpus)], out, tokenizer="char", val_fraction=0.2, progress=False)
    return out


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = blockdsl.build_model("tiny", **TINY)
    return blockdsl.save(model, tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, byte_data: Path) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train = {"steps": 3, "batch_size": 4, "seq_len": 32, "eval_every": 0, "eval_batches": 2}
    blockdsl.train("tiny", data=byte_data, out=out, progress=False, plot=False, train=train, **TINY)
    return out


def by_hand(model_path: Path, data: Path, batches: int, rows: int, seq_len: int, k: int) -> dict:
    """The scores computed the long way: log-softmax, gathered targets, sorted logits."""
    model = blockdsl.load(model_path)
    tokens = TokenData(data)
    nats, hits1, hitsk, count = 0.0, 0, 0, 0
    with torch.no_grad():
        for index in range(batches):
            inputs, targets = tokens.batch(0, index, rows, seq_len, split="val")
            logp = torch.log_softmax(model(inputs).logits.double(), dim=-1)
            nats -= float(logp.gather(-1, targets[..., None]).sum())
            ranked = logp.argsort(dim=-1, descending=True)
            hits1 += int((ranked[..., 0] == targets).sum())
            hitsk += int((ranked[..., :k] == targets[..., None]).any(-1).sum())
            count += targets.numel()
    return {"loss": nats / count, "top1": hits1 / count, "topk": hitsk / count, "count": count}


def test_scores_match_a_hand_computation_on_a_tiny_model(model_file: Path, byte_data: Path):
    result = evaluate([model_file], data=byte_data, batches=2, batch_size=3, seq_len=16, top_k=3)
    scores = result.scores[0]
    expected = by_hand(model_file, byte_data, 2, 3, 16, 3)
    assert scores.tokens == expected["count"] == 2 * 3 * 16
    assert scores.loss == pytest.approx(expected["loss"], rel=1e-5)
    assert scores.perplexity == pytest.approx(math.exp(expected["loss"]), rel=1e-5)
    assert scores.top1 == expected["top1"]
    assert scores.topk == expected["topk"]
    assert scores.top1 <= scores.topk
    assert scores.params == blockdsl.load(model_file).num_params()
    # the byte tokenizer: every id one byte, so bits per byte is the loss in bits
    assert scores.bytes_per_token == 1.0
    assert scores.bits_per_byte == pytest.approx(expected["loss"] / math.log(2), rel=1e-5)
    assert scores.accuracy is None  # text has no task score


def test_bits_per_byte_of_a_bpe_tokenizer_counts_each_tokens_bytes(bpe_data: Path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bpe_data / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    eot = tokenizer.token_to_id("<|endoftext|>")
    torch.manual_seed(1)
    model = blockdsl.build_model("tiny", **{**TINY, "vocab": 320})
    path = blockdsl.save(model, bpe_data.parent / "bpe-model.safetensors")
    result = evaluate([path], data=bpe_data, batches=2, batch_size=2, seq_len=24)
    scores = result.scores[0]
    # by hand: a token's text is its decoded bytes (the corpus's characters decode alone
    # whenever a token holds whole characters; the table must agree with decoding the ids)
    sizes = token_bytes(tokenizer, vocab)
    assert int(sizes[eot]) == 0  # a special token stands for no text
    for i in range(vocab):
        if i != eot:
            text = tokenizer.decode([i])
            if "\ufffd" not in text:  # a token that is part of a character decodes to U+FFFD
                assert int(sizes[i]) == len(text.encode("utf-8")), tokenizer.id_to_token(i)
    tokens = TokenData(bpe_data)
    nats = bytes_total = count = 0.0
    with torch.no_grad():
        for index in range(2):
            inputs, targets = tokens.batch(0, index, 2, 24, split="val")
            logp = torch.log_softmax(blockdsl.load(path)(inputs).logits.double(), dim=-1)
            token_nats = -logp.gather(-1, targets[..., None]).squeeze(-1)
            text = sizes[targets] > 0
            nats += float(token_nats[text].sum())
            bytes_total += float(sizes[targets].sum())
            count += targets.numel()
    assert scores.bytes_per_token == pytest.approx(bytes_total / count)
    assert scores.bytes_per_token > 1.5  # BPE tokens hold several bytes
    assert scores.bits_per_byte == pytest.approx(nats / (math.log(2) * bytes_total), rel=1e-5)


def test_several_models_share_the_batches_and_the_files(
    run_dir: Path, model_file: Path, byte_data: Path, tmp_path: Path
):
    step = run_dir / "checkpoints" / "step_0000003"
    models = [run_dir, f"untrained={model_file}", f"last={step}"]
    result = evaluate(models, data=byte_data, batches=2, batch_size=2, seq_len=32, out=tmp_path)
    assert [s.name for s in result.scores] == [str(run_dir), "untrained", "last"]
    assert result[str(run_dir)].loss == result["last"].loss  # the run is its newest checkpoint
    assert result["untrained"].loss > result["last"].loss  # three steps of training helped
    assert result.files == ["eval.csv", "eval.md"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "eval.csv").read_text())))
    assert [r["name"] for r in rows] == [str(run_dir), "untrained", "last"]
    assert float(rows[1]["loss"]) == pytest.approx(result["untrained"].loss)
    markdown = (tmp_path / "eval.md").read_text()
    assert "| untrained | " in markdown and "bits/byte" in markdown
    with pytest.raises(EvaluationError, match="nothing was overwritten"):
        evaluate(models, data=byte_data, batches=1, batch_size=1, seq_len=8, out=tmp_path)
    again = evaluate(
        [model_file], data=byte_data, batches=1, batch_size=1, seq_len=8, out=tmp_path,
        overwrite=True,
    )  # fmt: skip
    assert len(list(csv.DictReader(io.StringIO((tmp_path / "eval.csv").read_text())))) == 1
    assert again.scores[0].tokens == 8


@pytest.mark.slow  # trains a run
def test_a_run_evaluated_as_it_evaluates_itself_gets_its_val_loss_back(byte_data, tmp_path):
    train = {"steps": 2, "batch_size": 8, "seq_len": 32, "eval_every": 0, "eval_batches": 3}
    run = blockdsl.train(
        "tiny", data=byte_data, out=tmp_path / "run", progress=False, plot=False, train=train,
        **TINY,
    )  # fmt: skip
    result = evaluate([run.dir], data=byte_data, batches=3, batch_size=8)
    assert result.seq_len == 32  # the run's [train] seq_len, not its context of 64
    assert result.scores[0].loss == pytest.approx(run.val_loss, rel=1e-5)


def test_the_train_split_and_the_seed_choose_other_batches(model_file, byte_data):
    kwargs = dict(data=byte_data, batches=1, batch_size=2, seq_len=16)
    val = evaluate([model_file], **kwargs).scores[0].loss
    assert evaluate([model_file], split="train", **kwargs).scores[0].loss != val
    assert evaluate([model_file], seed=5, **kwargs).scores[0].loss != val
    assert evaluate([model_file], **kwargs).scores[0].loss == val


def test_another_tokenizer_or_a_smaller_vocab_is_refused(run_dir, char_data, bpe_data):
    with pytest.raises(EvaluationError, match="another tokenizer") as caught:
        evaluate([run_dir], data=char_data, batches=1, batch_size=1, seq_len=8)
    assert "blockdsl data prepare" in caught.value.hint
    with pytest.raises(EvaluationError, match="vocab of 256 but the data's tokenizer has"):
        evaluate([run_dir], data=bpe_data, batches=1, batch_size=1, seq_len=8)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"split": "test"}, "--split must be val or train"),
        ({"batches": 0}, "--batches must be a whole number"),
        ({"top_k": 300}, "--top-k 300 is more than the vocab"),
        ({"seq_len": 65}, "longer than the context"),
        ({"threads": 0}, "--threads must be a whole number of threads"),
    ],
)
def test_bad_options_are_named(model_file, byte_data, options, message):
    with pytest.raises(blockdsl.BlockDSLError, match=message):
        evaluate([model_file], data=byte_data, **{"batches": 1, "batch_size": 1, **options})


def test_a_missing_model_or_the_same_name_twice_is_refused(model_file, byte_data, tmp_path):
    with pytest.raises(blockdsl.BlockDSLError, match="does not exist"):
        evaluate([tmp_path / "nothing"], data=byte_data, batches=1)
    with pytest.raises(EvaluationError, match="given twice"):
        evaluate([f"a={model_file}", f"a={model_file}"], data=byte_data, batches=1)


def test_a_task_adds_its_accuracy(tmp_path):
    torch.manual_seed(0)
    model = blockdsl.build_model("tiny", **{**TINY, "vocab": 64})
    path = blockdsl.save(model, tmp_path / "m.safetensors")
    task = "task:mqar,vocab=64,seq=32,pairs=4,train=40,test=10"
    result = evaluate([path], data=task, batches=2, batch_size=4)
    scores = result.scores[0]
    assert scores.accuracy is not None and 0 <= scores.accuracy <= 1
    assert scores.bits_per_byte is None  # a task has no text
    assert result.seq_len == 32 and scores.tokens < 2 * 4 * 32  # labelled positions only
    assert "task accuracy" in result.headers()


def test_threads_apply_while_evaluating_and_are_restored(model_file, byte_data, monkeypatch):
    seen = []
    import blockdsl.evaluate as module

    real = module._score

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "_score", spy)
    before = torch.get_num_threads()
    evaluate([model_file], data=byte_data, batches=1, batch_size=1, seq_len=8, threads=1)
    assert seen == [1] and torch.get_num_threads() == before


def test_the_command_prints_the_table_and_writes_the_files(
    capsys, run_dir, model_file, byte_data, tmp_path
):
    code = main([
        "eval", str(run_dir), f"fresh={model_file}", "--data", str(byte_data), "--batches", "1",
        "--batch-size", "2", "--seq-len", "16", "--top-k", "10", "--threads", "1",
        "--out", str(tmp_path / "ev"),
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
    assert "bits/byte" in captured.out and "top-10" in captured.out and "fresh" in captured.out
    assert "eval.csv, eval.md" in captured.out
    assert (tmp_path / "ev" / "eval.md").is_file()
    code = main(["eval", str(run_dir), "--data", str(byte_data), "--out", str(tmp_path / "ev")])
    assert code == 2 and "pass --force" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--data", str(byte_data), "--threads", "0"]) == 2
    assert "--threads must be" in capsys.readouterr().err
