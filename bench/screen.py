"""Lever screen: many fixed-step bench/quality.py runs side by side (on one GPU, or spare cores), with a deadline.

    python bench/screen.py jobs.txt --parallel 2 --deadline 300 --log screen.jsonl -- --device cuda
    python bench/screen.py jobs.txt --as_budget 600 --log screen.jsonl -- --device cuda   # the 600 s values

jobs.txt holds one run per line, `label; steps; corpus; flags for train_bpe.py`, for example

    base;1150;;--dropout 0
    qk-norm;1150;;--dropout 0 --qk_norm
    python base;1150;/data/py-corpus;

(corpus: a file, a folder, or nothing for the bundled text; # starts a comment). Flags after "--" go to
every run. A screen ranks levers at equal work: a tiny model leaves a GPU mostly idle, so a few runs at
once take about as long as one. Its ms/step mean nothing (the runs share the machine), and a lever that
wins here still has to win on the target machine at its time budget (bench/quality.py --budget).

Tokenizers and token caches are made once per corpus and vocabulary, one run at a time, before the
parallel runs start (quality.py --keep). A run that would start with under a minute left is skipped;
the ones still running at the deadline are stopped. Results go to --log, one JSON line per run, and
are printed as a table at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_bpe  # noqa: E402
from schedule import parse_duration  # noqa: E402

QUALITY = Path(__file__).resolve().parent / "quality.py"
MIN_START_S = 60  # a run that would start with less time left than this is skipped


def read_jobs(path: Path) -> list[tuple[str, int, str, list[str]]]:
    """(label, steps, corpus, flags) for every line of a job file."""
    jobs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(";")]
        if len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) < 1:
            raise ValueError(f"{path}:{number}: expected 'label; steps; corpus; flags', got {line!r}")
        jobs.append((parts[0], int(parts[1]), parts[2], parts[3].split()))
    return jobs


def corpus_flags(corpus: str) -> list[str]:
    if not corpus:
        return []
    return ["--data_dir" if Path(corpus).is_dir() else "--data_file", corpus]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    common = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jobs", type=Path, help="job file: 'label; steps; corpus; flags' per line")
    p.add_argument("--parallel", type=int, default=2, help="runs at once (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (its final scoring is on the CPU)")
    p.add_argument("--deadline", type=float, default=3600, help="seconds for the whole screen (default 3600)")
    p.add_argument("--log", type=Path, required=True, help="append one JSON line per finished run here")
    p.add_argument("--as_budget", type=parse_duration,
                   help="train with the preset's values for this --max_time (quality.py's --as_budget; default: its "
                        "own, the preset's 134 s)")
    p.add_argument("--keep", type=Path, help="folder for tokenizers and token caches (default: a temporary one)")
    args = p.parse_args(own)
    if args.parallel < 1 or args.threads < 1 or not args.deadline > 0:
        p.error("--parallel and --threads must be at least 1, and --deadline above 0")
    try:
        jobs = read_jobs(args.jobs)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        p.error(str(e))
    end = time.monotonic() + args.deadline
    with tempfile.TemporaryDirectory() as tmp:
        keep = args.keep or Path(tmp)

        def quality(label: str, steps: int, corpus: str, flags: list[str], log: bool) -> str:
            left = end - time.monotonic()
            if left < MIN_START_S:
                return "skipped: too little time left"
            cmd = [sys.executable, str(QUALITY), "--steps", str(steps), "--threads", str(args.threads),
                   "--keep", str(keep), "--label", label, *corpus_flags(corpus),
                   *(["--as_budget", str(args.as_budget)] if args.as_budget else []),
                   *(["--log", str(args.log)] if log else []), "--", *common, *flags]
            start = time.monotonic()
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
            except subprocess.TimeoutExpired:
                return "stopped at the deadline"
            if done.returncode:
                return f"failed (exit {done.returncode}): {(done.stderr.strip().splitlines() or [''])[-1]}"
            return f"done in {time.monotonic() - start:.0f} s"

        # one short run per corpus and vocabulary first, so that the parallel runs find their tokenizer
        vocabularies = {}
        for label, _, corpus, flags in jobs:
            vocab = train_bpe.parse_args(["--preset", "cpu", *corpus_flags(corpus), *common, *flags])[0].vocab_size
            vocabularies.setdefault((corpus, vocab), flags)
        for (corpus, vocab), flags in vocabularies.items():
            print(f"tokenizer for {corpus or 'the bundled text'}, vocabulary {vocab}: "
                  f"{quality('tokenizer', 1, corpus, flags, log=False)}", flush=True)
        with ThreadPoolExecutor(args.parallel) as pool:
            outcomes = pool.map(lambda job: (job[0], quality(*job, log=True)), jobs)
            for label, outcome in outcomes:
                print(f"{label}: {outcome}", flush=True)

    rows = [json.loads(line) for line in args.log.read_text().splitlines()] if args.log.is_file() else []
    labels = {label for label, *_ in jobs}
    print("\n| run | bits/byte (full val) | steps | tokens seen |\n|---|---:|---:|---:|")
    for r in sorted((r for r in rows if r["label"] in labels), key=lambda r: r["bits_per_byte"]):
        print(f"| {r['label']} | {r['bits_per_byte']:.4f} | {r['steps']:,} | {r['tokens_seen']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
