"""Text generation: a ``LanguageModel`` continues token ids, with a decoding state or without.

``generate(model, idx, max_new_tokens, ...)`` (also ``model.generate(...)``) samples one token
at a time. With the cache (the default, when every component that mixes positions implements
the decoding-state protocol, docs/generation.md) the prompt is prefilled once into a state and
each new token costs one step; otherwise the whole prefix is recomputed every step (the
documented fallback, exact but slower).

Prompts of different lengths (a list) decode as one batch without padding ever entering a
state: prompts of each length are prefilled together into their rows of the batch state, and
then every row steps at its own positions (attention masks each row's cache beyond its own
position). The tokens are those each prompt gives alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from blockdsl.errors import BlockDSLError
from blockdsl.lower import call_specs, first_nonfinite_component, noncausal_call

if TYPE_CHECKING:
    from blockdsl.model import LanguageModel


class GenerationError(BlockDSLError):
    """Generation cannot run: a bad prompt or option, or a model that cannot decode."""


Prompts = torch.Tensor | Sequence[Sequence[int]] | Sequence[torch.Tensor]


def generate(
    model: LanguageModel, idx: Prompts, max_new_tokens: int, **options: Any
) -> torch.Tensor | list[torch.Tensor]:
    """Continue ``idx`` by up to ``max_new_tokens`` tokens.

    ``idx`` is a ``(B, T)`` (or ``(T,)``) tensor of token ids, or a list of prompts of any
    lengths (lists of ids or 1-d tensors). Returns the prompts with their continuations: a
    tensor shaped like ``idx`` for a tensor (rows that stopped early are filled with the stop
    token they produced, and generation ends when every row has stopped), else a list of 1-d
    tensors, each ending at its stop token. ``options`` are ``stream``'s sampling options
    (stated there once): ``temperature``, ``top_k``, ``top_p``, ``greedy``, ``stop``,
    ``generator``, ``use_cache``.
    """
    prompts, as_tensor, squeeze = _prompts(idx)
    steps = list(stream(model, prompts, max_new_tokens, **options))
    device = prompts[0].device
    new = torch.stack(steps, dim=1) if steps else torch.empty(len(prompts), 0, dtype=torch.long)
    new = new.to(device)
    if as_tensor:
        out = torch.cat([torch.stack(prompts), new], dim=1)
        return out[0] if squeeze else out
    stops = _stop_ids(options.get("stop"))
    results = []
    for prompt, row in zip(prompts, new):
        ended = [i for i, token in enumerate(row.tolist()) if token in stops]
        results.append(torch.cat([prompt, row[: ended[0] + 1] if ended else row]))
    return results


@torch.inference_mode()
def stream(
    model: LanguageModel,
    prompts: Prompts,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    stop: int | Iterable[int] | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    with_logits: bool = False,
) -> Iterator[Any]:
    """Yield the next token of every prompt, ``(B,)``, one step at a time; with
    ``with_logits``, ``(tokens, logits)`` where ``logits`` ``(B, vocab)`` (float32) are the
    model's scores the tokens were chosen from. A row that has produced a stop token yields
    that token again; the stream ends after ``max_new_tokens`` steps or when every row has
    stopped.

    Sampling: ``greedy`` (or ``temperature == 0``) takes the most likely token; otherwise the
    logits are divided by ``temperature``, restricted to the ``top_k`` most likely tokens and
    to the smallest set whose probability reaches ``top_p`` (nucleus), and sampled with
    ``generator`` (seed it for reproducible samples). ``stop``: a token id or ids ending a
    row. ``use_cache=False`` recomputes the prefix every step (the fallback, for comparison).
    """
    rows, _, _ = _prompts(prompts)
    _check_options(max_new_tokens, temperature, top_k, top_p, greedy, generator)
    stops = _stop_ids(stop)
    _check_model(model)
    device = next(iter(model.parameters()), torch.zeros(())).device
    rows = [_check_prompt(model, i, row.to(device)) for i, row in enumerate(rows)]
    lengths = torch.tensor([len(row) for row in rows], device=device)
    total = int(lengths.max()) + max_new_tokens
    context = model.config.context
    window = None  # past the context: each step sees the last ``context`` tokens (nanoGPT)
    if total > context:
        absolute = absolute_positions(model)
        if absolute is not None:
            raise GenerationError(
                f"the longest prompt ({int(lengths.max())} tokens) and max_new_tokens "
                f"({max_new_tokens}) exceed the model's context of {context} positions, and "
                f"its {absolute} position embeddings stop there: cropping the window would "
                "give every token another position than it had",
                hint="ask for fewer new tokens, shorten the prompt, or use a model with a "
                "longer context (rotary or position-free models continue past it)",
            )
        window = context
    if max_new_tokens == 0:
        return

    def pick(logits: torch.Tensor) -> torch.Tensor:
        return sample(
            logits,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            generator=generator,
        )

    was_training = model.training
    model.eval()
    try:
        cached = use_cache and window is None and model.cache_blocker() is None
        steps = _cached(model, rows, lengths, total) if cached else _uncached(model, rows, window)
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        ended = torch.zeros(len(rows), dtype=torch.long, device=device)
        stop_tensor = torch.tensor(sorted(stops), dtype=torch.long, device=device)
        logits = next(steps)
        for step in range(max_new_tokens):
            if not bool(torch.isfinite(logits).all()):
                raise _not_finite(model, rows, step)
            token = pick(logits)
            if stops:  # a stopped row repeats its stop token; all stopped: the end
                token = torch.where(done, ended, token)
                newly = ~done & torch.isin(token, stop_tensor)
                ended = torch.where(newly, token, ended)
                done = done | newly
            yield (token, logits) if with_logits else token
            if step + 1 == max_new_tokens or (stops and bool(done.all())):
                break
            logits = steps.send(token)
    finally:
        model.train(was_training)


def _not_finite(model: LanguageModel, rows: list[torch.Tensor], step: int) -> GenerationError:
    """The error for logits holding NaN or inf: sampling from them would emit arbitrary
    tokens. Names the first component whose output is not finite on the first prompt."""

    ids = rows[0][None]
    culprit = first_nonfinite_component(model, ids)
    if culprit is None and model.cache_blocker() is None:  # the cached path differs: its prefill
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        state = model.init_state(1, ids.shape[1])
        culprit = first_nonfinite_component(model, ids, positions=positions, state=state)
    where = f"; first produced by {culprit}" if culprit else ""
    return GenerationError(
        f"the model's next-token scores are not finite (nan/inf) at new token {step}{where}",
        hint="check the config's numeric arguments (eps, rope_theta, scales) and the weights",
    )


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits`` ``(B, vocab)``: the argmax when ``greedy`` or
    ``temperature == 0``, else a sample from ``softmax(logits / temperature)`` restricted to
    the ``top_k`` most likely tokens and the ``top_p`` nucleus."""
    logits = logits.float()
    if greedy or temperature == 0:
        return logits.argmax(dim=-1)
    # shifted so that the largest is 0 before dividing: a tiny temperature then sends the
    # others to -inf instead of every score to inf (whose softmax is NaN)
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        drop = before >= top_p  # the most likely token is always kept (before = 0)
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ==================================================================== the two loops
def _cached(
    model: LanguageModel, rows: list[torch.Tensor], lengths: torch.Tensor, max_len: int
) -> Iterator[torch.Tensor]:
    """Prefill each length's prompts into their rows of one state, then step every row at its
    own position. Yields next-token logits ``(B, vocab)``; receives the chosen tokens."""
    device = lengths.device
    state = model.init_state(len(rows), max_len)
    logits = torch.empty(0)
    for length, members in _by_length(rows).items():
        ids = torch.stack([rows[i] for i in members])  # (n, length)
        positions = torch.arange(length, device=device).expand(len(members), -1)
        if len(members) == len(rows):  # one length: prefill the batch state itself
            out = model(ids, positions=positions, state=state)
        else:
            part = model.init_state(len(members), max_len)
            out = model(ids, positions=positions, state=part)
            _copy_rows(state, part, torch.tensor(members, device=device))
        last = out.logits[:, -1].float()
        if logits.numel() == 0:
            logits = last.new_empty(len(rows), last.shape[-1])
        logits[torch.tensor(members, device=device)] = last
    positions = lengths[:, None].clone()  # (B, 1): the position of each row's next token
    while True:
        token = yield logits
        logits = model(token[:, None], positions=positions, state=state).logits[:, -1].float()
        positions += 1


def _uncached(
    model: LanguageModel, rows: list[torch.Tensor], window: int | None = None
) -> Iterator[torch.Tensor]:
    """The fallback: every step reruns each group of equal-length rows on its whole prefix,
    or on its last ``window`` tokens (generation past the context)."""
    groups = {
        length: (members, torch.stack([rows[i] for i in members]))
        for length, members in _by_length(rows).items()
    }
    while True:
        logits = None
        for members, ids in groups.values():
            last = model(ids if window is None else ids[:, -window:]).logits[:, -1].float()
            if logits is None:
                logits = last.new_empty(len(rows), last.shape[-1])
            logits[torch.tensor(members, device=last.device)] = last
        token = yield logits
        groups = {
            length: (members, torch.cat([ids, token[members, None]], dim=1))
            for length, (members, ids) in groups.items()
        }


def _by_length(rows: list[torch.Tensor]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(len(row), []).append(i)
    return groups


def _copy_rows(dst: Any, src: Any, rows: torch.Tensor) -> None:
    """Write the rows of state ``src`` into rows ``rows`` of state ``dst`` (same structure)."""
    if isinstance(dst, torch.Tensor):
        dst.index_copy_(0, rows, src)
    elif isinstance(dst, dict):
        for key in dst:
            _copy_rows(dst[key], src[key], rows)
    elif isinstance(dst, (list, tuple)):
        for d, s in zip(dst, src):
            _copy_rows(d, s, rows)


# ==================================================================== checks
def _prompts(idx: Prompts) -> tuple[list[torch.Tensor], bool, bool]:
    """The prompts as 1-d long tensors, whether ``idx`` was a tensor, and whether it was 1-d."""
    if isinstance(idx, torch.Tensor):
        if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dim() not in (1, 2):
            raise GenerationError(
                f"prompts must be token ids of shape (B, T) or (T,), got a {idx.dim()}-d "
                f"{idx.dtype} tensor"
            )
        squeeze = idx.dim() == 1
        batch = idx[None] if squeeze else idx
        if batch.shape[0] == 0:
            raise GenerationError("no prompt given (the batch is empty)")
        return [row.long() for row in batch], True, squeeze
    if isinstance(idx, (str, bytes)):
        raise GenerationError(
            "prompts must be token ids, not text", hint="encode the text with the tokenizer"
        )
    if not isinstance(idx, Iterable):
        raise GenerationError(
            f"prompts must be token ids of shape (B, T) or (T,), or a list of prompts, got "
            f"{type(idx).__name__}"
        )
    rows = list(idx)
    if not rows:
        raise GenerationError("no prompt given (the list is empty)")
    out = []
    for i, row in enumerate(rows):
        try:
            tensor = torch.as_tensor(row)
        except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: as_tensor(None)
            raise GenerationError(f"prompt {i} is not a sequence of token ids: {exc}") from None
        if tensor.dim() != 1 or tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
            if tensor.numel() == 0 and tensor.dim() == 1:
                tensor = tensor.long()
            else:
                raise GenerationError(f"prompt {i} is not a sequence of token ids")
        out.append(tensor.long())
    return out, False, False


def _check_prompt(model: LanguageModel, i: int, row: torch.Tensor) -> torch.Tensor:
    which = f"prompt {i}"
    if row.numel() == 0:
        raise GenerationError(
            f"{which} is empty", hint="give at least one token (e.g. a beginning-of-text id)"
        )
    vocab = model.config.vocab
    bad = ((row < 0) | (row >= vocab)).nonzero()
    if len(bad):
        at = int(bad[0])
        raise GenerationError(
            f"{which} holds unknown token id {int(row[at])} at position {at}",
            hint=f"token ids of this model are 0 ... {vocab - 1}",
        )
    if len(row) > model.config.context:
        raise GenerationError(
            f"{which} has {len(row)} tokens, longer than the model's context of "
            f"{model.config.context}",
            hint="shorten the prompt (keep its last tokens) or use a model with a longer context",
        )
    return row


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_options(
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    greedy: Any = False,
    generator: Any = None,
) -> None:
    if not _is_int(max_new_tokens):
        raise GenerationError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens must be at least 0, got {max_new_tokens}")
    if not _is_real(temperature) or not 0 <= temperature < math.inf:
        raise GenerationError(f"temperature must be a finite number ≥ 0, got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise GenerationError(f"top_k must be an integer ≥ 1, got {top_k!r}")
    if top_p is not None and (not _is_real(top_p) or not 0 < top_p <= 1):
        raise GenerationError(f"top_p must be a number in (0, 1], got {top_p!r}")
    if not isinstance(greedy, bool):
        raise GenerationError(f"greedy must be True or False, got {greedy!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise GenerationError(
            f"generator must be a torch.Generator, got {type(generator).__name__}",
            hint="e.g. torch.Generator().manual_seed(0)",
        )


def _stop_ids(stop: int | Iterable[int] | None) -> set[int]:
    if stop is None:
        return set()
    if isinstance(stop, torch.Tensor):
        if stop.dtype.is_floating_point or stop.dtype == torch.bool:
            raise GenerationError(f"stop must hold token ids, got a {stop.dtype} tensor")
        return {int(s) for s in stop.flatten().tolist()}
    items = [stop] if not isinstance(stop, Iterable) or isinstance(stop, (str, bytes)) else stop
    ids = list(items)
    if not all(_is_int(s) for s in ids):
        raise GenerationError(f"stop must be a token id or token ids, got {stop!r}")
    return set(ids)


def absolute_positions(model: LanguageModel) -> str | None:
    """The kind of absolute position embeddings the model adds (``"learned"``,
    ``"sinusoidal"``), which give no meaning to a cropped window; None for rotary or
    position-free models, which continue past the context by cropping it."""
    for module in model.modules():
        kind = getattr(module, "pos_kind", None)
        if kind in ("learned", "sinusoidal"):
            return str(kind)
    return None


def _check_model(model: LanguageModel) -> None:
    """A model generates when no block needs a ``memory`` and every component that mixes
    positions is causal (else its earlier outputs would change with later tokens)."""
    for block in model.blocks():
        graph = block.block_graph
        if any("memory" in spec.component.required_context for spec in call_specs(graph)):
            raise GenerationError(
                "this model cannot generate: it reads a memory (cross-attention) that "
                "generation does not provide",
                hint="call the model directly with memory=...",
            )
        where = noncausal_call(graph)
        if where:
            raise GenerationError(
                f"this model cannot generate: {where} is not causal, so its outputs at "
                "earlier positions depend on later tokens",
                hint="use causal components (e.g. Attn with causal=true) for a language model",
            )


# ==================================================================== text
def _check_known(tokenizer: Any, prompt: str, encoding: Any) -> None:
    """Refuse a prompt with characters the tokenizer has no token for: the model would see
    ``<unk>`` in their place and continue something else than what was asked."""
    unk = getattr(tokenizer.model, "unk_token", None)
    unk_id = tokenizer.token_to_id(unk) if unk else None
    if unk_id is None or unk_id not in encoding.ids:
        return
    start, end = encoding.offsets[encoding.ids.index(unk_id)]
    text = prompt[start:end] or "?"
    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in dict.fromkeys(text))
    raise GenerationError(
        f"the prompt holds {shown} at character {start}, which the tokenizer has no token for",
        hint="the model never saw it in training: leave it out or replace it",
    )


def stream_text(
    model: LanguageModel, tokenizer: Any, prompt: str, max_new_tokens: int, **options: Any
) -> Iterator[str]:
    """The continuation of ``prompt`` as text pieces, one per token as it comes (a piece may be
    empty while a multi-byte character is incomplete). ``options`` as for ``generate``."""
    if not isinstance(prompt, str):
        raise GenerationError(f"the prompt must be text, got {type(prompt).__name__}")
    encoding = tokenizer.encode(prompt)
    ids = encoding.ids
    if not ids:
        raise GenerationError("the prompt is empty (it encodes to no tokens)")
    _check_known(tokenizer, prompt, encoding)
    new: list[int] = []
    shown = ""
    for token in stream(model, [ids], max_new_tokens, **options):
        new.append(int(token[0]))
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the rest
            continue
        yield text[len(shown) :]
        shown = text
    text = tokenizer.decode(new)
    if len(text) > len(shown):
        yield text[len(shown) :]


__all__ = [
    "GenerationError",
    "generate",
    "sample",
    "stream",
    "stream_text",
]
