"""``blockdsl generate``: continue a prompt with a trained model (a run, a checkpoint, or a
Hugging Face folder), streaming the tokens (``blockdsl.generate``)."""

from __future__ import annotations

import argparse
from typing import TextIO

from blockdsl.commands.options import Option, add_options, options_from

NAME = "generate"
HELP = "continue a prompt with a trained model, streaming the tokens"
DESCRIPTION = (
    "Continue a prompt with a training run's model (its newest checkpoint, or the one given) "
    "and tokenizer, or with a Hugging Face checkpoint folder (--from-hf), printing the tokens "
    "as they come. See docs/generation.md."
)
EXAMPLES = """\
blockdsl generate runs/tiny --prompt "Once upon a time"
blockdsl generate runs/tiny/checkpoints/step_0000200 --prompt "def " --greedy
blockdsl generate runs/tiny --prompt "The" --temperature 0.8 --top-k 50 --top-p 0.95 --seed 0
blockdsl generate runs/tiny --prompt "def " --num-samples 3 --seed 0 --threads 1
blockdsl generate --from-hf ./SmolLM-135M --prompt "The capital of France is"
"""

GENERATE = "blockdsl.generate:stream"  # where the sampling options are stated
SAMPLING = (
    Option("--temperature", "divide the logits by T", GENERATE, metavar="T"),
    Option("--top-k", "sample from the K most likely", GENERATE, metavar="K"),
    Option("--top-p", "nucleus: the top tokens of mass P", GENERATE, metavar="P"),
    Option("--greedy", "always take the most likely token", GENERATE),
    Option("--no-cache", "recompute the prefix every step", GENERATE, param="use_cache"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", nargs="?", metavar="RUN|CHECKPOINT", help="a run directory or a checkpoint"
    )
    parser.add_argument(
        "--from-hf", metavar="DIR", help="a Hugging Face folder with tokenizer.json"
    )
    parser.add_argument("--prompt", required=True, metavar="TEXT", help="the text to continue")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        metavar="N",
        help="tokens to generate (default: 128, or what the context leaves)",
    )
    add_options(parser, SAMPLING)
    parser.add_argument(
        "--num-samples",
        type=int,
        default=1,
        metavar="N",
        help="continue the prompt N times, one after the other (default: 1)",
    )
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="seed the sampling")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch's CPU threads (default: torch's choice; 1 is often faster for small models "
        "on a shared machine, see docs/training.md)",
    )


def run(args: argparse.Namespace, out: TextIO) -> int:
    from blockdsl.threads import cpu_threads

    with cpu_threads(args.threads):
        return _generate(args, out)


def _generate(args: argparse.Namespace, out: TextIO) -> int:
    import torch

    from blockdsl import checkpoint
    from blockdsl.generate import GenerationError, stream_text

    if bool(args.path) == bool(args.from_hf):
        raise GenerationError("give a run or checkpoint, or --from-hf DIR (one of them)")
    if args.num_samples < 1:
        raise GenerationError(f"--num-samples must be at least 1, got {args.num_samples}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    stop = None
    if args.from_hf:
        from blockdsl import hf

        model, tokenizer = hf.load_generator(args.from_hf, device=device)
        stop = hf.eos_ids(args.from_hf)
    else:
        model, tokenizer = checkpoint.load_generator(args.path, device=device)
    steps = args.max_new_tokens
    if steps is None:
        steps = max(0, min(128, model.config.context - len(tokenizer.encode(args.prompt).ids)))
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    for sample in range(args.num_samples):  # one generator: each sample continues its stream
        pieces = stream_text(
            model,
            tokenizer,
            args.prompt,
            steps,
            generator=generator,
            stop=stop,
            **options_from(args, SAMPLING),
        )
        first = next(pieces, "")  # bad prompts and options are reported before any output
        if sample:
            out.write(SAMPLE_SEPARATOR)
        out.write(args.prompt + first)
        out.flush()
        for piece in pieces:
            out.write(piece)
            out.flush()
        out.write("\n")
    return 0


SAMPLE_SEPARATOR = "---------------\n"  # between --num-samples samples, as nanoGPT prints
