"""Score a checkpoint on your own text: tokens, bytes, nats per token, perplexity and bits per byte.

    python score_bpe.py --ckpt bpe_best.pt --data_dir ~/notes/held-out --per_file
    python score_bpe.py --ckpt bpe_best.pt --file chapter.txt --stride 128 --json

Bits per byte (total nats over the text's UTF-8 bytes, in bits) does not depend on the tokenizer, so it
compares checkpoints with different vocabularies, and this project with others. Each file is scored as
a document: the model sees the end-of-text token first (as between documents in training), then predicts
every token of the file, so the bytes counted are exactly the file's bytes.
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load (a second or two): leave without a traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import cli
import data
from checkpoint import CheckpointError, load_model
from evaluate import stream_nats
from files import OutputError

EXAMPLES = """examples:
  python score_bpe.py --ckpt bpe_best.pt --file data/input.txt
  python score_bpe.py --ckpt bpe_best.pt --data_dir ~/notes/held-out --per_file     # hardest files first
  python score_bpe.py --ckpt bpe_best.pt --text "To be, or not to be" --json
  python score_bpe.py --ckpt bpe_best.pt --file long.txt --stride 64                 # more context per token
"""


@dataclass
class Score:
    """Nats summed over the predicted tokens of some text, and how many tokens and bytes that text has."""

    name: str
    tokens: int = 0
    bytes: int = 0
    nats: float = 0.0

    def add(self, other: Score) -> None:
        self.tokens += other.tokens
        self.bytes += other.bytes
        self.nats += other.nats

    def report(self) -> dict:
        per_token = self.nats / self.tokens if self.tokens else math.nan
        return {"tokens": self.tokens, "bytes": self.bytes, "nats_per_token": per_token,
                "perplexity": math.exp(min(per_token, 700)) if self.tokens else math.nan,
                "bits_per_byte": data.bits_per_byte(per_token, self.tokens, self.bytes) if self.tokens else math.nan}


def build_parser() -> cli.OneLineParser:
    p = cli.OneLineParser(prog="score_bpe.py", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                          formatter_class=cli.HelpFormatter)
    p.add_argument("--ckpt", default="bpe_best.pt", help="checkpoint written by train_bpe.py")
    what = p.add_argument_group("text to score (one of)")
    what.add_argument("--file", type=Path, help="one UTF-8 text file")
    what.add_argument("--data_dir", type=Path, help="a folder, with the same file rules as training (--verbose lists "
                                                    "what was left out)")
    what.add_argument("--text", type=cli.utf8_text, help="a string given here")
    p.add_argument("--per_file", action="store_true", help="also list every file, hardest (most bits per byte) first")
    p.add_argument("--stride", type=cli.bounded_int(1, 10**6),
                   help="overlapping windows that advance this many tokens, so every token after the first window "
                        "sees at least block_size - stride tokens of context (default: block_size, no overlap, as "
                        "training's validation)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--batch_size", type=cli.bounded_int(1, 4096), default=16, help="windows per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--verbose", action="store_true", help="list the files of --data_dir that were left out and why")
    return p


def check_args(args) -> str | None:
    given = [flag for flag in ("file", "data_dir", "text") if getattr(args, flag) is not None]
    if len(given) != 1:
        return ("pass one of --file, --data_dir or --text" if not given else
                f"pass only one of --file, --data_dir or --text (got {', '.join('--' + g for g in given)})")
    if args.text == "":
        return "--text is empty: there is nothing to score"
    return cli.device_problem(args.device)


def encode_file(tok, path: str, eos: int, folder: str) -> tuple[np.memmap, int]:
    """The file's ids after one end-of-text token, and the UTF-8 bytes of its text (a byte order mark is not
    text). The ids go to a temporary file read through a memmap: a file of any size costs the memory of one
    piece (data.read_pieces), not of all its tokens."""
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".ids")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(np.array([eos], dtype=np.uint32).tobytes())
            count, num_bytes = 1, 0
            for piece in data.read_pieces(path):
                ids = np.array(tok.encode(piece, add_special_tokens=False).ids, dtype=np.uint32)
                f.write(ids.tobytes())
                count, num_bytes = count + len(ids), num_bytes + len(piece.encode("utf-8"))
        return np.memmap(tmp, dtype=np.uint32, mode="r", shape=(count,)), num_bytes
    finally:
        os.unlink(tmp)  # the memmap keeps the data alive until it is closed


def score_tokens(model, tokens: np.ndarray, name: str, num_bytes: int, args, device, advance) -> Score:
    """Scores every token after the first; advance(fraction of this text) moves the progress bar."""
    if len(tokens) < 2:  # an empty text: nothing to predict
        advance(1.0)
        return Score(name, 0, num_bytes, 0.0)
    nats, count = stream_nats(model, tokens, args.batch_size, device, stride=args.stride,
                              progress=lambda done, total: advance(done / total))
    return Score(name, count, num_bytes, nats)


def run(args) -> dict:
    device = cli.resolve_device(args.device)
    model, tok, specials, _ = load_model(args.ckpt, device)
    if args.stride is not None and args.stride > model.config.block_size:
        raise CheckpointError(f"--stride {args.stride} is larger than the model's context of "
                              f"{model.config.block_size}: pass at most {model.config.block_size}")
    total = Score("all")
    files = []
    if args.text is not None:
        ids = np.array([specials.eos, *tok.encode(args.text, add_special_tokens=False).ids], dtype=np.int64)
        size = len(args.text.encode("utf-8"))
        with tqdm(total=size, unit="B", unit_scale=True, desc="scoring", leave=False) as bar:
            total.add(score_tokens(model, ids, "--text", size, args, device, lambda f: bar.update(size * f)))
        return {**total.report(), "checkpoint": str(args.ckpt)}
    flags = ("--file", "--data_dir")
    corpus = (data.scan_corpus(data_file=args.file, flags=flags) if args.file
              else data.scan_corpus(data_dir=args.data_dir, flags=flags))
    if args.verbose:
        for path, why in corpus.skipped_files:
            print(f"  {why}: {path}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="score-") as work, \
            tqdm(total=corpus.total_bytes, unit="B", unit_scale=True, desc="scoring", leave=False) as bar:
        for path, size in zip(corpus.files, corpus.sizes):
            tokens, num_bytes = encode_file(tok, path, specials.eos, work)
            score = score_tokens(model, tokens, path, num_bytes, args, device, lambda f, n=size: bar.update(n * f))
            del tokens  # closes the memmap
            files.append(score)
            total.add(score)
    result = {**total.report(), "checkpoint": str(args.ckpt), "corpus": corpus.summary()}
    if args.per_file:
        ranked = sorted(files, key=lambda s: -s.report()["bits_per_byte"] if s.tokens else math.inf)
        result["files"] = [{"path": s.name, **s.report()} for s in ranked]
    return result


def print_table(result: dict) -> None:
    print(result.get("corpus", "text: 1 string"))
    print(f"{result['tokens']:,} tokens, {result['bytes']:,} bytes: {result['nats_per_token']:.4f} nats/token, "
          f"perplexity {result['perplexity']:.2f}, {result['bits_per_byte']:.4f} bits/byte")
    if "files" in result:
        print(f"\n{'bits/byte':>9}  {'nats/tok':>8}  {'tokens':>9}  {'bytes':>10}  file (hardest first)")
        for f in result["files"]:
            print(f"{f['bits_per_byte']:>9.4f}  {f['nats_per_token']:>8.4f}  {f['tokens']:>9,}  {f['bytes']:>10,}  "
                  f"{f['path']}")


def plain(value):
    """JSON has no NaN: an empty file's figures are null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cli.prepare_streams()
    args = build_parser().parse_checked(argv, check_args)
    try:
        with torch.inference_mode():
            result = run(args)
        if args.json:
            print(json.dumps(plain(result), indent=1))
        else:
            print_table(result)
    except (CheckpointError, data.DataError, OutputError) as exc:
        print(f"score_bpe.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nscore_bpe.py: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        cli.silence_stdout()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
