"""The registry's plugin mechanism and argument schemas, beyond the built-ins."""

from __future__ import annotations

from importlib import metadata
from typing import ClassVar

import pytest
import torch
from torch import nn

import blockdsl
from blockdsl import Registry, RegistryError, compile_block


def _entry_points(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    point = metadata.EntryPoint(name="demo", value=value, group="blockdsl.components")
    monkeypatch.setattr(
        metadata,
        "entry_points",
        lambda group=None: [point] if group == "blockdsl.components" else [],
    )


def test_entry_point_plugins_register_components(monkeypatch: pytest.MonkeyPatch) -> None:
    _entry_points(monkeypatch, "tests.plugins.entry_point_plugin:register")
    registry = Registry(load_plugins=True)
    assert "Twice" in registry
    block = compile_block("Twice->+", d_model=4, registry=registry)
    assert torch.equal(block(torch.ones(1, 1, 4)), torch.full((1, 1, 4), 3.0))


def test_a_broken_plugin_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    _entry_points(monkeypatch, "tests.plugins.entry_point_plugin:broken")
    registry = Registry(load_plugins=True)
    with pytest.raises(RegistryError, match=r"plugin 'demo'.*this plugin is broken"):
        registry.names()


def test_existing_torch_modules_work_unchanged() -> None:
    registry = Registry()
    registry.register("GELU")(nn.GELU)
    registry.register("LN")(nn.LayerNorm)
    block = compile_block("LN->GELU->+", d_model=8, registry=registry)
    x = torch.randn(2, 3, 8)
    ln = nn.LayerNorm(8)
    assert torch.allclose(block(x), x + nn.functional.gelu(ln(x)))
    # nn.LayerNorm's first argument receives the input size
    assert registry.get("LN").input_size == "normalized_shape"


def test_registering_a_name_twice_needs_replace() -> None:
    registry = Registry()
    registry.register("Id")(nn.Identity)
    with pytest.raises(RegistryError, match="already registered"):
        registry.register("Id")(nn.Identity)
    registry.register("Id", replace=True)(nn.Identity)


def test_aliases_bind_arguments() -> None:
    registry = blockdsl.REGISTRY.copy()
    registry.register_alias("TinyMLP", "MLP", hidden=8, act="relu")
    graph = blockdsl.build_graph("TinyMLP->+", d_model=16, registry=registry)
    (spec,) = graph.modules.values()
    assert (spec.component.name, spec.args["hidden"], spec.args["act"]) == ("MLP", 8, "relu")
    with pytest.raises(RegistryError, match="has no argument 'hiden'"):
        registry.register_alias("Bad", "MLP", hiden=8)


def test_position_mixing_components_must_default_to_causal() -> None:
    class Peek(nn.Module):
        def __init__(self, d_model: int, causal: bool = False) -> None:
            super().__init__()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(RegistryError, match="must default to true"):
        Registry().register("Peek", mixes_positions=True)(Peek)


def test_builtins_validate_without_building_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every built-in declares a ``check`` validator (its constructor runs the same one), so a
    plan is validated without constructing modules, even on the meta device."""
    components = blockdsl.REGISTRY.components()
    builtins = [c for c in components if c.cls.__module__.startswith("blockdsl.")]
    assert len(builtins) > 20
    assert [c.name for c in builtins if c.check_fn is None] == []

    def no_builds(self, *args, **kwargs):
        raise AssertionError(f"{self.name} was built during validation")

    monkeypatch.setattr(blockdsl.Component, "build", no_builds)
    graph = blockdsl.build_graph(
        "Norm->Attn(heads=4)->+->Norm->MoE[MLP, Norm->MLP]->+ | Conv->Shift->Gate->Scale->+",
        d_model=32,
    )
    assert graph.params() > 0
    with pytest.raises(blockdsl.ArgumentError, match="not divisible by heads=5"):
        blockdsl.build_graph("Attn(heads=5)->+", d_model=32)


def test_undeclared_component_is_built_once_for_validation_and_sizes() -> None:
    """A component without hooks is validated and measured from one meta-device build."""
    builds = []

    class Widen(nn.Module):
        def __init__(self, d_model: int, out: int = 8) -> None:
            super().__init__()
            builds.append(torch.empty(0).device.type)
            if out < 1:
                raise ValueError(f"out must be positive, got {out}")
            self.proj = nn.Linear(d_model, out)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    registry = Registry()
    registry.register("Widen")(Widen)
    graph = blockdsl.build_graph("Widen(out=8)->Widen(out=4)", d_model=4, registry=registry)
    assert [d["size"] for _, d in graph.calls()] == [8, 4]
    assert graph.params() == (4 * 8 + 8) + (8 * 4 + 4)
    assert builds == ["meta", "meta"]  # one per distinct (arguments, input size)
    with pytest.raises(blockdsl.ArgumentError, match="out must be positive, got 0"):
        blockdsl.build_graph("Widen(out=0)", d_model=4, registry=registry)


# ---------------------------------------------------------------- the component protocol
class _Keeps(nn.Module):
    """A running sum that keeps its decoding state (the Decoder protocol)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model

    def init_state(self, batch_size: int, max_len: int) -> dict[str, torch.Tensor]:
        return {"total": torch.zeros(batch_size, 1, self.d_model)}

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        return x.cumsum(1) if state is None else state["total"] + x.cumsum(1)


def test_decoding_is_declared_and_checked_once_at_registration() -> None:
    registry = Registry()
    registry.register("Keeps", mixes_positions=True, decodes=True)(_Keeps)
    assert registry.get("Keeps").stateful
    assert isinstance(_Keeps(4), blockdsl.registry.Decoder)

    with pytest.raises(RegistryError, match="decodes=True is not declared"):
        registry.register("Sniffed", mixes_positions=True)(_Keeps)

    class NoState(nn.Module):
        def __init__(self, d_model: int) -> None:
            super().__init__()

        def init_state(self, batch_size: int, max_len: int) -> dict[str, torch.Tensor]:
            return {}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(RegistryError, match="takes no 'state' keyword"):
        registry.register("NoState", mixes_positions=True, decodes=True)(NoState)

    class NoInit(nn.Module):
        def __init__(self, d_model: int) -> None:
            super().__init__()

        def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
            return x

    with pytest.raises(RegistryError, match="defines no init_state"):
        registry.register("NoInit", mixes_positions=True, decodes=True)(NoInit)
    with pytest.raises(RegistryError, match="state_size is declared but decodes=True is not"):
        registry.register("Sized", state_size=lambda d_in, **_: d_in)(nn.Identity)
    assert "Sniffed" not in registry and "NoInit" not in registry


def test_declarations_are_register_keywords_only() -> None:
    """Hooks written on the class are not read: ``register`` is the one place."""
    registry = Registry()

    @registry.register("Plain")
    class Plain(nn.Module):
        arg_help: ClassVar[dict[str, str]] = {"d_model": "ignored"}

        def __init__(self, d_model: int) -> None:
            super().__init__()

        @staticmethod
        def shape_steps(**_) -> list[tuple]:
            return []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    component = registry.get("Plain")
    assert component.arg_help == {} and component.shape_steps_fn is None
    assert component.declarations == blockdsl.registry.Declarations()
    with pytest.raises(RegistryError, match="params must be a function"):
        registry.register("Counted", params=3)(nn.Identity)


@pytest.mark.parametrize(
    "args",
    [
        {"heads": 4},
        {"heads": 4, "kv_heads": 2, "gate": True, "bias": True, "o_bias": False},
        {"heads": 2, "head_dim": 6, "qk_norm": True, "qk_norm_over": "all", "qkv_bias": True},
    ],
)
def test_attention_is_built_from_the_sizes_its_hooks_count(args) -> None:
    from blockdsl.components.attention import Attn, attn_sizes

    sizes = attn_sizes(32, **args)
    module = Attn(32, **args)
    assert (module.q.out_features, module.k.out_features) == (
        sizes.q_features,
        sizes.kv_features,
    )
    assert (module.q.bias is not None, module.o.bias is not None) == (
        sizes.in_bias,
        sizes.out_bias,
    )
    component = blockdsl.REGISTRY.get("Attn")
    full = {**{n: p.default for n, p in component.user_params.items()}, **args}
    own = [p for n, p in module.named_parameters() if not n.startswith("slots.")]
    assert component.count_params(32, full) == sum(p.numel() for p in own)
