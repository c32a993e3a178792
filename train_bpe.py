"""Train a byte-level BPE tokenizer and a GPT on your own text or code.

    python train_bpe.py --preset cpu                       # bundled Shakespeare, a few minutes on a laptop
    python train_bpe.py --data_dir ~/notes --use_cosine    # a folder of text and code, recursively
    torchrun --standalone --nproc_per_node=4 train_bpe.py --data_dir ~/notes   # 4 GPUs, one process each
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load (a second or two): leave without a traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import argparse
import textwrap
from pathlib import Path

import cli
import data
import distributed
import metrics
import model
import pretrained
import resume
import schedule
import tokenizer
import trainer
from checkpoint import CheckpointError
from cli import bounded_int, duration, finite_float, seed_int
from files import OutputError, advice, reason
from prepare import prepare_data
from stopping import GracefulStop, StopNow, TrainingDiverged

# Settings for a 2-core CPU, tuned one lever at a time with bench/quality.py (bench/RESULTS.md):
# 134 s of training, so the README's main command finishes in well under 5 minutes on any machine,
# with the learning rate's decay ending on time. "Quality per second II" kept two levers that helped on
# Shakespeare and on Python code alike (median bits/byte on the held-out split, 134 s): the Llama layout
# (rotary positions, RMSNorm, SwiGLU, no biases; it still exports, as LlamaForCausalLM and GGUF llama) and
# a linear warmdown to 0 over the last 30% (wsd). Its vocabulary 8192 had won on a flattering score (the
# tokenizer had seen the held-out text); "Quality per second III", with a tokenizer that never saw it,
# found 4096 best on both corpora (Shakespeare: 2048 +0.008, 8192 +0.047; Python: 8192 +0.050).
# attn_dropout 0: a --dropout given with the preset acts on the residual stream only, which keeps a CPU step
# fast (attention dropout costs SDPA its fused kernel: ~1.7x the step) and scored better at 600 s on
# Shakespeare (2.174 against 2.201 with dropout 0.2; "Quality per second IV").
# QK-norm (RMSNorm on each head's queries and keys: Qwen3's layout, which exports as Qwen3ForCausalLM and GGUF
# qwen3) costs 12% of a 4 x 128 step and pays for it at every budget measured, on a slower CPU than the one
# above (~700 steps in 134 s): 134 s Shakespeare 2.120 against 2.192 (median of seeds 42-44, each seed won by
# 0.021-0.077), Python 2.172 against 2.174; 600 s Shakespeare 2.049 against 2.077, Python 1.502 against 1.572
# ("Quality per second XI"; --no-qk_norm takes it off). On that machine 30 minutes (35 passes) ties 600 s on
# Shakespeare within a seed's spread, with or without QK-norm and with dropout 0.2 or 0.3 ("XII").
# lr 3e-3 (AdamW's part: embeddings and gains; Muon's stays 0.02): QK-norm bounds the attention logits, and
# with it a higher rate pays. At 700 steps (134 s there) Shakespeare -0.014 and -0.024 (seeds 42, 43), Python
# -0.071; 4e-3 tied on Shakespeare and gave Python less, 6e-3 less on Shakespeare; Muon 0.03 tied ("XII").
# From 300 s the rows keep 2e-3: at 600 s 3e-3 scored 2.054 and 2.070 (seeds 42, 43) against 2.049 and 2.060,
# Python 1.504 against 1.502, and 300 s was not measured.
# Any flag given explicitly overrides its preset value, and its budget row's.
PRESETS = {
    "cpu": dict(
        vocab_size=4096, min_frequency=32, n_layer=4, n_head=2, n_embed=128, block_size=256, dropout=0.0,
        pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=True,
        batch_size=8, grad_accum_steps=1, max_steps=100_000, max_time=134.0, warmup_steps=100, lr=3e-3,
        lr_schedule="wsd", min_lr_factor=0.0, optimizer="muon", cpu_bf16=True, eval_interval=250, eval_iters=20,
        use_cosine=True, attn_dropout=0.0, weight_decay=0.8, batch_order="epochs",
    ),
}

# min_frequency 32: BPE stops merging at the first pair that occurs fewer than 32 times in the tokenizer's text, so
# tiny Shakespeare gets 2,092 tokens rather than 4096, and the 6 MB Python corpus the same 4096 as before (the
# same tokenizer, byte for byte: its 4096th merge still occurs more often). At 700 equal steps Shakespeare scored
# 2.100 and 2.094 against 2.126 and 2.117 (seeds 42, 43), and a step takes 0.91 of the time. A fixed 2048 did as
# well on Shakespeare (2.105, 2.090), but 4096 had beaten 2048 on code by 0.079 at 134 s ("III"), and at 700 steps
# Python's seeds spread too far to tell (2.174, 1.833 against 1.923, 2.024); 1536 and 3072 gained less on
# Shakespeare (2.125, 2.122). The rows keep it: the 300 s values at 1500 equal steps 2.077 and 2.083 against
# 2.095 and 2.088, the 600 s values at 1800 steps 2.030 and 2.021 against 2.031 and 2.048. bench/RESULTS.md,
# "Quality per second XIV".
# Two heads of 64 rather than four of 32, at 700 equal steps: Shakespeare 2.126 and 2.117 against 2.141 and
# 2.118 (seeds 42, 43), Python 1.923 and 2.024 against 2.025 and 2.067; one head of 128 did worse than two on
# both (2.152, 2.025). CPU attention is also faster with fewer, wider heads: a step takes 0.94 of the time.
# bench/RESULTS.md, "Quality per second XIII".
# Shuffled passes (batch_order "epochs") and weight decay 0.8 (on every matrix, Muon's too), at 1150 steps,
# seed 42: Shakespeare 2.094 against 2.139 with random windows and 0.6; Python 1.981 against 1.997 (seed 43:
# 2.012 against 2.037). Random windows cover a corpus unevenly: in 7 passes' worth of them a token is a target
# a Poisson(7) number of times, 3 or fewer for one token in 12 and 11 or more for one in 10; shuffled passes
# make it 7 for every token.
# Weight decay 0.6 had beaten 0.1 and 0.3 at 134 s on both corpora ("Quality per second VII"); 0.8 helped
# Python with either order (-0.022) and Shakespeare with random windows (-0.018). bench/RESULTS.md,
# "Quality per second VIII".
#
# A preset's rows for longer time budgets: (from this --max_time on, these values), in increasing order; no
# --max_time (0) takes every row. In 134 s on this CPU the preset passes over a corpus the size of tiny
# Shakespeare about 7 times; beyond that the 4 x 128 model memorises it (2.166 bits/byte at 134 s, 2.317 at
# 300 s, 2.530 at 600 s, with weight decay 0.1). Dropout 0.3 and weight decay 0.3 from the start held it off
# at 600 s (2.132) but cost the 6 MB Python corpus 0.11 (1.937 against 1.829), which makes fewer than 7
# passes. Dropout that starts after 7 passes (--dropout_after) keeps both: at 600 s with weight decay 0.6,
# Shakespeare 2.078 and Python 1.516 (where dropout never starts). Not below 300 s: dropout switched on in
# the last steps of a 134 s run, during the warmdown, cost one seed 0.03. bench/RESULTS.md, "Quality per
# second VI". With shuffled passes and weight decay 0.8 the 134 s preset scores better (2.096), and dropout
# 0.3 left 300 s behind it (2.108, 2.126 for seeds 42, 43); 0.2 gives 2.079 there ("Quality per second VIII").
# From 600 s a 4 x 192 model (3,200 steps in 600 s against 4,800) scores better on both corpora: Shakespeare
# 2.053 and 2.041 (seeds 42, 43) against 2.056 and 2.050, Python 1.472 against 1.486 ("Quality per second IX").
# At 30 minutes dropout 0.3 gave Shakespeare 2.018 and 2.032 (seeds 42, 43; 0.2 gave 2.079 for seed 42), better
# than at 600 s, but Python 1.537 (1.486 with 0.2), worse than at 600 s; without dropout Python scored 1.412
# (1.408 with the gate below). Dropout pays only where the model can memorise its corpus: Shakespeare
# has 0.24 training tokens per parameter of the 4 x 128 model and 0.12 of the 4 x 192, Python 1.2 and 0.63.
# So dropout only below 0.4 tokens per parameter (--dropout_below), a line between the two corpora where a
# model can hold its whole training text: a language model stores about 2 bits per parameter (Allen-Zhu and
# Li 2024, "Physics of Language Models: Part 3.3"), and at these scores a token holds 4.3 bits (Python) to 5.7
# (Shakespeare), so below 0.35-0.47 tokens per parameter ("Quality per second X").
# The 134 s preset's rate 3e-3 and two heads hold at 300 s too: at 1500 equal steps with the 300 s values,
# Shakespeare 2.095 and 2.088 (seeds 42, 43) against 2.078 and 2.103 with 2e-3 and four heads, Python 1.583
# against 1.643. The 4 x 192 model from 600 s keeps the rate 2e-3 it was measured with, and takes three heads of
# 64 rather than four of 48: at 1800 equal steps Shakespeare 2.031 and 2.048 against 2.048 and 2.069 (seeds 42,
# 43), Python 1.503 against 1.502, a step 0.97 of the time ("Quality per second XIII").
PRESET_HEAD_SIZE = 64

PRESET_BUDGETS = {
    "cpu": [
        (300.0, dict(dropout=0.2, dropout_after=7.0, dropout_below=0.4)),
        (600.0, dict(n_embed=192, n_head=3, lr=2e-3)),
        (1800.0, dict(dropout=0.3)),
    ],
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

# Upper limits that no sensible run reaches: a typo (an extra zero or three) is refused with the range,
# rather than failing later on memory or disk space.
MAX_VOCAB = 1_000_000
MAX_CONTEXT = 65_536
MAX_WIDTH = 16_384
MAX_COUNT = 10**9

# --distill_weight 0.8: a 4 x 128 student of the 10-minute row's model at 700 steps scored 2.0718, 2.0492, 2.0415
# and 2.0483 bits/byte on tiny Shakespeare with weights 0.3, 0.5, 0.8 and 1, and 1.7209 (0.5) against 1.6854 (0.8)
# on Python sources (bench/RESULTS.md, "Quality per second XVI").
# One table for --help and for the config block printed at start: (group, [(flag, argparse keywords)]).
FLAGS: list[tuple[str, list[tuple[str, dict]]]] = [
    ("general", [
        ("--preset", dict(choices=sorted(PRESETS), help="start from a set of defaults (cpu: small and quick)")),
    ]),
    ("data", [
        ("--data_file", dict(type=Path, help="one UTF-8 text file (default: the bundled data/input.txt)")),
        ("--data_dir", dict(type=Path, help="a folder of .txt/.md/code files, searched recursively")),
        ("--tokenizer_type", dict(choices=tokenizer.TYPES, default="bpe",
                                  help="tokenizer to train: byte-level BPE, or SentencePiece BPE (needs the "
                                       "sentencepiece extra)")),
        ("--tokenizer", dict(type=Path, help="reuse this tokenizer instead of training one: a tokenizer.json, "
                                             "or a SentencePiece .model")),
        ("--tokenizer_path", dict(type=Path, default=Path("bpe/tokenizer.json"),
                                  help="where a newly trained tokenizer is saved (.model instead of .json for "
                                       "SentencePiece; a different existing file is kept: the new one gets a "
                                       "-1, -2, ... name)")),
        ("--overwrite_tokenizer", dict(action="store_true", help="replace a different tokenizer already at "
                                                                 "--tokenizer_path instead of using a new name")),
        ("--vocab_size", dict(type=bounded_int(tokenizer.MIN_VOCAB_SIZE, MAX_VOCAB), default=8000,
                              help="most tokens in the vocabulary, specials included (it stops growing when "
                                   "the corpus offers no more merges)")),
        ("--min_frequency", dict(type=bounded_int(0, MAX_COUNT), default=0,
                                 help="byte-level BPE: merge only pairs of tokens that occur at least this often "
                                      "in the tokenizer's training text, so a small corpus gets fewer tokens than "
                                      "--vocab_size, each seen often enough to learn (0: merge up to --vocab_size)")),
        ("--tokenizer_train_bytes", dict(type=bounded_int(0, 2**62), default=data.DEFAULT_TOKENIZER_TRAIN_BYTES,
                                         help="train the tokenizer on an even, deterministic sample of about this "
                                              "many bytes of a bigger corpus (0 = all of it)")),
        ("--cache_dir", dict(type=Path, help="folder for the on-disk token cache, reused while the corpus and "
                                             "tokenizer are unchanged (default: <out_dir>/token_cache)")),
        ("--verbose", dict(action="store_true", help="list every skipped or ignored file of the corpus and why")),
    ]),
    ("model", [
        ("--n_layer", dict(type=bounded_int(1, 1000), default=6, help="number of Transformer blocks")),
        ("--n_head", dict(type=bounded_int(1, MAX_WIDTH), default=6,
                          help="attention heads per block; must divide --n_embed")),
        ("--n_embed", dict(type=bounded_int(1, MAX_WIDTH), default=384, help="width of the residual stream")),
        ("--block_size", dict(type=bounded_int(1, MAX_CONTEXT), default=256, help="context length in tokens")),
        ("--dropout", dict(type=finite_float, default=0.1, help="dropout probability (0 disables it)")),
        ("--attn_dropout", dict(type=finite_float, help="dropout on the attention weights (default: --dropout's, as "
                                "GPT-2); 0 keeps a CPU step fast: attention dropout costs SDPA its fused kernel")),
        ("--dropout_after", dict(type=finite_float, default=0.0, metavar="PASSES",
                                 help="train without dropout for this many passes over the training tokens, "
                                      "then with it (0: from the start); a model memorises only after several "
                                      "passes, and dropout before that only slows it down")),
        ("--dropout_below", dict(type=finite_float, default=0.0, metavar="TOKENS_PER_PARAM",
                                 help="a new run uses dropout only on a corpus of fewer training tokens per "
                                      "parameter than this, one the model can memorise; a larger corpus trains "
                                      "without it (0: on any corpus, as is a dropout above 0 you type without "
                                      "this flag; a resumed run keeps its own)")),
        ("--init_from", dict(metavar="SOURCE",
                             help="start from existing weights and fine-tune them on the corpus: one of our .pt "
                                  "checkpoints, a Hugging Face GPT-2 folder, or a hub name (gpt2, distilgpt2, ...; "
                                  "needs huggingface_hub and the network once); its shape and tokenizer are used")),
        ("--distill_from", dict(metavar="SOURCE",
                                help="distil a teacher: learn its next-token distributions as well as the text "
                                     "(knowledge distillation); a source as for --init_from, usually a bigger "
                                     "or longer-trained model; the run uses its tokenizer")),
        ("--distill_weight", dict(type=finite_float, default=0.8,
                                  help="with --distill_from: the share of each target that is the teacher's "
                                       "distribution rather than the next token of the text, in (0, 1]")),
        ("--pos_emb", dict(choices=model.POS_EMBS, default="learned",
                           help="positions: a learned table (GPT-2) or rotary embeddings (rope, as Llama)")),
        ("--rope_theta", dict(type=finite_float, default=10000.0, help="rotary base frequency (with --pos_emb rope)")),
        ("--norm", dict(choices=model.NORMS, default="layernorm", help="layernorm (GPT-2) or rmsnorm (Llama)")),
        ("--qk_norm", dict(action=argparse.BooleanOptionalAction, default=False,
                           help="RMSNorm on queries and keys before attention (Qwen3)")),
        ("--mlp", dict(choices=model.MLPS, default="gelu",
                       help="MLP: gelu (GPT-2), swiglu (Llama; same parameters) or relu2 (no standard tool runs it)")),
        ("--bias", dict(action=argparse.BooleanOptionalAction, default=True,
                        help="biases in linear layers and LayerNorms (GPT-2); --no-bias as Llama")),
        ("--tie_embeddings", dict(action=argparse.BooleanOptionalAction, default=True,
                                  help="the output layer shares the token embedding matrix")),
        ("--zero_init_proj", dict(action=argparse.BooleanOptionalAction, default=False,
                                  help="start the attention and MLP output projections at zero")),
        ("--logit_softcap", dict(type=finite_float, default=0.0,
                                 help="cap logits smoothly at +-this (0 = off; Llama and llama.cpp's llama do not)")),
    ]),
    ("optimisation", [
        ("--batch_size", dict(type=bounded_int(1, MAX_CONTEXT), default=128, help="sequences per micro-batch")),
        ("--grad_accum_steps", dict(type=bounded_int(1, MAX_CONTEXT), default=2,
                                    help="micro-batches per optimizer step; effective batch = batch_size x "
                                         "this x processes")),
        ("--max_steps", dict(type=bounded_int(1, MAX_COUNT), default=5000, help="optimizer steps to train for")),
        ("--max_time", dict(type=duration, default=None,
                            help="stop after this much training time, seconds or H:MM:SS (the cosine then ends "
                                 "on time); the run stops at whichever of --max_steps and --max_time comes "
                                 "first; 0 = off (default: off)")),
        ("--warmup_steps", dict(type=bounded_int(0, MAX_COUNT), default=200,
                                help="linear LR warmup steps (with --use_cosine); when not typed, at most a "
                                     "tenth of --max_steps")),
        ("--lr", dict(type=finite_float, default=1e-3, help="peak learning rate")),
        ("--min_lr_factor", dict(type=finite_float, default=0.1, help="final LR as a fraction of --lr (cosine)")),
        ("--optimizer", dict(choices=("adamw", "muon"), default="adamw",
                             help="adamw, or muon: Muon (orthogonalised momentum) for the blocks' weight "
                                  "matrices, AdamW for embeddings, biases and gains; the model is the same "
                                  "either way")),
        ("--muon_lr", dict(type=finite_float, default=0.02,
                           help="peak learning rate of the Muon matrices (--lr stays the AdamW one); same "
                                "schedule")),
        ("--weight_decay", dict(type=finite_float, default=0.1, help="AdamW weight decay, on matrices only")),
        ("--grad_clip", dict(type=finite_float, default=1.0, help="clip the gradient norm to this (0 = off)")),
        ("--use_cosine", dict(action="store_true", help="warmup then cosine decay (else a constant LR)")),
        ("--lr_schedule", dict(choices=schedule.LR_SCHEDULES, default="cosine",
                               help="after warmup (with --use_cosine): cosine decay to --min_lr_factor, or wsd: "
                                    "constant, then a linear warmdown to --min_lr_factor over the last "
                                    "--warmdown_fraction of the run")),
        ("--warmdown_fraction", dict(type=finite_float, default=0.3, help="share of the run the wsd warmdown takes")),
        ("--batch_order", dict(choices=data.BATCH_ORDERS, default="random",
                               help="random: independent random windows; epochs: every pass over the training "
                                    "tokens visits each of its non-overlapping windows once, in a new random order")),
        ("--max_bad_steps", dict(type=bounded_int(1, MAX_COUNT), default=20,
                                 help="stop after this many optimizer steps in a row with a non-finite loss or "
                                      "gradient (each such step is skipped)")),
    ]),
    ("hardware", [
        ("--amp", dict(action=argparse.BooleanOptionalAction, default=True,
                       help="mixed precision where the hardware does it natively: bf16 (else fp16) on CUDA, "
                            "bf16 on CPUs with bf16 matrix instructions; --no-amp trains in fp32")),
        ("--cpu_bf16", dict(action=argparse.BooleanOptionalAction, default=True,
                            help="the CPU half of --amp (AVX512-BF16, AMX; ignored on CPUs without them); "
                                 "--no-cpu_bf16 keeps a CPU run in fp32")),
        ("--compile", dict(action=argparse.BooleanOptionalAction, default=False,
                           help="torch.compile the model (faster steps after a slow first one)")),
        ("--device", dict(default="auto", help="auto, cpu, cuda, cuda:N or mps; under torchrun auto, cuda "
                                               "(one GPU per process) or cpu")),
        ("--seed", dict(type=seed_int, default=42, help="random seed for weights and batches")),
    ]),
    ("evaluation and output", [
        ("--eval_interval", dict(type=bounded_int(1, MAX_COUNT), default=250,
                                 help="evaluate and checkpoint every N steps")),
        ("--eval_iters", dict(type=bounded_int(1, MAX_COUNT), default=50, help="batches averaged per evaluation")),
        ("--early_stop", dict(type=bounded_int(0, MAX_COUNT), default=0,
                              help="end the run after this many evaluations in a row without a new best "
                                   "validation loss, saving as at any end (0 = off)")),
        ("--out_dir", dict(type=Path, default=Path("."),
                           help=f"folder for {trainer.BEST_NAME}, {trainer.LAST_NAME}, {metrics.METRICS_NAME} "
                                f"and {metrics.PLOT_NAME}")),
        ("--log_interval", dict(type=bounded_int(1, MAX_COUNT), default=10,
                                help=f"append the train loss to {metrics.METRICS_NAME} every N steps")),
        ("--plot_only", dict(type=Path, metavar="METRICS_FILE",
                             help=f"only redraw {metrics.PLOT_NAME} beside this metrics.jsonl, then exit "
                                  f"(trains nothing)")),
        ("--resume", dict(nargs="?", const="", metavar="PATH",
                          help=f"continue a run from its checkpoint (PATH left out: <out_dir>/{trainer.LAST_NAME}); "
                               f"flags not given are taken from it")),
    ]),
]

DESTS = [flag[2:] for _, group in FLAGS for flag, _ in group]
PATH_FLAGS = {flag[2:] for _, group in FLAGS for flag, kw in group if kw.get("type") is Path}


def build_parser() -> argparse.ArgumentParser:
    p = cli.OneLineParser(prog="train_bpe.py", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                          formatter_class=cli.HelpFormatter)
    for title, flags in FLAGS:
        group = p if title == "general" else p.add_argument_group(title)
        for flag, keywords in flags:
            group.add_argument(flag, **keywords)
    return p


def defaults(parser: argparse.ArgumentParser, typed: dict) -> dict:
    """Every flag's default value, the typed preset's values on top, then its rows for the --max_time in
    effect (the typed one, else the preset's; None, from --max_time 0, is no limit and takes every row)."""
    values = {d: parser.get_default(d) for d in DESTS}
    preset = typed.get("preset")
    if not preset:
        return values
    values |= PRESETS[preset]
    budget = typed.get("max_time", values["max_time"])
    for from_seconds, row in PRESET_BUDGETS[preset]:
        if budget is None or budget >= from_seconds:
            values |= row
    # The preset's heads are 64 wide ("Quality per second XIII"): a width you type gets as many heads as that
    # makes, where 64 divides it, rather than the head count the rows chose for their own width.
    width = typed.get("n_embed")
    if width and "n_head" not in typed and width % PRESET_HEAD_SIZE == 0:
        values["n_head"] = width // PRESET_HEAD_SIZE
    return values


def parse_args(argv=None) -> tuple[argparse.Namespace, dict]:
    """The command line parsed once: (the resolved flags, the flags the user typed)."""
    parser = build_parser()
    typed = cli.typed_flags(parser, argv, DESTS)
    if "data_file" in typed and "data_dir" in typed:
        parser.error("--data_file and --data_dir cannot be used together: one file, or one folder")
    if "resume" in typed and "init_from" in typed:
        parser.error("--resume and --init_from cannot be used together: --resume continues a run exactly, "
                     "--init_from starts a new run from existing weights")
    if "distill_weight" in typed and "distill_from" not in typed and "resume" not in typed:
        parser.error("--distill_weight needs --distill_from: the model whose predictions it weighs")
    args = argparse.Namespace(**(defaults(parser, typed) | typed))
    if args.tokenizer_type != "bpe" and "min_frequency" not in typed:
        args.min_frequency = 0  # a preset's value is for byte-level BPE; SentencePiece has no such setting
    if (typed.get("dropout") or typed.get("attn_dropout")) and "dropout_below" not in typed:
        args.dropout_below = 0.0  # a dropout the user typed is the one they want, on any corpus
    if "warmup_steps" not in typed and "resume" not in typed:  # a resumed run keeps its own schedule
        args.warmup_steps = schedule.fitted_warmup(args.warmup_steps, args.max_steps)
    if "resume" not in typed and "init_from" not in typed:  # those are checked once the source's flags are in
        problem = check_args(args)
        if problem:
            parser.error(problem)
    return args, typed


def check_args(args) -> str | None:
    """The first thing wrong with the flags together, as a message, or None (single values are checked
    by their argparse types)."""
    if args.n_embed % args.n_head:
        return f"--n_embed {args.n_embed} is not divisible by --n_head {args.n_head}: pass an --n_head that divides it"
    if args.cache_dir is not None and args.cache_dir.exists() and not args.cache_dir.is_dir():
        return f"--cache_dir {args.cache_dir} is a file: pass a folder (it is created if missing)"
    for name in ("dropout", "attn_dropout"):
        value = getattr(args, name)
        if value is not None and not 0 <= value < 1:
            return f"--{name} must be in [0, 1), got {value}"
    if args.min_frequency and args.tokenizer_type != "bpe":
        return (f"--min_frequency applies to byte-level BPE only: drop it with --tokenizer_type "
                f"{args.tokenizer_type}")
    for name in ("lr", "muon_lr"):
        if not 0 < getattr(args, name) <= 10:
            return f"--{name} must be a positive number up to 10, got {getattr(args, name)}"
    if args.warmup_steps > args.max_steps:
        return f"--warmup_steps {args.warmup_steps} must be between 0 and --max_steps {args.max_steps}"
    if not 0 < args.warmdown_fraction <= 1:
        return f"--warmdown_fraction must be in (0, 1], got {args.warmdown_fraction}"
    if not 0 <= args.min_lr_factor <= 1:
        return f"--min_lr_factor must be in [0, 1], got {args.min_lr_factor}"
    for name in ("weight_decay", "grad_clip", "dropout_after", "dropout_below"):
        if getattr(args, name) < 0:
            return f"--{name} must not be negative, got {getattr(args, name)}"
    if not 0 < args.distill_weight <= 1:
        return f"--distill_weight must be in (0, 1], got {args.distill_weight}"
    if args.lr * args.weight_decay >= 1:  # decoupled decay multiplies every weight by 1 - lr * weight_decay
        return (f"--weight_decay {args.weight_decay} with --lr {args.lr} would shrink every weight to zero or "
                f"below in one step: keep --lr x --weight_decay below 1 (0.1 is usual)")
    try:
        model.GPTConfig(**trainer.layout(args), n_head=args.n_head, n_embed=args.n_embed).check()
    except ValueError as exc:
        return str(exc).replace("config ", "--", 1)
    return cli.device_problem(args.device)


def format_config(args, width: int = 100) -> str:
    """The resolved flags as one block: a line per --help group, wrapped, unset flags left out."""
    values = trainer.plain_flags(args)
    lines = ["config:"]
    for title, flags in FLAGS:
        items = [f"{d}={values[d]}" for d in (f[2:] for f, _ in flags) if values.get(d) is not None]
        if items:
            lines += textwrap.wrap(" ".join(items), width, initial_indent=f"  {title + ':':<24}",
                                   subsequent_indent=" " * 26)
    return "\n".join(lines)


def load_resume(args, typed: dict) -> tuple[argparse.Namespace, resume.Resume | None]:
    """With --resume: the run's flags merged from the checkpoint, and the checkpoint. Else (args, None)."""
    if args.resume is None:
        return args, None
    path = resume.resume_path(args.resume, args.out_dir, trainer.LAST_NAME)
    merged, state, line = resume.load(path, defaults(build_parser(), {}), typed, PATH_FLAGS)
    problem = check_args(merged)
    if problem:
        raise CheckpointError(f"{problem} (after taking the other flags from --resume {path})")
    print(line)
    return merged, state


def load_init(args, typed: dict, resumed) -> tuple[argparse.Namespace, pretrained.Source | None]:
    """With --init_from (and no --resume): the source model, and the run's flags merged with it."""
    if not args.init_from or resumed is not None:  # a resumed run continues from its own checkpoint
        return args, None
    source = pretrained.load_source(args.init_from)
    merged, notes = pretrained.merged_flags(args, typed, source)
    problem = check_args(merged)
    if problem:
        raise CheckpointError(f"{problem} (with the settings of --init_from {args.init_from})")
    print("\n".join(notes))
    return merged, source


def load_teacher(args, typed: dict, resumed: resume.Resume | None,
                 source: pretrained.Source | None) -> tuple[argparse.Namespace, pretrained.Source | None]:
    """With --distill_from: the teacher, and the run's flags merged with it (its tokenizer)."""
    if not args.distill_from:
        return args, None
    gone = not Path(args.distill_from).expanduser().exists() and not pretrained.looks_like_hub_name(args.distill_from)
    if resumed is not None and "distill_from" not in typed and gone:
        raise pretrained.SourceError(f"--resume {resumed.path} learns from --distill_from {args.distill_from}, which "
                                     f"does not exist any more: add --distill_from with where that teacher is now")
    teacher = pretrained.load_source(args.distill_from, flag="--distill_from")
    decided = None  # the tokenizer the run already has, and whose it is
    if resumed is not None:
        decided = resume.checkpoint_tokenizer(args, resumed)[0], f"--resume {resumed.path}"
    elif source is not None:
        decided = source.tok, f"--init_from {source.name}"
    merged = pretrained.distill_flags(args, typed, teacher, decided)
    print(f"distill_from: {teacher.describe()}; its distributions are {args.distill_weight:g} of each target (the "
          f"training loss shown is against that mix, the validation loss against the text alone)")
    return merged, teacher


def train(args, resumed: resume.Resume | None, source: pretrained.Source | None, teacher: pretrained.Source | None,
          world: distributed.World, stop: GracefulStop) -> int:
    """Wiring: check outputs, prepare the data, build the run, train."""
    if world.is_main:
        trainer.check_outputs(args, trains_tokenizer=resumed is None and source is None and teacher is None
                              and args.tokenizer is None)
    start = source or teacher  # the model whose tokenizer a new run uses
    start_tok = (start.tok, start.tok_path) if start else None
    run_data = prepare_data(args, world, resumed, start_tok)
    if resumed is None:  # a resumed run keeps the dropout it started with
        trainer.fit_dropout_to_corpus(args, run_data, source)
    print(format_config(args))
    run, state = trainer.setup(args, world, run_data, resumed, source, teacher)
    return trainer.fit(run, state, stop)


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # GracefulStop takes over once the flags are read
    cli.prepare_streams()
    with cli.keep_going_stdout("train_bpe.py"):  # a closed pipe on stdout (`| head`) must not end a training run
        return run_main(argv)


def run_main(argv) -> int:
    rank = distributed.env_rank()  # set by torchrun; 0 for a single process
    with distributed.quiet(rank != 0):  # every rank parses the same flags: rank 0 reports a mistake
        args, typed = parse_args(argv)
    if args.plot_only:
        return plot_only(args.plot_only)
    world = None
    with GracefulStop() as stop:
        try:
            with distributed.quiet(rank != 0):  # ... and reads the same checkpoint
                args, resumed = load_resume(args, typed)
                args, source = load_init(args, typed, resumed)
                args, teacher = load_teacher(args, typed, resumed, source)
                world = distributed.setup(args.device, cli.resolve_device)
            with world.quiet():  # rank 0 speaks for the job; the others print nothing unless they fail
                return train(args, resumed, source, teacher, world, stop)
        except (data.DataError, CheckpointError, OutputError, distributed.DistributedError, TrainingDiverged) as exc:
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
    """--plot_only: redraws loss.png beside a metrics file."""
    png = metrics_path.with_name(metrics.PLOT_NAME)
    try:
        if not metrics.have_matplotlib():
            metrics.read_metrics(metrics_path)  # a bad path is named before the missing extra
            raise metrics.MetricsError(f"--plot_only needs matplotlib: {metrics.PLOT_HINT}")
        print(f"loss plot: {metrics.plot_metrics(metrics_path, png)}")
    except metrics.MetricsError as exc:
        print(f"train_bpe.py: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"train_bpe.py: error: cannot write {png} ({reason(exc)}): {advice(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
