"""Architecture fuzzing: generate blocks from chosen components, compile and check each one,
and shrink a failure to the smallest block string that shows it (``blockdsl fuzz``).

    >>> from blockdsl.fuzz import fuzz
    >>> result = fuzz(["Norm", "Attn", "MLP"], examples=50, seed=0)
    >>> result.ok, result.examples
    (True, 50)

Plugins (modules that register components) are imported with ``load_plugin``: a dotted
module path importable from ``sys.path``, or a path to a ``.py`` file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from blockdsl import ast
from blockdsl.registry import REGISTRY, Registry
from blockdsl.testing import DEFAULT_GLOBALS, ArchitectureCheckError, block_asts, check_architecture

__all__ = ["FuzzFailure", "FuzzResult", "fuzz", "load_plugin"]


def load_plugin(spec: str) -> ModuleType:
    """Import a plugin: a file path (``tests/plugins/leaky.py``) is executed as a fresh module
    every time (so that it registers its components again); a module path is imported once."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"plugin file not found: {spec}")
        name = f"blockdsl_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot import plugin file {spec}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    # like `python -m`, a module path is looked up from the current directory first (the
    # console script's sys.path does not hold it)
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    return importlib.import_module(spec)


@dataclass
class FuzzFailure:
    """The shrunk failing architecture: its block string, the violated invariant, where."""

    block: str
    invariant: str
    node: str | None
    message: str

    def render(self) -> str:
        lines = [
            f"  block:     {self.block}",
            f"  invariant: {self.invariant}",
        ]
        if self.node:
            lines.append(f"  node:      {self.node}")
        lines.append(f"  detail:    {self.message}")
        return "\n".join(lines)


@dataclass
class FuzzResult:
    ok: bool
    examples: int
    seconds: float
    seed: int
    components: Counter = field(default_factory=Counter)
    failure: FuzzFailure | None = None

    @property
    def per_second(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("inf")


class _Failed(Exception):
    """Carries a failure out of the Hypothesis test body with its block string."""

    def __init__(self, block: str, invariant: str, node: str | None, message: str) -> None:
        super().__init__(f"{invariant} at {node}: {message}\n  block: {block}")
        self.failure = FuzzFailure(block, invariant, node, message)


def fuzz(
    components: Iterable[str] | None = None,
    *,
    examples: int = 100,
    seed: int | None = None,
    d_model: int = 16,
    max_depth: int = 2,
    max_length: int = 3,
    registry: Registry | None = None,
    shrink: bool = True,
    **strategy_options: Any,
) -> FuzzResult:
    """Check ``examples`` architectures drawn from ``components`` (default: every usable
    registered one). On the first failure Hypothesis shrinks it; the result then holds the
    minimal block string, the invariant and the node. Deterministic for a given ``seed``."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hypothesis_seed

    from blockdsl.lower import compile_block
    from blockdsl.printer import unparse

    registry = registry or REGISTRY
    seed = random.randrange(2**32) if seed is None else seed
    names = None if components is None else list(components)
    strategy = block_asts(
        names,
        d_model=d_model,
        max_depth=max_depth,
        max_length=max_length,
        registry=registry,
        **strategy_options,
    )
    seen: Counter = Counter()
    count = 0

    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        phases=phases,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        print_blob=False,
    )
    @given(strategy)
    def run(block: ast.Block) -> None:
        nonlocal count
        count += 1
        text = unparse(block)
        for node in ast.walk(block):
            if isinstance(node, ast.Call):
                seen[node.name] += 1
        try:
            # initial weights from (seed, architecture): a failure's detail (how far a leak
            # moves the output) is the same in every run with this seed
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed ^ zlib.crc32(text.encode()))
                module = compile_block(
                    text, d_model=d_model, registry=registry, model_globals=DEFAULT_GLOBALS
                )
        except Exception as exc:  # a drawn architecture must compile
            raise _Failed(text, "compile", None, f"{type(exc).__name__}: {exc}") from exc
        try:
            check_architecture(module, architecture=text)
        except ArchitectureCheckError as err:
            raise _Failed(text, err.invariant, err.node, err.detail) from err

    start = time.perf_counter()
    failure = None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add synchronisation
    try:
        run()
    except _Failed as exc:
        failure = exc.failure
    except Exception as exc:  # Hypothesis itself (flaky failure, unsatisfiable, ...)
        failure = FuzzFailure("?", "fuzzer", None, f"{type(exc).__name__}: {exc}")
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    return FuzzResult(failure is None, count, seconds, seed, seen, failure)


def main(
    examples: int = 100,
    seed: int | None = None,
    components: Sequence[str] | None = None,
    plugins: Sequence[str] = (),
    out: Any = None,
) -> int:
    """The ``blockdsl fuzz`` command: 0 when every example passes, 1 on a failure, 2 on a bad
    invocation (unknown component, plugin that fails to import)."""
    out = out or sys.stdout
    try:
        for plugin in plugins:
            load_plugin(plugin)
        result = fuzz(components or None, examples=examples, seed=seed)
    except (ImportError, FileNotFoundError, ValueError) as exc:
        print(f"blockdsl fuzz: {exc}", file=out)
        return 2
    seen = ", ".join(f"{name} ({n})" for name, n in sorted(result.components.items()))
    if result.failure is not None:
        print(
            f"blockdsl fuzz: FAILED: invariant '{result.failure.invariant}' violated "
            f"(seed {result.seed}, after {result.examples} examples incl. shrinking)",
            file=out,
        )
        print(result.failure.render(), file=out)
        again = " ".join(
            [f"--seed {result.seed}", f"--examples {examples}"]
            + [f"--component {c}" for c in components or ()]
            + [f"--plugin {p}" for p in plugins]
        )
        print(f"reproduce: blockdsl fuzz {again}", file=out)
        return 1
    print(
        f"blockdsl fuzz: {result.examples} examples passed in {result.seconds:.1f}s "
        f"({result.per_second:.1f} architectures/s), seed {result.seed}",
        file=out,
    )
    print(f"components seen: {seen or '(none)'}", file=out)
    return 0
