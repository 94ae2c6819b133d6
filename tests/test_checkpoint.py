"""Self-describing checkpoints: ``blockdsl.save`` / ``blockdsl.load``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import blockdsl
from blockdsl.checkpoint import FORMAT_VERSION, CheckpointError, read_metadata
from blockdsl.registry import REGISTRY

SMALL = {"d_model": 32, "vocab": 64, "context": 16}


def small_gpt2() -> blockdsl.LanguageModel:
    # tied head, learned positions, biases
    return blockdsl.build_model("gpt2", **SMALL, layers="block*2", defaults={"Attn": {"heads": 4}})


def shared_norms() -> blockdsl.LanguageModel:
    # labels: one LayerNorm feeds both parallel branches of each layer (GPT-J style)
    blocks = {"block": "Norm#ln->Attn->+ | Norm#ln->MLP->+"}
    return blockdsl.build_model(
        "tiny", **SMALL, layers="block*2", blocks=blocks, defaults={"Attn": {"heads": 2}}
    )


@pytest.mark.parametrize("make", [small_gpt2, shared_norms])
def test_round_trip_in_process(tmp_path, make):
    model = make().eval()
    path = blockdsl.save(model, tmp_path / "m.safetensors")
    loaded = blockdsl.load(path)
    assert not loaded.training
    assert loaded.config == model.config
    idx = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), model(idx), rtol=0, atol=0)
    # shared and tied weights are still one parameter
    assert loaded.num_params() == model.num_params()


def test_metadata_describes_the_model(tmp_path):
    model = small_gpt2()
    path = blockdsl.save(model, tmp_path / "m.safetensors", metadata={"step": "120"})
    meta = read_metadata(path)
    assert meta["format"] == "blockdsl"
    assert meta["blockdsl_format"] == str(FORMAT_VERSION)
    assert meta["blockdsl_version"] == blockdsl.__version__
    assert meta["blockdsl_config"] == model.config.to_toml()
    assert meta["step"] == "120"
    assert json.loads(meta["blockdsl_modules"])["Attn"] == "blockdsl.components.attention"
    with pytest.raises(CheckpointError, match="reserved"):
        blockdsl.save(model, tmp_path / "x.safetensors", metadata={"blockdsl_config": "x"})


def test_dtype_is_kept(tmp_path):
    model = small_gpt2().to(torch.bfloat16)
    loaded = blockdsl.load(blockdsl.save(model, tmp_path / "m.safetensors"))
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    as_float = blockdsl.load(tmp_path / "m.safetensors", dtype=torch.float32)
    assert {p.dtype for p in as_float.parameters()} == {torch.float32}


def test_never_overwrites_without_being_asked(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(CheckpointError, match="exists; not overwriting"):
        blockdsl.save(small_gpt2(), path)
    assert path.read_bytes() == b"precious"
    blockdsl.save(small_gpt2(), path, overwrite=True)
    assert read_metadata(path)["format"] == "blockdsl"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary left


def _message(path: Path) -> str:
    with pytest.raises(blockdsl.BlockDSLError) as info:
        blockdsl.load(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_bad_files_are_named(tmp_path):
    good = blockdsl.save(small_gpt2(), tmp_path / "good.safetensors")
    data = good.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    assert "not a readable safetensors file" in _message(truncated)

    header_only = tmp_path / "header.safetensors"
    header_only.write_bytes(data[:5])
    assert "not a readable safetensors file" in _message(header_only)

    text = tmp_path / "config.toml"
    text.write_text("[model]\nd_model = 64\n")
    assert "not a readable safetensors file" in _message(text)

    foreign = tmp_path / "model.safetensors"  # e.g. a Hugging Face weights file
    save_file({"wte.weight": torch.zeros(4, 4)}, str(foreign))
    assert "not a blockdsl checkpoint" in _message(foreign)

    assert "no checkpoint file" in _message(tmp_path / "missing.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no model.safetensors and no checkpoints" in _message(empty)


def test_tensors_that_do_not_fit_are_named(tmp_path):
    model = small_gpt2()
    meta = read_metadata(blockdsl.save(model, tmp_path / "good.safetensors"))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.head")}
    state.pop("layers.1.mlp.up.weight")
    state["layers.0.attn.q.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad), metadata=meta)
    message = _message(bad)
    assert "missing tensors: layers.1.mlp.up.weight" in message
    assert "layers.0.attn.q.weight (file [3, 3], model [32, 32])" in message


class Scaled(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


def test_plugin_components_must_be_registered_first(tmp_path):
    REGISTRY.register("ScaledCkpt", replace=True)(Scaled)
    try:
        blocks = {"block": "ScaledCkpt->+"}
        model = blockdsl.build_model("tiny", **SMALL, layers="block", blocks=blocks)
        path = blockdsl.save(model, tmp_path / "m.safetensors")
        assert blockdsl.load(path).layers[0].scaled_ckpt.gain.shape == (32,)
    finally:
        REGISTRY.unregister("ScaledCkpt")
    with pytest.raises(blockdsl.UnknownComponentError) as info:
        blockdsl.load(path)
    assert "ScaledCkpt" in str(info.value)
    message = str(info.value)
    assert f"'ScaledCkpt' was registered by {__name__}: import it before loading" in message
    assert f"in [blocks] block of the config stored in '{path}'" in message


def test_only_language_models_are_saved(tmp_path):
    with pytest.raises(CheckpointError, match="LanguageModel"):
        blockdsl.save(nn.Linear(2, 2), tmp_path / "x.safetensors")


@pytest.mark.slow
def test_checkpoints_reload_in_a_fresh_process_without_a_config_file(tmp_path):
    from blockdsl.train.data import prepare

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    prepare([str(corpus)], tmp_path / "data", tokenizer="byte", progress=False)
    run = blockdsl.train(
        "tiny",
        data=tmp_path / "data",
        out=tmp_path / "run",
        progress=False,
        vocab=256,
        d_model=32,
        context=32,
        layers="block*2",
        defaults={"Attn": {"heads": 2, "kv_heads": 1}, "MLP": {"hidden": 64}},
        train={"steps": 2, "batch_size": 2, "seq_len": 16, "eval_every": 0},
    )
    (tmp_path / "run" / "config.toml").unlink()  # nothing but the checkpoint describes it
    (step,) = (tmp_path / "run" / "checkpoints").glob("step_*")
    assert read_metadata(step / "model.safetensors")["step"] == "2"
    gpt2 = small_gpt2().eval()  # a tied head and learned positions, saved on its own
    blockdsl.save(gpt2, tmp_path / "gpt2.safetensors")
    idx = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        expected = {"idx": idx, "run": run.model.eval()(idx).logits, "gpt2": gpt2(idx).logits}
    save_file(expected, str(tmp_path / "expected.st"))
    script = textwrap.dedent(
        """
        import sys, blockdsl
        blockdsl.save, blockdsl.load, blockdsl.trace
        print(sorted(m for m in ("safetensors", "transformers") if m in sys.modules))
        import torch
        from safetensors.torch import load_file
        expected = load_file("expected.st")
        for where, key in (("run", "run"), (sys.argv[1], "run"), ("gpt2.safetensors", "gpt2")):
            model = blockdsl.load(where)
            with torch.no_grad():
                print((model(expected["idx"]).logits - expected[key]).abs().max().item())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(step)],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[]"  # import blockdsl and the lazy names load neither
    assert lines[1:] == ["0.0", "0.0", "0.0"]
