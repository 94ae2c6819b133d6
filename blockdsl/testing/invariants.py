"""The invariant checker: ``check_architecture`` runs a compiled block or a model and names the
invariant and the submodule at fault. It needs no Hypothesis (usable from plain tests and
``blockdsl fuzz``)."""

from __future__ import annotations

import copy
import io
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from blockdsl.lower import component_paths, first_nonfinite_component, first_tensor

__all__ = [
    "DEFAULT_GLOBALS",
    "INVARIANTS",
    "ArchitectureCheckError",
    "check_architecture",
    "first_nonfinite_component",
]

#: Default model-level values for blocks drawn without a model (``vocab``, ``context``).
DEFAULT_GLOBALS: dict[str, int] = {"vocab": 32, "context": 64}
#: Every invariant ``check_architecture`` knows, in the order it checks them.
INVARIANTS = ("forward", "shape", "finite", "determinism", "causality", "gradient", "state_dict")


class ArchitectureCheckError(AssertionError):
    """An invariant does not hold. ``invariant`` is one of ``INVARIANTS``; ``node`` the
    submodule path at fault (``layers.1.attn``, ``leak``) or None when it cannot be
    narrowed down; ``architecture`` the block string or config, when known."""

    def __init__(
        self,
        invariant: str,
        message: str,
        node: str | None = None,
        architecture: Any = None,
    ) -> None:
        self.invariant = invariant
        self.node = node
        self.detail = message
        self.architecture = architecture
        super().__init__(self._render())

    def _render(self) -> str:
        where = f" at {self.node}" if self.node else ""
        text = f"invariant '{self.invariant}' violated{where}: {self.detail}"
        if self.architecture is not None:
            text += f"\n  architecture: {self.architecture}"
        return text

    def with_architecture(self, architecture: Any) -> ArchitectureCheckError:
        self.architecture = architecture
        self.args = (self._render(),)
        return self


@dataclass
class _Subject:
    """How to feed and rebuild the module under test."""

    module: nn.Module
    tokens: bool
    width: int | None  # input feature size (features in)
    out_width: int | None
    vocab: int | None
    context: tuple[str, ...]
    is_model: bool


def _describe(module: nn.Module, d_model: int | None, vocab: int | None) -> _Subject:
    from blockdsl.lower import BlockModule
    from blockdsl.model import LanguageModel

    if isinstance(module, LanguageModel):
        needs = set()
        for block in [module.embed, *module.layers, module.head]:
            needs |= set(block.context)
        return _Subject(
            module,
            True,
            None,
            module.config.vocab,
            module.config.vocab,
            tuple(sorted(needs)),
            True,
        )
    if isinstance(module, BlockModule):
        graph = module.block_graph
        role = graph.role
        out_size = graph.nx.nodes[graph.output]["size"]
        tokens = role == "embed"
        width = None if tokens else graph.d_model
        vocab = vocab or (DEFAULT_GLOBALS["vocab"] if tokens else None)
        return _Subject(module, tokens, width, out_size, vocab, tuple(module.context), False)
    if d_model is None and vocab is None:
        raise TypeError("check_architecture needs d_model= (features in) or vocab= (ids in)")
    tokens = d_model is None
    return _Subject(module, tokens, d_model, d_model, vocab, (), False)


def _split(out: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A forward's result as (main tensor, auxiliary tensors)."""
    if isinstance(out, torch.Tensor):
        return out, []
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        auxes: list[torch.Tensor] = []
        for extra in out[1:]:
            if isinstance(extra, torch.Tensor):
                auxes.append(extra)
            elif isinstance(extra, (tuple, list)):
                auxes.extend(t for t in extra if isinstance(t, torch.Tensor))
        return out[0], auxes
    raise ArchitectureCheckError("forward", f"returned {type(out).__name__}, not a tensor")


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    if a.shape != b.shape:
        return False
    return bool(torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol, equal_nan=True))


def _owner(root: nn.Module, param_name: str) -> str:
    """The component path that owns a parameter (``layers.0.attn.q.weight`` -> the
    ``layers.0.attn`` component), else the parameter's module path."""
    best = ""
    for path, _ in component_paths(root):
        if (param_name.startswith(path + ".") or param_name == path) and len(path) > len(best):
            best = path
    return best or param_name.rpartition(".")[0] or param_name


def check_architecture(
    module: nn.Module,
    *,
    d_model: int | None = None,
    vocab: int | None = None,
    batch: int = 2,
    seq: int = 6,
    invariants: Iterable[str] = INVARIANTS,
    seed: int = 0,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    allow_zero_grad: bool = True,
    threads: int | None = 1,
    architecture: Any = None,
) -> None:
    """Check the invariants of a compiled block or model; raise ``ArchitectureCheckError``.

    ``module``: a ``BlockModule`` from ``compile_block`` (input ``(batch, seq, d_model)``
    features), a ``LanguageModel`` from ``build_model`` (input ``(batch, seq)`` token ids), or
    any ``nn.Module`` with ``d_model=`` (features in and out) or ``vocab=`` (token ids in,
    any width out) given. Components
    that read ``memory`` get a random one. ``invariants`` selects a subset of ``INVARIANTS``;
    ``allow_zero_grad=False`` also rejects parameters whose gradient is exactly zero (not
    just missing). ``threads``: torch's intra-op threads while checking (default 1: the
    tensors are tiny, and threads only add synchronisation; None leaves the setting alone).
    The module is left in the training mode it had, with no gradients.
    """
    wanted = set(invariants)
    unknown = wanted - set(INVARIANTS)
    if unknown:
        raise ValueError(f"unknown invariants {sorted(unknown)}; choose from {INVARIANTS}")
    subject = _describe(module, d_model, vocab)
    old_threads = torch.get_num_threads()
    if threads is not None and threads != old_threads:
        torch.set_num_threads(threads)
    try:
        _check(subject, wanted, batch, seq, seed, rtol, atol, allow_zero_grad)
    except ArchitectureCheckError as err:
        if architecture is not None:
            err.with_architecture(architecture)
        raise
    finally:
        if torch.get_num_threads() != old_threads:
            torch.set_num_threads(old_threads)


def _inputs(subject: _Subject, batch: int, seq: int, gen: torch.Generator) -> dict[str, Any]:
    param = next(itertools.chain(subject.module.parameters(), subject.module.buffers()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    if subject.tokens:
        x = torch.randint(0, subject.vocab, (batch, seq), generator=gen)
    else:
        x = torch.randn(batch, seq, subject.width, generator=gen, dtype=torch.float32)
    feed: dict[str, Any] = {"x": x.to(device=device, dtype=None if subject.tokens else dtype)}
    if "memory" in subject.context:
        width = subject.width or subject.module.config.d_model
        memory = torch.randn(batch, max(seq // 2, 1), width, generator=gen).to(device, dtype)
        feed["memory"] = memory
    return feed


def _perturb_after(
    subject: _Subject, feed: dict[str, Any], t: int, gen: torch.Generator
) -> dict[str, Any]:
    x = feed["x"].clone()
    if subject.tokens:
        shift = torch.randint(1, subject.vocab, x[:, t + 1 :].shape, generator=gen)
        x[:, t + 1 :] = (x[:, t + 1 :] + shift.to(x.device)) % subject.vocab
    else:
        noise = torch.randn(x[:, t + 1 :].shape, generator=gen).to(x.device, x.dtype)
        x[:, t + 1 :] = x[:, t + 1 :] + 3.0 * noise
    return {**feed, "x": x}


def _forward(subject: _Subject, feed: Mapping[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    kwargs = {k: v for k, v in feed.items() if k != "x" and k in subject.context}
    try:
        out = subject.module(feed["x"], **kwargs)  # a model's LMOutput: (logits, None, aux)
    except ArchitectureCheckError:
        raise
    except Exception as exc:
        node = _crash_site(exc)
        raise ArchitectureCheckError(
            "forward", f"forward raised {type(exc).__name__}: {exc}", node
        ) from exc
    return _split(out)


def _crash_site(exc: BaseException) -> str | None:
    tb = exc.__traceback__
    site = None
    while tb is not None:
        frame_self = tb.tb_frame.f_locals.get("self")
        if isinstance(frame_self, nn.Module):
            site = type(frame_self).__name__
        tb = tb.tb_next
    return site


def _check(
    subject: _Subject,
    wanted: set[str],
    batch: int,
    seq: int,
    seed: int,
    rtol: float,
    atol: float,
    allow_zero_grad: bool,
) -> None:
    module = subject.module
    was_training = module.training
    gen = torch.Generator().manual_seed(seed)
    feed = _inputs(subject, batch, seq, gen)
    try:
        module.eval()
        with torch.no_grad():
            out, auxes = _forward(subject, feed)
        _check_output(subject, feed, wanted, out, auxes, batch, seq)
        if "determinism" in wanted:
            with torch.no_grad():
                again, _ = _forward(subject, feed)
            if not torch.equal(out, again):
                diff = (out.float() - again.float()).abs().max().item()
                raise ArchitectureCheckError(
                    "determinism", f"two eval-mode runs differ by up to {diff:.3g}"
                )
        if "causality" in wanted and seq > 1:
            _check_causality(subject, feed, out, seq, gen, rtol, atol)
        if "gradient" in wanted or "finite" in wanted:
            _check_gradients(subject, feed, gen, wanted, allow_zero_grad)
        if "state_dict" in wanted:
            _check_state_dict(subject, feed, out, rtol, atol)
    finally:
        module.train(was_training)
        module.zero_grad(set_to_none=True)


def _check_output(
    subject: _Subject,
    feed: Mapping[str, Any],
    wanted: set[str],
    out: torch.Tensor,
    auxes: list[torch.Tensor],
    batch: int,
    seq: int,
) -> None:
    if "shape" in wanted:
        expected = (batch, seq, subject.out_width) if subject.out_width else None
        ok = out.shape == expected if expected else out.shape[:2] == (batch, seq)
        if not ok:
            want = expected or (batch, seq, "*")
            raise ArchitectureCheckError(
                "shape", f"output has shape {tuple(out.shape)}, expected {want}"
            )
    if "finite" in wanted:
        if not torch.isfinite(out).all():
            raise _not_finite(subject, feed, out)
        for i, aux in enumerate(auxes):
            if aux.is_floating_point() and not torch.isfinite(aux).all():
                raise ArchitectureCheckError("finite", f"auxiliary output {i} is not finite")


def _positions(bad: torch.Tensor) -> str:
    """The sequence positions (dim 1) where ``bad`` (a boolean tensor) holds anywhere."""
    if bad.dim() < 2:
        return "some entries"
    rows = bad.reshape(bad.shape[0], bad.shape[1], -1).any(-1)  # (batch, seq)
    where = sorted(set(rows.nonzero()[:, 1].tolist()))
    return "position " + str(where[0]) if len(where) == 1 else f"positions {where}"


def _not_finite(
    subject: _Subject, feed: Mapping[str, Any], out: torch.Tensor, when: str = ""
) -> ArchitectureCheckError:
    """The finding for an output with NaN or inf: where in the sequence, and the first
    component whose output is not finite although its input is (with the size of that input:
    an overflow shows as a huge finite input)."""
    detail = f"output is not finite (nan/inf) at {_positions(~torch.isfinite(out))}{when}"
    for path, inp, result in _record(subject, feed):
        if result is None or not result.is_floating_point() or torch.isfinite(result).all():
            continue
        if inp is not None and inp.is_floating_point() and not torch.isfinite(inp).all():
            break  # it came in from outside the recorded components
        if inp is not None and inp.is_floating_point():
            detail += f"; first produced by {path} from an input of magnitude up to "
            detail += f"{inp.abs().max().item():.3g}"
        else:
            detail += f"; first produced by {path}"
        return ArchitectureCheckError("finite", detail, path)
    return ArchitectureCheckError("finite", detail)


def _check_causality(
    subject: _Subject,
    feed: dict[str, Any],
    out: torch.Tensor,
    seq: int,
    gen: torch.Generator,
    rtol: float,
    atol: float,
) -> None:
    t = max(seq // 2 - 1, 0)
    perturbed = _perturb_after(subject, feed, t, gen)
    with torch.no_grad():
        out_b, _ = _forward(subject, perturbed)
    if not torch.isfinite(out).all() or not torch.isfinite(out_b).all():
        # NaN or inf anywhere reaches earlier positions through any product with a zero
        # weight (a causal mask's 0 * NaN is NaN), so causality cannot be judged: say what
        # happened instead of reporting a leak "by up to nan"
        bad_feed, bad_out = (feed, out) if not torch.isfinite(out).all() else (perturbed, out_b)
        when = "" if bad_out is out else f" when the input after position {t} is perturbed"
        raise _not_finite(subject, bad_feed, bad_out, when)
    scale = atol * max(1.0, out.abs().max().item())
    if _close(out[:, : t + 1], out_b[:, : t + 1], rtol, scale):
        return
    diff = (out[:, : t + 1].float() - out_b[:, : t + 1].float()).abs().max().item()
    node = _locate_leak(subject, feed, perturbed, t, rtol, atol)
    raise ArchitectureCheckError(
        "causality",
        f"changing positions > {t} changed the output at positions <= {t} "
        f"(by up to {diff:.3g}): a future-token leak",
        node,
    )


def _record(subject: _Subject, feed: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    calls: list[tuple[str, Any, Any]] = []
    handles = []
    for path, mod in component_paths(subject.module):

        def hook(_m: nn.Module, inputs: Any, output: Any, path: str = path) -> None:
            calls.append((path, first_tensor(inputs), first_tensor(output)))

        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            _forward(subject, feed)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _locate_leak(
    subject: _Subject,
    feed: dict[str, Any],
    perturbed: dict[str, Any],
    t: int,
    rtol: float,
    atol: float,
) -> str | None:
    """The first component whose output at positions <= t changes although its input there
    did not."""
    clean, dirty = _record(subject, feed), _record(subject, perturbed)
    for (path, in_a, out_a), (_, in_b, out_b) in zip(clean, dirty):
        if in_a is None or out_a is None or in_b is None or out_b is None:
            continue
        if in_a.dim() < 2 or out_a.dim() < 2:
            continue
        same_in = _close(in_a[:, : t + 1], in_b[:, : t + 1], rtol, atol)
        same_out = _close(out_a[:, : t + 1], out_b[:, : t + 1], rtol, atol)
        if same_in and not same_out:
            return path
    return None


def _check_gradients(
    subject: _Subject,
    feed: dict[str, Any],
    gen: torch.Generator,
    wanted: set[str],
    allow_zero_grad: bool,
) -> None:
    module = subject.module
    module.train()
    module.zero_grad(set_to_none=True)
    out, auxes = _forward(subject, feed)
    weights = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
    loss = (out * weights).sum()
    for aux in auxes:  # a random projection too: a plain sum can be constant (sum of probs)
        if aux.is_floating_point() and aux.requires_grad:
            loss = loss + (aux.float() * torch.randn(aux.shape, generator=gen)).sum()
    if not loss.requires_grad:
        params = [n for n, p in module.named_parameters() if p.requires_grad]
        if params and "gradient" in wanted:
            raise ArchitectureCheckError(
                "gradient",
                f"the output does not depend on any parameter (e.g. '{params[0]}')",
                _owner(module, params[0]),
            )
        return
    loss.backward()
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        grad = param.grad
        if "gradient" in wanted:
            if grad is None:
                raise ArchitectureCheckError(
                    "gradient",
                    f"parameter '{name}' receives no gradient (it does not reach the output)",
                    _owner(module, name),
                )
            if not allow_zero_grad and not grad.any():
                raise ArchitectureCheckError(
                    "gradient", f"parameter '{name}' has an all-zero gradient", _owner(module, name)
                )
        if "finite" in wanted and grad is not None and not torch.isfinite(grad).all():
            raise ArchitectureCheckError(
                "finite", f"parameter '{name}' has a non-finite gradient", _owner(module, name)
            )
    module.eval()


def _rebuild(module: nn.Module) -> nn.Module:
    """A freshly initialised module of the same architecture (rebuilt from its source when
    blockdsl made it, else a deep copy with every parameter and buffer re-randomised)."""
    from blockdsl.lower import BlockModule, lower
    from blockdsl.model import LanguageModel, build_model

    try:
        if isinstance(module, LanguageModel):
            return build_model(module.config)
        if isinstance(module, BlockModule):
            return lower(module.block_graph)
    except Exception:  # e.g. built from another registry: fall back to a copy
        pass
    fresh = copy.deepcopy(module)
    with torch.no_grad():
        for tensor in itertools.chain(fresh.parameters(), fresh.buffers()):
            if tensor.is_floating_point():
                tensor.normal_()
    return fresh


def _check_state_dict(
    subject: _Subject, feed: dict[str, Any], out: torch.Tensor, rtol: float, atol: float
) -> None:
    buffer = io.BytesIO()
    torch.save(subject.module.state_dict(), buffer)
    buffer.seek(0)
    fresh = _rebuild(subject.module)
    param = next(itertools.chain(subject.module.parameters(), subject.module.buffers()), None)
    if param is not None:
        fresh.to(param.device)
    try:
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
    except Exception as exc:
        raise ArchitectureCheckError(
            "state_dict", f"loading the saved state_dict failed: {exc}"
        ) from exc
    fresh.eval()
    other = _Subject(fresh, *[getattr(subject, f) for f in _SUBJECT_FIELDS])
    with torch.no_grad():
        out_b, _ = _forward(other, feed)
    if not _close(out, out_b, rtol, atol):
        diff = (out.float() - out_b.float()).abs().max().item()
        node = _locate_state_difference(subject, other, feed, rtol, atol)
        raise ArchitectureCheckError(
            "state_dict",
            f"after a state_dict save/load round trip the output differs by up to {diff:.3g} "
            "(state not saved, or not restored by load_state_dict)",
            node,
        )


_SUBJECT_FIELDS = ("tokens", "width", "out_width", "vocab", "context", "is_model")


def _locate_state_difference(
    a: _Subject, b: _Subject, feed: dict[str, Any], rtol: float, atol: float
) -> str | None:
    """The first component whose output differs between the original and the reloaded copy
    although its input does not."""
    first, second = _record(a, feed), _record(b, feed)
    for (path, in_a, out_a), (_, in_b, out_b) in zip(first, second):
        if any(v is None for v in (in_a, out_a, in_b, out_b)):
            continue
        same_in = in_a.shape == in_b.shape and _close(in_a, in_b, rtol, atol)
        if same_in and not _close(out_a, out_b, rtol, atol):
            return path
    return None
