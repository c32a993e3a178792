"""Milliseconds per training step of several settings, measured back to back (interleaved) on this machine.

    flock /tmp/cpu.lock python bench/step_time.py -- "" "--n_layer 6" "--vocab_size 8192"
    flock /tmp/cpu.lock python bench/step_time.py -- "" "loss=plain"

Each argument after "--" is one setting: train_bpe.py flags on top of --preset cpu ("" = the preset),
optionally led by "threads=N" to run it with N torch threads (default: torch's, all cores), then by
"loss=plain" to compute the loss through the whole logits instead of lm_loss's chunks.
Every repeat times every setting once, in turn, so a change in the machine's load hits all of them
alike; the median over repeats is reported with its ratio to the first setting. A step is
trainer.train_step itself (forward, backward, clipping, optimizer) on random tokens: the speed of
a step does not depend on the text. Combine with a fixed-step quality run (bench/quality.py --steps)
to get quality per second: steps that fit in T seconds = T / (ms/step / 1000).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import data  # noqa: E402
import distributed  # noqa: E402
import train_bpe  # noqa: E402
import trainer  # noqa: E402
from prepare import RunData  # noqa: E402

DEFAULT_THREADS = torch.get_num_threads()


class FakeTokenizer:
    """All trainer.setup asks of a tokenizer: its size."""

    def __init__(self, size: int):
        self.size = size

    def get_vocab_size(self) -> int:
        return self.size


def time_setting(flags: str, warmup: int, steps: int, out: Path) -> tuple[float, float]:
    """(wall ms per step, CPU share) of `steps` steps after `warmup` untimed ones."""
    words = shlex.split(flags)
    threads = int(words.pop(0).split("=")[1]) if words and words[0].startswith("threads=") else DEFAULT_THREADS
    plain_loss = bool(words) and words[0] == "loss=plain"
    words = words[1:] if plain_loss else words
    torch.set_num_threads(threads)
    args, _ = train_bpe.parse_args(["--preset", "cpu", "--out_dir", str(out), *words])
    tokens = np.random.default_rng(0).integers(4, args.vocab_size, 400_000).astype(np.int64)
    token_data = data.TokenData(tokens, args.block_size)
    run_data = RunData(FakeTokenizer(args.vocab_size), out / "none.json", None, token_data, "", 0)
    run, state = trainer.setup(args, distributed.World(), run_data)
    state.raw_model.chunked_loss = not plain_loss
    for _ in range(warmup):
        trainer.train_step(run, state)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        trainer.train_step(run, state)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return 1000 * wall / steps, cpu / (wall * threads)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = argv[argv.index("--") + 1 :] if "--" in argv else [""]
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (allocations, compile)")
    p.add_argument("--steps", type=int, default=60, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=3, help="measurements per setting, interleaved")
    args = p.parse_args(own)
    times = {s: [] for s in settings}
    shares = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.repeats):
            for s in settings:
                ms, share = time_setting(s, args.warmup, args.steps, Path(out))
                times[s].append(ms)
                shares[s].append(share)
                print(f"  {s or '(preset)'}: {ms:.1f} ms/step, CPU share {share:.2f}", flush=True)
    base = statistics.median(times[settings[0]])
    print(f"\n{args.repeats} interleaved repeats of {args.steps} steps after {args.warmup}; "
          f"{DEFAULT_THREADS} threads unless the setting says\n\n| setting | ms/step (median) | all | vs first | CPU share |\n"
          "|---|---:|---|---:|---:|")
    for s in settings:
        med = statistics.median(times[s])
        print(f"| {s or '(preset)'} | {med:.1f} | {' '.join(f'{t:.0f}' for t in times[s])} | "
              f"{med / base:.2f} | {statistics.median(shares[s]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
