"""The search space: mutations of a block's syntax tree, and the cheap checks that a candidate
must pass before anything is allocated.

A mutation takes a parsed block and returns a new one; the candidate is its canonical text
(``unparse``). Every mutation keeps the tree well formed (the printer can write it and the
parser reads it back to the same tree); whether the block is *valid* (sizes, labels, a ``+``
with something to add, a parallel branch ending in ``+``) is the validator's to say, in
milliseconds, so a mutation is free to propose something that validation then rejects.

Mutations (``MUTATIONS``): insert, delete or replace a step; change one argument to a value
the component's declared schema accepts (the values the Hypothesis strategies draw:
``blockdsl.testing.strategies.argument_values``); add or remove a parallel branch; add or
remove a residual ``+``; and change the block's chain of residual segments, its "layers":
duplicate or drop a segment, repeat one (``(seg)*2``) or change a repeat's count.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from blockdsl import ast
from blockdsl.errors import BlockDSLError
from blockdsl.parser import parse
from blockdsl.printer import unparse
from blockdsl.registry import MODEL_GLOBALS, REGISTRY, Registry

MUTATIONS = (
    "insert_step",
    "insert_segment",
    "delete_step",
    "replace_step",
    "change_arg",
    "add_branch",
    "remove_branch",
    "add_residual",
    "remove_residual",
    "layers",
)

#: Largest repeat count the ``layers`` mutation writes.
MAX_REPEAT = 4


def canonical(text: str) -> str:
    """The canonical spelling of a block string (``unparse(parse(text))``)."""
    return unparse(parse(text))


class SearchSpace:
    """Mutations over blocks made of ``components`` at width ``d_model``.

    ``defaults`` are the model's ``[defaults]`` (the values arguments resolve to when not
    written), ``model_globals`` its ``vocab``/``context``; ``max_calls`` bounds a
    candidate's size (a mutation that would exceed it is not made)."""

    def __init__(
        self,
        components: Sequence[str],
        *,
        d_model: int,
        defaults: Mapping[str, Mapping[str, Any]] | None = None,
        registry: Registry | None = None,
        model_globals: Mapping[str, Any] | None = None,
        max_calls: int = 16,
    ) -> None:
        self.registry = registry or REGISTRY
        unknown = [name for name in components if name not in self.registry]
        if unknown:
            from blockdsl.errors import did_you_mean

            raise BlockDSLError(
                f"unknown component '{unknown[0]}' in --components",
                hint=did_you_mean(unknown[0], self.registry.names())
                or f"components: {', '.join(self.registry.names())}",
            )
        self.components = tuple(components)
        # a segment's norm: the first normalisation among the components, if any
        self.norm = next((n for n in self.components if "Norm" in n), None)
        self.mixers = tuple(n for n in self.components if n != self.norm) or self.components
        self.d_model = d_model
        self.defaults = {k: dict(v) for k, v in (defaults or {}).items()}
        self.model_globals = dict(model_globals) if model_globals else None
        self.max_calls = max_calls

    # ---------------------------------------------------------------- public
    def mutate(
        self, block: ast.Block | str, rng: random.Random, attempts: int = 20
    ) -> tuple[str, str]:
        """One random mutation of ``block``: ``(mutation name, canonical block string)``.
        Mutations that do not apply to this block (no branch to remove...) are redrawn; after
        ``attempts`` the block is returned unchanged with the name ``"none"``."""
        tree = parse(block) if isinstance(block, str) else block
        for _ in range(attempts):
            name = rng.choice(MUTATIONS)
            mutated = getattr(self, f"_{name}")(tree, rng)
            if mutated is None or mutated == tree:
                continue
            if sum(isinstance(n, ast.Call) for n in ast.walk(mutated)) > self.max_calls:
                continue
            return name, unparse(mutated)
        return "none", unparse(tree)

    def check(self, text: str) -> str | None:
        """Why the block ``text`` is invalid at this width (the validator's message), or None.
        Parsing and graph validation only: nothing is allocated."""
        from blockdsl.graph import build_graph

        try:
            build_graph(
                text,
                d_model=self.d_model,
                defaults=self.defaults,
                registry=self.registry,
                model_globals=self.model_globals,
            )
        except BlockDSLError as exc:
            return exc.message
        return None

    # ---------------------------------------------------------------- helpers
    def _new_call(self, rng: random.Random, pool: Sequence[str] | None = None) -> ast.Call:
        return ast.Call(rng.choice(list(pool or self.mixers)))

    def _segment(self, rng: random.Random) -> list[ast.Step]:
        """``Norm->X->+`` (or ``X->+`` without a norm among the components)."""
        steps: list[ast.Step] = [ast.Call(self.norm)] if self.norm else []
        return [*steps, self._new_call(rng), ast.Residual()]

    # ---------------------------------------------------------------- mutations
    def _insert_step(self, tree: ast.Block, rng: random.Random) -> ast.Block | None:
        def edit(steps: list[ast.Step]) -> list[ast.Step] | None:
            steps.insert(rng.randint(0, len(steps)), self._new_call(rng, self.components))
            return steps

        return _edit_chain(tree, rng, edit)

    def _insert_segment(self, tree: ast.Block, rng: random.Random) -> ast.Block | None:
        def edit(steps: list[ast.Step]) -> list[ast.Step] | None:
            boundaries = [0] + [i + 1 for i, s in enumerate(steps) if isinstance(s, ast.Residual)]
            at = rng.choice(boundaries)
            return steps[:at] + self._segment(rng) + steps[at:]

        return _edit_chain(tree, rng, edit)

    def _delete_step(self, tree: ast.Block, rng: random.Random) -> ast.Block | None:
        def edit(steps: list[ast.Step]) -> list[ast.Step] | None:
            candidates = [i for i, s in enumerate(steps) if not isinstance(s, ast.Residual)]
            if len(candidates) < 2:
                return None
            del steps[rng.choice(candidates)]
            return _drop_empty_segments(steps)

        return _edit_chain(tree, rng, edit)

    def _replace_step(self, tree: ast.Block, rng: random.Random) -> ast.Block | None:
        calls = [c for c in _calls(tree) if not c.children]
        if not calls:
            return None
        target = rng.choice(calls)
        others = [n for n in self.components if n != target.name]
        if not others:
            return None
        replacement = ast.Call(rng.choice(others))
        return _replace_call(tree, target, replacement)

    def _change_arg(self, tree: ast.Block, rng: random.Random) -> ast.Block | None:
        from blockdsl.testing.strategies import argument_values

        calls = _calls(tree)
        if not calls:
            return None
        target = rng.choice(calls)
        if target.name not in self.registry:
            return None
        component, alias_args = self.registry.resolve(target.name)
        order = list(component.user_params)
        positional = sum(1 for a in target.args if a.name is None)
        covered = set(order[:positional])
        written = {a.name: a.value.to_python() for a in target.args if a.name is not None}
        settable = [
            p
            for p in component.user_params.values()
            if p.name not in MODEL_GLOBALS and p.name not in alias_args and p.name not in covered
        ]
        rng.shuffle(settable)
        resolved_defaults = {
            **{p.name: p.default for p in component.user_params.values() if not p.required},
            **self.defaults.get(target.name, {}),
        }
        for param in settable:
            current = written.get(param.name, resolved_defaults.get(param.name))
            values = argument_values(
                param,
                d_model=self.d_model,
                chosen={**resolved_defaults, **written},
                defaults=resolved_defaults,
                n_children=len(target.children),
            )
            values = [v for v in values if not _same(v, current)]
            if param.name in written and not param.required:
                values.append(_DEFAULT)  # back to the default: drop the written argument
            if not values:
                continue
            value = rng.choice(values)
            args = [a for a in target.args if a.name != param.name]
            if value is not _DEFAULT:
                args.append(ast.Arg(param.name, _value_node(value)))
                args = args[:positional] + sorted(args[positional:], key=_arg_order(order))
            return _replace_call(tree, target, dataclasses.replace(target, args=tuple(args)))
        return None

    def _add_branch(self, tree: ast.Block, rng: random.Random) -> ast.Block | None:
        if not all(c.steps and isinstance(c.steps[-1], ast.Residual) for c in tree.chains):
            return None
        return ast.Block((*tree.chains, ast.Chain(tuple(self._segment(rng)))))

    def _remove_branch(self, tree: ast.Block, rng: random.Random) -> ast.Block | None:
        if not tree.is_parallel:
            return None
        chains = list(tree.chains)
        del chains[rng.randrange(len(chains))]
        return ast.Block(tuple(chains))

    def _add_residual(self, tree: ast.Block, rng: random.Random) -> ast.Block | None:
        def edit(steps: list[ast.Step]) -> list[ast.Step] | None:
            spots = [
                i + 1
                for i, s in enumerate(steps)
                if not isinstance(s, ast.Residual)
                and (i + 1 == len(steps) or not isinstance(steps[i + 1], ast.Residual))
            ]
            if not spots:
                return None
            steps.insert(rng.choice(spots), ast.Residual())
            return steps

        return _edit_chain(tree, rng, edit)

    def _remove_residual(self, tree: ast.Block, rng: random.Random) -> ast.Block | None:
        def edit(steps: list[ast.Step]) -> list[ast.Step] | None:
            spots = [i for i, s in enumerate(steps) if isinstance(s, ast.Residual)]
            if not spots:
                return None
            del steps[rng.choice(spots)]
            return steps

        return _edit_chain(tree, rng, edit)

    def _layers(self, tree: ast.Block, rng: random.Random) -> ast.Block | None:
        """Change the chain of residual segments of one top-level branch: duplicate or drop
        a segment, repeat one, or change (or undo) a repeat's count."""
        index = rng.randrange(len(tree.chains))
        steps = list(tree.chains[index].steps)
        segments = _segments(steps)
        repeats = [i for i, s in enumerate(steps) if isinstance(s, ast.Repeat)]
        choice = rng.choice(["duplicate", "drop", "repeat", "count"])
        if choice == "count" and repeats:
            at = rng.choice(repeats)
            step = steps[at]
            assert isinstance(step, ast.Repeat)
            count = step.count + rng.choice([-1, 1])
            if count < 1 or count > MAX_REPEAT:
                return None
            steps[at] = dataclasses.replace(step, count=count)
            if count == 1 and isinstance(step.body, ast.Group):
                steps[at] = step.body  # (seg)*1 is the group itself
        elif choice == "duplicate" and segments:
            start, end = rng.choice(segments)
            steps[end:end] = steps[start:end]
        elif choice == "drop" and len(segments) > 1:
            start, end = rng.choice(segments)
            del steps[start:end]
        elif choice == "repeat" and segments:
            start, end = rng.choice(segments)
            body = ast.Group(ast.Block((ast.Chain(tuple(steps[start:end])),)))
            steps[start:end] = [ast.Repeat(body, 2)]
        else:
            return None
        if not steps:
            return None
        chains = list(tree.chains)
        chains[index] = ast.Chain(tuple(steps))
        return ast.Block(tuple(chains))


# ==================================================================== tree editing
_DEFAULT = object()


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _arg_order(order: list[str]) -> Callable[[ast.Arg], int]:
    return lambda arg: order.index(arg.name) if arg.name in order else len(order)


def _value_node(value: Any) -> ast.Value:
    from blockdsl.testing.strategies import _value_node as node

    return node(value)


def _calls(tree: ast.Node) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _chains(tree: ast.Node) -> list[ast.Chain]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Chain)]


def _segments(steps: Sequence[ast.Step]) -> list[tuple[int, int]]:
    """``(start, end)`` of every residual segment: steps up to and including a ``+``."""
    out, start = [], 0
    for i, step in enumerate(steps):
        if isinstance(step, ast.Residual):
            if i > start:
                out.append((start, i + 1))
            start = i + 1
    return out


def _drop_empty_segments(steps: list[ast.Step]) -> list[ast.Step] | None:
    """Remove a ``+`` with nothing before it since the previous one (a deleted step can leave
    one); None if nothing is left."""
    out: list[ast.Step] = []
    for step in steps:
        if isinstance(step, ast.Residual) and (not out or isinstance(out[-1], ast.Residual)):
            continue
        out.append(step)
    return out or None


def _edit_chain(
    tree: ast.Block,
    rng: random.Random,
    edit: Callable[[list[ast.Step]], list[ast.Step] | None],
) -> ast.Block | None:
    """Apply ``edit`` to the steps of one chain chosen at random anywhere in the tree."""
    chains = _chains(tree)
    target = rng.randrange(len(chains))
    new_steps = edit(list(chains[target].steps))
    if new_steps is None:
        return None
    counter = [0]

    def chain_fn(index: int, chain: ast.Chain) -> ast.Chain:
        return ast.Chain(tuple(new_steps)) if index == target else chain

    return _rebuild(tree, chain_fn, counter)


def _replace_call(tree: ast.Block, target: ast.Call, replacement: ast.Call) -> ast.Block:
    """``tree`` with one call replaced: ``target``, that very node, at its first place in
    ``ast.walk``'s order (a duplicated segment holds the same node object twice; only one of
    the copies changes)."""
    index = next(i for i, call in enumerate(_calls(tree)) if call is target)
    seen = [0]

    def swap(node: Any) -> Any:
        if isinstance(node, ast.Block):
            return ast.Block(tuple(swap(c) for c in node.chains))
        if isinstance(node, ast.Chain):
            return ast.Chain(tuple(swap(s) for s in node.steps))
        if isinstance(node, ast.Group):
            return ast.Group(swap(node.block))
        if isinstance(node, ast.Repeat):
            return ast.Repeat(swap(node.body), node.count)
        if isinstance(node, ast.Call):
            here = seen[0]
            seen[0] += 1
            if here == index:
                seen[0] += sum(1 for n in ast.walk(node) if isinstance(n, ast.Call)) - 1
                return replacement
            if node.children:
                return dataclasses.replace(node, children=tuple(swap(c) for c in node.children))
        return node

    return swap(tree)


def _rebuild(node: Any, chain_fn: Callable[[int, ast.Chain], ast.Chain], counter: list[int]) -> Any:
    """A copy of ``node`` with every chain passed through ``chain_fn(index, chain)``; indices
    follow ``ast.walk``'s order (depth first, in source order)."""
    if isinstance(node, ast.Block):
        return ast.Block(tuple(_rebuild(c, chain_fn, counter) for c in node.chains))
    if isinstance(node, ast.Chain):
        index = counter[0]
        counter[0] += 1
        steps = tuple(_rebuild(s, chain_fn, counter) for s in node.steps)
        return chain_fn(index, ast.Chain(steps))
    if isinstance(node, ast.Group):
        return ast.Group(_rebuild(node.block, chain_fn, counter))
    if isinstance(node, ast.Repeat):
        return ast.Repeat(_rebuild(node.body, chain_fn, counter), node.count)
    if isinstance(node, ast.Call) and node.children:
        children = tuple(_rebuild(c, chain_fn, counter) for c in node.children)
        return dataclasses.replace(node, children=children)
    return node


__all__ = ["MAX_REPEAT", "MUTATIONS", "SearchSpace", "canonical"]
