"""--max_time and the schedule on progress = max(step / max_steps, elapsed / max_time); no real timing."""

import itertools
import math
import shutil

import numpy as np
import pytest
import torch

import evaluate
import train_bpe
import trainer
from checkpoint import load_checkpoint
from model import GPT, GPTConfig
from schedule import budget_spent, lr_factor, parse_duration, progress

from helpers import TINY_MODEL_ARGS


def test_time_budget_drives_the_cosine_when_it_is_the_tighter_limit():
    # 20 of 10_000 steps done but half the time gone: the LR is halfway down the cosine.
    assert lr_factor(20, 10, 10_000, 0.0, elapsed=50.0, max_time=100.0) == pytest.approx(0.5, abs=1e-3)
    # Budget spent: fully decayed, whatever the step count says.
    assert lr_factor(20, 10, 10_000, 0.1, elapsed=100.0, max_time=100.0) == pytest.approx(0.1)
    # Step progress still wins when steps run out first.
    assert lr_factor(100, 10, 100, 0.1, elapsed=1.0, max_time=1000.0) == pytest.approx(0.1)


def test_warmup_counts_steps_even_with_a_time_budget():
    assert lr_factor(4, 10, 10_000, 0.1, elapsed=999.0, max_time=100.0) == pytest.approx(0.5)


def test_lr_never_increases_after_warmup_as_time_passes():
    factors = [lr_factor(s, 5, 1000, 0.1, elapsed=s * 0.7, max_time=100.0) for s in range(5, 200)]
    assert all(a >= b for a, b in itertools.pairwise(factors))
    assert factors[-1] == pytest.approx(0.1)


def test_progress_and_budget_spent():
    assert progress(0, 100) == 0.0
    assert progress(30, 100, elapsed=60.0, max_time=100.0) == pytest.approx(0.6)
    assert progress(300, 100) == 1.0  # clamped
    assert not budget_spent(99, 100, elapsed=99.0, max_time=100.0)
    assert budget_spent(100, 100)
    assert budget_spent(5, 100, elapsed=100.0, max_time=100.0)
    assert not budget_spent(5, 100, elapsed=1e6)  # no time budget given


@pytest.mark.parametrize("text, seconds", [("300", 300), ("2.5", 2.5), ("2:30", 150), ("1:02:03", 3723),
                                           ("0:05:00", 300)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "0", "-5", "1:60", "1::2", "1:2:3:4", "inf"])
def test_parse_duration_rejects_nonsense(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_bad_max_time_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        train_bpe.main(["--max_time", "5 minutes"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--max_time" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_max_time_stops_training_then_evaluates_and_checkpoints(tiny_file, tmp_path, monkeypatch, capsys):
    # A fake clock that advances one second per reading: the 10 s budget ends long before 1000 steps.
    ticks = itertools.count()
    monkeypatch.setattr(trainer, "clock", lambda: float(next(ticks)))
    code = train_bpe.main([
        "--data_file", str(tiny_file), "--tokenizer_path", str(tmp_path / "tok.json"), "--out_dir", str(tmp_path),
        *TINY_MODEL_ARGS, "--max_steps", "1000", "--eval_interval", "500", "--eval_iters", "2",
        "--use_cosine", "--warmup_steps", "2", "--max_time", "10",
    ])
    assert code == 0
    ckpt = load_checkpoint(tmp_path / trainer.LAST_NAME)
    assert 2 < ckpt["step"] < 10  # stopped on time, not on steps
    assert math.isfinite(ckpt["best_val_loss"])  # evaluated at the stop
    assert (tmp_path / trainer.BEST_NAME).exists()
    assert "time budget" in capsys.readouterr().out


def test_evaluate_stream_covers_every_token_once_whatever_the_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embed=16, dropout=0.0))
    tokens = np.random.default_rng(0).integers(0, 50, size=8 * 5 + 3).astype(np.uint16)  # a short tail
    expected_sum = 0.0
    for s in range(0, len(tokens) - 1, 8):
        window = torch.from_numpy(tokens[s : s + 9].astype(np.int64))[None]
        _, loss = model(window[:, :-1], window[:, 1:])
        expected_sum += loss.item() * (window.size(1) - 1)
    expected = expected_sum / (len(tokens) - 1)
    for batch_size in (1, 3, 64):
        assert evaluate.evaluate_stream(model, tokens, batch_size, "cpu") == pytest.approx(expected, rel=1e-5)


def test_a_resumed_run_counts_the_time_already_trained(tiny_file, tmp_path, monkeypatch):
    ticks = itertools.count()
    monkeypatch.setattr(trainer, "clock", lambda: float(next(ticks)))  # one second per reading
    common = ["--data_file", str(tiny_file), "--tokenizer_path", str(tmp_path / "tok.json"), "--out_dir", str(tmp_path)]
    assert train_bpe.main([*common, *TINY_MODEL_ARGS, "--max_steps", "4", "--eval_interval", "4",
                           "--eval_iters", "2", "--warmup_steps", "1"]) == 0
    trained = load_checkpoint(tmp_path / trainer.LAST_NAME)["train_time"]
    assert trained > 0
    # A budget only a little above the time already spent ends the resumed run within a few steps.
    last = str(tmp_path / trainer.LAST_NAME)
    assert train_bpe.main(["--resume", last, "--max_steps", "1000", "--max_time", str(trained + 6)]) == 0
    state = load_checkpoint(tmp_path / trainer.LAST_NAME)
    assert 4 < state["step"] < 10 and state["train_time"] >= trained + 6


def test_resume_refuses_a_different_optimizer(tiny_run, tmp_path, capsys):
    shutil.copy(tiny_run / trainer.LAST_NAME, tmp_path / trainer.LAST_NAME)
    code = train_bpe.main(["--resume", str(tmp_path / trainer.LAST_NAME), "--optimizer", "muon"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--optimizer muon" in err and len(err.strip().splitlines()) == 1
