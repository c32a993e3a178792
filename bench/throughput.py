"""Training throughput: tokens/s and model FLOP/s against this machine's matmul peak, measured in the same run.

    flock /tmp/cpu.lock python bench/throughput.py                       # preset and larger model, fp32 and bf16
    flock /tmp/cpu.lock python bench/throughput.py --threads 1,2 --compile

Model FLOPs per token are 6 x parameters (forward + backward of every matmul, the tied embedding
counted once as the output layer) plus 12 x n_layer x n_embed x block_size for attention scores
and mixing — the estimate of the PaLM paper, appendix B, also used by nanoGPT's MFU. The peak is the
best rate of a large square torch.mm loop; the machine is shared, so each figure is the fastest of
several timed chunks, and each row's peak is measured right before and after it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import GPT, GPTConfig  # noqa: E402
from train_bpe import PRESETS  # noqa: E402
from trainer import make_optimizer  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(dtype: torch.dtype, n: int = 2048, chunks: int = 5, flop_per_chunk: float = 2e10) -> float:
    """Best FLOP/s of an n x n torch.mm loop."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    reps = max(1, int(flop_per_chunk / (2 * n**3)))
    best = float("inf")
    for _ in range(chunks):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * n**3 / best


def flops_per_token(model: GPT) -> float:
    cfg = model.config
    return 6 * model.num_params() + 12 * cfg.n_layer * cfg.n_embed * cfg.block_size


def train_rate(model_args: dict, batch_size: int, precision: str, compile_model: bool,
               steps_per_chunk: int, chunks: int) -> tuple[float, GPT]:
    """Best tokens/s of full optimizer steps (forward, backward, clip, AdamW) on random tokens."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**model_args))
    step_model = torch.compile(model) if compile_model else model
    optimizer = make_optimizer(model, 1e-3, 0.1, "cpu")
    T, V = model.config.block_size, model.config.vocab_size
    x = torch.randint(0, V, (batch_size, T))
    y = torch.randint(0, V, (batch_size, T))
    dtype = DTYPES[precision]
    autocast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype != torch.float32 else contextlib.nullcontext

    def step():
        with autocast():
            _, loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (and compilation)
        step()
    best = float("inf")
    for _ in range(chunks):
        start = time.perf_counter()
        for _ in range(steps_per_chunk):
            step()
        best = min(best, (time.perf_counter() - start) / steps_per_chunk)
    return batch_size * T / best, model


def parse_model(text: str) -> tuple[dict, int]:
    """'n_layer,n_embed,n_head,block_size,batch_size,vocab_size' -> model args and batch size."""
    n_layer, n_embed, n_head, block, batch, vocab = (int(v) for v in text.split(","))
    return dict(n_layer=n_layer, n_embed=n_embed, n_head=n_head, block_size=block, vocab_size=vocab, dropout=0.0), batch


def main(argv=None) -> int:
    preset = PRESETS["cpu"]
    preset_spec = ",".join(str(preset[k]) for k in ("n_layer", "n_embed", "n_head", "block_size", "batch_size", "vocab_size"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=f"{preset_spec};6,768,12,256,8,2048",
                   help="';'-separated models as n_layer,n_embed,n_head,block_size,batch_size,vocab_size "
                        "(default: the cpu preset and a larger one)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (CPU autocast)")
    p.add_argument("--threads", default="0", help="comma-separated torch thread counts to try (0 = torch's default)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="also time each setting under torch.compile")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per timed chunk")
    p.add_argument("--chunks", type=int, default=3, help="timed chunks per setting; the fastest counts")
    args = p.parse_args(argv)

    default_threads = torch.get_num_threads()
    threads = [int(t) or default_threads for t in args.threads.split(",")]
    precisions = args.precisions.split(",")
    models = [parse_model(m) for m in args.models.split(";")]
    # The machine is shared and its speed drifts: each row's peaks are measured just before and
    # just after it (the better of the two counts), and the header shows the best seen overall.
    peaks = {prec: 0.0 for prec in {"fp32", *precisions}}
    rows = []
    for model_args, batch in models:
        for prec in precisions:
            for n_threads in threads:
                for compiled in ([False, True] if args.compile else [False]):
                    before = {q: matmul_peak(DTYPES[q]) for q in peaks}  # at the full thread count
                    torch.set_num_threads(n_threads)
                    tok_s, model = train_rate(model_args, batch, prec, compiled, args.steps, args.chunks)
                    torch.set_num_threads(default_threads)
                    near = {q: max(before[q], matmul_peak(DTYPES[q])) for q in peaks}
                    peaks = {q: max(peaks[q], near[q]) for q in peaks}
                    rows.append((model_args, batch, model, prec, n_threads, compiled, tok_s, near))

    print(f"best matmul peak seen (2048 x 2048 torch.mm, {default_threads} threads): "
          + ", ".join(f"{prec} {peak / 1e9:.0f} GFLOP/s" for prec, peak in sorted(peaks.items())))
    print("\n| model (L x C, block, batch, vocab) | params | precision | threads | compile | tokens/s "
          "| model GFLOP/s | fp32 peak nearby | / fp32 peak | / same-dtype peak |\n"
          "|---|---:|---|---:|---|---:|---:|---:|---:|---:|")
    for model_args, batch, model, prec, n_threads, compiled, tok_s, near in rows:
        flops = flops_per_token(model) * tok_s
        vs_fp32 = f"{near['fp32'] / 1e9:.0f} | {flops / near['fp32']:.2f}"
        print(f"| {model_args['n_layer']} x {model_args['n_embed']}, {model_args['block_size']}, {batch}, "
              f"{model_args['vocab_size']} | {model.num_params() / 1e6:.2f}M | {prec} | {n_threads} | "
              f"{'yes' if compiled else 'no'} | {tok_s:,.0f} | {flops / 1e9:.1f} | {vs_fp32} | "
              f"{flops / near[prec]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
