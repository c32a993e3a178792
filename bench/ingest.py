"""Ingestion benchmark: the seed's in-memory encoding vs our streamed pipeline into the token cache.

    flock /tmp/cpu.lock python bench/ingest.py              # ~100 MB and ~1 GB corpora, a few minutes
    flock /tmp/cpu.lock python bench/ingest.py --big_copies 0   # only the ~100 MB comparison

It builds a folder corpus from real text found on this machine (Python sources, reStructuredText and
text files of the installed Python, man pages, /usr/share/doc) in a temporary folder, trains one
tokenizer on a sample of it, and then runs each approach in its own subprocess with that same
tokenizer, so the table compares ingestion only, and each peak RSS (VmHWM) belongs to one approach:

  (a) seed: read every file, ids += tok.encode(text).ids, torch.tensor(ids)
  (b) ours: scan_corpus -> load_or_build_cache -> memmap-backed TokenData, ready to train

The big corpus is nine copies of the small one plus all of its text joined into one ~100 MB file.
Temporary corpora are deleted at the end.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CODE_SOURCES = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
PROSE_SOURCES = [Path("/usr/share/man"), Path("/usr/share/doc")]


def rss_mb(field: str) -> float:
    """VmHWM: the peak resident set so far; VmRSS: the resident set now."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads, the tokenizer's workers included
    return usage.ru_utime + usage.ru_stime


def _texts(sources, suffixes):
    """(relative name, text) of every readable UTF-8 file under sources with one of the suffixes
    (.gz files are decompressed first), in a fixed order."""
    for source in sources:
        for path in sorted(source.rglob("*")):
            name = path.name[:-3] if path.name.endswith(".gz") else path.name
            if not path.is_file() or path.is_symlink() or not name.endswith(suffixes):
                continue
            try:
                raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
                text = raw.decode("utf-8")
            except (OSError, ValueError, EOFError):
                continue
            if text.strip() and "\x00" not in text:
                yield f"{source.name}/{path.relative_to(source)}", text


def build_corpus(folder: Path, target_bytes: int) -> tuple[int, int]:
    """~60% code and ~40% prose from this machine into folder; returns (files, bytes)."""
    files = total = 0
    quotas = [(CODE_SOURCES, (".py",), ".py", 0.6), (CODE_SOURCES, (".rst", ".txt", ".md"), ".txt", 0.05),
              (PROSE_SOURCES, ("",), ".txt", 0.35)]
    for sources, suffixes, ext, share in quotas:
        budget = share * target_bytes
        for name, text in _texts(sources, suffixes):
            if budget <= 0:
                break
            # site-packages is a folder the scanner skips on purpose; keep the files, rename the folder
            path = folder / (name.replace("site-packages", "pkgs").rsplit(".", 1)[0] + ext)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="")
            size = path.stat().st_size
            budget -= size
            files, total = files + 1, total + size
    return files, total


def build_big_corpus(small: Path, folder: Path, copies: int) -> tuple[int, int]:
    for i in range(copies):
        shutil.copytree(small, folder / f"copy{i}")
    with open(folder / "everything_in_one_file.txt", "w", encoding="utf-8", newline="") as out:
        for path in sorted(small.rglob("*")):
            if path.is_file():
                out.write(path.read_text(encoding="utf-8"))
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


# --------------------------------------------------------------------------- children


def child_seed(corpus: Path, tokenizer: Path) -> dict:
    """The seed's approach, as it was: every text in memory, one Python list of ids, then a tensor."""
    import torch
    from tokenizers import Tokenizer

    baseline, t0, c0 = rss_mb("VmRSS"), time.perf_counter(), cpu_seconds()
    tok = Tokenizer.from_file(str(tokenizer))
    texts = [p.read_text(encoding="utf-8") for p in sorted(corpus.rglob("*")) if p.is_file()]
    ids = []
    for text in texts:
        ids += tok.encode(text).ids
    tokens = torch.tensor(ids, dtype=torch.long)
    return {"seconds": time.perf_counter() - t0, "cpu": cpu_seconds() - c0, "baseline_mb": baseline,
            "tokens": len(tokens)}


def child_ours(corpus: Path, tokenizer: Path, cache_dir: Path) -> dict:
    """What train_bpe.py does before its first step: scan, encode into the cache, open it as a memmap."""
    import data  # imports torch, as the seed's child does
    import token_cache
    import tokenizer as tokenizer_module

    baseline, t0, c0 = rss_mb("VmRSS"), time.perf_counter(), cpu_seconds()
    tok = tokenizer_module.load(tokenizer)
    corpus_files = data.scan_corpus(data_dir=corpus)
    cache = token_cache.load_or_build_cache(corpus_files, tok, cache_dir)
    token_data = cache.token_data(block_size=256)
    assert not cache.reused
    return {"seconds": time.perf_counter() - t0, "cpu": cpu_seconds() - c0, "baseline_mb": baseline,
            "tokens": len(token_data.train) + len(token_data.val)}


def run_child(*args: str) -> dict:
    """Runs this script as a child; returns its result plus the whole process's wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=100, help="size of the comparison corpus in MB")
    p.add_argument("--big_copies", type=int, default=9, help="copies of it in the big corpus (0 = skip)")
    p.add_argument("--vocab_size", type=int, default=8000, help="tokenizer vocabulary (train_bpe.py's default)")
    p.add_argument("--workdir", type=Path, help="where temporary corpora go (default: a new temp folder)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        kind, corpus, tokenizer, *rest = args.child
        if kind == "seed":
            result = child_seed(Path(corpus), Path(tokenizer))
        else:
            result = child_ours(Path(corpus), Path(tokenizer), Path(rest[0]))
        result["peak_rss_mb"] = rss_mb("VmHWM")
        result["load"] = os.getloadavg()[0]  # other work on the machine slows the wall times
        print(json.dumps(result))
        return 0

    import data
    import tokenizer as tokenizer_module

    work = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=args.workdir))
    try:
        small = work / "corpus"
        t0 = time.perf_counter()
        n_files, n_bytes = build_corpus(small, int(args.mb * 1e6))
        print(f"corpus: {n_files} files, {n_bytes / 1e6:.1f} MB of code and prose from this machine "
              f"({time.perf_counter() - t0:.0f}s to gather)", flush=True)
        t0 = time.perf_counter()
        tok = tokenizer_module.train_bpe(data.scan_corpus(data_dir=small), args.vocab_size, max_bytes=20_000_000)
        tok.save(str(work / "tokenizer.json"))
        print(f"tokenizer: {args.vocab_size} tokens trained on a 20 MB sample in {time.perf_counter() - t0:.0f}s; "
              f"every row below loads this same file", flush=True)

        rows = []
        for label, kind in (("(a) seed: encode each, ids +=, torch.tensor", "seed"),
                            ("(b) ours: scan -> token cache -> memmap", "ours")):
            cache = work / f"cache-{kind}"
            r = run_child(kind, str(small), str(work / "tokenizer.json"), str(cache))
            rows.append((label, n_bytes, r))
            print(f"  done: {label}", flush=True)
            shutil.rmtree(cache, ignore_errors=True)
        if args.big_copies:
            big = work / "big"
            big_files, big_bytes = build_big_corpus(small, big, args.big_copies)
            shutil.rmtree(small)
            print(f"big corpus: {big_files} files, {big_bytes / 1e6:.0f} MB "
                  f"({args.big_copies} copies + one {n_bytes / 1e6:.0f} MB single file)", flush=True)
            r = run_child("ours", str(big), str(work / "tokenizer.json"), str(work / "cache-big"))
            rows.append(("(b) ours, big corpus", big_bytes, r))

        print()
        print(f"| {'approach':44s} | {'corpus MB':>9s} | {'tokens':>11s} | {'wall s':>6s} | {'CPU s':>6s} "
              f"| {'MB/s':>5s} | {'peak RSS MB':>11s} | {'above imports MB':>16s} | {'load':>4s} |")
        print(f"|{'-' * 46}|{'-' * 11}|{'-' * 13}|{'-' * 8}|{'-' * 8}|{'-' * 7}|{'-' * 13}|{'-' * 18}|{'-' * 6}|")
        for label, size, r in rows:
            print(f"| {label:44s} | {size / 1e6:9.0f} | {r['tokens']:11,d} | {r['seconds']:6.1f} | {r['cpu']:6.1f} "
                  f"| {size / 1e6 / r['seconds']:5.1f} | {r['peak_rss_mb']:11.0f} "
                  f"| {r['peak_rss_mb'] - r['baseline_mb']:16.0f} | {r['load']:4.1f} |")
        seed, ours = rows[0][2], rows[1][2]
        print()
        print(f"(b) vs (a): peak RSS {ours['peak_rss_mb'] / seed['peak_rss_mb']:.3f}x (goal <= 0.2x); "
              f"{seed['seconds'] / ours['seconds']:.2f}x faster in wall time (goal >= 2x), "
              f"{seed['cpu'] / ours['cpu']:.2f}x less CPU time ({os.cpu_count()} cores; load = 1-minute load "
              f"average when each run ended)")
        print("wall s and CPU s count from after the imports to a ready array; peak RSS is the whole "
              "process (VmHWM), 'above imports' subtracts the resident set right after importing")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
