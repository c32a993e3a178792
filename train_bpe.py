"""Train a byte-level BPE tokenizer and a GPT on your own text or code.

    python train_bpe.py --preset cpu                       # bundled Shakespeare, a few minutes on a laptop
    python train_bpe.py --data_dir ~/notes --use_cosine    # a folder of text and code, recursively
    torchrun --standalone --nproc_per_node=4 train_bpe.py --data_dir ~/notes   # 4 GPUs, one process each
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import math
import shlex
import signal
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import distributed
import metrics
import muon
import resume
import spm
import token_cache
from checkpoint import (
    CheckpointError, atomic_write, check_out_dir, check_writable, remove_stale_temps, rng_state, save_checkpoint,
)
from model import GPT, GPTConfig
from schedule import budget_spent, lr_factor, parse_duration
from stopping import GracefulStop, SkippedSteps, StopNow, TrainingDiverged, finite_weights

DEFAULT_DATA_FILE = Path(__file__).resolve().parent / "data" / "input.txt"
BEST_NAME, LAST_NAME = "bpe_best.pt", "mini_gpt_last.pt"
clock = time.perf_counter  # the training loop's clock; tests replace it to fake the passing of time

# Settings for a 2-core CPU, tuned one lever at a time with bench/quality.py (bench/RESULTS.md):
# 134 s of training, so the README's main command finishes in well under 5 minutes on any machine,
# with the cosine ending on time. Any flag given explicitly overrides its preset value.
PRESETS = {
    "cpu": dict(
        vocab_size=4096, n_layer=4, n_head=4, n_embed=128, block_size=256, dropout=0.0,
        batch_size=8, grad_accum_steps=1, max_steps=100_000, max_time=134.0, warmup_steps=100, lr=2e-3,
        optimizer="muon", cpu_bf16=True, eval_interval=250, eval_iters=20, use_cosine=True,
    ),
}

EXAMPLES = """examples:
  python train_bpe.py --preset cpu                            # bundled corpus, a few minutes on a CPU
  python train_bpe.py --data_file data/input.txt --use_cosine
  python train_bpe.py --data_dir ~/my-corpus --vocab_size 12000 --block_size 512 --use_cosine
  python train_bpe.py --resume                                # continue ./mini_gpt_last.pt where it stopped
  python train_bpe.py --resume out/mini_gpt_last.pt --max_steps 8000   # ... and train longer
  python train_bpe.py --preset cpu --tokenizer_type sentencepiece   # SentencePiece instead of byte-level BPE
  python train_bpe.py --plot_only metrics.jsonl                     # redraw loss.png from a run's metrics
  python -m torch.distributed.run --standalone --nproc_per_node=4 train_bpe.py --use_cosine   # torchrun, 4 GPUs
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default and keeps the examples' line breaks."""


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag in one line (not usage + message) and exits with code 2.

    Python 3.11's argparse names an unknown flag but does not guess what was meant; we add the closest one.
    """

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}{self.suggestion(message)} (see --help)\n")

    def suggestion(self, message: str) -> str:
        prefix = "unrecognized arguments: "
        if not message.startswith(prefix):
            return ""
        known = [s for action in self._actions for s in action.option_strings]
        hints = []
        for word in message[len(prefix):].split():
            flag = word.split("=", 1)[0]
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6) if flag.startswith("-") else []
            if close:
                hints.append((flag, close[0]))
        if len(hints) == 1:
            return f"; did you mean {hints[0][1]}?"
        return "".join(f"; {flag}: did you mean {match}?" for flag, match in hints)


def duration_arg(text: str) -> float | None:
    if text.strip() == "0":  # lets a user switch off the time budget a preset sets
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="train_bpe.py", description=__doc__.splitlines()[0], epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a set of defaults (cpu: small and quick)")

    g = p.add_argument_group("data")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--data_file", type=Path, help="one UTF-8 text file (default: the bundled data/input.txt)")
    src.add_argument("--data_dir", type=Path, help="a folder of .txt/.md/code files, searched recursively")
    g.add_argument("--tokenizer_type", choices=spm.TYPES, default="bpe",
                   help="tokenizer to train: byte-level BPE, or SentencePiece BPE (needs the sentencepiece extra)")
    g.add_argument("--tokenizer", type=Path,
                   help="reuse this tokenizer instead of training one: a tokenizer.json, or a SentencePiece .model")
    g.add_argument("--tokenizer_path", type=Path, default=Path("bpe/tokenizer.json"),
                   help="where a newly trained tokenizer is saved (.model instead of .json for SentencePiece; "
                        "a different existing file is kept: the new one gets a -1, -2, ... name)")
    g.add_argument("--overwrite_tokenizer", action="store_true",
                   help="replace a different tokenizer already at --tokenizer_path instead of using a new name")
    g.add_argument("--vocab_size", type=int, default=8000, help="BPE vocabulary size, specials included")
    g.add_argument("--tokenizer_train_bytes", type=int, default=data.DEFAULT_TOKENIZER_TRAIN_BYTES,
                   help="train the tokenizer on an even, deterministic sample of about this many bytes of a "
                        "bigger corpus (0 = all of it)")
    g.add_argument("--cache_dir", type=Path,
                   help="folder for the on-disk token cache, reused while the corpus and tokenizer are "
                        "unchanged (None: <out_dir>/token_cache)")
    g.add_argument("--verbose", action="store_true", help="list every skipped or ignored file of the corpus and why")

    g = p.add_argument_group("model")
    g.add_argument("--n_layer", type=int, default=6, help="number of Transformer blocks")
    g.add_argument("--n_head", type=int, default=6, help="attention heads per block; must divide --n_embed")
    g.add_argument("--n_embed", type=int, default=384, help="width of the residual stream")
    g.add_argument("--block_size", type=int, default=256, help="context length in tokens")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout probability (0 disables it)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, default=128, help="sequences per micro-batch")
    g.add_argument("--grad_accum_steps", type=int, default=2,
                   help="micro-batches per optimizer step; effective batch = batch_size x this x processes")
    g.add_argument("--max_steps", type=int, default=5000, help="optimizer steps to train for")
    g.add_argument("--max_time", type=duration_arg, default=None,
                   help="stop after this much training time, seconds or H:MM:SS (the cosine then ends "
                        "on time); the run stops at whichever of --max_steps and --max_time comes first; 0 = off")
    g.add_argument("--warmup_steps", type=int, default=200, help="linear LR warmup steps (with --use_cosine)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    g.add_argument("--min_lr_factor", type=float, default=0.1, help="final LR as a fraction of --lr (cosine)")
    g.add_argument("--optimizer", choices=("adamw", "muon"), default="adamw",
                   help="adamw, or muon: Muon (orthogonalised momentum) for the blocks' weight matrices, "
                        "AdamW for embeddings, biases and gains; the model is the same either way")
    g.add_argument("--muon_lr", type=float, default=0.02,
                   help="peak learning rate of the Muon matrices (--lr stays the AdamW one); same schedule")
    g.add_argument("--weight_decay", type=float, default=0.1, help="AdamW weight decay, on matrices only")
    g.add_argument("--grad_clip", type=float, default=1.0, help="clip the gradient norm to this (0 = off)")
    g.add_argument("--use_cosine", action="store_true", help="warmup then cosine decay (else a constant LR)")
    g.add_argument("--max_bad_steps", type=int, default=20,
                   help="stop after this many optimizer steps in a row with a non-finite loss or gradient "
                        "(each such step is skipped)")

    g = p.add_argument_group("hardware")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision on CUDA (bf16 where supported, else fp16); on CPU see --cpu_bf16")
    g.add_argument("--cpu_bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast on CPU too, where the CPU has bf16 matmul instructions (AVX512-BF16, "
                        "AMX); several times the fp32 matmul rate there; ignored elsewhere")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the model (faster steps after a slow first one)")
    g.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N or mps; under torchrun auto, cuda (one GPU per process) or cpu")
    g.add_argument("--seed", type=int, default=42, help="random seed for weights and batches")

    g = p.add_argument_group("evaluation and output")
    g.add_argument("--eval_interval", type=int, default=250, help="evaluate and checkpoint every N steps")
    g.add_argument("--eval_iters", type=int, default=50, help="batches averaged per evaluation")
    g.add_argument("--out_dir", type=Path, default=Path("."),
                   help=f"folder for {BEST_NAME}, {LAST_NAME}, {metrics.METRICS_NAME} and {metrics.PLOT_NAME}")
    g.add_argument("--log_interval", type=int, default=10, help=f"append the train loss to {metrics.METRICS_NAME} every N steps")
    g.add_argument("--plot_only", type=Path, metavar="METRICS_FILE",
                   help=f"only redraw {metrics.PLOT_NAME} beside this metrics.jsonl, then exit (trains nothing)")
    g.add_argument("--resume", nargs="?", const="", metavar="PATH",
                   help=f"continue a run from its checkpoint (PATH left out: <out_dir>/{LAST_NAME}); flags not "
                        f"given are taken from it")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args(argv)
    if args.resume is None:  # a resumed run is checked once the checkpoint's flags are in (main)
        problem = check_args(args)
        if problem:
            parser.error(problem)
    return args


def check_args(args) -> str | None:
    """The first thing wrong with the flags, as a message, or None."""
    for name in ("vocab_size", "n_layer", "n_head", "n_embed", "block_size", "batch_size",
                 "grad_accum_steps", "max_steps", "eval_interval", "eval_iters", "max_bad_steps", "log_interval"):
        if getattr(args, name) < 1:
            return f"--{name} must be at least 1, got {getattr(args, name)}"
    if args.n_embed % args.n_head:
        return f"--n_embed {args.n_embed} is not divisible by --n_head {args.n_head}"
    if args.cache_dir is not None and args.cache_dir.exists() and not args.cache_dir.is_dir():
        return f"--cache_dir {args.cache_dir} is a file: pass a folder (it is created if missing)"
    if args.tokenizer_train_bytes < 0:
        return f"--tokenizer_train_bytes must be 0 (all) or more, got {args.tokenizer_train_bytes}"
    if args.vocab_size < data.MIN_VOCAB_SIZE:
        return f"--vocab_size {args.vocab_size} is too small: byte-level BPE needs at least {data.MIN_VOCAB_SIZE}"
    if not 0 <= args.dropout < 1:
        return f"--dropout must be in [0, 1), got {args.dropout}"
    for name in ("lr", "muon_lr"):
        if getattr(args, name) <= 0 or not math.isfinite(getattr(args, name)):
            return f"--{name} must be a positive number, got {getattr(args, name)}"
    if args.warmup_steps < 0 or args.warmup_steps > args.max_steps:
        return f"--warmup_steps {args.warmup_steps} must be between 0 and --max_steps {args.max_steps}"
    if not 0 <= args.min_lr_factor <= 1:
        return f"--min_lr_factor must be in [0, 1], got {args.min_lr_factor}"
    if args.weight_decay < 0 or args.grad_clip < 0:
        return "--weight_decay and --grad_clip must not be negative"
    try:
        resolve_device(args.device)
    except ValueError as exc:
        return str(exc)
    return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise ValueError(f"--device {name} is not available on this machine: use --device auto or cpu")
    return device


def amp_dtype(device_type: str, bf16_supported: bool, enabled: bool = True, cpu_bf16: bool = False) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA where supported, else fp16 (needs a GradScaler); None = off.

    On CPU only bf16 with cpu_bf16 and hardware support: fp16 or emulated bf16 there is slower than fp32.
    """
    if not enabled:
        return None
    if device_type == "cpu":
        return torch.bfloat16 if cpu_bf16 and bf16_supported else None
    if device_type != "cuda":
        return None
    return torch.bfloat16 if bf16_supported else torch.float16


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively on this device (CPU: oneDNN's check for AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:  # a private but long-standing oneDNN query; a build without it gets fp32
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device_type: str,
                   name: str = "adamw", muon_lr: float = 0.02):
    """AdamW with weight decay on matrices (weights, embeddings) only, not on biases or LayerNorm gains.

    name="muon": the Transformer blocks' weight matrices take Muon steps at muon_lr instead (muon.py).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if name == "muon":
        hidden = muon.hidden_matrices(model)
        groups = [
            {"params": [p for n, p in named if n in hidden], "weight_decay": weight_decay, "muon": True,
             "lr_scale": muon_lr / lr},
            {"params": [p for n, p in named if n not in hidden and p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0},
        ]
        return muon.MuonAdamW(groups, lr=lr)
    groups = [
        {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},
    ]
    # betas (0.9, 0.95) as GPT-3 and nanoGPT train; fused kernels only exist for CUDA tensors.
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device_type == "cuda")


def prepare_tokenizer(args, corpus: data.Corpus):
    """Loads --tokenizer and returns its path, or trains one and returns None for the path:
    save_tokenizer writes it once the dataset has passed its checks."""
    if args.tokenizer:
        tok = spm.load_any(args.tokenizer)
        if tok.token_to_id("<eos>") != data.EOS_ID:
            raise data.DataError(f"--tokenizer {args.tokenizer} lacks <eos> at id {data.EOS_ID}: train a new one")
        args.tokenizer_type = spm.tokenizer_type(tok)  # the log and checkpoint say what was really used
        return tok, args.tokenizer
    if args.tokenizer_type == "sentencepiece":
        return spm.train_sentencepiece(corpus, args.vocab_size, args.tokenizer_train_bytes), None
    return data.train_tokenizer(corpus, args.vocab_size, args.tokenizer_train_bytes), None


def save_tokenizer(args, tok) -> Path:
    """Saves at --tokenizer_path; a different tokenizer already there is kept unless --overwrite_tokenizer."""
    path = args.tokenizer_path
    if spm.tokenizer_type(tok) == "sentencepiece":
        path = path.with_suffix(".model")
    content = spm.tokenizer_file_bytes(tok)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.read_bytes() != content:
            if args.overwrite_tokenizer:
                print(f"{path} holds a different tokenizer; replacing it (--overwrite_tokenizer)")
            else:
                stem, n = path.with_suffix(""), 1
                while (alt := Path(f"{stem}-{n}{path.suffix}")).exists():
                    n += 1
                print(f"{path} holds a different tokenizer; keeping it and saving the new one as {alt} "
                      f"(--overwrite_tokenizer replaces it)")
                path = alt
        atomic_write(path, lambda f: f.write(content))
    except OSError as exc:
        raise data.DataError(
            f"--tokenizer_path {path} cannot be written ({exc.strerror or exc}): pick another path"
        ) from None
    return path


def checkpoint_bytes(args) -> int:
    """About how big one checkpoint of this run will be: fp32 weights, AdamW's two moments, the tokenizer.

    Counted from the GPT-2 layout (tied embeddings; per block 12·C² weights and 13·C biases and gains)
    rather than by building the model, which is slow for a large one.
    """
    C = args.n_embed
    params = (args.vocab_size + args.block_size) * C + args.n_layer * (12 * C * C + 13 * C) + 2 * C
    return 3 * 4 * params + 100 * args.vocab_size


@torch.no_grad()
def estimate_loss(model, token_data, batch_size, eval_iters, device, autocast, seed) -> dict:
    """Mean loss on eval_iters random batches of each split (the same batches at every evaluation)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for split in ("train", "val"):
        losses = []
        for _ in range(eval_iters):
            x, y = token_data.get_batch(split, batch_size, gen)
            with autocast():
                _, loss = model(x.to(device), y.to(device))
            losses.append(loss.item())
        out[split] = float(np.mean(losses))
    model.train()
    return out


@torch.no_grad()
def evaluate_stream(model, tokens: np.ndarray, batch_size: int, device, autocast=contextlib.nullcontext) -> float:
    """Mean loss (nats) of predicting every token of the stream after the first, each exactly once.

    The stream is cut into non-overlapping windows of block_size (the last one shorter), so the
    figure covers the whole split, unlike estimate_loss's random batches; each window starts
    without context, as in nanoGPT's and llm.c's validation.
    """
    model.eval()
    block = model.config.block_size
    total, count = 0.0, 0
    starts = list(range(0, len(tokens) - 1, block))
    full = [s for s in starts if s + block + 1 <= len(tokens)]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[s] for s in starts[len(full):]]  # the shorter tail window
    for group in tqdm(batches, desc="evaluating", unit=" batches", leave=False):
        length = min(block, len(tokens) - 1 - group[0])
        blocks = torch.from_numpy(np.stack([tokens[s : s + length + 1] for s in group]).astype(np.int64))
        x, y = blocks[:, :-1].to(device), blocks[:, 1:].to(device)  # (B, T) each
        with autocast():
            logits, _ = model(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train()
    return total / max(count, 1)


def prepare_data(args, world: distributed.World, resume_state: dict | None):
    """Corpus → tokenizer → token cache, checked against a resumed run: (tok, tok_path, token_data, fingerprint)."""
    # Under torchrun rank 0 prepares the data first; the other ranks wait here for the path of the tokenizer
    # it saved, then read the same files: that tokenizer and the token cache it built, which they find valid
    # and reuse. (If rank 0 fails, torchrun stops the ranks still waiting.)
    main_tok_path = None if world.is_main else Path(world.wait_for_main())
    data_file = args.data_file if args.data_file or args.data_dir else DEFAULT_DATA_FILE
    corpus = data.scan_corpus(data_file=data_file, data_dir=args.data_dir)
    print(corpus.summary())
    if args.verbose:
        for path, reason in corpus.skipped_files:
            print(f"  {reason}: {path}")
    if resume_state is not None:
        tok, tok_path = resume.checkpoint_tokenizer(args, resume_state)
    elif main_tok_path is not None:
        tok, tok_path = load_rank_tokenizer(main_tok_path), main_tok_path
    else:
        tok, tok_path = prepare_tokenizer(args, corpus)
    # A new cache replaces the old one only if these checks pass: a mistyped corpus keeps the right cache.
    cache_dir = args.cache_dir or args.out_dir / "token_cache"
    with token_cache.reuse_or_encode(corpus, tok, cache_dir) as cache:
        if not world.is_main and not cache.reused:  # rank 0 has just built it: we must be on other storage
            raise data.DataError(
                f"the token cache rank 0 built in {cache_dir} is not valid for this rank ({cache.reason}): "
                f"on several nodes, put --out_dir (or --cache_dir) on storage every node shares (same path)"
            )
        token_data = cache.token_data(args.block_size)
        fingerprint = resume.corpus_fingerprint(token_data)
        if resume_state is not None and fingerprint != resume_state["corpus_fingerprint"]:
            flag, where = ("--data_dir", args.data_dir) if args.data_dir else ("--data_file", data_file)
            raise CheckpointError(
                f"{flag} {where} is not the corpus --resume {args.resume} was trained on (its text changed): "
                f"pass the original corpus, or start a new run in another --out_dir"
            )
    print(cache.message())
    tok_path = tok_path or save_tokenizer(args, tok)
    if world.is_main:
        world.broadcast(str(tok_path))  # lets the other ranks go
    print(f"tokenizer: {tok.get_vocab_size()} tokens ({tok_path}); dataset: "
          f"{len(token_data.train) + len(token_data.val):,} tokens, "
          f"{len(token_data.train):,} train / {len(token_data.val):,} val")
    return tok, tok_path, token_data, fingerprint


def run(args, world: distributed.World, resume_state: dict | None = None, stop: GracefulStop | None = None) -> int:
    stop = stop or GracefulStop()
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also copies rank 0's)
    device = world.device
    if world.is_main:
        # Fail now, not after an hour of training: room for best + last + the temporary file of a save.
        check_out_dir(args.out_dir, 3 * checkpoint_bytes(args), names=(BEST_NAME, LAST_NAME))
        if resume_state is None and args.tokenizer is None:
            check_writable(args.tokenizer_path.parent, "--tokenizer_path", args.tokenizer_path)
        for stale in remove_stale_temps(args.out_dir, (BEST_NAME, LAST_NAME)):
            print(f"removed {stale}, left by a run that was killed while saving")

    tok, tok_path, token_data, fingerprint = prepare_data(args, world, resume_state)

    config = GPTConfig(
        vocab_size=tok.get_vocab_size(), block_size=args.block_size, n_layer=args.n_layer,
        n_head=args.n_head, n_embed=args.n_embed, dropout=args.dropout,
    )
    raw_model = GPT(config).to(device)
    model = torch.compile(raw_model) if args.compile else raw_model  # checkpoints save raw_model
    model = world.wrap(model)  # DDP under torchrun (averages gradients across ranks); unchanged otherwise
    if world.rank:  # other dropout masks on every rank; rank 0 keeps the stream of a single process
        torch.manual_seed(world.rank_seed(args.seed))
    optimizer = make_optimizer(raw_model, args.lr, args.weight_decay, device.type, args.optimizer, args.muon_lr)
    dtype = amp_dtype(device.type, bf16_supported(device), args.amp, args.cpu_bf16)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def autocast():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~free speed on Ampere and later
        torch.backends.cudnn.allow_tf32 = True

    sequences_per_step = args.batch_size * args.grad_accum_steps * world.size
    tokens_per_step = sequences_per_step * args.block_size
    ranks = f" x {world.size} processes" if world.enabled else ""
    print(format_config(args))
    print(f"device: {device}, precision: {dtype or torch.float32}, parameters: {raw_model.num_params() / 1e6:.2f}M, "
          f"effective batch: {args.batch_size} x {args.grad_accum_steps}{ranks} = {sequences_per_step} "
          f"sequences ({tokens_per_step:,} tokens) per step")

    gen = torch.Generator().manual_seed(world.rank_seed(args.seed))  # each rank draws different batches
    start, best_val = 0, float("inf")
    if resume_state is not None:
        resume_state["rng"], note = world.rng_for_resume(resume_state, fresh=rng_state(gen))
        if note:
            print(f"note: {note}")
        start, best_val = resume.restore_training_state(resume_state, args.resume, raw_model, optimizer, scaler, gen)
    skipped = SkippedSteps(args.max_bad_steps)
    last_path = args.out_dir / LAST_NAME
    saved_step = start if resume_state is not None else None  # the step mini_gpt_last.pt holds
    log = metrics.MetricsLog(args.out_dir / metrics.METRICS_NAME if world.is_main else None)  # one writer
    log.write("start", step=start, tokens_per_step=tokens_per_step, config=vars_for_log(args))

    def save(path: Path, step: int) -> None:
        rngs = world.gather(rng_state(gen))  # every rank's random streams, so that a resume under DDP is exact
        if not world.is_main:  # every rank holds the same weights; one writer
            return
        state = {
            "model": raw_model.state_dict(),
            "config": asdict(config),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "world_size": world.size,
            "best_val_loss": best_val,
            "rng": rngs[0],
            **({"rng_ranks": rngs} if world.enabled else {}),
            "corpus_fingerprint": fingerprint,
            "skipped_steps": skipped.total,
            "train_time": clock() - t0,  # seconds trained so far, resumes included, for --max_time
            "args": vars_for_log(args),
            "tokenizer_path": str(tok_path),
            **spm.checkpoint_fields(tok),
        }
        try:
            save_checkpoint(path, state)
        except CheckpointError:
            bar.close()  # so the error line is not glued to the bar
            raise

    bar = tqdm(range(start, args.max_steps), initial=start, total=args.max_steps, desc="training",
               unit=" steps", dynamic_ncols=True)
    # Training time of earlier runs of this checkpoint counts against --max_time too.
    t0 = clock() - (resume_state.get("train_time", 0.0) if resume_state is not None else 0.0)
    t_start, done = clock(), start
    stop.arm()  # from here a first Ctrl-C lets the step finish and saves
    for step in bar:
        # Under torchrun every rank uses the same (slowest) clock, or their learning rates and stops would differ.
        factor = lr_factor(step, args.warmup_steps, args.max_steps, args.min_lr_factor, world.max(clock() - t0),
                           args.max_time)
        lr = args.lr * (factor if args.use_cosine else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro_step in range(args.grad_accum_steps):
            x, y = token_data.get_batch("train", args.batch_size, gen)
            if device.type == "cuda":
                x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
            else:
                x, y = x.to(device), y.to(device)
            with world.grad_sync(model, sync=micro_step == args.grad_accum_steps - 1):
                with autocast():
                    _, loss = model(x, y)
                loss_sum += loss.detach()
                # mean over the micro-steps here; DDP's all-reduce then averages over the ranks
                scaler.scale(loss / args.grad_accum_steps).backward()
        scaler.unscale_(optimizer)  # a no-op without fp16 scaling
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.grad_clip or math.inf)
        # A NaN/inf loss or gradient would poison the weights and Adam's moments: skip the step instead.
        loss_ok, grads_ok = torch.stack([loss_sum, grad_norm]).isfinite().tolist()  # one device sync
        loss_ok = world.all(loss_ok)  # gradients are averaged, losses are not: every rank skips together
        if skipped.record(loss_ok, grads_ok, scaler.is_enabled()):
            scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if skipped.diverged:
            bar.close()
            raise TrainingDiverged(
                f"training diverged: {skipped.in_a_row} steps in a row up to step {step + 1} had a non-finite "
                f"loss or gradient (--max_bad_steps {args.max_bad_steps}); "
                + (f"{last_path} (step {saved_step}) is intact: resume it with a lower --lr"
                   if saved_step is not None else "nothing was saved: start again with a lower --lr")
            )

        done = step + 1
        elapsed = world.max(clock() - t0)
        finished = budget_spent(done, args.max_steps, elapsed, args.max_time)
        tok_s = (done - start) * tokens_per_step / max(clock() - t_start, 1e-9)
        postfix = dict(loss=f"{loss_sum.item() / args.grad_accum_steps:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
        if skipped.total:
            postfix["skipped"] = skipped.total
        bar.set_postfix(postfix, refresh=False)
        seen = dict(step=done, tokens=done * tokens_per_step, elapsed=round(elapsed, 3), lr=lr, tok_s=round(tok_s, 1))
        if done % args.log_interval == 0:
            log.write("train", **seen, loss=loss_sum.item() / args.grad_accum_steps)
        if done % args.eval_interval == 0 or finished:
            losses = estimate_loss(model, token_data, args.batch_size, args.eval_iters, device, autocast,
                                   world.rank_seed(args.seed + 1))
            losses = {split: world.mean(loss) for split, loss in losses.items()}  # every rank agrees on "best"
            bpb = data.bits_per_byte(losses["val"], len(token_data.val), token_data.val_bytes)
            is_best = math.isfinite(losses["val"]) and losses["val"] < best_val  # a NaN model is never "best"
            best_val = min(best_val, losses["val"]) if is_best else best_val
            tqdm.write(f"step {done}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                       f"val ppl {math.exp(min(losses['val'], 700)):.2f}, val bits/byte {bpb:.3f}"
                       + (" (best, saved)" if is_best else ""))
            log.write("eval", **seen, train_loss=losses["train"], val_loss=losses["val"],
                      val_ppl=math.exp(min(losses["val"], 700)), val_bpb=bpb)
            if finite_weights(raw_model):
                save(last_path, done)
                saved_step = done
                if is_best:
                    save(args.out_dir / BEST_NAME, done)
            else:
                tqdm.write(f"step {done}: the weights are not finite; not saving over {last_path}")
        signum = world.agreed_signal(stop.signum)  # under torchrun every rank stops after the same step
        if signum and done < args.max_steps:
            if saved_step != done and finite_weights(raw_model):
                save(last_path, done)
            bar.close()
            draw_plot(log.path)
            # The script as it was started (e.g. src/train_bpe.py), so the command works from the same folder.
            script = sys.argv[0] if Path(sys.argv[0]).name == "train_bpe.py" else "train_bpe.py"
            print(f"stopped by {signal.Signals(signum).name} at step {done}; continue with: "
                  f"{world.launcher()} {shlex.quote(script)} --resume {shlex.quote(str(last_path))}")
            # No rank leaves before rank 0 is done: torchrun stops the remaining ranks once one has exited.
            world.barrier()
            return 128 + signum  # as a shell reports a process ended by the signal: 130 for SIGINT, 143 SIGTERM
        if finished:
            break
    bar.close()
    draw_plot(log.path)
    if done < args.max_steps:
        print(f"time budget of {args.max_time:.0f}s spent after {done} of {args.max_steps} steps")
    if world.enabled:
        print(world.compare_weights(raw_model))
    print(f"done in {clock() - t0:.0f}s; best val loss {best_val:.4f}; "
          f"sample with: python sample_bpe.py --ckpt {args.out_dir / BEST_NAME}")
    return 0


def draw_plot(metrics_path: Path | None) -> None:
    """loss.png beside the metrics file, or one line on how to get it when matplotlib is missing."""
    if metrics_path is None:  # a DDP rank other than 0: it keeps no metrics
        return
    if not metrics.have_matplotlib():
        print(f"{metrics.PLOT_HINT}; the numbers are in {metrics_path}")
        return
    print(f"loss plot: {metrics.plot_metrics(metrics_path, metrics_path.with_name(metrics.PLOT_NAME))}")


def format_config(args, width: int = 100) -> str:
    """The resolved flags as one block: a line per --help group, wrapped, unset flags left out."""
    values = vars_for_log(args)
    lines = ["config:"]
    for group in build_parser()._action_groups:
        items = [f"{a.dest}={values[a.dest]}" for a in group._group_actions
                 if a.dest in values and values[a.dest] is not None]
        if items:
            title = "general" if group.title in ("options", "optional arguments") else group.title
            lines += textwrap.wrap(" ".join(items), width, initial_indent=f"  {title + ':':<24}",
                                   subsequent_indent=" " * 26)
    return "\n".join(lines)


def vars_for_log(args) -> dict:
    """The resolved flags as plain values (paths as strings), for the log and the checkpoint."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def load_rank_tokenizer(path: Path):
    """The tokenizer rank 0 saved, as another rank reads it (on another node it must be on shared storage)."""
    if not path.is_file():
        raise data.DataError(
            f"cannot read the tokenizer rank 0 saved at {path}: on several nodes, put --out_dir, "
            f"--tokenizer_path and the corpus on storage every node shares (same path)"
        )
    return spm.load_any(path)


def load_resume_state(args, argv) -> dict | None:
    """The --resume checkpoint, with the flags not typed now taken from it (None without --resume)."""
    if args.resume is None:
        return None
    path = Path(args.resume) if args.resume else args.out_dir / LAST_NAME
    given = resume.explicit_flags(build_parser(), argv)
    state = resume.load_for_resume(args, path, given, resume.path_flags(build_parser()))
    problem = check_args(args)
    if problem:
        raise CheckpointError(f"{problem} (after taking the other flags from --resume {args.resume})")
    return state


def main(argv=None) -> int:
    rank = distributed.env_rank()  # set by torchrun; 0 for a single process
    with distributed.quiet(rank != 0):  # every rank parses the same flags: rank 0 reports a mistake
        args = parse_args(argv)
    if args.plot_only:
        return plot_only(args.plot_only)
    world = None
    with GracefulStop() as stop:
        try:
            with distributed.quiet(rank != 0):  # ... and reads the same checkpoint
                resume_state = load_resume_state(args, argv)
                world = distributed.setup(args.device, resolve_device)
            with world.quiet():  # rank 0 speaks for the job; the others print nothing unless they fail
                return run(args, world, resume_state, stop)
        except (data.DataError, CheckpointError, distributed.DistributedError, TrainingDiverged) as exc:
            # Before the process group exists, and for a diverged run, every rank fails alike: rank 0 reports.
            # Later, rank 0 has prepared the data before the others start, so another rank's error is its own.
            if rank == 0 or (world is not None and not isinstance(exc, TrainingDiverged)):
                where = f" on rank {rank}" if rank else ""
                print(f"train_bpe.py: error{where}: {exc}", file=sys.stderr)
            return 2
        except distributed.RankZeroFailed:
            return 2
        except StopNow as exc:
            if rank == 0:
                print(f"\ntrain_bpe.py: stopped at once by {exc}; files were left as they were", file=sys.stderr)
            return 128 + exc.signum
        finally:
            if world is not None:
                world.cleanup()


def plot_only(metrics_path: Path) -> int:
    try:
        if not metrics.have_matplotlib():
            raise metrics.MetricsError(f"--plot_only needs matplotlib: {metrics.PLOT_HINT}")
        draw_plot(metrics_path)
    except (metrics.MetricsError, OSError) as exc:
        print(f"train_bpe.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
