"""Sampling speed: the KV cache against recomputing the whole context for every new token.

    flock /tmp/cpu.lock python bench/sample.py                      # random weights, the default config
    flock /tmp/cpu.lock python bench/sample.py --ckpt bpe_best.pt   # a trained checkpoint

Speed does not depend on the weights, so without --ckpt a freshly initialised model of the default
(seed) configuration is used: 6 layers x 384, block 256, vocabulary 8000. Both paths run the same
model on the same prompt; with greedy decoding they must emit the same tokens, which is checked.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checkpoint import load_model  # noqa: E402
from cli import resolve_device  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


@torch.no_grad()
def sliding_window(model: GPT, idx: torch.Tensor, new_tokens: int):
    """A nanoGPT-style loop: every step recomputes the last block_size tokens (no cache, no context shift)."""
    for _ in range(new_tokens):
        logits, _ = model(idx[:, -model.config.block_size :])
        token = logits[:, -1, :].argmax(dim=-1)  # (B,)
        yield token
        idx = torch.cat([idx, token[:, None]], dim=1)


def time_generation(model: GPT, prompt: torch.Tensor, new_tokens: int, path: str) -> dict:
    """Seconds to the first token, tokens/s over the whole run, and the (greedy) tokens produced."""
    tokens = []
    start = time.perf_counter()
    first = None
    if path == "sliding":
        steps = sliding_window(model, prompt, new_tokens)
    else:
        steps = model.generate(prompt, new_tokens, temperature=0.0, use_cache=path == "cache")
    for token in steps:
        tokens.append(int(token[0]))  # reading the value waits for the device, so the clock is honest
        if first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    return {"first_s": first, "tok_s": new_tokens / total, "total_s": total, "tokens": tokens}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, help="checkpoint from train_bpe.py (default: random weights, seed config)")
    p.add_argument("--prompt_tokens", type=int, default=16, help="prompt length in tokens")
    p.add_argument("--new_tokens", type=int, default=500, help="tokens to generate")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each path, interleaved; the fastest counts (the machine is shared and noisy)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto, ...")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    if args.ckpt:
        model, *_ = load_model(args.ckpt, device)
    else:
        model = GPT(GPTConfig(dropout=0.0)).to(device).eval()
    cfg = model.config
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_tokens), device=device)
    print(f"model: {cfg.n_layer} layers x {cfg.n_embed}, block {cfg.block_size}, vocab {cfg.vocab_size}, "
          f"{model.num_params() / 1e6:.2f}M params; device {device}, {torch.get_num_threads()} threads; "
          f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new (greedy)")

    paths = {"cache": "KV cache (generate)", "recompute": "full recompute (generate, use_cache=False)",
             "sliding": "full recompute, sliding window (seed-style loop)"}
    time_generation(model, prompt, 8, "cache")  # warm up allocators and kernels
    runs = {path: [] for path in paths}
    for _ in range(args.repeats):
        for path in paths:
            runs[path].append(time_generation(model, prompt, args.new_tokens, path))
    best = {path: min(runs[path], key=lambda r: r["total_s"]) for path in paths}
    first = {path: min(r["first_s"] for r in runs[path]) for path in paths}
    print(f"\nfastest of {args.repeats} interleaved runs each\n"
          f"| path | tokens/s | first token (ms) | total (s) |\n|---|---:|---:|---:|")
    for path, name in paths.items():
        r = best[path]
        print(f"| {name} | {r['tok_s']:.1f} | {first[path] * 1000:.1f} | {r['total_s']:.2f} |")
    cached = best["cache"]
    print(f"\nspeed-up with the cache: {cached['tok_s'] / best['recompute']['tok_s']:.1f}x over the same "
          f"windows recomputed, {cached['tok_s'] / best['sliding']['tok_s']:.1f}x over the sliding-window loop "
          f"(goal >= 8x); cache and recompute give the same greedy tokens: "
          f"{'yes' if cached['tokens'] == best['recompute']['tokens'] else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
