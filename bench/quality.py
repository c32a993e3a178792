"""Quality per second: train for a fixed wall-clock budget, then score the WHOLE held-out split in bits per byte.

    flock /tmp/cpu.lock python bench/quality.py                          # --preset cpu, 134 s of training
    flock /tmp/cpu.lock python bench/quality.py --label lr=3e-3 -- --lr 3e-3   # one lever changed

Everything after "--" is passed to train_bpe.py on top of --preset cpu. The budget covers the
training loop only (tokenizer training and encoding come before it). Bits per byte are computed
from every validation token (evaluate.evaluate_stream: non-overlapping windows), so runs with
different tokenizers and block sizes compare fairly; the figures on the reference runs in the
issue (char-level nanoGPT: 2.74 bits/char) are per byte too, as the corpus is ASCII. train_bpe.py trains
the tokenizer on the text before the held-out split only (data.tokenizer_text_end says why).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
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


def full_val_bits_per_byte(ckpt: Path, corpus: data.Corpus, cache_dir: Path, batch_size: int = 32,
                           weights: dict | None = None) -> tuple[float, int]:
    """Bits per byte over every token of the run's validation split, and how many bytes that is.
    weights: parameters (by name) to score instead of the checkpoint's, e.g. an average of them."""
    model, tok, _, _ = load_model(ckpt, "cpu")
    if weights is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(weights[name])
    with token_cache.reuse_or_encode(corpus, tok, cache_dir) as cache:  # the training run's cache
        val = cache.token_data(model.config.block_size).val
        nats = evaluate_stream(model, val, batch_size, "cpu")
    val_bytes = int(tokenizer.byte_lengths(tok)[val[1:]].sum())  # the bytes of the predicted tokens
    return data.bits_per_byte(nats, len(val) - 1, val_bytes), val_bytes


def corpus_flags(args) -> list[str]:
    return ["--data_dir", str(args.data_dir)] if args.data_dir else ["--data_file", str(args.data_file)]


def reuse_flags(args, out: Path, extra: list[str]) -> tuple[list[str], Path]:
    """With --keep: flags that reuse a tokenizer and token cache kept from an earlier run of the same corpus
    and vocabulary (training a tokenizer and encoding a 6 MB corpus takes longer than some fixed-step runs).
    Returns (flags for train_bpe.py, the cache folder)."""
    if args.keep is None:
        return ["--tokenizer_path", str(out / "tokenizer.json")], out / "token_cache"
    flags = train_bpe.parse_args(["--preset", "cpu", *extra])[0]
    if flags.init_from or flags.distill_from:  # the run encodes with that model's tokenizer: keep its cache only
        name = (args.data_dir or args.data_file).name
        cache = args.keep / f"{name}-{Path(flags.distill_from or flags.init_from).stem}-cache"
        return ["--cache_dir", str(cache)], cache
    vocab = f"v{flags.vocab_size}" + (f"-f{flags.min_frequency}" if flags.min_frequency else "")
    corpus = args.data_dir or args.data_file
    # "train-part": tokenizers trained on the text before the held-out split (data.tokenizer_text_end); kept
    # tokenizers from before, trained on all of it, had seen the held-out text and must not be reused
    tag = f"{corpus.name}-{hashlib.sha1(str(corpus.resolve()).encode()).hexdigest()[:8]}-{vocab}-train-part2"
    tok_path, cache = args.keep / f"{tag}.json", args.keep / f"{tag}-cache"
    if tok_path.is_file():
        return ["--tokenizer", str(tok_path), "--cache_dir", str(cache)], cache
    return ["--tokenizer_path", str(tok_path), "--cache_dir", str(cache)], cache


class WeightAverages:
    """--ema: exponential moving averages of the weights, updated after every optimizer step, to score at the
    end beside the weights themselves (for the record: the trainer does not keep one)."""

    def __init__(self, decays: list[float]):
        self.decays, self.averages = decays, {d: {} for d in decays}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for decay, average in self.averages.items():
            for name, p in model.named_parameters():
                if name in average:
                    average[name].lerp_(p.detach(), 1 - decay)
                else:
                    average[name] = p.detach().clone()


class AdaptiveThreads:
    """--threads auto: every `every` steps, uses all cores while no other process wants them and one thread
    while one does. Threads that wait for each other at every parallel region stall badly when another job
    takes a core (7x slower steps seen here), one thread does not; the numbers do not change, so a --steps
    run's quality does not depend on it."""

    def __init__(self, every: int = 20):
        self.every, self.calls, self.cores = every, 0, torch.get_num_threads()
        self.last = self.sample()

    @staticmethod
    def sample() -> tuple[float, float, float]:
        """(wall seconds, CPU seconds busy on the machine, CPU seconds of this process)."""
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
        with open("/proc/self/stat") as f:
            own = sum(int(v) for v in f.read().rsplit(")", 1)[1].split()[11:13])  # utime + stime
        hz = os.sysconf("SC_CLK_TCK")
        return time.perf_counter(), busy / hz, own / hz

    def __call__(self) -> None:
        self.calls += 1
        if self.calls % self.every:
            return
        now = self.sample()
        wall = max(now[0] - self.last[0], 1e-6)
        others = ((now[1] - self.last[1]) - (now[2] - self.last[2])) / wall  # cores other processes used
        self.last = now
        torch.set_num_threads(1 if others > 0.5 else self.cores)


def budget_flags(seconds: float, extra: list[str]) -> list[str]:
    """Flags that give a run with no time limit the preset's values for a --max_time of `seconds`: with no
    limit, --preset takes every row of its PRESET_BUDGETS (train_bpe.py), the values for the longest budget.
    Every value a row sets is passed, so that the run's typed flags are the same at every budget."""
    at_budget = vars(train_bpe.parse_args(["--preset", "cpu", "--max_time", str(seconds), *extra])[0])
    names = sorted({name for _, row in train_bpe.PRESET_BUDGETS["cpu"] for name in row})
    assert not any(isinstance(at_budget[name], bool) for name in names), "a preset row sets a switch"  # numbers
    return [flag for name in names for flag in (f"--{name}", str(at_budget[name]))]


def one_run(args, extra: list[str], seed: int) -> dict:
    """Trains one run (--budget of time, or --steps steps) and scores it; returns its table row as a dict."""
    with tempfile.TemporaryDirectory() as out:
        out = Path(out)
        reuse, cache_dir = reuse_flags(args, out, extra)
        budget = ["--max_time", "0", "--max_steps", str(args.steps),
                  *budget_flags(args.as_budget, extra)] if args.steps else \
                 ["--max_time", args.budget, "--max_steps", "1000000"]
        # One evaluation at the end only: periodic evaluations would eat into the budget.
        train_argv = ["--preset", "cpu", *corpus_flags(args), "--out_dir", str(out), *reuse, *budget,
                      "--eval_interval", "1000000", "--eval_iters", "2", "--seed", str(seed), *extra]
        start, cpu_start = time.perf_counter(), time.process_time()
        adapt = AdaptiveThreads() if args.threads == "auto" else (lambda: None)
        averages = WeightAverages([float(d) for d in args.ema.split(",")] if args.ema else [])
        real_step = trainer.train_step

        def step(run, state):
            adapt()
            loss = real_step(run, state)
            averages.update(state.raw_model)
            return loss

        if args.threads == "auto" or args.ema:
            trainer.train_step = step
        try:
            code = train_bpe.main(train_argv)
        finally:
            trainer.train_step = real_step
            if args.threads == "auto":
                torch.set_num_threads(adapt.cores)
        if code:
            raise SystemExit(code)
        wall = time.perf_counter() - start
        # CPU seconds we got per wall second per core: well below 1 means other processes took the cores.
        cpu_share = (time.process_time() - cpu_start) / (wall * torch.get_num_threads())
        ckpt = out / trainer.LAST_NAME
        state = load_checkpoint(ckpt)
        steps, run_args = state["step"], state["args"]
        tokens_seen = steps * run_args["batch_size"] * run_args["grad_accum_steps"] * run_args["block_size"]
        corpus = data.scan_corpus(data_file=None if args.data_dir else args.data_file, data_dir=args.data_dir)
        bpb, val_bytes = full_val_bits_per_byte(ckpt, corpus, cache_dir)
        ema = {str(d): round(full_val_bits_per_byte(ckpt, corpus, cache_dir, weights=averages.averages[d])[0], 4)
               for d in averages.decays}

        model, tok, _, _ = load_model(ckpt, "cpu")
        gen = torch.Generator().manual_seed(1337)
        prompt = torch.tensor([tok.encode(args.prompt, add_special_tokens=False).ids])
        new = [int(t[0]) for t in model.generate(prompt, 200, temperature=0.8, top_k=80, generator=gen)]
        sample = tok.decode(prompt[0].tolist() + new)
    budget_name = f"{args.steps} steps, {args.as_budget:.0f} s values" if args.steps else \
        f"{parse_duration(args.budget):.0f} s {args.clock}"
    return dict(label=args.label, extra=" ".join(extra), seed=seed, bits_per_byte=round(bpb, 4), steps=steps,
                tokens_seen=tokens_seen, train_s=round(state["train_time"], 1),
                ms_per_step=round(1000 * state["train_time"] / max(steps, 1), 1), budget=budget_name,
                corpus=str(args.data_dir or args.data_file), threads=torch.get_num_threads(), wall_s=round(wall),
                cpu_share=round(cpu_share, 2),
                val_bytes=val_bytes, ema_bits_per_byte=ema, sample=sample)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="134", help="training time, seconds or H:MM:SS (default 134)")
    p.add_argument("--steps", type=int, default=0,
                   help="train exactly this many steps instead (step-based warmup and cosine, no time limit): "
                        "the quality of a setting at equal work, whatever the machine's load; with the preset's "
                        "values for the budget --as_budget")
    p.add_argument("--as_budget", type=parse_duration, default=train_bpe.PRESETS["cpu"]["max_time"],
                   help="with --steps: train with the values --preset cpu takes for this --max_time (the rows "
                        "of PRESET_BUDGETS in train_bpe.py; default: the preset's own 134 s)")
    corpus = p.add_mutually_exclusive_group()
    corpus.add_argument("--data_file", type=Path, default=DEFAULT_DATA_FILE, help="corpus (90/10 split)")
    corpus.add_argument("--data_dir", type=Path, help="a folder corpus instead (whole files held out by a hash "
                                                       "of their paths), e.g. the one bench/gather_corpus.py builds")
    p.add_argument("--repeats", type=int, default=1,
                   help="train this many times with seeds 42, 43, ... and report the median too")
    p.add_argument("--keep", type=Path, help="folder to keep tokenizers and token caches in between runs")
    p.add_argument("--label", default="preset cpu", help="name of this run in the table")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what the budget counts: wall seconds, or this process's CPU seconds per thread "
                        "(the same on an idle machine; on a shared one, cpu keeps runs comparable)")
    p.add_argument("--threads", default="0",
                   help="torch threads (0 = torch's default, all cores); 1, or auto (all cores while no other job "
                        "runs, else 1), keeps a --steps run from stalling when other jobs share the cores (its "
                        "quality does not depend on the thread count; its ms/step then means little)")
    p.add_argument("--ema", help="also score exponential moving averages of the weights with these decays, "
                                 "comma-separated (e.g. 0.99,0.999)")
    p.add_argument("--log", type=Path, help="append the result as one JSON line to this file")
    p.add_argument("--prompt", default="ROMEO:", help="prompt for the printed sample")
    args = p.parse_args(own)
    if args.threads not in ("0", "auto"):
        torch.set_num_threads(int(args.threads))
    if args.clock == "cpu":
        threads = torch.get_num_threads()
        trainer.clock = lambda: time.process_time() / threads  # the training loop's clock

    results = []
    for seed in range(42, 42 + args.repeats):
        result = one_run(args, extra, seed)
        results.append(result)
        if args.log:
            with args.log.open("a") as f:
                f.write(json.dumps({k: v for k, v in result.items() if k != "sample"}) + "\n")
    print("\n| lever | setting | budget | seed | bits/byte (full val) | steps | tokens seen | ms/step | CPU share |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['label']} | {r['extra'] or '-'} | {r['budget']} | {r['seed']} | {r['bits_per_byte']:.3f} | "
              f"{r['steps']:,} | {r['tokens_seen']:,} | {r['ms_per_step']} | {r['cpu_share']:.2f} |")
        for decay, bpb in r["ema_bits_per_byte"].items():
            print(f"|   weight average (EMA {decay}) | | | | {bpb:.3f} | | | | |")
    median = statistics.median(r["bits_per_byte"] for r in results)
    if args.repeats > 1:
        print(f"\nmedian of {args.repeats}: {median:.3f} bits/byte")
    last = results[-1]
    print(f"\nwhole validation split of {last['corpus']}: {last['val_bytes']:,} bytes; script wall time "
          f"{last['wall_s']}s\n\nsample ({args.prompt!r}, temperature 0.8, top_k 80):\n{last['sample']}")
    return 0 if math.isfinite(median) else 1


if __name__ == "__main__":
    sys.exit(main())
