"""Export to Hugging Face: the importer's mappings run backwards.

Every exportable architecture, written as a blockdsl config (the presets, shrunk): export,
load with ``transformers``, logits equal within 1e-5; import the folder again, the same model.
Refusals are golden files in ``tests/fixtures/export/`` (``BLOCKDSL_REGEN=1`` rewrites them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import blockdsl  # noqa: E402
from blockdsl import hf  # noqa: E402
from blockdsl.cli import main  # noqa: E402
from blockdsl.hf import HFExportError, export_hf, hf_config_for  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "export"
REGEN = os.environ.get("BLOCKDSL_REGEN") == "1"
SMALL = {"vocab": 97, "d_model": 64, "context": 64}
ATTN = {"heads": 4, "kv_heads": 2}

# preset -> (overrides that shrink it, the transformers class it must export as)
PRESETS = {
    "gpt2": ({"layers": "block*2", "defaults": {"Attn": {"heads": 4}}}, "GPT2LMHeadModel"),
    "llama": (
        {"layers": "block*2", "defaults": {"Attn": ATTN, "MLP": {"hidden": 96}}},
        "LlamaForCausalLM",
    ),
    "mistral": (
        {"layers": "block*2", "defaults": {"Attn": {**ATTN, "window": 8}, "MLP": {"hidden": 96}}},
        "MistralForCausalLM",
    ),
    "mixtral": (
        {"layers": "block*2", "defaults": {"Attn": ATTN, "MoE": {"experts": 4, "hidden": 32}}},
        "MixtralForCausalLM",
    ),
    "gemma2": (
        {
            "layers": "local->global",
            "blocks": {"local": "Norm->Attn(window=8)->Norm->+->Norm->MLP->Norm->+"},
            "defaults": {
                "Attn": {**ATTN, "head_dim": 16, "scale": 24**-0.5},
                "MLP": {"hidden": 96},
            },
        },
        "Gemma2ForCausalLM",
    ),
    "neox": ({"layers": "block*2", "defaults": {"Attn": {"heads": 4}}}, "GPTNeoXForCausalLM"),
    "gptj": ({"layers": "block*2", "defaults": {"Attn": {"heads": 4}}}, "GPTJForCausalLM"),
}


def shrunk(name: str) -> blockdsl.LanguageModel:
    overrides, _ = PRESETS[name]
    return blockdsl.build_model(name, **SMALL, **overrides).eval()


#: Round trips whose export search runs for minutes on two cores: with -m long.
LONG_ROUND_TRIPS = ("gptj",)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.long) if n in LONG_ROUND_TRIPS else n
        for n in sorted(PRESETS)
    ],
)
def test_round_trip(name, tmp_path):
    model = shrunk(name)
    folder = export_hf(model, tmp_path / "hf")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    assert json.loads((folder / "config.json").read_text())["architectures"] == [PRESETS[name][1]]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(loaded).__name__ == PRESETS[name][1]
    idx = torch.randint(0, 97, (2, 24))  # longer than the sliding windows
    with torch.no_grad():
        diff = (loaded(idx).logits - model(idx).logits).abs().max().item()
    assert diff <= 1e-5, diff
    # import(export(m)) is m: the same plan and the same tensors
    back = hf.from_pretrained_dir(folder)
    assert hf_config_for(back)[0] == hf_config_for(model)[0]
    from blockdsl.hf.exporter import _plan, difference, signature

    plan = _plan(model.config)
    assert difference(plan, signature(plan), _plan(back.config)) == (set(), set())
    theirs = back.state_dict()
    for key, tensor in model.state_dict().items():
        assert torch.equal(theirs[key], tensor), key


@pytest.mark.slow
def test_the_same_model_written_differently_exports_the_same():
    inline = blockdsl.build_model(
        "tiny",
        **SMALL,
        layers="block*2",
        blocks={"block": "Norm->Attn(heads=4, kv_heads=2)->+->Norm->MLP(hidden=96)->+"},
        defaults={"Norm": {"kind": "rms"}, "MLP": {"gated": True, "act": "silu"}},
    )
    model_type, cfg = hf_config_for(inline)
    assert model_type == "llama"
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (4, 2, 96)
    assert (cfg.num_hidden_layers, cfg.tie_word_embeddings) == (2, False)


def refusal(block: str) -> str:
    config = blockdsl.load_config(
        "llama", **SMALL, layers="block*2", blocks={"block": block}, defaults={"Attn": ATTN}
    )
    with pytest.raises(HFExportError) as info:
        hf_config_for(config)
    return str(info.value)


REFUSALS = {
    # a component no architecture has
    "no_counterpart": "Norm->Attn->+->Norm->Hyena->+",
    # every component exists, but not in this arrangement (post-norm)
    "post_norm": "Attn->+->Norm->MLP->+->Norm",
    # the Llama layout with an argument Llama has no field for
    "argument": "Norm->Attn(qk_norm=true)->+->Norm->MLP->+",
}


@pytest.mark.parametrize(
    "case",
    # the structural cases search every architecture to exhaustion (tens of seconds)
    # (the two longest, over a minute each, with -m long)
    [
        c
        if c == "no_counterpart"
        else pytest.param(
            c,
            marks=(pytest.mark.slow, pytest.mark.long)
            if c in ("argument", "post_norm")
            else pytest.mark.slow,
        )
        for c in REFUSALS
    ],
)
def test_refusals_golden(case):
    message = refusal(REFUSALS[case]) + "\n"
    path = FIXTURES / f"{case}.txt"
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message)
    assert message == path.read_text()


@pytest.mark.slow
def test_never_overwrites_without_force(tmp_path):
    model = shrunk("llama")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(HFExportError, match="exists and is not empty"):
        export_hf(model, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    export_hf(model, out, force=True, verify=False)
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # nothing left beside it


@pytest.mark.slow
def test_cli_exports_a_run_with_its_tokenizer(tmp_path, capsys):
    from tokenizers import Tokenizer

    from blockdsl.train.data import prepare

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog; the end. " * 100)
    prepare([str(corpus)], tmp_path / "data", tokenizer="bpe:300", progress=False)
    overrides, _ = PRESETS["llama"]
    blockdsl.train(
        "llama",
        data=tmp_path / "data",
        out=tmp_path / "run",
        progress=False,
        **{**SMALL, "vocab": 300},
        **overrides,
        train={"steps": 2, "batch_size": 2, "seq_len": 16, "eval_every": 0},
    )
    out = tmp_path / "hf"
    assert main(["export", str(tmp_path / "run"), "--to", "hf", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LlamaForCausalLM" in printed and "logits checked" in printed
    assert main(["export", str(tmp_path / "run"), "--to", "hf", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), "--to", "hf", str(out), "--force"]) == 0

    text = "the lazy fox; the quick end. Unseen words: zebra!"
    ours = Tokenizer.from_file(str(tmp_path / "run" / "tokenizer.json")).encode(text).ids
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    assert theirs(text)["input_ids"] == ours
    assert theirs.decode(ours) == text
    eos = json.loads((out / "config.json").read_text())["eos_token_id"]
    assert theirs.eos_token_id == eos is not None

    model = blockdsl.load(tmp_path / "run")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    idx = torch.tensor([ours])
    with torch.no_grad():
        assert (loaded(idx).logits - model(idx).logits).abs().max().item() <= 1e-5


def test_cli_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), "--to", "hf", str(tmp_path / "o")]) == 2
    assert "no checkpoint file" in capsys.readouterr().err
    assert main(["export", "x", "--to", "onnx", str(tmp_path / "o")]) == 2


@pytest.mark.slow
def test_cli_export_writes_with_the_umask_prints_only_its_line_and_true_token_ids(tmp_path, capfd):
    """A byte tokenizer has no bos/eos: config.json says null, not Llama's defaults 1 and 2;
    folder and files get the umask's modes (not mkdtemp's 0700 / 0600); transformers' warnings
    about its config defaults (token id 50256 outside a 97-token vocabulary) stay silent."""
    from blockdsl.train.data import byte_tokenizer

    model = shrunk("llama")
    blockdsl.save(model, tmp_path / "model.safetensors")
    byte_tokenizer().save(str(tmp_path / "tokenizer.json"))
    out = tmp_path / "hf"
    capfd.readouterr()
    old = os.umask(0o027)
    try:
        argv = ["export", str(tmp_path / "model.safetensors"), "--to", "hf", str(out)]
        status = main([*argv, "--tokenizer", str(tmp_path / "tokenizer.json")])
    finally:
        os.umask(old)
    printed = capfd.readouterr()
    assert status == 0
    assert printed.err == ""
    assert printed.out.count("\n") == 1 and "LlamaForCausalLM" in printed.out
    assert out.stat().st_mode & 0o777 == 0o750
    files = sorted(out.iterdir())
    assert "tokenizer.json" in [f.name for f in files]
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o640, path.name
    for name in ("config.json", "generation_config.json"):
        written = json.loads((out / name).read_text())
        assert written.get("bos_token_id") is None and written.get("eos_token_id") is None, name
    assert transformers.AutoTokenizer.from_pretrained(out).eos_token_id is None


def test_the_search_builds_few_and_small_configs(monkeypatch):
    """The export search of a 2-layer Mamba took minutes: it tried every number the model
    holds (up to 65536) as the layer count of every architecture, and Jamba's config validates
    a list per layer. Now a field that sets the layer count is tried near it only, so every
    config built stays small and few are built."""
    from blockdsl.hf import exporter

    built: list[dict] = []  # by the searches for this model
    probed: list[dict] = []  # by the survey of what each architecture can produce at all
    build = exporter._Search.build

    def counted(self, kwargs):
        (probed if self.target_plan is None else built).append(kwargs)
        return build(self, kwargs)

    monkeypatch.setattr(exporter._Search, "build", counted)
    config = hf.to_config(
        transformers.MambaConfig(
            vocab_size=97, hidden_size=64, state_size=8, num_hidden_layers=2, expand=2
        )
    )
    assert hf_config_for(config)[0] == "mamba"
    layers = [k["num_hidden_layers"] for k in built if isinstance(k.get("num_hidden_layers"), int)]
    # the probes for verbatim copies (2x and 3x the default 32) are the largest
    assert layers and max(layers) <= 96
    # the architectures listed after the first exact fit are not searched at all
    assert len(built) <= 100
    # the survey flips each boolean field of each architecture once (cached for the process)
    assert len(probed) <= 20 * len(hf.SUPPORTED)
