"""Inputs a model or block cannot take are a BlockDSLError with what was given and what fits:
call-time inputs the caller does not supply (at validation, golden text), and bad ``idx`` at the
model's boundary (shape, dtype, length, token ids, a missing ``memory``), without breaking
``torch.compile(fullgraph=True)`` or ``torch.export``."""

from __future__ import annotations

import pytest
import torch

import blockdsl
from blockdsl.errors import BlockValidationError, InputError
from blockdsl.graph import build_graph

GOLDEN_CHILD = """\
blockdsl: CrossAttn needs 'memory' at call time, which MoE[...] does not supply at 1:16
  Norm->MoE[MLP, CrossAttn]->+
                 ^^^^^^^^^
  MoE[...] supplies only the stream"""

GOLDEN_MODEL = """\
blockdsl: CrossAttn needs 'memory' at call time, which the model does not supply at 1:7
  Norm->CrossAttn->+
        ^^^^^^^^^
  the model supplies 'positions'"""


def test_missing_call_time_input_golden_text():
    with pytest.raises(BlockValidationError) as info:
        build_graph("Norm->MoE[MLP, CrossAttn]->+", d_model=16)
    assert str(info.value) == GOLDEN_CHILD
    with pytest.raises(BlockValidationError) as info:
        build_graph("Norm->CrossAttn->+", d_model=16, supplies={"positions"})
    assert str(info.value) == GOLDEN_MODEL


def test_missing_call_time_input_in_a_model_is_reported_with_its_layer():
    with pytest.raises(BlockValidationError) as info:
        blockdsl.build_model("tiny", blocks={"block": "Norm->MoE[MLP, CrossAttn]->+"})
    assert "in [blocks] block" in str(info.value)


def _model(**kwargs):
    return blockdsl.build_model(
        "tiny", d_model=16, vocab=50, context=12, layers="block*1", **kwargs
    )


@pytest.mark.parametrize(
    ("idx", "message"),
    [
        (torch.zeros(5, dtype=torch.long), r"shape \(batch, time\), got shape \(5,\)"),
        (torch.zeros(1, 2, 3, dtype=torch.long), r"got shape \(1, 2, 3\)"),
        (torch.zeros(2, 5), "token ids must be integers, got torch.float32"),
        (torch.zeros(1, 13, dtype=torch.long), "length 13: the context is only 12"),
        (
            torch.full((1, 4), 50),
            r"token id 50 is outside the vocabulary: ids must be in \[0, 50\)",
        ),
        (torch.full((1, 4), -1), "token id -1 is outside the vocabulary"),
        ([[1, 2]], "idx must be a tensor of token ids, got list"),
    ],
)
def test_bad_idx_is_an_input_error(idx, message):
    with pytest.raises(InputError, match=message):
        _model()(idx)


def test_missing_memory_names_the_call():
    model = _model(blocks={"block": "Norm->Attn->+->Norm->CrossAttn->+"})
    idx = torch.randint(0, 50, (2, 5))
    with pytest.raises(InputError, match=r"CrossAttn at layers\.0\.cross_attn needs 'memory'"):
        model(idx)
    assert model(idx, memory=torch.randn(2, 3, 16)).logits.shape == (2, 5, 50)


@pytest.mark.slow
def test_checks_do_not_break_compile_or_export():
    model = _model().eval()
    idx = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        expected = model(idx).logits
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        assert torch.allclose(compiled(idx).logits, expected, atol=1e-6)
        exported = torch.export.export(
            model, (idx,), dynamic_shapes={"idx": {1: torch.export.Dim("T", max=12)}}
        )
        assert torch.allclose(
            exported.module()(idx[:, :5]).logits, model(idx[:, :5]).logits, atol=1e-6
        )


def test_a_head_must_produce_the_vocabulary():
    with pytest.raises(BlockValidationError, match="the head produces 16 features but the"):
        _model(head="Norm->MLP->+")


def test_memory_of_the_wrong_width_names_the_reader():
    model = _model(blocks={"block": "Norm->CrossAttn(d_memory=4)->+"})
    idx = torch.randint(0, 50, (2, 5))
    with pytest.raises(InputError, match=r"does not fit CrossAttn at layers\.0\.cross_attn"):
        model(idx, memory=torch.randn(2, 3, 16))
    assert model(idx, memory=torch.randn(2, 3, 4)).logits.shape == (2, 5, 50)
    with pytest.raises(InputError, match="memory must be"):
        model(idx, memory=torch.randn(3, 4))


def test_attention_dropout_out_of_range_is_rejected():
    with pytest.raises(BlockValidationError, match=r"dropout must be in \[0, 1\), got -1"):
        _model(blocks={"block": "Norm->CrossAttn(dropout=-1)->+"})


def test_a_call_with_a_smaller_context_limits_the_model():
    model = _model(blocks={"block": "Norm->Attn(context=4)->+"})
    with pytest.raises(InputError, match=r"length 5: the context of Attn at layers\.0\.attn is"):
        model(torch.randint(0, 50, (1, 5)))
    assert model(torch.randint(0, 50, (1, 4))).logits.shape == (1, 4, 50)
    with pytest.raises(BlockValidationError, match="context of Attn must be at least 1, got 0"):
        _model(blocks={"block": "Norm->Attn(context=0)->+"})
