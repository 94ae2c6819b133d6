"""Initialisation schemes (``[init]``, issue 28): every preset draws its weights as its reference
does (statistics checked against each reference's formula, written out here independently of
``blockdsl/initialisation.py``; the ``gpt2`` preset also against nanoGPT's own model), the
per-call ``init_std``, the table's errors, and muP's per-parameter learning rates."""

from __future__ import annotations

import math
import re

import pytest
import torch

import blockdsl
from blockdsl.config import list_presets
from blockdsl.errors import ArgumentError, ConfigError
from blockdsl.initialisation import SCHEMES, lr_multipliers
from blockdsl.train.optim import param_groups
from blockdsl.train.settings import OptimSettings
from tests.test_model import small_preset

#: Each preset's reference and how it initialises the dense layers: normal(std) with or
#: without GPT-2's 1/sqrt(2 * layers) on residual output projections, Xavier-uniform
#: (fairseq's Transformer), or nn.Linear's default (the references that keep it).
REFERENCES = {
    "gpt2": "gpt2",  # nanoGPT / GPT-2
    "hybrid": "gpt2",  # Megatron-LM: init_method_std, output layers / sqrt(2 * layers)
    "llama": "llama",  # Hugging Face *PreTrainedModel._init_weights: initializer_range 0.02
    "tiny": "torch",  # no published reference: each component's own init (examples/tiny.toml)
    "mistral": "llama",
    "mixtral": "llama",
    "arctic": "llama",
    "gemma2": "llama",
    "gptj": "llama",
    "neox": "llama",
    "jamba": "llama",
    "falcon-h1": "llama",
    "transformer": "xavier",  # fairseq / tensor2tensor
    "mamba2": "torch",  # mamba_ssm: nn.Linear's default, embeddings N(0, 0.02)
    "recurrentgemma": "torch",
    "speedrun": "modded",  # modded-nanogpt: std 0.5/sqrt(fan_in), projections and head zero
    "gptalpha": "small_embed",  # GPT Core / RWKV: embedding U-ish 1e-4 (normalised), else 0.02
}
LINEAR = re.compile(r"\.(attn|mlp)\.(q|k|v|o|gate|up|down)\.weight$")
OUTPUT = re.compile(r"\.(attn\.o|mlp\.down)\.weight$|\.moe\.w_down$")
EXPERTS = re.compile(r"\.moe\.w_(gate|up|down)$")
BIAS = re.compile(r"\.(attn|mlp)\.(q|k|v|o|gate|up|down)\.bias$|^head\.head\.bias$")
EMBEDDING = re.compile(r"^embed\.embed\.(tok|pos)\.weight$")


def expected_std(reference: str, name: str, weight: torch.Tensor, layers: int) -> float | None:
    """The standard deviation the preset's reference draws ``name`` from (None: not a
    parameter its reference's rule covers, e.g. a norm gain or a state-space mixer's own)."""
    d_model = weight.shape[-1]
    if EMBEDDING.search(name):
        return {"xavier": d_model**-0.5, "small_embed": 1e-4}.get(reference, 0.02)
    dense = LINEAR.search(name) or EXPERTS.search(name) or name.endswith("moe.router.weight")
    dense = dense or name == "head.head.weight"
    if not dense:
        return None
    fan_out, fan_in = weight.shape[-2], weight.shape[-1]
    if reference == "modded":
        zero = OUTPUT.search(name) or name == "head.head.weight"
        return 0.0 if zero else 0.5 / math.sqrt(fan_in)
    if reference == "torch":
        return 1 / math.sqrt(3 * fan_in)  # uniform(±1/sqrt(fan_in))
    if reference == "xavier":
        return math.sqrt(2 / (fan_in + fan_out))  # uniform(±sqrt(6 / (fan_in + fan_out)))
    if reference == "gpt2" and OUTPUT.search(name):
        return 0.02 / math.sqrt(2 * layers)
    return 0.02


def assert_drawn_with(tensor: torch.Tensor, std: float, name: str) -> None:
    if std == 0:
        assert not tensor.any(), name
        return
    n = tensor.numel()
    got = tensor.float().std().item()
    assert abs(got / std - 1) < 5 / math.sqrt(2 * n), (name, got, std)
    assert abs(tensor.float().mean().item()) < 5 * std / math.sqrt(n), name


def test_every_preset_names_its_references_scheme() -> None:
    assert set(REFERENCES) == set(list_presets())
    for preset, reference in REFERENCES.items():
        scheme = blockdsl.load_config(preset).init.get("scheme")
        assert scheme in SCHEMES
        assert scheme == {"modded": "llama", "small_embed": "llama"}.get(reference, reference)


@pytest.mark.parametrize("preset", sorted(REFERENCES))
def test_preset_weights_follow_the_references_formula(preset: str) -> None:
    torch.manual_seed(0)
    model = small_preset(preset)
    reference, layers, checked = REFERENCES[preset], len(model.layers), 0
    for name, weight in model.named_parameters():
        if BIAS.search(name) and reference != "torch":
            assert not weight.any(), name  # zero biases
            continue
        std = expected_std(reference, name, weight, layers)
        if std is not None:
            assert_drawn_with(weight.detach(), std, name)
            checked += 1
    assert checked >= 1 + 5 * (preset != "mamba2"), checked  # the embedding and the layers


def test_gpt2_preset_draws_every_tensor_as_nanogpt_does() -> None:
    """Key by key against karpathy/nanoGPT's ``GPT`` (``bench/nanogpt_parity.py``, model.py
    as published) at the Shakespeare-char size: N(0, 0.02), ``c_proj`` N(0, 0.02 /
    sqrt(2 * n_layer)), zero biases, embeddings N(0, 0.02), unit LayerNorm gains."""
    from bench.nanogpt_parity import GPT, GPTConfig, blockdsl_overrides, nanogpt_from_blockdsl

    config = GPTConfig()
    torch.manual_seed(0)
    ours = nanogpt_from_blockdsl(
        blockdsl.build_model("gpt2", **blockdsl_overrides(config, "gpt2")), config
    ).state_dict()
    theirs = GPT(config).state_dict()
    assert ours.keys() == theirs.keys()
    for key, reference in theirs.items():
        mine = ours[key]
        if reference.std() == 0 or key.endswith("c_attn.bias"):
            assert torch.equal(mine, reference), key  # zero biases, unit and zero LN
            continue
        expected = 0.02 / math.sqrt(2 * config.n_layer) if key.endswith("c_proj.weight") else 0.02
        assert abs(reference.std().item() / expected - 1) < 0.05, key  # nanoGPT's rule
        assert_drawn_with(mine, reference.std().item(), key)


def test_schemes_leave_mixers_with_their_own_init_alone() -> None:
    """Mamba's dt bias and A keep Mamba's init under every scheme (its component declares no
    roles): equal draws under ``torch`` and ``llama`` from the same seed."""
    drawn = {}
    for scheme in ("torch", "llama"):
        torch.manual_seed(0)
        model = small_preset("jamba", init={"scheme": scheme})
        drawn[scheme] = {n: p.detach() for n, p in model.named_parameters() if ".mamba." in n}
    assert drawn["torch"].keys() == drawn["llama"].keys() and drawn["torch"]
    for name, value in drawn["torch"].items():  # drawn by the constructors, never redrawn
        assert torch.equal(value, drawn["llama"][name]), name


def _tiny(**overrides: object) -> blockdsl.LanguageModel:
    torch.manual_seed(0)
    base = {
        "vocab": 97,
        "d_model": 64,
        "context": 16,
        "layers": "block*2",
        "defaults": {"Attn": {"heads": 4}},
    }
    return blockdsl.build_model("gpt2", **{**base, **overrides})


def test_a_calls_init_std_overrides_the_scheme() -> None:
    for scheme in ("torch", "gpt2"):
        model = _tiny(
            blocks={"block": "Norm->Attn->+->Norm->MLP(init_std=0)->+"}, init={"scheme": scheme}
        )
        mlp = model.layers[1].mlp
        assert not mlp.up.weight.any() and not mlp.down.weight.any() and not mlp.down.bias.any()
        assert model.layers[1].attn.q.weight.any()
    model = _tiny(blocks={"block": "Norm->Attn->+->Norm->MLP(init_std=0.5)->+"})
    assert_drawn_with(model.layers[0].mlp.down.weight.detach(), 0.5, "down")
    with pytest.raises(ArgumentError, match="init_std must be a finite number >= 0"):
        _tiny(blocks={"block": "Norm->MLP(init_std=-1.0)->+"})


def test_zero_out_and_zero_readout() -> None:
    model = _tiny(
        head="Norm->Head", init={"scheme": "gpt2", "zero_out": True, "zero_readout": True}
    )
    for layer in model.layers:
        assert not layer.attn.o.weight.any() and not layer.mlp.down.weight.any()
        assert layer.attn.q.weight.any()
    assert not model.head.head.weight.any()
    with pytest.raises(ConfigError, match="zero_readout zeroes an untied head"):
        _tiny(init={"scheme": "gpt2", "zero_readout": True})  # gpt2's head is tied


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"scheme": "gtp2"}, r"\[init\] scheme must be one of .*did you mean 'gpt2'"),
        ({"scheme": "gpt2", "stdd": 0.1}, r"unknown \[init\] key 'stdd'"),
        ({"scheme": "torch", "std": 0.1}, r"\[init\] std has no effect under scheme 'torch'"),
        ({"scheme": "mup"}, r"scheme 'mup' needs base_width"),
        ({"scheme": "gpt2", "base_width": 64}, r"base_width is a setting of scheme 'mup' only"),
        ({"scheme": "gpt2", "std": -1}, r"\[init\] std must be a finite number >= 0"),
        ({"scheme": "gpt2", "zero_out": 1}, r"\[init\] zero_out must be true or false"),
    ],
)
def test_init_table_errors_name_the_key(table: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _tiny(init=table)
    assert re.search(message, str(caught.value), re.S), str(caught.value)


def test_a_bad_init_table_in_a_file_points_at_the_key(tmp_path, capsys) -> None:
    from blockdsl.cli import main

    path = tmp_path / "m.toml"
    path.write_text('[model]\nvocab = 64\n\n[init]\nscheme = "gpt2"\nstdd = 0.1\n')
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown [init] key 'stdd' at 6:1" in err and "did you mean 'std'?" in err


# ---------------------------------------------------------------- muP
def _mup(width: int, base: int = 64) -> blockdsl.LanguageModel:
    return _tiny(
        d_model=width,
        head="Norm->Head",
        defaults={"Attn": {"heads": 4}},
        init={"scheme": "mup", "base_width": base},
    )


def test_mup_is_the_standard_parametrisation_at_the_base_width() -> None:
    torch.manual_seed(0)
    mup = _mup(64)
    torch.manual_seed(0)
    sp = _tiny(head="Norm->Head", defaults={"Attn": {"heads": 4}}, init={"scheme": "llama"})
    for (name, a), (_, b) in zip(mup.named_parameters(), sp.named_parameters()):
        assert torch.equal(a, b), name
    idx = torch.randint(0, 97, (2, 16))
    assert torch.allclose(mup(idx).logits, sp(idx).logits, atol=1e-6)
    assert lr_multipliers(mup) == {}


def test_mup_scales_hidden_init_learning_rates_and_the_readout() -> None:
    model = _mup(256)
    ratio = 64 / 256
    assert_drawn_with(model.layers[0].attn.q.weight.detach(), 0.02 * math.sqrt(ratio), "q")
    assert_drawn_with(model.layers[0].mlp.down.weight.detach(), 0.02 * math.sqrt(ratio), "down")
    assert_drawn_with(model.embed.embed.tok.weight.detach(), 0.02, "tok")  # constant
    assert model.head.head.scale == pytest.approx(ratio)  # the readout multiplier
    head_dim = 256 // 4
    assert model.layers[0].attn.scale == pytest.approx(math.sqrt(head_dim * ratio) / head_dim)
    groups = param_groups(model, OptimSettings(lr=1e-2))["adamw"]
    scaled = [g for g in groups if g.get("lr") == pytest.approx(1e-2 * ratio)]
    hidden = {id(p) for g in scaled for p in g["params"]}
    assert (
        id(model.layers[0].attn.q.weight) in hidden and id(model.layers[1].mlp.up.weight) in hidden
    )
    assert (
        id(model.embed.embed.tok.weight) not in hidden and id(model.head.head.weight) not in hidden
    )
    muon = param_groups(model, OptimSettings(name="muon", lr=1e-2))["muon"]
    assert [g.get("lr") for g in muon] == [pytest.approx(1e-2 * math.sqrt(ratio))]


def _coordinate_sizes(scheme: dict, widths: list[int], steps: int = 3) -> list[list[float]]:
    """The paper's coordinate check (Tensor Programs V, Figure 5), cheap: after a few AdamW
    steps (lr 1e-2) on one batch of random tokens, the RMS of the last layer's attention and
    MLP outputs and of the logits, at each width."""
    sizes = []
    for width in widths:
        torch.manual_seed(0)
        model = blockdsl.build_model(
            "gpt2", vocab=64, d_model=width, context=16, layers="block*2",
            head="Norm->Head", defaults={"Attn": {"heads": 4}}, init=scheme,
        )  # fmt: skip
        groups = param_groups(model, OptimSettings(lr=1e-2, weight_decay=0.0))["adamw"]
        optimizer = torch.optim.AdamW(groups, lr=1e-2)
        idx = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
        for _ in range(steps):
            model(idx, idx.roll(-1, 1)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        outputs: list[torch.Tensor] = []
        last = model.layers[-1]
        hooks = [
            m.register_forward_hook(lambda m, i, o, kept=outputs: kept.append(o))
            for m in (last.attn, last.mlp)
        ]
        with torch.no_grad():
            outputs.append(model(idx).logits)
        for hook in hooks:
            hook.remove()
        sizes.append([t.pow(2).mean().sqrt().item() for t in outputs])
    return sizes


@pytest.mark.slow
def test_mup_coordinate_check_flat_across_widths_growing_under_sp() -> None:
    """Widths 32 to 128 (base 32): under muP every coordinate size stays within a factor 1.6;
    under the standard parametrisation (``llama``: the same init at every width, one learning
    rate) the MLP output grows more than 4-fold (measured: 0.08 to 0.48; muP 0.08 to 0.06)."""
    widths = [32, 64, 128]
    mup = _coordinate_sizes({"scheme": "mup", "base_width": 32}, widths)
    sp = _coordinate_sizes({"scheme": "llama"}, widths)
    for index in range(3):  # attention output, MLP output, logits
        column = [row[index] for row in mup]
        assert max(column) / min(column) < 1.6, mup
    assert sp[-1][1] / sp[0][1] > 4, sp


@pytest.mark.slow
def test_train_takes_the_init_table_from_the_cli_and_from_python(tmp_path) -> None:
    """``--set init.scheme=...`` and ``train(init={...})`` are the model's ``[init]`` table;
    ``--init``/``init=PATH`` stay weights to start from."""
    from blockdsl.cli import main
    from blockdsl.train import Run
    from blockdsl.train.data import prepare
    from tests.test_train import ROOT, TINY, TINY_SET, tiny_train

    data = tmp_path / "data"
    prepare([str(ROOT / "blockdsl" / "train")], data, glob="*.py", progress=False)
    out = tmp_path / "cli"
    args = ["train", "tiny", "--data", str(data), "--out", str(out), *TINY_SET, "--quiet"]
    assert main([*args, "--set", "train.steps=1", "--set", "init.scheme=gpt2"]) == 0
    assert Run.load(out).config.init == {"scheme": "gpt2"}
    run = blockdsl.train(
        "tiny", data=data, out=tmp_path / "py", progress=False, init={"scheme": "xavier"},
        train=tiny_train(steps=1), **TINY,
    )  # fmt: skip
    assert run.config.init == {"scheme": "xavier"}
    assert main([*args[:5], str(tmp_path / "bad"), *TINY_SET, "--set", "init.scheme=gtp2"]) == 2


def test_init_roles_are_checked_at_registration() -> None:
    from torch import nn

    from blockdsl.errors import RegistryError

    registry = blockdsl.REGISTRY.copy()
    with pytest.raises(RegistryError, match=r"init_roles gives 'proj\.weight' the unknown role"):

        @registry.register("Proj", init_roles={"proj.weight": "hiden"})
        class Proj(nn.Module):
            def __init__(self, d_model: int) -> None:
                super().__init__()
                self.proj = nn.Linear(d_model, d_model)
