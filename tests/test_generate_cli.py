"""``blockdsl generate``: a run directory, one of its checkpoints, or a Hugging Face folder;
the printed text is the library's continuation; user errors exit 2 without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import blockdsl
from blockdsl.cli import main

tokenizers = pytest.importorskip("tokenizers")
safetensors_torch = pytest.importorskip("safetensors.torch")


def byte_tokenizer():
    """A byte-level tokenizer of 256 ids (no merges): any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def make_run(
    root: Path, steps: tuple[int, ...] = (10, 20), **overrides: object
) -> tuple[Path, dict]:
    """A run directory as training writes it: config.toml, tokenizer.json, checkpoints."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    models = {}
    config = blockdsl.load_config(
        "Norm->Attn->+->Norm->MLP->+", vocab=256, d_model=32, context=64, layers="block*2",
        **overrides,
    )  # fmt: skip
    for step in steps:
        torch.manual_seed(step)
        model = blockdsl.build_model(config).eval()
        folder = run / "checkpoints" / f"step_{step:07d}"
        folder.mkdir()
        safetensors_torch.save_model(model, str(folder / "model.safetensors"))
        models[step] = model
    (run / "config.toml").write_text(config.to_toml())
    byte_tokenizer().save(str(run / "tokenizer.json"))
    return run, models


def _expected(model, prompt: str, n: int) -> str:
    tok = byte_tokenizer()
    ids = torch.tensor([tok.encode(prompt).ids])
    out = model.generate(ids, n, greedy=True)[0, ids.shape[1] :]
    return prompt + tok.decode(out.tolist()) + "\n"


def test_generate_from_a_run_and_a_checkpoint(tmp_path, capsys) -> None:
    run, models = make_run(tmp_path)
    assert (
        main(["generate", str(run), "--prompt", "Hello", "--greedy", "--max-new-tokens", "12"]) == 0
    )
    assert capsys.readouterr().out == _expected(models[20], "Hello", 12)  # the newest
    older = run / "checkpoints" / "step_0000010"
    argv = ["generate", str(older), "--prompt", "Hi", "--greedy", "--max-new-tokens", "7"]
    assert main(argv) == 0
    assert capsys.readouterr().out == _expected(models[10], "Hi", 7)


def test_seeded_sampling_repeats(tmp_path, capsys) -> None:
    run, _ = make_run(tmp_path, steps=(1,))
    argv = ["generate", str(run), "--prompt", "a", "--seed", "3", "--top-k", "20", "--top-p", "0.9"]
    assert main([*argv, "--max-new-tokens", "10"]) == 0
    first = capsys.readouterr().out
    assert main([*argv, "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt", ""], "prompt is empty"),
        (["--prompt", "x" * 70], "longer than the model's context"),
        (["--prompt", "x", "--max-new-tokens", "64"], "exceed the model's context"),
        (["--prompt", "x", "--top-p", "2"], "top_p"),
    ],
)
def test_user_errors_exit_2(tmp_path, capsys, extra, message) -> None:
    # learned absolute positions: past the context is refused (a rotary model crops instead)
    run, _ = make_run(tmp_path, steps=(1,), defaults={"Embed": {"pos": "learned"}})
    assert main(["generate", str(run), *extra]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_bad_paths_exit_2(tmp_path, capsys) -> None:
    assert main(["generate", str(tmp_path / "nothing"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "neither a training run" in capsys.readouterr().err
    run, _ = make_run(tmp_path, steps=())
    assert main(["generate", str(run), "--prompt", "x"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x"]) == 2


def test_generate_from_hf_folder_matches_transformers(tmp_path, capsys) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=None,
        bos_token_id=None,
    )
    hf_model = transformers.LlamaForCausalLM(config).eval()
    hf_model.save_pretrained(tmp_path)
    byte_tokenizer().save(str(tmp_path / "tokenizer.json"))
    argv = ["generate", "--from-hf", str(tmp_path), "--prompt", "Hey", "--greedy"]
    assert main([*argv, "--max-new-tokens", "9"]) == 0
    ids = torch.tensor([byte_tokenizer().encode("Hey").ids])
    theirs = hf_model.generate(ids, max_new_tokens=9, do_sample=False)[0, 3:]
    assert capsys.readouterr().out == "Hey" + byte_tokenizer().decode(theirs.tolist()) + "\n"


def test_generate_from_a_saved_model_file(tmp_path, capsys) -> None:
    _, models = make_run(tmp_path, steps=(5,))
    path = tmp_path / "model.safetensors"
    blockdsl.save(models[5], path)
    byte_tokenizer().save(str(tmp_path / "tokenizer.json"))
    argv = ["generate", str(path), "--prompt", "Yo", "--greedy", "--max-new-tokens", "6"]
    assert main(argv) == 0
    assert capsys.readouterr().out == _expected(models[5], "Yo", 6)


def test_generate_from_a_real_training_run(tmp_path, capsys) -> None:
    """The layout ``blockdsl train`` writes, and the tokenizer it prepared."""
    from blockdsl.train import Run, prepare

    root = Path(__file__).resolve().parent.parent
    prepare([str(root / "README.md")], tmp_path / "data", tokenizer="byte", progress=False)
    blockdsl.train(
        "tiny",
        data=tmp_path / "data",
        out=tmp_path / "run",
        progress=False,
        train={"steps": 2, "batch_size": 2, "seq_len": 16, "eval_every": 0},
        vocab=256,
        d_model=32,
        context=64,
        layers="block*1",
        defaults={"Attn": {"heads": 2, "kv_heads": 1}, "MLP": {"hidden": 64}},
    )
    argv = ["generate", str(tmp_path / "run"), "--prompt", "The", "--greedy"]
    assert main([*argv, "--max-new-tokens", "8"]) == 0
    model = Run.load(tmp_path / "run").load_model().eval()
    tok = tokenizers.Tokenizer.from_file(str(tmp_path / "run" / "tokenizer.json"))
    ids = torch.tensor([tok.encode("The").ids])
    new = model.generate(ids, 8, greedy=True)[0, ids.shape[1] :].tolist()
    assert capsys.readouterr().out == "The" + tok.decode(new) + "\n"
