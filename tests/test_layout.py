"""The package's shape: no import circle between project modules (imports inside functions
count), stages import only lower stages, the compiler core imports no wing, the graph IR knows
nothing of fx, no module merely re-exports another, the checker needs no Hypothesis, and a
component's hooks are declared in one place (``register``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import networkx as nx
import torch
from torch import nn

import blockdsl

PACKAGE = Path(blockdsl.__file__).parent

# The compiler core, lowest stage first: a module may import only modules before it.
STAGES = [
    "errors",
    "untrusted",
    "ast",
    "printer",
    "diagnostics",
    "parser",
    "registry",
    "graph",
    "lower",
    "generate",  # decoding: takes a model (duck-typed), loads no file
    "shapes",  # shape tables: read a plan (duck-typed); the model shows them in notebooks
    "config",
    "initialisation",  # the [init] schemes: read a config, draw a built model's weights
    "model",
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether ``node`` sits under ``if TYPE_CHECKING:`` (never executed)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _target(name: str) -> str | None:
    """The project module that importing ``name`` runs: the longest prefix that is one."""
    modules = _modules()
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


@cache
def _imports(module: str, *, anywhere: bool = True) -> frozenset[str]:
    """The project modules ``module`` imports at run time: its top-level statements, or
    ``anywhere`` (inside functions too); ``if TYPE_CHECKING:`` blocks are not run."""
    path = _modules()[module]
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree) if anywhere else tree.body:
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            if not base.startswith("blockdsl"):
                continue
            for alias in node.names:  # ``from blockdsl import ast`` imports a module
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in _modules() else _target(base))
        elif isinstance(node, ast.Import):
            found |= {_target(a.name) for a in node.names if a.name.startswith("blockdsl")}
    found.discard(None)
    found.discard(module)
    return frozenset(found)


def _import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for module in _modules():
        graph.add_node(module)
        for imported in _imports(module):
            # A package importing its own submodules is how a package presents itself; the
            # submodule never runs the package's __init__ body first, so that is no circle.
            if module != "blockdsl" and imported.startswith(module + "."):
                continue
            graph.add_edge(module, imported)
    return graph


def test_no_import_circle_counting_imports_inside_functions():
    graph = _import_graph()
    circles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not circles, f"modules that import each other (directly or round a loop): {circles}"


def test_the_layout_check_reads_imports_inside_functions():
    """``ModelPlan._repr_html_`` imports the shape tables on use: seen only with ``anywhere``."""
    assert "blockdsl.shapes" in _imports("blockdsl.model")
    assert "blockdsl.shapes" not in _imports("blockdsl.model", anywhere=False)
    graph = _import_graph().copy()
    graph.add_edge("blockdsl.errors", "blockdsl.model")  # as a lazy import would add
    assert not nx.is_directed_acyclic_graph(graph)


def test_modules_inside_the_package_do_not_import_its_top_level():
    """``from blockdsl import X`` inside the package runs ``blockdsl/__init__`` (which imports
    everything): a circle in disguise. Import from the module that defines X."""
    wrong = sorted(m for m in _modules() if m != "blockdsl" and "blockdsl" in _imports(m))
    assert not wrong, wrong


def test_stages_import_only_lower_stages_even_inside_functions():
    core = {f"blockdsl.{m}" for m in STAGES}
    for index, module in enumerate(STAGES):
        allowed = {f"blockdsl.{m}" for m in STAGES[:index]}
        imported = _imports(f"blockdsl.{module}")
        higher = imported & (core - allowed)
        assert not higher, f"blockdsl.{module} imports a higher stage: {sorted(higher)}"
        # the core knows no wing; components are the registry's contents, below the graph
        wings = {m for m in imported - core if not m.startswith("blockdsl.components")}
        assert not wings, f"blockdsl.{module} imports a wing: {sorted(wings)}"


def test_graph_ir_knows_nothing_of_fx():
    tree = ast.parse((PACKAGE / "graph.py").read_text())
    imports = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {i for i in imports if i and i.startswith("torch")}, imports
    assert "blockdsl.lower" not in _imports("blockdsl.graph")


def test_no_module_only_re_exports_another():
    """No compatibility shims: every module defines something of its own."""
    for module, path in _modules().items():
        if path.name in ("__init__.py", "__main__.py"):
            continue
        tree = ast.parse(path.read_text())
        defines = [
            node
            for node in tree.body
            if not isinstance(node, ast.Import | ast.ImportFrom | ast.Expr)
            and not (isinstance(node, ast.Assign) and _is_all(node))
        ]
        assert defines, f"{module} only re-exports other modules"


def _is_all(node: ast.Assign) -> bool:
    return any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)


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
HF_FAMILIES = sorted(set(HF_MODULES) - {"hf.base", "hf.importer", "hf.exporter", "hf.checks"})


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


def _module(name: str):
    import importlib

    return importlib.import_module(f"blockdsl.{name}")


def test_hf_families_import_only_the_base():
    assert {"hf.classic", "hf.dense", "hf.moe", "hf.ssm"} <= set(HF_FAMILIES)
    ours = {f"blockdsl.{m}" for m in [*HF_MODULES, "export"]}
    for family in HF_FAMILIES:
        imported = _imports(f"blockdsl.{family}") & ours
        assert imported == {"blockdsl.hf.base"}, (family, sorted(imported))
    assert not _imports("blockdsl.hf.base") & ours


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
