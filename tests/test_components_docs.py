"""docs/components.md is generated from the registry and must not go stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from blockdsl.lower import compile_block
from blockdsl.registry import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_components", ROOT / "docs/gen_components.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_components_doc_is_current():
    expected = _generator().render()
    actual = (ROOT / "docs/components.md").read_text()
    assert actual == expected, "docs/components.md is stale: run python docs/gen_components.py"


def test_every_builtin_argument_is_documented():
    for component in REGISTRY.components():
        if not component.cls.__module__.startswith("blockdsl."):
            continue
        help_ = component.arg_help
        assert component.description, component.name
        missing = set(component.user_params) - set(help_)
        assert not missing, f"{component.name}: no arg_help for {sorted(missing)}"
        assert not set(help_) - set(component.user_params), f"{component.name}: stale arg_help"


VARIANTS = _generator().ATTENTION_VARIANTS


@pytest.mark.parametrize(("variant", "slots", "flags"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_attention_variants_build_and_their_shorthand_is_the_slot_form(
    variant: str, slots: str, flags: str
) -> None:
    torch.manual_seed(0)
    slotted = compile_block(slots, d_model=32).eval()
    x = torch.randn(2, 5, 32)
    assert slotted(x).shape == x.shape
    if flags:
        shorthand = compile_block(flags, d_model=32).eval()
        shorthand.load_state_dict(slotted.state_dict())
        torch.testing.assert_close(shorthand(x), slotted(x), rtol=0, atol=0)
