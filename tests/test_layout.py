"""The package's shape: stages import only lower stages, the graph IR knows nothing of fx, old
import paths keep working, the checker needs no Hypothesis, and a component's hooks are
declared in one place (``register``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import blockdsl

PACKAGE = Path(blockdsl.__file__).parent

# The compiler core, lowest stage first: a module may import only modules before it.
STAGES = [
    "errors",
    "ast",
    "printer",
    "diagnostics",
    "parser",
    "registry",
    "graph",
    "lower",
    "config",
    "model",
    "shapes",
]


def _imports(module: str, *, anywhere: bool = False) -> set[str]:
    """The modules ``blockdsl.<module>`` imports at import time (its top-level statements), or
    ``anywhere`` (inside functions too)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree) if anywhere else tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "blockdsl":
                found |= {f"blockdsl.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_stages_import_only_lower_stages():
    for index, module in enumerate(STAGES):
        higher = {f"blockdsl.{m}" for m in STAGES[index + 1 :]}
        wrong = _imports(module) & higher
        assert not wrong, f"blockdsl.{module} imports a higher stage: {sorted(wrong)}"


def test_graph_ir_knows_nothing_of_fx():
    imports = _imports("graph", anywhere=True)
    assert not {i for i in imports if i.startswith("torch")}, imports
    assert "blockdsl.lower" not in imports


def test_old_import_paths_are_the_interop_modules():
    import blockdsl.export
    import blockdsl.hf
    import blockdsl.interop.export
    import blockdsl.interop.hf

    assert blockdsl.hf.to_config is blockdsl.interop.hf.to_config
    assert blockdsl.hf.from_hf is blockdsl.interop.hf.from_hf
    assert blockdsl.export.to_python is blockdsl.interop.export.to_python


def test_checker_imports_without_hypothesis():
    code = (
        "import sys\n"
        "sys.modules['hypothesis'] = None  # any import of it fails\n"
        "import blockdsl\n"
        "from blockdsl.testing import check_architecture\n"
        "check_architecture(blockdsl.compile_block('Norm->MLP->+', d_model=8), d_model=8)\n"
        "try:\n"
        "    from blockdsl.testing import block_strings\n"
        "except ImportError:\n"
        "    print('strategies need hypothesis')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "strategies need hypothesis" in result.stdout


def test_every_interop_architecture_is_one_record():
    from blockdsl.interop import hf

    assert set(hf.SUPPORTED) == set(hf.ARCHITECTURES)
    for model_type, arch in hf.ARCHITECTURES.items():
        assert arch.model_type == model_type
        assert callable(arch.config) and callable(arch.weights)
        assert arch.prefix and arch.hf_class


def test_hooks_are_declared_with_register_and_used_from_there():
    registry = blockdsl.REGISTRY.copy()

    def steps(d_in, seq, batch, **_):
        return [("inside", ("B", "T", "D"), (batch, seq, d_in), 7)]

    def combine(auxes):
        return torch.stack([a.sum() for a in auxes]).sum() * 0

    @registry.register(
        "Twice",
        aux_loss=True,
        arg_help={"gain": "how much"},
        shape_steps=steps,
        combine_aux=combine,
    )
    class Twice(nn.Module):
        def __init__(self, d_model: int, gain: float = 2.0) -> None:
            super().__init__()
            self.lin = nn.Linear(d_model, d_model)
            self.gain = gain

        def forward(self, x):
            return self.lin(x) * self.gain, x.pow(2).mean()

    component = registry.get("Twice")
    assert component.arg_help == {"gain": "how much"}
    assert component.shape_steps_fn is steps and component.combine_aux_fn is combine
    model = blockdsl.build_model(
        "tiny", registry=registry, blocks={"block": "Norm->Twice->+"}, layers="block*2"
    )
    idx = torch.randint(0, model.config.vocab, (1, 4))
    aux = model(idx, targets=idx).aux
    assert aux.item() == 0.0  # the declared combine_aux, not the default sum
