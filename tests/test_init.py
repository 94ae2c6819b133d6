"""Starting from trained weights (issue 29): ``--init`` from a model file, a checkpoint, a run
and a Hugging Face folder; the copy table (``init.json``); shape mismatches; ``--from-hf``
loading weights; resume refusing a changed schedule and pointing at ``--init``; the optimizer
state kept only when asked and only for the same parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import blockdsl
from blockdsl import checkpoint as ckpt
from blockdsl.train import TrainingError
from blockdsl.train.data import prepare
from blockdsl.train.warmstart import InitError
from tests.test_train import ROOT, TINY, TINY_SET, tiny_train

pytest.importorskip("safetensors")

STEPS_CHANGED = r"\[train\] steps is 2, but the run was trained with 4"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare([str(ROOT / "blockdsl" / "train")], out, glob="*.py", tokenizer="byte", progress=False)
    return out


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "base"
    blockdsl.train(
        "tiny", data=data_dir, out=out, progress=False, train=tiny_train(steps=3), **TINY
    )
    return out


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _frozen(steps: int = 1) -> dict:
    """A run whose step changes nothing (lr 0): its weights are the init's."""
    return {"train": tiny_train(steps=steps), "optim": {"lr": 0.0, "schedule": "constant"}}


@pytest.mark.parametrize("kind", ["run", "step", "file"])
def test_init_from_each_blockdsl_source_copies_every_tensor(
    data_dir: Path, trained: Path, tmp_path: Path, kind: str
) -> None:
    newest = ckpt.latest(trained)
    assert newest is not None
    source = {"run": trained, "step": newest.path, "file": tmp_path / "model.safetensors"}[kind]
    if kind == "file":
        blockdsl.save(ckpt.load(trained), source)
    run = blockdsl.train(
        "tiny", data=data_dir, out=tmp_path / "new", progress=False, init=source,
        **_frozen(), **TINY,
    )  # fmt: skip
    expected = _weights(ckpt.load(trained))
    got = _weights(run.model)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    report = json.loads((tmp_path / "new" / "init.json").read_text())
    assert report["source"] == str(source)
    assert set(report["copied"]) == set(expected) and not report["new"] and not report["dropped"]
    assert report["copied"]["embed.embed.tok.weight"] == [256, 32]


def test_a_changed_block_string_copies_what_fits_and_lists_new_and_dropped(
    data_dir: Path, trained: Path, tmp_path: Path
) -> None:
    """Three layers from a two-layer run: layers 0-1 copied, layer 2 new; a layer-0 MLP of
    another width is refused naming both shapes unless mismatches are allowed."""
    deeper = {**TINY, "layers": "block*3"}
    run = blockdsl.train(
        "tiny", data=data_dir, out=tmp_path / "deeper", progress=False, init=trained,
        **_frozen(), **deeper,
    )  # fmt: skip
    report = json.loads((tmp_path / "deeper" / "init.json").read_text())
    assert report["new"] and all(name.startswith("layers.2.") for name in report["new"])
    assert not report["dropped"] and not report["mismatched"]
    source = _weights(ckpt.load(trained))
    for name in report["copied"]:
        assert torch.equal(run.model.state_dict()[name], source[name])

    shallower = {**TINY, "layers": "block*1"}
    blockdsl.train(
        "tiny", data=data_dir, out=tmp_path / "shallow", progress=False, init=trained,
        **_frozen(), **shallower,
    )  # fmt: skip
    report = json.loads((tmp_path / "shallow" / "init.json").read_text())
    assert report["dropped"] and all(n.startswith("layers.1.") for n in report["dropped"])

    wider = {**TINY, "defaults": {**TINY["defaults"], "MLP": {"hidden": 96}}}
    with pytest.raises(InitError, match=r"source \[64, 32\], model \[96, 32\]") as info:
        blockdsl.train(
            "tiny", data=data_dir, out=tmp_path / "wider", progress=False, init=trained,
            **_frozen(), **wider,
        )  # fmt: skip
    assert "init_strict = false" in str(info.value)
    assert not (tmp_path / "wider" / "config.toml").exists()
    blockdsl.train(
        "tiny", data=data_dir, out=tmp_path / "wider2", progress=False, init=trained,
        init_strict=False, **_frozen(), **wider,
    )  # fmt: skip
    report = json.loads((tmp_path / "wider2" / "init.json").read_text())
    assert report["mismatched"] and all(
        64 in source and 96 in model and source != model
        for source, model in report["mismatched"].values()
    )


def test_a_missing_source_is_an_error_naming_it(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InitError, match=r"init source .*nowhere"):
        blockdsl.train(
            "tiny", data=data_dir, out=tmp_path / "x", progress=False,
            init=tmp_path / "nowhere", **_frozen(), **TINY,
        )  # fmt: skip
    with pytest.raises(InitError, match=r"hf:.*no such folder"):
        blockdsl.train(
            "tiny", data=data_dir, out=tmp_path / "y", progress=False,
            init=f"hf:{tmp_path / 'nowhere'}", **_frozen(), **TINY,
        )  # fmt: skip


# ==================================================================== Hugging Face
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    out = tmp_path_factory.mktemp("hf")
    model.save_pretrained(out)
    return out, model


def test_hf_init_gives_the_hf_models_logits_at_step_0(
    data_dir: Path, hf_dir: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    folder, hf_model = hf_dir
    from blockdsl.hf import config_from_dir

    run = blockdsl.train(
        config_from_dir(folder), data=data_dir, out=tmp_path / "hf", progress=False,
        init=f"hf:{folder}", **_frozen(),
    )  # fmt: skip
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(tokens).logits
        output = run.model.eval()(tokens)
    logits = output[0] if isinstance(output, tuple) else output
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    report = json.loads((tmp_path / "hf" / "init.json").read_text())
    assert not report["new"] and report["source"] == f"hf:{folder}"


def test_cli_from_hf_trains_from_the_folders_weights(
    data_dir: Path, hf_dir: tuple[Path, torch.nn.Module], tmp_path: Path, capsys
) -> None:
    from blockdsl.cli import main

    folder, _ = hf_dir
    common = ["--data", str(data_dir), "--set", "train.steps=1", "--set", "train.batch_size=2",
              "--set", "train.seq_len=16", "--set", "train.eval_batches=1", "--quiet"]  # fmt: skip
    assert main(["train", "--from-hf", str(folder), "--out", str(tmp_path / "a"), *common]) == 0
    report = json.loads((tmp_path / "a" / "init.json").read_text())
    assert report["source"] == f"hf:{folder}" and report["copied"] and not report["new"]
    code = main(
        ["train", "--from-hf", str(folder), "--init", str(folder), "--out", str(tmp_path / "b"),
         *common]
    )  # fmt: skip
    assert code == 2
    assert "give --from-hf DIR or --init SOURCE, not both" in capsys.readouterr().err


# ==================================================================== continue vs resume
def test_resume_refuses_a_changed_schedule_length_and_points_at_init(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    blockdsl.train(
        "tiny", data=data_dir, out=out, progress=False, train=tiny_train(steps=4), **TINY
    )
    before = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(TrainingError, match=STEPS_CHANGED) as info:
        blockdsl.train(
            "tiny", data=data_dir, out=out, resume=True, progress=False,
            train=tiny_train(steps=2), **TINY,
        )  # fmt: skip
    assert f"--init {out}" in str(info.value)
    with pytest.raises(TrainingError, match=r"\[optim\] schedule is 'wsd'"):
        blockdsl.train(
            "tiny", data=data_dir, out=out, resume=True, progress=False,
            train=tiny_train(steps=4), optim={"schedule": "wsd"}, **TINY,
        )  # fmt: skip
    with pytest.raises(TrainingError, match=r"\[train\] global_batch_size is 8"):
        blockdsl.train(
            "tiny", data=data_dir, out=out, resume=True, progress=False,
            train=tiny_train(steps=4, global_batch_size=8), **TINY,
        )  # fmt: skip
    assert (out / "metrics.jsonl").read_bytes() == before

    # what the refusal suggests: a new run from its weights, with the new settings
    more = blockdsl.train(
        "tiny", data=data_dir, out=tmp_path / "more", progress=False, init=out,
        train=tiny_train(steps=2), optim={"schedule": "wsd"}, **TINY,
    )  # fmt: skip
    assert more.summary["steps"] == 2
    assert json.loads((tmp_path / "more" / "init.json").read_text())["source"] == str(out)


def test_a_constant_schedule_run_may_grow(data_dir: Path, tmp_path: Path) -> None:
    out, constant = tmp_path / "run", {"schedule": "constant"}
    blockdsl.train(
        "tiny", data=data_dir, out=out, progress=False, train=tiny_train(steps=2),
        optim=constant, **TINY,
    )  # fmt: skip
    run = blockdsl.train(
        "tiny", data=data_dir, out=out, resume=True, progress=False,
        train=tiny_train(steps=4), optim=constant, **TINY,
    )  # fmt: skip
    assert run.summary["steps"] == 4


def test_init_optimizer_keeps_the_moments_only_for_the_same_parameters(
    data_dir: Path, trained: Path, tmp_path: Path
) -> None:
    kept = blockdsl.train(
        "tiny", data=data_dir, out=tmp_path / "kept", progress=False, init=trained,
        init_optimizer=True, train=tiny_train(steps=1), optim={"lr": 5e-4}, **TINY,
    )  # fmt: skip
    fresh = blockdsl.train(
        "tiny", data=data_dir, out=tmp_path / "fresh", progress=False, init=trained,
        train=tiny_train(steps=1), optim={"lr": 5e-4}, **TINY,
    )  # fmt: skip
    assert kept.metrics[0]["lr"] == fresh.metrics[0]["lr"] == 5e-4  # this run's lr, not the old
    a, b = _weights(kept.model), _weights(fresh.model)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the old moments changed the step
    state = torch.load(ckpt.latest(tmp_path / "kept").state, weights_only=True)
    old = torch.load(ckpt.latest(trained).state, weights_only=True)
    steps = [s["step"] for s in state["optimizers"][0]["state"].values()]
    old_steps = [s["step"] for s in old["optimizers"][0]["state"].values()]
    assert all(float(s) == float(o) + 1 for s, o in zip(steps, old_steps))

    with pytest.raises(TrainingError, match="has other parameters"):
        blockdsl.train(
            "tiny", data=data_dir, out=tmp_path / "deeper", progress=False, init=trained,
            init_optimizer=True, **_frozen(), **{**TINY, "layers": "block*3"},
        )  # fmt: skip


def test_cli_init_and_allow_mismatch(data_dir: Path, trained: Path, tmp_path: Path, capsys) -> None:
    from blockdsl.cli import main

    common = ["tiny", "--data", str(data_dir), *TINY_SET, "--set", "train.steps=1",
              "--set", "train.batch_size=2", "--set", "train.seq_len=16",
              "--set", "train.eval_batches=1"]  # fmt: skip
    out = tmp_path / "a"
    assert main(["train", *common, "--out", str(out), "--init", str(trained)]) == 0
    printed = capsys.readouterr().out
    assert f"init from {trained}: " in printed and "0 new, 0 dropped" in printed
    wider = ["--set", "defaults.MLP.hidden=96"]
    argv = ["train", *common, *wider, "--out", str(tmp_path / "b"), "--init", str(trained)]
    assert main(argv) == 2
    assert "source [64, 32], model [96, 32]" in capsys.readouterr().err
    argv = ["train", *common, *wider, "--out", str(tmp_path / "c"), "--init", str(trained),
            "--init-allow-mismatch"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((tmp_path / "c" / "init.json").read_text())["mismatched"]


# ==================================================================== mixer from mixer
def test_gated_deltanet_takes_the_attention_it_replaces(
    data_dir: Path, trained: Path, tmp_path: Path
) -> None:
    """Layer 1's attention swapped for Gated DeltaNet (heads lined up): its q, k, v and output
    projections are attention's (the one kv head repeated to both query heads), the short conv
    passes them through, and init.json says what was mapped."""
    hybrid = {
        **TINY,
        "layers": "block->gdn",
        "blocks": {"gdn": "Norm->GatedDeltaNet->+->Norm->MLP->+"},
        "defaults": {**TINY["defaults"], "GatedDeltaNet": {"heads": 2}},
    }
    run = blockdsl.train(
        "tiny", data=data_dir, out=tmp_path / "hybrid", progress=False, init=trained,
        **_frozen(), **hybrid,
    )  # fmt: skip
    report = json.loads((tmp_path / "hybrid" / "init.json").read_text())
    gdn_name = "layers.1.gated_delta_net"
    assert set(report["mapped"]) == {
        f"{gdn_name}.{n}_proj.weight" for n in ("q", "k", "v", "out")
    } | {f"{gdn_name}.slots.{n}.conv.weight" for n in "qkv"}
    assert report["mapped"][f"{gdn_name}.k_proj.weight"].startswith(
        "layers.1.attn: attention's k (each of 1 kv heads repeated to its 2 query heads)"
    )
    assert not any(n.startswith("layers.1.attn.") for n in report["dropped"])
    assert f"{gdn_name}.in_proj_ba.weight" in report["new"]

    attn = ckpt.load(trained).layers[1].attn
    gdn = run.model.get_submodule(gdn_name)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q, k, v = gdn.q_proj(x), gdn.k_proj(x), gdn.v_proj(x)
        torch.testing.assert_close(q, attn.q(x))
        torch.testing.assert_close(k, attn.k(x).repeat(1, 1, 2))  # kv head 0 for both heads
        torch.testing.assert_close(v, attn.v(x).repeat(1, 1, 2))
        torch.testing.assert_close(gdn.out_proj.weight, attn.o.weight)
    for name in "qkv":
        conv = gdn.get_parameter(f"slots.{name}.conv.weight")
        assert conv[:, 0, -1].eq(1).all() and conv[:, 0, :-1].eq(0).all()

    from blockdsl.cli import main  # the surgically changed run generates like any run

    argv = ["generate", str(tmp_path / "hybrid"), "--prompt", "def", "--max-new-tokens", "4"]
    assert main([*argv, "--greedy"]) == 0


def test_a_mixer_whose_heads_do_not_line_up_stays_new_and_says_why(
    data_dir: Path, trained: Path, tmp_path: Path
) -> None:
    hybrid = {
        **TINY,
        "layers": "block->gdn",
        "blocks": {"gdn": "Norm->GatedDeltaNet->+->Norm->MLP->+"},
        "defaults": {**TINY["defaults"], "GatedDeltaNet": {"heads": 4}},
    }
    blockdsl.train(
        "tiny", data=data_dir, out=tmp_path / "hybrid", progress=False, init=trained,
        **_frozen(), **hybrid,
    )  # fmt: skip
    report = json.loads((tmp_path / "hybrid" / "init.json").read_text())
    assert not report["mapped"]
    why = report["unmapped"]["layers.1.gated_delta_net"]
    assert "needs heads = v_heads = 2 and head sizes 16" in why
    assert "layers.1.attn.q.weight" in report["dropped"]
