"""Quality per second: train for a fixed wall-clock budget, then score the WHOLE held-out split in bits per byte.

    flock /tmp/cpu.lock python bench/quality.py                          # --preset cpu, 134 s of training
    flock /tmp/cpu.lock python bench/quality.py --label lr=3e-3 -- --lr 3e-3   # one lever changed

Everything after "--" is passed to train_bpe.py on top of --preset cpu. The budget covers the
training loop only (tokenizer training and encoding come before it). Bits per byte are computed
from every validation token (evaluate.evaluate_stream: non-overlapping windows), so runs with
different tokenizers and block sizes compare fairly; the figures on the reference runs in the
issue (char-level nanoGPT: 2.74 bits/char) are per byte too, as the corpus is ASCII.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import data  # noqa: E402
import token_cache  # noqa: E402
import tokenizer  # noqa: E402
import train_bpe  # noqa: E402
import trainer  # noqa: E402
from checkpoint import load_checkpoint, load_model  # noqa: E402
from evaluate import evaluate_stream  # noqa: E402
from prepare import DEFAULT_DATA_FILE  # noqa: E402
from schedule import parse_duration  # noqa: E402


def full_val_bits_per_byte(ckpt: Path, data_file: Path, cache_dir: Path, batch_size: int = 32) -> tuple[float, int]:
    """Bits per byte over every token of the run's validation split, and how many bytes that is."""
    model, tok, _, _ = load_model(ckpt, "cpu")
    corpus = data.scan_corpus(data_file=data_file)
    with token_cache.reuse_or_encode(corpus, tok, cache_dir) as cache:  # the training run's cache
        val = cache.token_data(model.config.block_size).val
        nats = evaluate_stream(model, val, batch_size, "cpu")
    val_bytes = int(tokenizer.byte_lengths(tok)[val[1:]].sum())  # the bytes of the predicted tokens
    return data.bits_per_byte(nats, len(val) - 1, val_bytes), val_bytes


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="134", help="training time, seconds or H:MM:SS (default 134)")
    p.add_argument("--data_file", type=Path, default=DEFAULT_DATA_FILE, help="corpus (90/10 split)")
    p.add_argument("--label", default="preset cpu", help="name of this run in the table")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what the budget counts: wall seconds, or this process's CPU seconds per thread "
                        "(the same on an idle machine; on a shared one, cpu keeps runs comparable)")
    p.add_argument("--log", type=Path, help="append the result as one JSON line to this file")
    p.add_argument("--prompt", default="ROMEO:", help="prompt for the printed sample")
    args = p.parse_args(own)

    with tempfile.TemporaryDirectory() as out:
        out = Path(out)
        # One evaluation at the end only: periodic evaluations would eat into the budget.
        train_argv = ["--preset", "cpu", "--data_file", str(args.data_file), "--out_dir", str(out),
                      "--tokenizer_path", str(out / "tokenizer.json"), "--max_time", args.budget,
                      "--max_steps", "1000000", "--eval_interval", "1000000", "--eval_iters", "2", *extra]
        if args.clock == "cpu":
            threads = torch.get_num_threads()
            trainer.clock = lambda: time.process_time() / threads  # the training loop's clock
        start, cpu_start = time.perf_counter(), time.process_time()
        code = train_bpe.main(train_argv)
        if code:
            return code
        wall = time.perf_counter() - start
        # CPU seconds we got per wall second per core: well below 1 means other processes took the cores.
        cpu_share = (time.process_time() - cpu_start) / (wall * torch.get_num_threads())
        ckpt = out / trainer.LAST_NAME
        state = load_checkpoint(ckpt)
        steps, run_args = state["step"], state["args"]
        tokens_seen = steps * run_args["batch_size"] * run_args["grad_accum_steps"] * run_args["block_size"]
        bpb, val_bytes = full_val_bits_per_byte(ckpt, args.data_file, out / "token_cache")

        model, tok, _, _ = load_model(ckpt, "cpu")
        gen = torch.Generator().manual_seed(1337)
        prompt = torch.tensor([tok.encode(args.prompt, add_special_tokens=False).ids])
        new = [int(t[0]) for t in model.generate(prompt, 200, temperature=0.8, top_k=80, generator=gen)]
        sample = tok.decode(prompt[0].tolist() + new)

    budget = parse_duration(args.budget)
    result = dict(label=args.label, extra=" ".join(extra), bits_per_byte=round(bpb, 4), steps=steps,
                  tokens_seen=tokens_seen, tokens_per_s=round(tokens_seen / budget), budget_s=budget,
                  clock=args.clock, wall_s=round(wall), cpu_share=round(cpu_share, 2), val_bytes=val_bytes)
    print("\n| lever | setting | bits/byte (full val) | steps | tokens seen | tokens/s | CPU share |\n"
          "|---|---|---:|---:|---:|---:|---:|")
    print(f"| {args.label} | {result['extra'] or '-'} | {bpb:.3f} | {steps:,} | {tokens_seen:,} | "
          f"{result['tokens_per_s']:,} | {cpu_share:.2f} |")
    print(f"\nwhole validation split: {val_bytes:,} bytes; training budget {budget:.0f}s ({args.clock} clock), "
          f"script wall time {wall:.0f}s; goal <= 2.12 bits/byte\n\nsample ({args.prompt!r}, temperature 0.8, top_k 80):\n{sample}")
    if args.log:
        with args.log.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return 0 if math.isfinite(bpb) else 1


if __name__ == "__main__":
    sys.exit(main())
