"""Never lose work, part II: diverged models, outputs inside the corpus, full disks, signals, closed streams."""

import errno
import hashlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import export_hf
import metrics
import sampling
import token_cache
import train_bpe
import trainer
from checkpoint import load_checkpoint
from model import GPT

from helpers import ROOT, TINY_MODEL_ARGS, signal_at_step

LAST, BEST = trainer.LAST_NAME, trainer.BEST_NAME


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_lines(err: str) -> list[str]:
    return [line.rsplit("\r", 1)[-1] for line in err.splitlines() if "error" in line]


def tiny_args(tiny_file, out: Path, *extra) -> list[str]:
    return ["--data_file", str(tiny_file), "--tokenizer_path", str(out / "tok.json"), "--out_dir", str(out),
            *TINY_MODEL_ARGS, "--max_steps", "10", "--eval_interval", "5", "--eval_iters", "2",
            "--warmup_steps", "1", *extra]


def poison_evaluation(monkeypatch):
    """Every validation loss is NaN while the weights stay finite (a model that blew up into huge values)."""
    real = GPT.forward

    def forward(self, idx, targets=None, cache=None, teacher=None):
        logits, loss = real(self, idx, targets, cache, teacher)
        if not self.training and targets is not None:
            loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)


# --------------------------------------------------------------------------- diverged models


def test_a_model_whose_validation_loss_is_not_finite_never_overwrites_a_checkpoint(tiny_run, tmp_path, monkeypatch,
                                                                                   capsys):
    for name in (LAST, BEST):
        shutil.copy(tiny_run / name, tmp_path / name)
    before = {name: sha(tmp_path / name) for name in (LAST, BEST)}
    poison_evaluation(monkeypatch)
    assert train_bpe.main(["--resume", str(tmp_path / LAST), "--max_steps", "50", "--eval_interval", "5"]) == 2
    out, err = capsys.readouterr()
    assert "(best, saved)" not in out and f"not finite: {tmp_path / LAST} not overwritten" in out
    [line] = error_lines(err)
    assert "diverged" in line and "step 40 (as it was before this run)" in line and "Traceback" not in err
    assert {name: sha(tmp_path / name) for name in (LAST, BEST)} == before


def test_a_run_that_never_had_a_finite_model_says_so_instead_of_pointing_at_a_missing_file(tiny_file, tmp_path,
                                                                                           monkeypatch, capsys):
    poison_evaluation(monkeypatch)
    assert train_bpe.main(tiny_args(tiny_file, tmp_path)) == 2
    out, err = capsys.readouterr()
    [line] = error_lines(err)
    assert "no model with a finite validation loss" in line and "lower --lr" in line
    assert "sample with" not in out and not list(tmp_path.glob("*.pt"))


# --------------------------------------------------------------------------- output inside the corpus


@pytest.mark.parametrize("layout", ["out_dir inside data_dir", "data_dir is the working folder"])
def test_the_runs_own_files_are_left_out_of_a_corpus_folder(layout, tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "notes"
    corpus.mkdir()
    text = (ROOT / "data" / "input.txt").read_text(encoding="utf-8")
    for i in range(4):
        (corpus / f"note{i}.txt").write_text(text[i * 6000 : (i + 1) * 6000], encoding="utf-8")
    if layout == "out_dir inside data_dir":
        argv = ["--data_dir", str(corpus), "--out_dir", str(corpus / "run"), "--tokenizer_path",
                str(corpus / "run" / "tok.json")]
    else:
        monkeypatch.chdir(corpus)  # cd notes && python train_bpe.py --data_dir .  (bpe/ and token_cache/ land here)
        argv = ["--data_dir", "."]
    argv += [*TINY_MODEL_ARGS, "--max_steps", "4", "--eval_interval", "4", "--eval_iters", "1", "--warmup_steps", "1",
             "--verbose"]
    assert train_bpe.main(argv) == 0
    first = capsys.readouterr().out
    assert "corpus: 4 file(s)" in first
    assert train_bpe.main(argv) == 0  # again: the first run's tokenizer, cache and metrics are not documents
    second = capsys.readouterr().out
    assert "corpus: 4 file(s)" in second and "token cache: reusing" in second
    assert "output of this run" in second  # --verbose says what was left out
    assert not list(corpus.rglob("tok*-1.json")) and not list(corpus.rglob("tokenizer-1.json"))


# --------------------------------------------------------------------------- writes that fail


def test_a_full_disk_while_logging_is_one_line_and_keeps_the_last_checkpoint(tiny_file, tmp_path, monkeypatch,
                                                                             capsys):
    real_open, appends = open, itertools.count()

    def filling_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(metrics.METRICS_NAME) and "a" in mode and next(appends) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(metrics, "open", filling_open, raising=False)
    code = train_bpe.main(tiny_args(tiny_file, tmp_path, "--log_interval", "1"))
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    [line] = error_lines(err)
    assert metrics.METRICS_NAME in line and "No space left on device" in line and "free some disk space" in line
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_export_to_a_read_only_place_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("safetensors", reason="export needs the safetensors extra")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(export_hf.tempfile, "mkdtemp", read_only)
    assert export_hf.main(["--ckpt", str(tiny_run / BEST), "--out", str(tmp_path / "hf")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "--out" in line and "Read-only file system" in line and "pick a folder you can write to" in line


def test_a_stop_while_encoding_leaves_no_empty_cache_folder(tiny_file, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        yield from ()

    monkeypatch.setattr(data, "encode_pieces", interrupted)
    assert train_bpe.main(tiny_args(tiny_file, tmp_path)) == 130
    assert "stopped at once by SIGINT" in capsys.readouterr().err
    assert not (tmp_path / "token_cache").exists()


def test_token_cache_files_have_the_usual_mode(tiny_run):
    umask = os.umask(0)
    os.umask(umask)
    for name in (token_cache.CACHE_BIN, token_cache.CACHE_META):
        assert (tiny_run / "token_cache" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# --------------------------------------------------------------------------- signals and time budgets


def test_a_signal_during_the_final_evaluation_ends_the_finished_run_normally(tiny_file, tmp_path, monkeypatch, capsys):
    real = trainer.estimate_loss

    def estimate_then_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the last evaluation runs
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "estimate_loss", estimate_then_sigterm)
    assert train_bpe.main(tiny_args(tiny_file, tmp_path, "--eval_interval", "10")) == 0
    out = capsys.readouterr().out
    assert "done in" in out and "continue with" not in out
    assert load_checkpoint(tmp_path / LAST)["step"] == 10


def test_a_stop_before_the_first_metrics_record_draws_no_plot_and_no_traceback(tiny_file, tmp_path, monkeypatch,
                                                                                capsys):
    signal_at_step(monkeypatch, 0)
    assert train_bpe.main(tiny_args(tiny_file, tmp_path, "--log_interval", "10")) == 130
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "stopped by SIGINT at step 1" in out
    assert load_checkpoint(tmp_path / LAST)["step"] == 1


def test_with_max_time_the_bar_counts_the_budget_not_the_steps(tiny_file, tmp_path, monkeypatch, capsys):
    ticks = itertools.count()
    monkeypatch.setattr(trainer, "clock", lambda: float(next(ticks)))  # one second per reading
    argv = tiny_args(tiny_file, tmp_path, "--max_steps", "100000", "--max_time", "30")
    assert train_bpe.main(argv) == 0
    err = capsys.readouterr().err
    bar = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("training:")]
    assert bar and "/100000" not in err  # a 134 s preset run once showed an ETA of hours
    assert "100%" in bar[-1] and "step=" in bar[-1] and "epoch=" in bar[-1]


def test_a_run_that_would_take_hours_says_so_at_the_start(tiny_file, tmp_path, monkeypatch, capsys):
    ticks = itertools.count()
    monkeypatch.setattr(trainer, "clock", lambda: 100.0 * next(ticks))  # a slow machine: 100 s per reading
    assert train_bpe.main(tiny_args(tiny_file, tmp_path, "--max_steps", "300", "--eval_interval", "300")) == 0
    out = capsys.readouterr().out
    note = [line for line in out.splitlines() if line.startswith("note: a step takes")]
    assert len(note) == 1 and "hours" in note[0] and "--preset cpu" in note[0] and "--max_time" in note[0]


# --------------------------------------------------------------------------- streams, in subprocesses


def run_script(shell_command: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", shell_command], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_training_goes_on_when_its_stdout_goes_away(tiny_file, tmp_path):
    args = " ".join(tiny_args(tiny_file, tmp_path, "--max_steps", "30", "--eval_interval", "2"))
    proc = run_script(f"{sys.executable} train_bpe.py {args} | head -n 2 > /dev/null; echo rc=${{PIPESTATUS[0]}}")
    assert "rc=0" in proc.stdout and "Traceback" not in proc.stderr
    assert "stdout cannot be written" in proc.stderr
    assert load_checkpoint(tmp_path / LAST)["step"] == 30
    full = run_script(f"{sys.executable} train_bpe.py {args} --out_dir {tmp_path / 'full'} > /dev/full")
    assert full.returncode == 0 and "Traceback" not in full.stderr and "No space left" in full.stderr


@pytest.mark.slow
def test_sampling_into_a_closed_or_full_stdout_is_one_line(tiny_run):
    base = f"{sys.executable} sample_bpe.py --ckpt {tiny_run / BEST} --device cpu --max_new_tokens 50"
    closed = run_script(f"{base} >&-")
    assert closed.returncode == 2 and closed.stderr.count("\n") == 1 and "stdout is closed" in closed.stderr
    full = run_script(f"{base} > /dev/full")
    assert full.returncode == 2 and full.stderr.count("\n") == 1 and "No space left on device" in full.stderr
    piped = run_script(f"{base} --num_samples 20 | head -c 20 > /dev/null; echo rc=${{PIPESTATUS[0]}}")
    assert "rc=0" in piped.stdout and "Traceback" not in piped.stderr


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_bpe.py", "sample_bpe.py", "export_hf.py", "export_gguf.py"])
def test_ctrl_c_while_a_script_imports_is_no_traceback(script):
    # -X importtime reports each import as it finishes: the first of torch's submodules is well past the
    # script's first lines and long before torch (a second or two) is done, so the signal lands mid-import.
    proc = subprocess.Popen([sys.executable, "-X", "importtime", script, "--help"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if re.search(r"\|\s+torch\.", line):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, "".join(seen[-5:]) + rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest


@pytest.mark.slow
def test_verbose_prints_file_names_that_are_not_utf8_on_a_strict_terminal(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text = (ROOT / "data" / "input.txt").read_text(encoding="utf-8")[:12000]
    (corpus / "plain.txt").write_text(text, encoding="utf-8")
    os.mkdir(os.fsencode(corpus) + b"/caf\xe9")  # a folder whose name is latin-1, not UTF-8
    with open(os.fsencode(corpus) + b"/caf\xe9/notes.bin", "wb") as f:
        f.write(b"\x00\x01")
    args = " ".join(["--data_dir", str(corpus), "--out_dir", str(tmp_path / "out"), "--tokenizer_path",
                     str(tmp_path / "tok.json"), *TINY_MODEL_ARGS, "--max_steps", "2", "--eval_interval", "2",
                     "--eval_iters", "1", "--warmup_steps", "0", "--verbose"])
    proc = run_script(f"{sys.executable} train_bpe.py {args}", env={"PYTHONIOENCODING": "utf-8:strict"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "caf\\xe9" in proc.stdout and "other extension" in proc.stdout


# --------------------------------------------------------------------------- sampling speed


def test_the_stream_decoder_decodes_a_bounded_tail_however_long_the_text(tiny_tokenizer):
    text = (ROOT / "data" / "input.txt").read_text(encoding="utf-8")[:20000] + " 🙂 café 東京"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False).ids
    lengths = []

    class Counting:
        def decode(self, some):
            lengths.append(len(some))
            return tiny_tokenizer.decode(some)

    decoder = sampling.StreamDecoder(Counting())
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == text
    assert len(ids) > 5000 and max(lengths) <= 8  # never the whole text so far
    assert torch.tensor(lengths).float().mean() < 3
