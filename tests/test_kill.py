"""kill -9 at random moments never leaves a checkpoint that does not load."""

import json
import random
import subprocess
import sys
import textwrap

import pytest

from checkpoint import load_checkpoint
from model import GPT, GPTConfig

from helpers import ROOT, TINY_MODEL_ARGS

KILLS = 18

# A parent process imports torch once, then forks one training run after another (each resuming from
# what the last one left) and SIGKILLs each at a random moment, copying the folder as the kill left it.
# Forking skips the interpreter and torch start-up, so many kills fit in a few seconds. The parent runs
# no torch op itself, so each child starts with fresh thread pools.
KILLER = textwrap.dedent("""
    import json, os, random, shutil, signal, sys, time
    sys.path.insert(0, {root!r})
    import torch._dynamo  # what the optimizer imports on first use: load it once, here, not in every child
    import train_bpe
    out, snapshots, kills, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    base = sys.argv[5:]
    last = os.path.join(out, "mini_gpt_last.pt")
    rng = random.Random(seed)
    report = []

    def saved_at():
        return os.stat(last).st_mtime_ns if os.path.exists(last) else None

    for i in range(kills):
        resume, before = os.path.exists(last), saved_at()
        pid = os.fork()
        if pid == 0:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os._exit(train_bpe.main(base + (["--resume"] if resume else [])))
        # Wait until this child has saved once (it is training), then kill it at a random moment: with
        # a save after every step, that is often in the middle of writing one.
        deadline, status = time.monotonic() + 30, None
        while saved_at() == before and time.monotonic() < deadline and not status:
            time.sleep(0.005)
            status = os.waitpid(pid, os.WNOHANG)[1]  # it ended by itself: a bug, reported below
        if not status:
            time.sleep(rng.uniform(0.0, 0.3))
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        shutil.copytree(out, os.path.join(snapshots, str(i)))
        report.append(dict(resumed=resume, saved=saved_at() != before, killed=os.WIFSIGNALED(status)))
    print(json.dumps(report))
""")


@pytest.mark.slow
def test_checkpoints_left_by_kill_9_at_random_moments_all_load(tiny_file, tiny_tokenizer, tmp_path):
    tok = tmp_path / "tok.json"
    tok.write_text(tiny_tokenizer.to_str(), encoding="utf-8")
    out, snapshots = tmp_path / "out", tmp_path / "snapshots"
    snapshots.mkdir()
    out.mkdir()
    # A checkpoint after every step, so many kills land inside a save.
    train = ["--data_file", str(tiny_file), "--tokenizer", str(tok), "--out_dir", str(out), *TINY_MODEL_ARGS,
             "--max_steps", "100000", "--warmup_steps", "0", "--eval_interval", "1", "--eval_iters", "1"]
    seed = random.randrange(10**6)
    proc = subprocess.run(
        [sys.executable, "-c", KILLER.format(root=str(ROOT)), str(out), str(snapshots), str(KILLS), str(seed),
         *train],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report) == KILLS and all(r["killed"] for r in report), (seed, report)

    loaded, mid_save = 0, 0
    for snap in sorted(snapshots.iterdir(), key=lambda p: int(p.name)):
        mid_save += bool(list(snap.glob(".*.tmp")))  # the kill landed inside a checkpoint write
        for ckpt in snap.glob("*.pt"):
            state = load_checkpoint(ckpt)
            GPT(GPTConfig(**state["config"])).load_state_dict(state["model"])
            loaded += 1
    # Every run trained and saved before its kill, and all but the first resumed from its predecessor.
    assert all(r["saved"] for r in report) and sum(r["resumed"] for r in report) == KILLS - 1, (seed, report)
    print(f"kill -9 test (seed {seed}): {KILLS} kills, {loaded} checkpoints loaded, {mid_save} kills mid-save")
