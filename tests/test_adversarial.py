"""Hostile inputs and faults (issue 34): every one is refused with a ``BlockDSLError`` (exit 2
on the command line, no traceback), before anything large is allocated or any file outside
the input is read.

Families: hostile model files and configs, hostile Hugging Face folders, damaged run and data
files, wrongly typed or out-of-range arguments of the public API, command lines, and search and
compare inputs that must fail once, up front, instead of poisoning a study.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import blockdsl
from blockdsl.errors import BlockDSLError

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"d_model": 16, "layers": "block*1", "context": 32, "vocab": 256}
TASK = "task:mqar,vocab=32,seq=16,pairs=2,train=32,test=8"


# ==================================================================== fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from blockdsl.train.data import prepare

    root = tmp_path_factory.mktemp("adversarial-data")
    (root / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    prepare([str(root / "text.txt")], root / "data", tokenizer="byte", progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def run_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adversarial-run") / "run"
    blockdsl.train(
        "tiny",
        data=data_dir,
        out=out,
        progress=False,
        train={"steps": 2, "batch_size": 2, "eval_every": 0},
        **SMALL,
    )
    return out


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = blockdsl.build_model("tiny", **SMALL)
    return blockdsl.save(model, tmp_path_factory.mktemp("adversarial-model") / "m.safetensors")


def _with_config(source: Path, target: Path, old: str, new: str) -> Path:
    """A copy of the model file ``source`` whose embedded config has ``old`` replaced."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
    assert old in metadata["blockdsl_config"]
    metadata["blockdsl_config"] = metadata["blockdsl_config"].replace(old, new)
    save_file(load_file(str(source)), str(target), metadata=metadata)
    return target


# ==================================================================== hostile model files
HOSTILE_MODEL_CONFIGS = [
    ('layers = "block*1"', 'layers = "block*100000"', "declares 100,000 layers"),
    ('layers = "block*1"', 'layers = "(block*1000)*1000"', "declares 1,000,000 layers"),
    ('layers = "block*1"', 'layers = "block*2"', "missing tensors"),
    ("d_model = 16", "d_model = 32", "shape mismatches"),
    ("vocab = 256", "vocab = 512", "shape mismatches"),
    ('layers = "block*1"', 'layers = "block*0"', "repeat count"),
    ("context = 32", "context = 1000000000", "over the budget"),
]


@pytest.mark.parametrize(("old", "new", "message"), HOSTILE_MODEL_CONFIGS)
def test_a_model_file_whose_config_lies_is_refused_before_allocation(
    model_file: Path, tmp_path: Path, old: str, new: str, message: str
) -> None:
    hostile = _with_config(model_file, tmp_path / "hostile.safetensors", old, new)
    started = time.perf_counter()
    with pytest.raises(BlockDSLError, match=message):
        blockdsl.load(hostile, max_memory="1GiB")
    assert time.perf_counter() - started < 5.0  # measured: ~0.1 s; the margin is for load


HUGE_FILE_PROBE = textwrap.dedent(
    """
    import resource, sys, time
    import blockdsl
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        blockdsl.load(sys.argv[1])
    except blockdsl.BlockDSLError as exc:
        print(time.perf_counter() - started)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        print(str(exc).splitlines()[0])
    """
)


@pytest.mark.slow
def test_a_200kb_file_declaring_100000_layers_is_refused_in_a_second_with_flat_memory(
    model_file: Path, tmp_path: Path
) -> None:
    """Unchecked, this file allocated 5.4 GB for 84 s. Measured in a fresh process (peak RSS
    is per process): refused in ~0.1 s, a few MB of peak memory growth."""
    hostile = _with_config(
        model_file, tmp_path / "huge.safetensors", 'layers = "block*1"', 'layers = "block*100000"'
    )
    assert hostile.stat().st_size < 200_000
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", HUGE_FILE_PROBE, str(hostile)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    seconds, grown_kib, message = done.stdout.strip().splitlines()
    assert "declares 100,000 layers" in message
    assert float(seconds) < 1.0
    assert int(grown_kib) < 200 * 1024  # < 200 MB (the unchecked load: 5.4 GB)


def test_the_memory_budget_defaults_to_a_share_of_the_available_memory(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blockdsl.train import memory

    monkeypatch.setattr(memory, "available", lambda device: 1000)
    with pytest.raises(BlockDSLError, match="over the budget of 800 bytes"):
        blockdsl.load(model_file)
    monkeypatch.undo()
    assert blockdsl.load(model_file).config.d_model == 16


@pytest.mark.slow
def test_a_run_config_that_lies_is_not_what_generate_builds(run_dir: Path, tmp_path: Path) -> None:
    """A checkpoint's model file describes itself; the run's config.toml (which anyone may edit)
    is not read to build the model, so a lie there costs nothing."""
    from blockdsl.checkpoint import load_generator

    hostile = tmp_path / "run"
    shutil.copytree(run_dir, hostile)
    config = hostile / "config.toml"
    config.write_text(config.read_text().replace('"block*1"', '"block*100000"'))
    started = time.perf_counter()
    model, _ = load_generator(hostile)
    assert len(model.layers) == 1
    assert time.perf_counter() - started < 5.0


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


NON_REGULAR = ["fifo", "directory"]


@pytest.mark.parametrize("kind", NON_REGULAR)
def test_a_model_file_that_is_not_a_regular_file_is_refused_before_opening(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "m.safetensors"
    if kind == "fifo":
        _fifo(path)
        match = "FIFO"
    else:
        path.mkdir()
        match = "no model.safetensors"
    with pytest.raises(BlockDSLError, match=match):
        blockdsl.load(path)


@pytest.mark.parametrize("cut", [0, 7, 20, 200])
def test_a_truncated_model_file_is_refused(model_file: Path, tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.safetensors"
    path.write_bytes(model_file.read_bytes()[:cut])
    with pytest.raises(BlockDSLError, match="safetensors"):
        blockdsl.load(path)


def test_a_fifo_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BlockDSLError, match="FIFO"):
        blockdsl.build_model(_fifo(tmp_path / "model.toml"))


# ==================================================================== the Python API
def _model() -> Any:
    return blockdsl.build_model("tiny", **SMALL)


PROMPT = torch.tensor([[1, 2, 3]])
GENERATE_ARGUMENTS = [
    ((PROMPT, "5"), {}, "max_new_tokens must be an integer"),
    ((PROMPT, 2.0), {}, "max_new_tokens must be an integer"),
    ((PROMPT, -1), {}, "max_new_tokens must be at least 0"),
    ((PROMPT, 2), {"temperature": "hot"}, "temperature must be"),
    ((PROMPT, 2), {"temperature": float("inf")}, "temperature must be"),
    ((PROMPT, 2), {"temperature": float("nan")}, "temperature must be"),
    ((PROMPT, 2), {"temperature": -1.0}, "temperature must be"),
    ((PROMPT, 2), {"top_k": 2.5}, "top_k must be"),
    ((PROMPT, 2), {"top_k": "a"}, "top_k must be"),
    ((PROMPT, 2), {"top_k": 0}, "top_k must be"),
    ((PROMPT, 2), {"top_p": "a"}, "top_p must be"),
    ((PROMPT, 2), {"top_p": 1.5}, "top_p must be"),
    ((PROMPT, 2), {"stop": "x"}, "stop must be"),
    ((PROMPT, 2), {"stop": ["x"]}, "stop must be"),
    ((PROMPT, 2), {"stop": 1.5}, "stop must be"),
    ((PROMPT, 2), {"generator": 5}, "generator must be a torch.Generator"),
    ((PROMPT, 2), {"greedy": "yes"}, "greedy must be"),
    ((None, 2), {}, "prompts must be token ids"),
    ((5, 2), {}, "prompts must be token ids"),
    (("text", 2), {}, "not text"),
    ((torch.tensor([[0.5]]), 2), {}, "prompts must be token ids"),
    ((torch.tensor([[999]]), 2), {}, "unknown token id 999"),
    (([[1, 2], None], 2), {}, "prompt 1"),
    (([], 2), {}, "no prompt"),
]


@pytest.mark.parametrize(("args", "kwargs", "message"), GENERATE_ARGUMENTS)
def test_generate_refuses_wrongly_typed_arguments(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(BlockDSLError, match=message):
        _model().generate(*args, **kwargs)


def test_a_tiny_temperature_samples_the_argmax_instead_of_failing() -> None:
    model = _model().eval()
    greedy = model.generate(PROMPT, 4, greedy=True)
    assert torch.equal(model.generate(PROMPT, 4, temperature=1e-45), greedy)


LOAD_ARGUMENTS = [
    ({"dtype": "float16"}, "dtype must be a floating-point torch.dtype"),
    ({"dtype": torch.int64}, "dtype must be a floating-point torch.dtype"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"device": 5.5}, "device must be"),
    ({"device": "cuda:0" if not torch.cuda.is_available() else "nonsense"}, "device"),
    ({"max_memory": float("inf")}, "max_memory must be a size"),
    ({"max_memory": "lots"}, "max_memory must be a size"),
]


@pytest.mark.parametrize(("kwargs", "message"), LOAD_ARGUMENTS)
def test_load_refuses_bad_arguments(model_file: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(BlockDSLError, match=message):
        blockdsl.load(model_file, **kwargs)


@pytest.mark.parametrize("path", [None, 5, ["a"]])
def test_load_refuses_a_path_of_another_type(path: Any) -> None:
    with pytest.raises(BlockDSLError, match="must be a str or Path"):
        blockdsl.load(path)


TRAIN_SETTINGS = [
    ({"steps": 0}, "steps must be positive"),
    ({"tokens": 0}, "tokens must be positive"),
    ({"steps": -3}, "steps must be positive"),
    ({"steps": 1, "max_memory": float("inf")}, "max_memory must be a size"),
    ({"steps": 1, "max_memory": "1e400"}, "max_memory must be a size"),
    ({"steps": 1, "max_memory": float("nan")}, "max_memory must be a size"),
    ({"steps": 1, "seed": 10**23}, "seed must be at most"),
    ({"steps": 1, "seed": 1e23}, "seed must be an integer"),
    ({"steps": 1, "device": "tpu"}, "device must be one of"),
    ({"steps": 1, "time": float("inf")}, "time must be a finite number"),
    ({"steps": 1, "batch_size": 0}, "batch_size must be positive"),
]


@pytest.mark.parametrize(("train", "message"), TRAIN_SETTINGS)
def test_train_refuses_bad_settings_before_running(
    data_dir: Path, tmp_path: Path, train: dict, message: str
) -> None:
    with pytest.raises(BlockDSLError, match=message):
        blockdsl.train("tiny", data=data_dir, out=tmp_path / "run", train=train, **SMALL)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("data", [None, 5, 1.5])
def test_train_refuses_data_of_another_type(tmp_path: Path, data: Any) -> None:
    with pytest.raises(BlockDSLError, match="data must be a prepared data directory"):
        blockdsl.train("tiny", data=data, out=tmp_path / "run", train={"steps": 1}, **SMALL)


def test_train_refuses_a_task_whose_vocabulary_exceeds_the_models(tmp_path: Path) -> None:
    """The message-building code once raised TypeError here (a task has no directory)."""
    with pytest.raises(BlockDSLError, match="64 tokens but the model's vocab is 32"):
        blockdsl.train(
            "tiny",
            data="task:mqar,vocab=64,seq=16,pairs=2,train=32,test=8",
            out=tmp_path / "run",
            train={"steps": 1},
            **{**SMALL, "vocab": 32},
        )


@pytest.mark.parametrize("size", ["bpe:4294967296", "bpe:1048577", "bpe:256", "bpe:-5", "bpe:x"])
def test_bpe_sizes_are_checked_before_the_tokenizers_library_sees_them(
    tmp_path: Path, size: str
) -> None:
    """bpe:4294967296 made the Rust library abort the process (exit 134)."""
    from blockdsl.train.data import prepare

    (tmp_path / "t.txt").write_text("text")
    with pytest.raises(BlockDSLError, match="N must be an integer from 257"):
        prepare([str(tmp_path / "t.txt")], tmp_path / "out", tokenizer=size, progress=False)


def test_a_full_disk_while_saving_is_a_blockdsl_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    with pytest.raises(BlockDSLError, match="No space left on device"):
        blockdsl.save(_model(), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []  # no partial file left


@pytest.mark.slow
def test_a_full_disk_while_training_is_a_blockdsl_error(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save on a full disk raises RuntimeError('... unexpected pos ...')."""

    def full(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(BlockDSLError, match="cannot write the training state"):
        blockdsl.train(
            "tiny",
            data=data_dir,
            out=tmp_path / "run",
            progress=False,
            train={"steps": 1, "batch_size": 2, "eval_every": 0},
            **SMALL,
        )


NAN_CONFIGS = [
    ({"defaults": {"Norm": {"kind": "rms", "eps": float("nan")}}}, "norm"),
    ({"defaults": {"Attn": {"heads": 4, "kv_heads": 2, "pos": "rope", "rope_theta": 0}}}, "attn"),
]


@pytest.mark.parametrize(("overrides", "culprit"), NAN_CONFIGS)
def test_nan_logits_in_generation_name_the_first_non_finite_component(
    overrides: dict, culprit: str
) -> None:
    """These configs generated NUL bytes with exit 0."""
    try:
        model = blockdsl.build_model("tiny", **{**SMALL, **overrides})
    except BlockDSLError:
        return  # refused when built: also no silent NaN
    with pytest.raises(BlockDSLError, match=rf"not finite.*first produced by \S*{culprit}"):
        model.generate(PROMPT, 3)


def test_prompt_characters_without_a_token_are_named(data_dir: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from blockdsl.generate import stream_text
    from blockdsl.train.data import prepare

    (tmp_path / "t.txt").write_text("abc abc abc\n" * 50)
    prepare([str(tmp_path / "t.txt")], tmp_path / "chars", tokenizer="char", progress=False)
    tokenizer = Tokenizer.from_file(str(tmp_path / "chars" / "tokenizer.json"))
    model = blockdsl.build_model("tiny", **{**SMALL, "vocab": tokenizer.get_vocab_size()})
    with pytest.raises(BlockDSLError, match=r"'€' \(U\+20AC\) at character 3"):
        list(stream_text(model, tokenizer, "abc€", 2))
    assert isinstance("".join(stream_text(model, tokenizer, "abc", 2)), str)


# ==================================================================== damaged run and data files
DAMAGED_SUMMARIES = ["{bad", "[1, 2]", '"text"', "", "\xff\xfe"]


@pytest.mark.parametrize("text", DAMAGED_SUMMARIES)
def test_run_load_refuses_a_damaged_summary(run_dir: Path, tmp_path: Path, text: str) -> None:
    from blockdsl.train import Run

    damaged = tmp_path / "run"
    shutil.copytree(run_dir, damaged)
    (damaged / "summary.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(BlockDSLError, match="run summary"):
        Run.load(damaged)


DAMAGED_META = [
    "{bad",
    "[]",
    '{"format": "blockdsl-data", "vocab": "x"}',
    '{"format": "blockdsl-data", "vocab": 256, "dtype": "float64"}',
    '{"format": "blockdsl-data", "vocab": 256, "dtype": "uint16", "train_tokens": -5, '
    '"val_tokens": 1}',
    '{"format": "other"}',
]


@pytest.mark.parametrize("text", DAMAGED_META)
def test_a_damaged_data_meta_json_is_refused(data_dir: Path, tmp_path: Path, text: str) -> None:
    from blockdsl.train.data import TokenData

    damaged = tmp_path / "data"
    shutil.copytree(data_dir, damaged)
    (damaged / "meta.json").write_text(text)
    with pytest.raises(BlockDSLError):
        TokenData(damaged)


def test_a_truncated_token_file_is_refused(data_dir: Path, tmp_path: Path) -> None:
    from blockdsl.train.data import TokenData

    damaged = tmp_path / "data"
    shutil.copytree(data_dir, damaged)
    train = damaged / "train.bin"
    train.write_bytes(train.read_bytes()[:-3])
    with pytest.raises(BlockDSLError, match="missing or truncated"):
        TokenData(damaged)


def test_a_swapped_tokenizer_is_refused(data_dir: Path, tmp_path: Path) -> None:
    """The ids were made by one tokenizer; another in its place would train on garbage."""
    from blockdsl.train.data import TokenData, char_tokenizer

    swapped = tmp_path / "data"
    shutil.copytree(data_dir, swapped)
    TokenData(swapped)  # as prepared: accepted
    char_tokenizer(set("the quick brown fox")).save(str(swapped / "tokenizer.json"))
    with pytest.raises(BlockDSLError, match="not the tokenizer the data's tokens were made with"):
        TokenData(swapped)


def test_a_corrupt_compare_summary_is_a_blockdsl_error(tmp_path: Path) -> None:
    """compare reuses finished runs by reading their summary.json."""
    from blockdsl.compare import compare

    options = dict(data=TASK, steps=2, lrs=[1e-3], plot=False, progress=False, d_model=16)
    options["layers"] = "block*1"
    options["train"] = {"batch_size": 4, "eval_every": 0}
    compare(["Norm->MLP->+"], out=tmp_path, **options)
    [summary] = (tmp_path / "runs").glob("*/summary.json")
    summary.write_text("{not json")
    with pytest.raises(BlockDSLError, match="run summary"):
        compare(["Norm->MLP->+"], out=tmp_path, **options)


def test_prepare_refuses_a_glob_that_leaves_the_source(tmp_path: Path) -> None:
    from blockdsl.train.data import prepare

    (tmp_path / "secret.txt").write_text("outside")
    source = tmp_path / "a" / "b"
    source.mkdir(parents=True)
    (source / "x.txt").write_text("inside")
    for glob in ("../../*", "../*.txt", "/etc/*"):
        with pytest.raises(BlockDSLError, match="outside the source directory"):
            prepare([str(source)], tmp_path / "out", glob=glob, progress=False)


def test_prepare_refuses_a_fifo_source_before_opening_it(tmp_path: Path) -> None:
    from blockdsl.train.data import prepare

    with pytest.raises(BlockDSLError, match="FIFO"):
        prepare([str(_fifo(tmp_path / "in.txt"))], tmp_path / "out", progress=False)


# ==================================================================== hostile Hugging Face folders
@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("adversarial-hf") / "llama"
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    (folder / "generation_config.json").unlink()
    return folder


def _hf_variant(source: Path, target: Path, **fields: Any) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config.update(fields)
    (target / "config.json").write_text(json.dumps(config))
    return target


HOSTILE_HF_CONFIGS = [
    ({"hidden_size": "32"}, "'hidden_size' must be an integer"),
    ({"hidden_size": 32.5}, "'hidden_size' must be an integer"),
    ({"hidden_size": True}, "'hidden_size' must be an integer"),
    ({"num_attention_heads": 0}, "'num_attention_heads' must be between 1"),
    ({"num_key_value_heads": 0}, "'num_key_value_heads' must be between 1"),
    ({"num_hidden_layers": -1}, "'num_hidden_layers' must be between 1"),
    ({"vocab_size": 10**12}, "'vocab_size' must be between 1"),
    ({"intermediate_size": -64}, "'intermediate_size' must be between 0"),
    ({"head_dim": 7}, "transformers refuses"),
    ({"num_hidden_layers": 100000}, "declares 100,000 layers, but its weights hold 2"),
    ({"model_type": "nonsense"}, "model_type 'nonsense' is not supported"),
    ({"model_type": 5}, "'model_type' must be a string"),
    ({"model_type": None}, "'model_type' must be a string"),
    ({"rms_norm_eps": float("nan")}, "'rms_norm_eps' must be a finite number > 0"),
    ({"rms_norm_eps": -1e-6}, "'rms_norm_eps' must be a finite number > 0"),
    ({"rope_theta": 0}, "'rope_theta' must be a finite number > 0"),
]


@pytest.mark.parametrize(("fields", "message"), HOSTILE_HF_CONFIGS)
def test_a_hostile_hf_config_is_refused(
    hf_folder: Path, tmp_path: Path, fields: dict, message: str
) -> None:
    from blockdsl import hf

    folder = _hf_variant(hf_folder, tmp_path / "hf", **fields)
    with pytest.raises(BlockDSLError, match=message):
        hf.from_pretrained_dir(folder)


@pytest.mark.parametrize(
    ("text", "message"),
    [("[1, 2]", "JSON list, not an object"), ("{bad", "not valid JSON"), ("null", "JSON NoneType")],
)
def test_an_hf_config_json_of_another_shape_is_refused(
    hf_folder: Path, tmp_path: Path, text: str, message: str
) -> None:
    from blockdsl import hf

    folder = tmp_path / "hf"
    shutil.copytree(hf_folder, folder)
    (folder / "config.json").write_text(text)
    with pytest.raises(BlockDSLError, match=message):
        hf.from_pretrained_dir(folder)
    with pytest.raises(BlockDSLError, match=message):
        hf.config_from_dir(folder)


HOSTILE_EOS = ["x", -5, 1e30, ["a"], {"a": 1}, True, 2**70, [2, None]]


@pytest.mark.parametrize("eos", HOSTILE_EOS)
def test_a_hostile_eos_token_id_is_refused(hf_folder: Path, tmp_path: Path, eos: Any) -> None:
    from blockdsl.hf import eos_ids

    folder = _hf_variant(hf_folder, tmp_path / "hf", eos_token_id=eos)
    with pytest.raises(BlockDSLError, match="eos_token_id must be a token id"):
        eos_ids(folder)


def test_good_eos_token_ids_are_read(hf_folder: Path, tmp_path: Path) -> None:
    from blockdsl.hf import eos_ids

    assert eos_ids(_hf_variant(hf_folder, tmp_path / "a", eos_token_id=[2, 3])) == [2, 3]
    assert eos_ids(_hf_variant(hf_folder, tmp_path / "b", eos_token_id=None)) == []


@pytest.mark.parametrize("keep", [0.5, 0.99, 20])
def test_truncated_hf_weights_are_refused_before_reading(
    hf_folder: Path, tmp_path: Path, keep: float
) -> None:
    from blockdsl import hf

    folder = tmp_path / "hf"
    shutil.copytree(hf_folder, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if keep < 1 else int(keep)])
    with pytest.raises(BlockDSLError, match=r"safetensors|truncated|header describes"):
        hf.from_pretrained_dir(folder)


def test_a_fifo_named_model_safetensors_in_an_hf_folder_is_refused(
    hf_folder: Path, tmp_path: Path
) -> None:
    """It blocked `generate --from-hf` forever."""
    from blockdsl import hf

    folder = tmp_path / "hf"
    shutil.copytree(hf_folder, folder)
    (folder / "model.safetensors").unlink()
    _fifo(folder / "model.safetensors")
    with pytest.raises(BlockDSLError, match="FIFO"):
        hf.from_pretrained_dir(folder)


def test_the_untouched_hf_folder_still_imports(hf_folder: Path) -> None:
    from blockdsl import hf

    model = hf.from_pretrained_dir(hf_folder)
    assert model.config.vocab == 64


# ==================================================================== search and compare inputs
def _search_settings(**changes: Any) -> Any:
    from blockdsl.search import SearchSettings

    options: dict[str, Any] = dict(
        data=TASK,
        components=("Norm", "MLP", "Conv"),
        seeds=("Norm->Conv->+->Norm->MLP->+",),
        steps=2,
        hurdle=0,
        overrides={"d_model": 16, "layers": "block*1", "train": {"batch_size": 4}},
    )
    options.update(changes)
    return SearchSettings(**options)


SEARCH_SETTINGS = [
    ({"lr": float("nan")}, "--lr must be a finite number > 0"),
    ({"lr": -1.0}, "--lr must be a finite number > 0"),
    ({"lr": float("inf")}, "--lr must be a finite number > 0"),
    ({"lr": "fast"}, "--lr must be a finite number > 0"),
    ({"max_params": -5}, "--max-params must be a positive integer"),
    ({"max_params": 0}, "--max-params must be a positive integer"),
    ({"max_params": float("nan")}, "--max-params must be a positive integer"),
    ({"seed": 10**23}, "--seed must be an integer from 0"),
    ({"seed": -1}, "--seed must be an integer from 0"),
    ({"steps": "10"}, "--steps must be an integer"),
    ({"steps": 0}, "--steps must be at least 1"),
    ({"max_memory": "lots"}, "--max-memory must be a size"),
    ({"max_memory": float("inf")}, "--max-memory must be a size"),
]


@pytest.mark.parametrize(("changes", "message"), SEARCH_SETTINGS)
def test_search_settings_are_checked_once_up_front(changes: dict, message: str) -> None:
    pytest.importorskip("optuna")
    with pytest.raises(BlockDSLError, match=message):
        _search_settings(**changes)


SEARCH_INPUTS = [
    ({"data": "task:mqar,vocab=32,seq=32,pairs=2"}, "vocab must exceed seq"),
    ({"data": "/nonexistent/data"}, "does not exist"),
    ({"overrides": {"d_model": 16, "vocab": 8}}, "the data has 32 tokens but the candidates'"),
    ({"overrides": {"d_model": 16, "train": {"batch_size": 0}}}, "batch_size must be positive"),
]


@pytest.mark.parametrize(("changes", "message"), SEARCH_INPUTS)
def test_a_search_with_a_global_error_fails_before_any_study_exists(
    tmp_path: Path, changes: dict, message: str
) -> None:
    """Each of these exited 0 after recording the error against every candidate."""
    pytest.importorskip("optuna")
    from blockdsl.search import search

    options = dict(_search_settings().to_dict(), **changes)
    overrides = options.pop("overrides")
    for unused in ("hurdle", "population", "tournament", "objectives", "max_memory"):
        options.pop(unused)
    with pytest.raises(BlockDSLError, match=message):
        search(trials=2, out=tmp_path / "s", progress=False, plot=False, **options, **overrides)
    assert not (tmp_path / "s" / "study.db").exists()


@pytest.mark.parametrize(("workers", "force"), [(100_000, False), (0, False), (-1, True)])
def test_search_workers_are_capped_to_the_cores_unless_forced(workers: int, force: bool) -> None:
    pytest.importorskip("optuna")
    from blockdsl.search import check_workers

    started = time.perf_counter()
    with pytest.raises(BlockDSLError, match="--workers"):
        check_workers(workers, force)
    assert time.perf_counter() - started < 1.0  # at once: nothing was forked
    assert check_workers(1) == 1
    assert check_workers(len(os.sched_getaffinity(0)) + 1, force=True) > 1


def test_a_study_resumed_with_nan_settings_names_the_real_difference(tmp_path: Path) -> None:
    """`--lr nan` used to say "study nan, now nan" (NaN != NaN); NaN is now refused and equal
    settings compare equal as stored (JSON)."""
    pytest.importorskip("optuna")
    from blockdsl.search import Study, default_storage

    storage = default_storage(tmp_path)
    Study(_search_settings(lr=1e-3), storage=storage, name="s")
    Study(_search_settings(lr=1e-3), storage=storage, name="s")  # same settings: resumes
    with pytest.raises(BlockDSLError, match=r"lr: study 0\.001, now 0\.002"):
        Study(_search_settings(lr=2e-3), storage=storage, name="s")


RACE = textwrap.dedent(
    """
    import sys, time
    from blockdsl.search import SearchSettings, Study
    settings = SearchSettings(data=sys.argv[2], components=("Norm", "MLP"),
                              seeds=("Norm->MLP->+",), steps=2, hurdle=0)
    time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
    Study(settings, storage=sys.argv[1], name="s")
    print("ok")
    """
)


@pytest.mark.slow
def test_searches_creating_one_fresh_sqlite_study_at_once_do_not_race(tmp_path: Path) -> None:
    """Four processes open one fresh study at the same instant: each used to fail with an
    IntegrityError about the schema, blamed on the --storage URL."""
    pytest.importorskip("optuna")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(2):
        url = f"sqlite:///{tmp_path / f'study{attempt}.db'}"
        start = str(time.time() + 12)  # after every process has imported optuna
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", RACE, url, TASK, start],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(4)
        ]
        outputs = [p.communicate(timeout=300) for p in processes]
        assert [out.strip() for out, _ in outputs] == ["ok"] * 4, [err for _, err in outputs]


COMPARE_ARGUMENTS = [
    ({"seeds": [10**23]}, "--seeds must be whole numbers from 0"),
    ({"seeds": [-1]}, "--seeds must be whole numbers from 0"),
    ({"seeds": [0, 0]}, "lists a seed twice"),
    ({"lrs": [float("nan")]}, "--lr must be finite learning rates > 0"),
    ({"lrs": [-1e-3]}, "--lr must be finite learning rates > 0"),
    ({"steps": 0}, "--steps must be a whole number"),
    ({"steps": None, "tokens": float("inf")}, "--tokens must be a whole number"),
    ({"steps": None, "tokens": 0.5}, "--tokens must be a whole number"),
    ({"steps": None, "time": float("nan")}, "--time must be a finite number"),
    ({"max_memory": float("inf")}, "--max-memory must be a size"),
    ({"data": "task:mqar,vocab=32,seq=32,pairs=2"}, "vocab must exceed seq"),
    ({"data": "/nonexistent/data"}, "does not exist"),
    ({"vocab": 8}, "has vocab 8 but the data has 32 tokens"),
]


@pytest.mark.parametrize(("changes", "message"), COMPARE_ARGUMENTS)
def test_compare_checks_everything_before_the_first_run(
    tmp_path: Path, changes: dict, message: str
) -> None:
    from blockdsl.compare import compare

    options: dict[str, Any] = dict(data=TASK, steps=2, plot=False, progress=False, d_model=16)
    options.update(changes)
    with pytest.raises(BlockDSLError, match=message):
        compare(["Norm->MLP->+", "Norm->Conv->+"], out=tmp_path / "c", **options)
    assert not (tmp_path / "c" / "runs").exists()


# ==================================================================== command lines
def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    from blockdsl.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


SEARCH = ["search", "--components", "Norm,MLP,Conv", "--seed-spec", "Norm->Conv->+->Norm->MLP->+"]
SEARCH += ["--steps", "2", "--trials", "2", "--set", "d_model=16", "--quiet", "--no-plot"]
COMPARE = ["compare", "a=Norm->MLP->+", "--set", "d_model=16", "--quiet", "--no-plot"]

CLI_CASES = [
    (
        [*SEARCH, "--data", "task:mqar,vocab=32,seq=32,pairs=2"],
        "vocab must exceed seq",
    ),
    ([*SEARCH, "--data", TASK, "--workers", "100000"], "more than the"),
    ([*SEARCH, "--data", TASK, "--lr", "nan"], "--lr must be a finite number > 0"),
    ([*SEARCH, "--data", TASK, "--lr", "-1"], "--lr must be a finite number > 0"),
    ([*SEARCH, "--data", TASK, "--max-params", "-5"], "--max-params must be a positive"),
    ([*SEARCH, "--data", TASK, "--max-params", "nan"], "--max-params must be a positive"),
    ([*SEARCH, "--data", "/nonexistent"], "does not exist"),
    ([*COMPARE, "--data", TASK, "--steps", "2", "--seeds", "1e23"], "--seeds must be whole"),
    ([*COMPARE, "--data", TASK, "--steps", "2", "--seeds", "inf"], "--seeds expects"),
    ([*COMPARE, "--data", TASK, "--steps", "2", "--lr", "nan"], "--lr must be finite"),
    ([*COMPARE, "--data", TASK, "--tokens", "inf"], "--tokens must be a whole number"),
    ([*COMPARE, "--data", TASK, "--tokens", "nan"], "--tokens must be a whole number"),
    ([*COMPARE, "--data", TASK, "--time", "-1"], "--time must be a finite number"),
    (["data", "prepare", "README.md", "--tokenizer", "bpe:4294967296"], "N must be an integer"),
    (["generate", "{model}", "--prompt", "a", "--device", "tpu"], "tpu"),
    (["generate", "{model}", "--prompt", "a", "--top-k", "0"], "top_k must be"),
    (["generate", "{model}", "--prompt", "a", "--temperature", "-1"], "temperature must be"),
    (["generate", "{model}", "--prompt", "a", "--temperature", "inf"], "temperature must be"),
]


@pytest.mark.parametrize(("argv", "message"), CLI_CASES)
def test_cli_refuses_with_exit_2_and_no_traceback(
    argv: list[str],
    message: str,
    tmp_path: Path,
    run_dir: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if argv[0] == "search":
        pytest.importorskip("optuna")
    monkeypatch.chdir(ROOT)
    argv = [a.replace("{model}", str(run_dir)) for a in argv]
    if argv[0] in ("search", "compare", "data"):
        argv += ["--out", str(tmp_path / "out")]
    code, output = _cli(argv, capsys)
    assert code == 2, output
    assert message in output
    assert "Traceback" not in output


def test_cli_train_with_steps_zero_exits_2(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["train", "tiny", "--data", str(data_dir), "--out", str(tmp_path / "r")]
    argv += ["--set", "train.steps=0", "--set", "d_model=16", "--set", "layers=block*1"]
    code, output = _cli(argv, capsys)
    assert code == 2 and "steps must be positive" in output and "Traceback" not in output


# ==================================================================== search runs
@pytest.mark.slow
def test_search_counts_add_up_and_top_names_as_many_blocks_as_trained(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("optuna")
    argv = ["search", "--components", "Norm,MLP,Conv", "--data", TASK, "--steps", "2"]
    argv += ["--seed-spec", "Norm->Conv->+->Norm->MLP->+", "--trials", "3", "--hurdle", "0"]
    argv += ["--set", "d_model=16", "--set", "layers=block*1", "--set", "train.batch_size=4"]
    argv += ["--set", "train.eval_every=0", "--top", "3", "--no-plot", "--out", str(tmp_path)]
    code, output = _cli(argv, capsys)
    assert code == 0, output
    line = next(x for x in output.splitlines() if x.startswith("this run:"))
    numbers = [int(word) for word in line.replace(",", "").split() if word.isdigit()]
    proposed, invalid, over, known, trained = numbers[:5]
    assert trained == 3
    assert proposed == invalid + over + known + trained, line
    command = output.splitlines()[-1]
    assert all(f"best{i}=" in command for i in (1, 2, 3)), command


def test_an_empty_front_after_a_run_is_an_error(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from blockdsl.search import search

    with pytest.raises(BlockDSLError, match=r"no trained candidate.*over --max-params 5"):
        search(
            data=TASK,
            components=["Norm", "MLP"],
            seeds=["Norm->MLP->+"],
            steps=2,
            trials=2,
            out=tmp_path,
            hurdle=0,
            max_params=5,
            progress=False,
            plot=False,
            d_model=16,
        )


@pytest.mark.slow
def test_a_worker_that_dies_fails_its_trial_and_the_run(tmp_path: Path) -> None:
    """A killed worker used to leave its trial RUNNING and the main process exited 0."""
    pytest.importorskip("optuna")
    import signal
    import threading

    from blockdsl.search import Study, default_storage
    from blockdsl.search.workers import run_workers

    settings = _search_settings(
        steps=100_000,
        overrides={"d_model": 16, "layers": "block*1", "train": {"batch_size": 4, "time": 60.0}},
    )
    storage = default_storage(tmp_path)
    study = Study(settings, storage=storage, name="s")
    outcome: list[BaseException | None] = []

    def main() -> None:
        try:
            run_workers(
                settings, workers=1, storage=storage, study_name="s", out=tmp_path, trials=1
            )
            outcome.append(None)
        except BaseException as exc:  # the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        running = study.ledger.rows("s", "running")
        if running and running[0]["trial"] is not None:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the worker never started its trial")
    os.kill(int(running[0]["owner"].rpartition(":")[2]), signal.SIGKILL)
    thread.join(timeout=120)
    assert len(outcome) == 1 and isinstance(outcome[0], BlockDSLError), outcome
    assert "killed by SIGKILL" in str(outcome[0])
    states = [t.state.name for t in study.study.get_trials(deepcopy=False)]
    assert states == ["FAIL"]
