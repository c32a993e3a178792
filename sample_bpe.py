"""Stream text from a checkpoint written by train_bpe.py.

    python sample_bpe.py --ckpt bpe_best.pt --prompt "ROMEO:" --temperature 0.8 --top_k 80
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load (a second or two): leave without a traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import argparse

import torch
from tqdm import tqdm

import cli
from checkpoint import CheckpointError, load_model
from cli import resolve_device

EXAMPLES = """examples:
  python sample_bpe.py --ckpt bpe_best.pt --prompt "ROMEO:" --temperature 0.8 --top_k 80
  python sample_bpe.py --ckpt bpe_best.pt --prompt "def train_model(" --temperature 0.7 --top_k 100
  python sample_bpe.py --ckpt bpe_best.pt --prompt "KING:" --temperature 0   # greedy, deterministic
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.OneLineParser(
        prog="sample_bpe.py", description=__doc__.splitlines()[0], epilog=EXAMPLES,
        formatter_class=cli.HelpFormatter,
    )
    p.add_argument("--ckpt", default="bpe_best.pt", help="checkpoint written by train_bpe.py")
    p.add_argument("--prompt", default="", type=cli.utf8_text, help="text to continue (empty: start from <bos>)")
    p.add_argument("--max_new_tokens", type=cli.bounded_int(1, 10**9), default=300, help="tokens to generate per sample")
    p.add_argument("--temperature", type=cli.finite_float, default=0.9,
                   help="randomness; 0 = always the likeliest token")
    p.add_argument("--top_k", type=cli.bounded_int(0, 10**9), default=80,
                   help="sample among the k likeliest tokens (0 = all)")
    p.add_argument("--top_p", type=cli.finite_float, default=1.0,
                   help="nucleus sampling: smallest set with this mass (1 = off)")
    p.add_argument("--num_samples", type=cli.bounded_int(1, 10**6), default=1,
                   help="how many samples to write, one after another")
    p.add_argument("--seed", type=cli.seed_int, default=1337, help="random seed (same seed, same text)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--stop_at_eos", action="store_true", help="end a sample at the end-of-document token")
    return p


def check_args(args) -> str | None:
    if args.max_new_tokens < 1:
        return f"--max_new_tokens must be at least 1, got {args.max_new_tokens}"
    if args.temperature < 0:
        return f"--temperature must be 0 (greedy) or more, got {args.temperature}"
    if args.top_k < 0:
        return f"--top_k must be 0 (off) or more, got {args.top_k}"
    if not 0 < args.top_p <= 1:
        return f"--top_p must be in (0, 1], got {args.top_p}"
    if args.num_samples < 1:
        return f"--num_samples must be at least 1, got {args.num_samples}"
    try:
        resolve_device(args.device)
    except ValueError as exc:
        return str(exc)
    return None


class StreamDecoder:
    """Turns token ids into text piece by piece, holding back an unfinished multi-byte character.

    Only the ids since the last finished piece are decoded, with the one before them as context (a
    tokenizer may decode an id differently at the start of a text): the cost per token stays constant
    however long the text grows.
    """

    MAX_PENDING = 16  # ids that never complete a character (invalid UTF-8) are let out after this many

    def __init__(self, tok):
        self.tok, self.ids, self.context = tok, [], 0  # ids[:context] were already emitted

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd") and len(self.ids) - self.context < self.MAX_PENDING:
            return ""  # a character whose bytes have not all arrived yet
        return self._emit(text)

    def flush(self) -> str:
        return self._emit(self.tok.decode(self.ids))

    def _emit(self, text: str) -> str:
        new = text[len(self.tok.decode(self.ids[: self.context])) :]
        self.ids, self.context = self.ids[-1:], min(len(self.ids), 1)
        return new


def run(args) -> int:
    device = resolve_device(args.device)
    model, tok, specials, _ = load_model(args.ckpt, device)
    prompt_ids = tok.encode(args.prompt, add_special_tokens=False).ids if args.prompt else [specials.start]
    block = model.config.block_size
    if len(prompt_ids) > block:
        raise CheckpointError(
            f"--prompt is {len(prompt_ids)} tokens, longer than the model's context of {block}: shorten it"
        )
    gen = torch.Generator(device=device).manual_seed(args.seed)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    # The text itself shows progress on a terminal; when stdout is a file, show a bar on stderr instead.
    show_bar = not sys.stdout.isatty()
    for n in range(args.num_samples):
        if n:
            sys.stdout.write("\n" + "-" * 40 + "\n")
        sys.stdout.write(args.prompt)
        decoder = StreamDecoder(tok)
        steps = model.generate(idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p, gen)
        for token in tqdm(steps, total=args.max_new_tokens, desc="sampling", unit=" tok", disable=not show_bar, leave=False):
            token_id = int(token[0])
            if args.stop_at_eos and token_id == specials.eos:
                break
            sys.stdout.write(decoder.push(token_id))
            sys.stdout.flush()
        sys.stdout.write(decoder.flush() + "\n")
        sys.stdout.flush()
    return 0


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C from here is a KeyboardInterrupt
    stdout_open = cli.prepare_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem:
        parser.error(problem)
    try:
        if not stdout_open:
            raise CheckpointError("stdout is closed, so the sample has nowhere to go: redirect it (> sample.txt)")
        return run(args)
    except CheckpointError as exc:
        print(f"sample_bpe.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while streaming: end the line, no traceback
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        cli.silence_stdout()
        return 0
    except OSError as exc:  # stdout cannot be written: a full disk, /dev/full
        if exc.filename is not None:  # not stdout: a genuine bug to report
            raise
        cli.silence_stdout()
        print(f"sample_bpe.py: error: cannot write the sample to stdout ({exc.strerror or exc})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
