"""Sampling speed: ours against transformers' generate on the same weights, the KV cache, and batches.

    flock /tmp/cpu.lock python bench/sample.py                      # random weights, the default (seed) config
    flock /tmp/cpu.lock python bench/sample.py --ckpt bpe_best.pt   # a trained checkpoint
    flock /tmp/cpu.lock python bench/sample.py --config 4,128,2,256,2092 --layout qwen3  # the preset's, input.txt

Speed does not depend on the weights, so without --ckpt a freshly initialised model is used. Every row
generates greedily after the same prompt, with the same threads; "same tokens" says whether a row's
tokens equal our fp32 KV-cache row's. transformers runs our own export (export_hf.py) of the weights.
Rows: (1) ours, KV cache, batch 1, weights in the decode layout as sample_bpe.py uses them on a CPU
(model.use_decode_layout); (2) transformers' generate, batch 1, its KV cache; (3) ours without the cache
(each step recomputes the window); (4) ours with bf16 weights (on CPUs with bf16 matmuls); (5) ours with
the weights in training's layout; (6) --batch samples as one batch vs (7) the same samples one after another.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import export_hf  # noqa: E402
from checkpoint import load_model, save_checkpoint  # noqa: E402
from cli import bf16_supported, resolve_device  # noqa: E402
from model import GPT, LLAMA_LAYOUT, GPTConfig, architecture, use_decode_layout  # noqa: E402

LAYOUTS = {"gpt2": {}, "llama": LLAMA_LAYOUT, "qwen3": {**LLAMA_LAYOUT, "qk_norm": True}}  # --layout's choices


def timed(steps) -> tuple[float, float, list[list[int]]]:
    """(seconds to the first token, seconds in all, tokens per row) of a generator of (B,) tensors."""
    start, first, rows = time.perf_counter(), None, None
    for token in steps:
        values = token.tolist()  # reading the values waits for the device, so the clock is honest
        rows = [[v] for v in values] if rows is None else [r + [v] for r, v in zip(rows, values)]
        first = first if first is not None else time.perf_counter() - start
    return first, time.perf_counter() - start, rows


def ours(model, prompt, new, use_cache=True):
    return timed(model.generate(prompt, new, temperature=0.0, use_cache=use_cache))


def sequential(model, prompt, new, n):
    """n samples one after another (greedy: the same tokens as the batch, so only the time differs)."""
    start, rows, first = time.perf_counter(), [], None
    for _ in range(n):
        f, _, r = ours(model, prompt, new)
        first = first if first is not None else f
        rows += r
    return first, time.perf_counter() - start, rows


def huggingface(hf_model, prompt, new):
    """transformers' generate, greedy, with its cache; a streamer would add overhead, so none is used."""
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                do_sample=False, use_cache=True, pad_token_id=0)
    total = time.perf_counter() - start
    return None, total, [out[0, prompt.size(1):].tolist()]


def export_for_hf(model, folder: Path):
    """Our export of these weights, loaded by transformers: the same weights in its GPT2LMHeadModel."""
    import transformers
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(model.config.vocab_size - 1)} | {"<eos>": model.config.vocab_size - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))  # export needs a tokenizer; speed does not
    ckpt = folder / "model.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": model.config.__dict__,
                           "tokenizer_json": tok.to_str(), "special_ids": {"eos": model.config.vocab_size - 1}})
    export_hf.export(ckpt, folder / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder / "hf").eval()
    hf_model.generation_config.eos_token_id = None  # ours does not stop at <eos> either
    return hf_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, help="checkpoint from train_bpe.py (default: random weights)")
    p.add_argument("--config", default="6,384,6,256,8000",
                   help="without --ckpt: layers,width,heads,block,vocab (default: the seed's 6 x 384)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="gpt2",
                   help="without --ckpt: GPT-2's layout, Llama's (rope, rmsnorm, swiglu, no bias) or Qwen3's (Llama's "
                        "with QK-norm: --preset cpu's)")
    p.add_argument("--prompt_tokens", type=int, default=16, help="prompt length in tokens")
    p.add_argument("--new_tokens", type=int, default=200, help="tokens to generate (prompt + new <= block)")
    p.add_argument("--batch", type=int, default=8, help="samples for the batched vs sequential rows")
    p.add_argument("--repeats", type=int, default=3, help="runs of each row, interleaved; the median counts")
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
        layers, width, heads, block, vocab = map(int, args.config.split(","))
        layout = LAYOUTS[args.layout]
        model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads, n_embed=width,
                              dropout=0.0, **layout)).to(device).eval()
    cfg = model.config
    if args.prompt_tokens + args.new_tokens > cfg.block_size:
        raise SystemExit("prompt + new tokens must fit in block_size (transformers' GPT-2 cannot shift its context)")
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_tokens), device=device)
    print(f"model: {cfg.n_layer} layers x {cfg.n_embed}, block {cfg.block_size}, vocab {cfg.vocab_size}, "
          f"{architecture(cfg.__dict__)} layout, "
          f"{model.num_params() / 1e6:.2f}M params; device {device}, {torch.get_num_threads()} threads; "
          f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new (greedy), batch {args.batch}")

    rows = {"ours": lambda: ours(model, prompt, args.new_tokens),
            "recompute": lambda: ours(model, prompt, args.new_tokens, use_cache=False)}
    names = {"ours": "ours, KV cache, batch 1", "recompute": "ours, no cache (recompute), batch 1"}
    with tempfile.TemporaryDirectory() as work:
        try:
            hf_model = export_for_hf(model.cpu(), Path(work)).to(device)
            model.to(device)
            rows["hf"] = lambda: huggingface(hf_model, prompt, args.new_tokens)
            names["hf"] = "transformers generate, KV cache, batch 1"
        except ImportError:
            print("transformers or safetensors is not installed: no transformers row")
        if device.type == "cpu" and bf16_supported(device):
            bf16 = GPT(cfg).to(device).eval()
            bf16.load_state_dict(model.state_dict())
            bf16 = use_decode_layout(bf16.to(torch.bfloat16))
            rows["bf16"] = lambda: ours(bf16, prompt, args.new_tokens)
            names["bf16"] = "ours, KV cache, bf16 weights, batch 1"
        usual = GPT(cfg).to(device).eval()  # the weights in the layout training uses
        usual.load_state_dict(model.state_dict())
        rows["usual"] = lambda: ours(usual, prompt, args.new_tokens)
        names["usual"] = "ours, KV cache, usual weight layout, batch 1"
        if device.type == "cpu":
            use_decode_layout(model)  # what sample_bpe.py does on a CPU
        batch_prompt = prompt.repeat(args.batch, 1)
        rows["batch"] = lambda: ours(model, batch_prompt, args.new_tokens)
        rows["sequential"] = lambda: sequential(model, prompt, args.new_tokens, args.batch)
        names["batch"] = f"ours, {args.batch} samples as one batch"
        names["sequential"] = f"ours, {args.batch} samples one after another"
        ours(model, prompt, 8)  # warm up allocators and kernels
        results = {name: [] for name in rows}
        for _ in range(args.repeats):
            for name, run in rows.items():
                results[name].append(run())
    reference = results["ours"][0][2][0]
    print(f"\nmedian of {args.repeats} interleaved runs each\n"
          f"| path | tokens/s | total (s) | same tokens as ours |\n|---|---:|---:|---|")
    speed = {}
    for name, runs in results.items():
        total = sorted(r[1] for r in runs)[len(runs) // 2]
        tokens = runs[0][2]
        count = args.new_tokens * (args.batch if name in ("batch", "sequential") else 1)
        speed[name] = count / total
        same = all(row == reference for row in tokens)
        print(f"| {names[name]} | {speed[name]:,.1f} | {total:.2f} | {'yes' if same else 'NO'} |")
    if "hf" in speed:
        print(f"\nours / transformers at batch 1: {speed['ours'] / speed['hf']:.2f}x (goal >= 2x, same tokens)")
    print(f"batch of {args.batch} / one after another: {speed['batch'] / speed['sequential']:.2f}x; "
          f"KV cache / recompute: {speed['ours'] / speed['recompute']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
