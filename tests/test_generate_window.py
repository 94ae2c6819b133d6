"""Generation past the context (issue 29 item 5): a rotary or position-free model keeps going
on the last ``context`` tokens (nanoGPT's crop), learned or sinusoidal absolute positions are
refused saying why; ``blockdsl generate --num-samples N``."""

from __future__ import annotations

import pytest
import torch

import blockdsl
from blockdsl.cli import main
from blockdsl.generate import GenerationError, absolute_positions
from tests.test_generate_cli import make_run

V, CONTEXT = 64, 12


def _model(block: str = "Norm->Attn->+->Norm->MLP->+", **overrides: object):
    torch.manual_seed(0)
    return blockdsl.build_model(
        block, d_model=32, vocab=V, context=CONTEXT, layers="block*2", **overrides
    ).eval()


def _cropped_reference(model, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """nanoGPT's loop, written out: the argmax of the last ``context`` tokens' logits."""
    ids = prompt
    with torch.no_grad():
        for _ in range(new):
            logits = model(ids[:, -CONTEXT:]).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize(
    ("block", "overrides"),
    [
        ("Norm->Attn->+->Norm->MLP->+", {}),  # rotary (the tiny preset's Attn)
        ("Norm->Conv->+->Norm->MLP->+", {}),  # position-free
    ],
)
def test_a_rotary_or_position_free_model_generates_past_its_context(block, overrides) -> None:
    model = _model(block, **overrides)
    assert absolute_positions(model) is None
    prompt = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(1))
    out = model.generate(prompt, 20, greedy=True)  # 28 tokens on a context of 12
    assert out.shape == (2, 28)
    assert torch.equal(out, _cropped_reference(model, prompt, 20))
    within = model.generate(prompt, 4, greedy=True)  # within the context: the cached path
    assert torch.equal(within, out[:, :12])


@pytest.mark.parametrize("kind", ["learned", "sinusoidal"])
def test_absolute_positions_refuse_to_crop(kind: str) -> None:
    model = _model(defaults={"Embed": {"pos": kind}})
    assert absolute_positions(model) == kind
    assert model.generate(torch.tensor([[1, 2]]), CONTEXT - 2, greedy=True).shape == (1, CONTEXT)
    with pytest.raises(GenerationError, match=f"its {kind} position embeddings stop there"):
        model.generate(torch.tensor([[1, 2]]), CONTEXT - 1, greedy=True)


def test_cli_num_samples(tmp_path, capsys) -> None:
    run, _ = make_run(tmp_path, steps=(1,))
    argv = ["generate", str(run), "--prompt", "ab", "--max-new-tokens", "5", "--seed", "3"]
    assert main([*argv, "--num-samples", "3"]) == 0
    samples = capsys.readouterr().out.split("---------------\n")
    assert len(samples) == 3 and all(s.startswith("ab") for s in samples)
    assert len(set(samples)) > 1  # one seeded stream: the samples differ
    assert main(argv) == 0
    assert capsys.readouterr().out == samples[0]  # the first sample is the single one
    assert main([*argv, "--num-samples", "0"]) == 2
    assert "--num-samples must be at least 1" in capsys.readouterr().err
    long = ["generate", str(run), "--prompt", "ab", "--max-new-tokens", "80", "--greedy"]
    assert main(long) == 0  # past the context of 64: rotary, cropped
    assert len(capsys.readouterr().out) > 64
