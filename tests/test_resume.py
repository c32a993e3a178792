"""Never lose work: exact resume, Ctrl-C / SIGTERM, the NaN guard, fail-fast output checks."""

import hashlib
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import checkpoint
import files
import tokenizer
import train_bpe
import trainer
from checkpoint import load_checkpoint
from model import GPT
from stopping import SkippedSteps

from helpers import ROOT, TINY_MODEL_ARGS, signal_at_step

LAST, BEST = trainer.LAST_NAME, trainer.BEST_NAME


@pytest.fixture(scope="module")
def tok_file(tiny_tokenizer, tmp_path_factory) -> Path:
    """One fixed tokenizer file, so runs compared with each other read the same token stream."""
    path = tmp_path_factory.mktemp("tok") / "tok.json"
    path.write_text(tiny_tokenizer.to_str(), encoding="utf-8")
    return path


def run_args(tiny_file, tok_file, out: Path, *extra) -> list[str]:
    # dropout > 0 so the resumed run must also restore torch's RNG, not only the batch sampler's.
    args = [*TINY_MODEL_ARGS, "--dropout", "0.1", "--data_file", str(tiny_file), "--tokenizer", str(tok_file),
            "--out_dir", str(out), "--max_steps", "12", "--eval_interval", "5", "--eval_iters", "2",
            "--use_cosine", "--warmup_steps", "3", "--lr", "3e-3"]
    return args + list(extra)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["best_val_loss"] == b["best_val_loss"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for pid, sa in a["optimizer"]["state"].items():
        for key, value in sa.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][key]), (pid, key)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert torch.equal(a["rng"]["batches"], b["rng"]["batches"])


def test_interrupted_and_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(tiny_file, tok_file, tmp_path,
                                                                              monkeypatch, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert train_bpe.main(run_args(tiny_file, tok_file, full)) == 0

    signal_at_step(monkeypatch, 6)  # Ctrl-C during step 7, between the evaluations at 5 and 10
    assert train_bpe.main(run_args(tiny_file, tok_file, part)) == 130
    out = capsys.readouterr().out
    assert f"python train_bpe.py --resume {part / LAST}" in out
    assert load_checkpoint(part / LAST)["step"] == 7
    monkeypatch.undo()

    # Only the path: every other flag comes from the checkpoint.
    assert train_bpe.main(["--resume", str(part / LAST)]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert_same_training_state(load_checkpoint(full / LAST), load_checkpoint(part / LAST))
    assert_same_training_state(load_checkpoint(full / BEST), load_checkpoint(part / BEST))


def test_resume_prints_allowed_changes_and_continues_the_step_count(tiny_run, tiny_file, tmp_path, capsys):
    shutil.copy(tiny_run / LAST, tmp_path / LAST)
    moved = shutil.copy(tiny_file, tmp_path / "moved.txt")  # same text elsewhere: still the same corpus
    code = train_bpe.main(["--resume", str(tmp_path / LAST), "--max_steps", "43", "--eval_interval", "3",
                           "--data_file", str(moved)])
    assert code == 0
    out = capsys.readouterr().out
    assert f"changed: --data_file {tiny_file} -> {moved}, --max_steps 40 -> 43, --eval_interval 20 -> 3" in out
    state = load_checkpoint(tmp_path / LAST)
    assert state["step"] == 43 and state["args"]["max_steps"] == 43
    assert not (tiny_run / LAST).samefile(tmp_path / LAST)


def test_checkpoint_files_keep_the_usual_permissions(tiny_run):
    umask = os.umask(0)
    os.umask(umask)
    assert (tiny_run / LAST).stat().st_mode & 0o777 == 0o666 & ~umask


def test_overwrite_tokenizer_replaces_only_when_asked(tiny_file, tmp_path, capsys):
    existing = tmp_path / "tok.json"
    existing.write_text('{"not": "this run\'s tokenizer"}', encoding="utf-8")
    before = existing.read_bytes()
    args = ["--data_file", str(tiny_file), "--tokenizer_path", str(existing), "--out_dir", str(tmp_path),
            *TINY_MODEL_ARGS, "--max_steps", "1", "--warmup_steps", "0", "--eval_iters", "1"]

    assert train_bpe.main(args) == 0
    assert existing.read_bytes() == before
    assert (tmp_path / "tok-1.json").is_file()
    assert f"saving the new one as {tmp_path / 'tok-1.json'}" in capsys.readouterr().out

    assert train_bpe.main(args + ["--overwrite_tokenizer"]) == 0
    assert existing.read_bytes() == (tmp_path / "tok-1.json").read_bytes()
    assert not (tmp_path / "tok-2.json").exists()


def test_a_full_disk_is_reported_before_anything_is_trained(tiny_file, tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    code = train_bpe.main(["--data_file", str(tiny_file), "--tokenizer_path", str(tmp_path / "tok.json"),
                           "--out_dir", str(tmp_path / "out"), *TINY_MODEL_ARGS])
    err = capsys.readouterr().err
    assert code == 2 and "--out_dir" in err and "MB free" in err and "Traceback" not in err
    assert not (tmp_path / "tok.json").exists()  # stopped before the tokenizer was even trained


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through permission bits")
def test_an_unwritable_out_dir_is_reported_before_training(tiny_file, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir(mode=0o500)
    code = train_bpe.main(["--data_file", str(tiny_file), "--out_dir", str(out), *TINY_MODEL_ARGS])
    assert code == 2 and "--out_dir" in capsys.readouterr().err


# --------------------------------------------------------------------------- the NaN guard


def poison_forward(monkeypatch, bad):
    """Makes the training forward pass's loss NaN on the calls for which bad(call_number) is true."""
    real = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, cache=None, teacher=None):
        logits, loss = real(self, idx, targets, cache, teacher)
        if self.training and targets is not None:
            calls["n"] += 1
            if bad(calls["n"]):
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)


def test_a_few_nan_steps_are_skipped_and_counted(tiny_file, tok_file, tmp_path, monkeypatch, capsys):
    poison_forward(monkeypatch, lambda n: n in (4, 5, 6))
    assert train_bpe.main(run_args(tiny_file, tok_file, tmp_path)) == 0
    assert "skipped=3" in capsys.readouterr().err  # on the progress bar
    state = load_checkpoint(tmp_path / LAST)
    assert state["step"] == 12 and state["skipped_steps"] == 3
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert math.isfinite(state["best_val_loss"])


def test_nan_weights_are_never_saved_and_a_diverged_run_stops(tiny_file, tok_file, tmp_path, monkeypatch, capsys):
    real = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, cache=None, teacher=None):  # step 7 blows the weights up; every loss is NaN after
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] == 7:
                with torch.no_grad():
                    self.lm_head.weight.fill_(float("nan"))
        return real(self, idx, targets, cache, teacher)

    monkeypatch.setattr(GPT, "forward", forward)
    args = run_args(tiny_file, tok_file, tmp_path, "--max_bad_steps", "4", "--eval_interval", "4")
    digest, real_write = {}, checkpoint.atomic_write

    def write_and_hash(path, write):  # remember what the last good checkpoints looked like
        real_write(path, write)
        digest[Path(path).name] = hashlib.sha256(Path(path).read_bytes()).hexdigest()

    monkeypatch.setattr(checkpoint, "atomic_write", write_and_hash)

    assert train_bpe.main(args) == 2
    out, err = capsys.readouterr()
    message = [line for line in err.splitlines() if "error:" in line]
    assert len(message) == 1 and "--max_bad_steps 4" in message[0] and str(tmp_path / LAST) in message[0]
    assert "step 8: train loss nan, val loss nan" in out and f"not finite: {tmp_path / LAST} not overwritten" in out
    for name in (LAST, BEST):
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest[name]
        state = load_checkpoint(tmp_path / name)
        assert state["step"] == 4 and all(torch.isfinite(t).all() for t in state["model"].values())


# --------------------------------------------------------------------------- real signals, in a subprocess

# Runs train_bpe.main with a pause at step 3 (after the checkpoint of step 2), printing READY there.
PAUSING_RUN = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    import train_bpe
    import trainer
    real = trainer.lr_factor
    def lr_factor(step, *a, **k):
        if step == 3:
            print("READY", flush=True)
            time.sleep({pause})
        return real(step, *a, **k)
    trainer.lr_factor = lr_factor
    sys.exit(train_bpe.main(sys.argv[1:]))
""")


def start_paused_run(tiny_file, tok_file, out: Path, pause: float) -> subprocess.Popen:
    script = PAUSING_RUN.format(root=str(ROOT), pause=pause)
    args = run_args(tiny_file, tok_file, out, "--max_steps", "100", "--eval_interval", "2")
    proc = subprocess.Popen([sys.executable, "-u", "-c", script, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.strip() == "READY":
            return proc
    raise AssertionError(f"the run never reached step 3: {proc.communicate()[1][-2000:]}")


def folder_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # the token cache is a folder of files


def read_stderr_until(proc: subprocess.Popen, text: str, timeout: float = 30) -> None:
    """Reads the child's stderr (progress bars, no newlines) until text shows up."""
    seen, deadline = "", time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen[-2000:]
        if select.select([proc.stderr], [], [], 0.1)[0]:
            seen += os.read(proc.stderr.fileno(), 65536).decode(errors="replace")


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_and_prints_the_resume_command(tiny_file, tok_file, tmp_path):
    proc = start_paused_run(tiny_file, tok_file, tmp_path, pause=1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    stopped = re.search(r"stopped by SIGTERM at step (\d+); continue with: python train_bpe.py --resume (\S+)", out)
    # Step 4 unless this machine is so busy that the signal is handled after the paused step ended.
    assert stopped and int(stopped[1]) >= 4 and stopped[2] == str(tmp_path / LAST), out
    assert load_checkpoint(tmp_path / LAST)["step"] == int(stopped[1])
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once_without_touching_files(tiny_file, tok_file, tmp_path):
    proc = start_paused_run(tiny_file, tok_file, tmp_path, pause=30.0)
    before = folder_digest(tmp_path)
    proc.send_signal(signal.SIGINT)
    read_stderr_until(proc, "finishing this step")  # the first one was handled; the step is still paused
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)  # far sooner than the 30 s pause
    assert proc.returncode == 130
    assert "stopped at once by SIGINT" in err and "Traceback" not in err
    assert folder_digest(tmp_path) == before


def test_the_disk_space_estimate_matches_a_real_checkpoint(tiny_run):
    args, _ = train_bpe.parse_args(["--vocab_size", "300", *TINY_MODEL_ARGS[2:]])
    ratio = trainer.checkpoint_bytes(args) / (tiny_run / LAST).stat().st_size
    assert 0.8 < ratio < 1.25


def test_a_disk_that_fills_up_mid_run_keeps_the_previous_checkpoint(tiny_file, tok_file, tmp_path, monkeypatch,
                                                                    capsys):
    real_save, saves = torch.save, {"n": 0}

    def save_until_full(obj, f, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] > 2:  # the step-5 last + best went through; the step-10 save hits a full disk
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)
    assert train_bpe.main(run_args(tiny_file, tok_file, tmp_path)) == 2
    lines = [line.rsplit("\r", 1)[-1] for line in capsys.readouterr().err.splitlines()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("train_bpe.py: error: could not write")
    assert "No space left on device" in errors[0]
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / LAST)["step"] == 5
    assert not list(tmp_path.glob(".*.tmp"))


def test_fp16_overflows_are_skipped_but_only_real_nans_end_the_run():
    steps = SkippedSteps(limit=3)
    for _ in range(10):  # the GradScaler lowering its scale: inf gradients, finite loss
        assert not steps.record(loss_finite=True, grads_finite=False, scaler_on=True)
    assert steps.total == 10 and not steps.diverged
    assert steps.record(loss_finite=True, grads_finite=True, scaler_on=True)
    for _ in range(3):
        steps.record(loss_finite=False, grads_finite=False, scaler_on=True)
    assert steps.diverged and steps.total == 13


def test_ctrl_c_before_training_starts_exits_cleanly_without_writing(tiny_file, tmp_path, monkeypatch, capsys):
    def interrupted_training(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler interrupts this at once

    monkeypatch.setattr(tokenizer, "train_bpe", interrupted_training)
    code = train_bpe.main(["--data_file", str(tiny_file), "--tokenizer_path", str(tmp_path / "tok.json"),
                           "--out_dir", str(tmp_path), *TINY_MODEL_ARGS])
    err = capsys.readouterr().err
    assert code == 130 and "stopped at once by SIGINT" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
