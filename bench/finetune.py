"""Does starting from a checkpoint pay? From scratch vs --init_from a base model, at the same time budget.

    flock /tmp/cpu.lock python bench/finetune.py                       # base 10 min, then 2 and 5 min on B
    flock /tmp/cpu.lock python bench/finetune.py --lrs 1e-4,3e-4,1e-3 --budgets 120   # the fine-tuning LR

Corpus A (the base model's): the Vim documentation on this machine (/usr/share/vim/*/doc/*.txt, English
technical prose), capped at --base_mb. Corpus B (the user's small corpus), --target:
  cmake        --target_kb of CMake's documentation (/usr/share/cmake-*/Help/**/*.rst: other text of the same
               kind, as a user's notes or a repository's docs are to a model that knows technical English),
               about 10% of its files held out (by a hash of their names);
  shakespeare  the first --target_kb of the bundled Shakespeare (verse: far from A), its last 10% held out.
The held-out text is never trained on. For each
budget: (1) `--preset cpu` from scratch on B (its own tokenizer), (2) `--init_from` the base model on B
with the fine-tuning defaults (the base's tokenizer). Both are scored on the held-out text with
score_bpe's scorer, in bits per byte (comparable across the two tokenizers).

`--gpt2_timing` adds the estimate of fine-tuning GPT-2 small (124 M) on this CPU per 1,000 tokens,
measured on a randomly initialised model of the same shape, and on a GPU from its FLOPs.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cli  # noqa: E402
import score_bpe  # noqa: E402
import train_bpe  # noqa: E402
import trainer  # noqa: E402
from checkpoint import load_checkpoint  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from prepare import DEFAULT_DATA_FILE  # noqa: E402

VIM_DOCS = "/usr/share/vim/vim*/doc/*.txt"
CMAKE_DOCS = "/usr/share/cmake-*/Help/**/*.rst"


def gather_base_corpus(folder: Path, max_bytes: int) -> int:
    """Copies Vim's help files (sorted, the first max_bytes of them) into folder; returns the bytes copied."""
    folder.mkdir(parents=True)
    total = 0
    for path in sorted(glob.glob(VIM_DOCS)):
        size = Path(path).stat().st_size
        if total + size > max_bytes:
            break
        shutil.copy(path, folder / Path(path).name)
        total += size
    return total


def split_target(folder: Path, target: str, kb: int) -> tuple[list[str], list[str]]:
    """Corpus B as (flags to train on it, flags to score its held-out part)."""
    folder.mkdir(parents=True)
    if target == "shakespeare":  # the first kb KB, cut at a line end: 90% to train on, the last 10% held out
        text = DEFAULT_DATA_FILE.read_text(encoding="utf-8")[: kb * 1000]
        cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1
        (folder / "train.txt").write_text(text[:cut], encoding="utf-8")
        (folder / "heldout.txt").write_text(text[cut:], encoding="utf-8")
        return ["--data_file", str(folder / "train.txt")], ["--file", str(folder / "heldout.txt")]
    # CMake's help files in an order fixed by a hash of their names, until kb KB; every tenth file held out
    files = sorted(glob.glob(CMAKE_DOCS, recursive=True), key=lambda p: hashlib.sha1(p.encode()).digest())
    total = 0
    for i, path in enumerate(files):
        size = Path(path).stat().st_size
        if total + size > kb * 1000:
            break
        part = "heldout" if i % 10 == 9 else "train"
        dest = folder / part / Path(path).relative_to(Path(path).parents[1])
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
        total += size
    return ["--data_dir", str(folder / "train")], ["--data_dir", str(folder / "heldout")]


def train(argv: list[str], clock: str) -> float:
    """train_bpe.main with the given flags; returns the wall seconds it took."""
    if clock == "cpu":
        threads = torch.get_num_threads()
        trainer.clock = lambda: time.process_time() / threads
    else:
        trainer.clock = time.perf_counter
    start = time.perf_counter()
    code = train_bpe.main(argv)
    if code:
        raise SystemExit(f"training failed ({code}): {' '.join(argv)}")
    return time.perf_counter() - start


def heldout_bpb(ckpt: Path, heldout: list[str]) -> float:
    args = score_bpe.build_parser().parse_args(["--ckpt", str(ckpt), *heldout, "--device", "cpu"])
    with torch.inference_mode():
        return score_bpe.run(args)["bits_per_byte"]


def gpt2_small_timing(steps: int = 3, tokens: int = 1024) -> dict:
    """Seconds per 1,000 tokens of a GPT-2 small training step on this CPU (random weights, same shape)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embed=768, dropout=0.0))
    opt = trainer.make_optimizer(model, 3e-4, 0.1, "cpu")
    x = torch.randint(0, 50257, (1, tokens))
    dtype = torch.bfloat16 if cli.bf16_supported(torch.device("cpu")) else None
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    per_1k = 1000 * sorted(times[1:])[len(times[1:]) // 2] / (tokens - 1)
    n = model.num_params()  # without position embeddings; the tied head counted once
    flops_per_token = 6 * n + 12 * 12 * 768 * 1024  # 6N plus attention (Kaplan et al. 2020; PaLM appendix B)
    return dict(params_m=round(n / 1e6, 1), precision=str(dtype or torch.float32), cpu_s_per_1k_tokens=round(per_1k, 2),
                gflop_per_1k_tokens=round(flops_per_token * 1000 / 1e9),
                # An H100 SXM does 989 dense bf16 TFLOP/s; 40% of it is a usual figure for a 124 M model.
                h100_ms_per_1k_tokens_at_40pct=round(flops_per_token * 1000 / (989e12 * 0.4) * 1000, 2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base_budget", default="600", help="training time of the base model on corpus A")
    p.add_argument("--base_mb", type=float, default=6.0, help="size of corpus A, MB")
    p.add_argument("--target", choices=("cmake", "shakespeare"), default="cmake", help="corpus B (see above)")
    p.add_argument("--target_kb", type=int, default=250, help="size of corpus B, KB (10%% of it held out)")
    p.add_argument("--budgets", default="120,300", help="comma-separated training budgets on B, seconds")
    p.add_argument("--lrs", default="", help="also fine-tune at these learning rates (comma-separated)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="also fine-tune with these extra flags, e.g. 'dropout=--dropout 0.1' (repeatable)")
    p.add_argument("--no_scratch", action="store_true", help="skip the from-scratch runs (already measured)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="cpu",
                   help="budgets count wall seconds, or this process's CPU seconds per thread (fairer when shared)")
    p.add_argument("--work", type=Path, help="keep the runs in this folder (default: a temporary one)")
    p.add_argument("--base", type=Path, help="reuse this base checkpoint instead of training one")
    p.add_argument("--gpt2_timing", action="store_true", help="also time a GPT-2 small training step")
    p.add_argument("--log", type=Path, help="append every result as a JSON line to this file")
    args = p.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    results = []

    def record(**row):
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.log:
            with args.log.open("a") as f:
                f.write(json.dumps(row) + "\n")

    train_flags, heldout = split_target(work / f"B-{args.target}", args.target, args.target_kb)
    if args.base:
        base = args.base
    else:
        size = gather_base_corpus(work / "A", int(args.base_mb * 1e6))
        out = work / "base"
        wall = train(["--preset", "cpu", "--data_dir", str(work / "A"), "--out_dir", str(out), "--tokenizer_path",
                      str(out / "tokenizer.json"), "--max_time", args.base_budget], args.clock)
        base = out / trainer.BEST_NAME
        state = load_checkpoint(base)
        record(run="base on A (Vim docs)", corpus_mb=round(size / 1e6, 2), budget=args.base_budget,
               steps=state["step"], wall_s=round(wall), heldout_bpb_on_B=round(heldout_bpb(base, heldout), 4))

    common = [*train_flags, "--eval_interval", "50", "--max_steps", "1000000"]
    for budget in args.budgets.split(","):
        runs = [] if args.no_scratch else [("scratch", ["--preset", "cpu"])]
        runs += [("init_from", ["--init_from", str(base), "--preset", "cpu"])]
        runs += [(f"init_from lr={lr}", ["--init_from", str(base), "--preset", "cpu", "--lr", lr])
                 for lr in filter(None, args.lrs.split(","))]
        runs += [(f"init_from {name}", ["--init_from", str(base), "--preset", "cpu", *flags.split()])
                 for name, flags in (v.split("=", 1) for v in args.variant)]
        for name, flags in runs:
            out = work / f"{args.target}_{name.replace(' ', '_').replace('=', '')}_{budget}"
            wall = train([*flags, *common, "--out_dir", str(out), "--tokenizer_path", str(out / "tokenizer.json"),
                          "--max_time", budget], args.clock)
            state = load_checkpoint(out / trainer.BEST_NAME)
            record(run=name, target=args.target, budget_s=int(budget), steps=load_checkpoint(out / trainer.LAST_NAME)["step"],
                   best_step=state["step"], wall_s=round(wall),
                   heldout_bpb=round(heldout_bpb(out / trainer.BEST_NAME, heldout), 4))
    if args.gpt2_timing:
        record(run="gpt2-small step timing", **gpt2_small_timing())

    print("\n| run | budget (s) | steps | best at step | held-out bits/byte on B |\n|---|---:|---:|---:|---:|")
    for r in results:
        if "heldout_bpb" in r:
            print(f"| {r['run']} | {r['budget_s']} | {r['steps']:,} | {r['best_step']:,} | {r['heldout_bpb']:.4f} |")
    for budget in [] if args.no_scratch else args.budgets.split(","):
        scratch = next(r["heldout_bpb"] for r in results if r.get("run") == "scratch" and r["budget_s"] == int(budget))
        tuned = next(r["heldout_bpb"] for r in results if r.get("run") == "init_from" and r["budget_s"] == int(budget))
        print(f"{budget} s: init_from has {100 * (1 - tuned / scratch):.1f}% fewer bits per byte than scratch "
              f"(goal >= 15%)")
    print(f"runs kept in {work}" if args.work else "")
    return 0 if all(math.isfinite(r.get("heldout_bpb", 0)) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
