"""The package's shape: stages import only lower stages, the graph IR knows nothing of fx,
``blockdsl.hf`` and ``blockdsl.export`` are real modules without an import circle, the checker
needs no Hypothesis, and a component's hooks are declared in one place (``register``)."""

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


def test_hf_and_export_are_the_real_modules():
    import importlib.util

    import blockdsl.export
    import blockdsl.hf

    assert importlib.util.find_spec("blockdsl.interop") is None
    assert not (PACKAGE / "interop").exists() and not (PACKAGE / "hf.py").exists()
    assert blockdsl.hf.__path__ == [str(PACKAGE / "hf")]  # a package, not a shim module
    # every module defines what it exports: none re-exports another's names
    for module in ["export", *HF_MODULES]:
        exported = set(getattr(_module(module), "__all__", []))
        assert exported <= _defined(module), (module, sorted(exported - _defined(module)))
    # the package's API is those modules' own objects
    for name in blockdsl.hf.__all__:
        homes = [m for m in HF_MODULES if name in _defined(m)]
        assert len(homes) == 1, (name, homes)
        assert getattr(blockdsl.hf, name) is getattr(_module(homes[0]), name)
    assert blockdsl.export_hf is blockdsl.hf.export_hf


#: The modules of ``blockdsl.hf`` (``__init__`` is the package).
HF_MODULES = sorted(
    f"hf.{path.stem}" for path in (PACKAGE / "hf").glob("*.py") if path.stem != "__init__"
)
HF_FAMILIES = sorted(set(HF_MODULES) - {"hf.base", "hf.importer", "hf.exporter"})


def _defined(module: str) -> set[str]:
    """The names a module's own top-level statements define (not those it imports)."""
    tree = ast.parse((PACKAGE / f"{module.replace('.', '/')}.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _names_from_package_inits(module: str) -> list[str]:
    """``from blockdsl import X`` / ``from blockdsl.hf import X`` in a module where ``X`` is a
    name of the package's ``__init__`` rather than a module of it."""
    tree = ast.parse((PACKAGE / f"{module.replace('.', '/')}.py").read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("blockdsl", "blockdsl.hf"):
            folder = PACKAGE.joinpath(*node.module.split(".")[1:])
            for alias in node.names:
                if (
                    not (folder / f"{alias.name}.py").exists()
                    and not (folder / alias.name).is_dir()
                ):
                    found.append(f"{node.module}.{alias.name}")
    return found


def _module(name: str):
    import importlib

    return importlib.import_module(f"blockdsl.{name}")


def test_hf_and_export_modules_import_no_circle():
    """Counting imports inside functions: families import only the base; nothing imports the
    ``blockdsl`` or ``blockdsl.hf`` package (``from blockdsl import X``) back; no circle."""
    assert {"hf.classic", "hf.dense", "hf.moe", "hf.ssm"} <= set(HF_FAMILIES)
    ours = {f"blockdsl.{m}" for m in [*HF_MODULES, "export"]}
    edges: dict[str, set[str]] = {}
    for module in [*HF_MODULES, "export"]:
        imports = _imports(module.replace(".", "/"), anywhere=True)
        name = f"blockdsl.{module}"
        from_init = _names_from_package_inits(module)
        assert not from_init, f"{name} imports names of a package __init__: {from_init}"
        edges[name] = imports & ours
        if module in HF_FAMILIES:
            assert edges[name] == {"blockdsl.hf.base"}, (name, sorted(edges[name]))
    assert edges["blockdsl.hf.base"] == set()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        assert node not in path, "import circle: " + " -> ".join([*path, node])
        if node not in done:
            for target in sorted(edges[node]):
                visit(target, [*path, node])
            done.add(node)

    for node in sorted(edges):
        visit(node, [])


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


def test_every_hf_architecture_is_one_record_of_a_family_module():
    from blockdsl import hf

    assert set(hf.SUPPORTED) == set(hf.ARCHITECTURES)
    families = {f"blockdsl.{name}" for name in HF_FAMILIES}
    for model_type, arch in hf.ARCHITECTURES.items():
        assert arch.model_type == model_type
        assert callable(arch.config) and callable(arch.weights)
        assert arch.prefix and arch.hf_class
        assert arch.config.__module__ in families, (model_type, arch.config.__module__)


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
