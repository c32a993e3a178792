"""--batch_order epochs: each pass visits every non-overlapping window once, in a new order, and a resumed run
draws exactly what an uninterrupted one draws; --lr_schedule wsd: constant, then a linear warmdown."""

import numpy as np
import pytest
import torch

import data
import train_bpe
import trainer
from checkpoint import load_checkpoint
from schedule import lr_factor

from helpers import TINY_MODEL_ARGS


def starts_of(token_data, draws, batch_size, seed=7):
    """The window starts of batches 0 .. draws - 1 (tokens are their own positions, so x[:, 0] is the start)."""
    return [int(s) for d in range(draws) for s in token_data.epoch_batch(d, batch_size, seed)[0][:, 0]]


@pytest.mark.parametrize("num_tokens, block", [(1000, 32), (1003, 7), (40, 32)])
def test_every_pass_visits_each_window_once_from_one_offset(num_tokens, block):
    td = data.TokenData(np.arange(num_tokens + block + 1, dtype=np.int64), block, val_start=num_tokens)
    n = td.windows_per_epoch()
    assert n == max(1, (len(td.train) - block) // block)
    batch = 3
    starts = starts_of(td, (3 * n) // batch + 1, batch)
    passes = [starts[e * n : (e + 1) * n] for e in range(3)]
    for p in passes:
        assert len(set(p)) == n  # no window twice within a pass
        offset = min(p)
        assert 0 <= offset < block and sorted(p) == [offset + j * block for j in range(n)]  # non-overlapping
        assert max(p) + block + 1 <= len(td.train)  # every window (and its targets) fits
    if n > 5:
        assert passes[0] != passes[1] and passes[1] != passes[2]  # a new order (and offset) every pass


def test_batches_straddle_passes_and_depend_only_on_the_draw_and_seed():
    td = data.TokenData(np.arange(2000, dtype=np.int64), 16)
    n = td.windows_per_epoch()
    a = starts_of(td, 40, 5)
    fresh = data.TokenData(np.arange(2000, dtype=np.int64), 16)
    assert [int(s) for s in fresh.epoch_batch(37, 5, 7)[0][:, 0]] == a[37 * 5 : 38 * 5]  # no hidden state
    assert len(a) > n  # the 40 batches crossed at least one pass boundary
    assert starts_of(td, 10, 5, seed=8) != a[:50]
    x, y = td.epoch_batch(3, 5, 7)
    assert torch.equal(y[:, :-1], x[:, 1:]) and x.shape == (5, 16)


def test_a_resumed_epochs_run_ends_bitwise_equal_to_an_uninterrupted_one(tiny_file, tiny_tokenizer, tmp_path):
    tok = tmp_path / "tok.json"
    tok.write_text(tiny_tokenizer.to_str(), encoding="utf-8")
    common = [*TINY_MODEL_ARGS, "--data_file", str(tiny_file), "--tokenizer", str(tok), "--batch_order", "epochs",
              "--eval_interval", "4", "--eval_iters", "2", "--lr", "3e-3", "--optimizer", "muon", "--warmup_steps", "0",
              "--pos_emb", "rope", "--norm", "rmsnorm", "--mlp", "swiglu", "--no-bias", "--qk_norm"]
    # A constant LR (no --use_cosine), so the first part's shorter --max_steps changes nothing but where it stops.
    assert train_bpe.main([*common, "--out_dir", str(tmp_path / "full"), "--max_steps", "12"]) == 0
    assert train_bpe.main([*common, "--out_dir", str(tmp_path / "part"), "--max_steps", "8"]) == 0
    assert train_bpe.main(["--resume", str(tmp_path / "part" / trainer.LAST_NAME), "--max_steps", "12"]) == 0
    full, part = (load_checkpoint(tmp_path / d / trainer.LAST_NAME) for d in ("full", "part"))
    assert full["step"] == part["step"] == 12 and full["args"]["batch_order"] == "epochs"
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, part["model"][name]), name


def test_wsd_holds_the_peak_then_decays_linearly_over_the_warmdown():
    f = lambda step: lr_factor(step, 10, 110, 0.0, shape="wsd", warmdown=0.3)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == f(50) == f(80) == 1.0  # progress past warmup up to 0.7: the stable phase
    assert f(95) == pytest.approx(0.5)  # halfway through the last 30 steps
    assert f(109) == pytest.approx(1 / 30) and f(110) == 0.0
    # The floor is respected, and time progress ends the decay as it does for the cosine.
    assert lr_factor(95, 10, 110, 0.1, shape="wsd", warmdown=0.3) == pytest.approx(0.55)
    assert lr_factor(20, 10, 110, 0.1, elapsed=90.0, max_time=100.0, shape="wsd", warmdown=0.3) == pytest.approx(
        0.1 + 0.9 * (0.1 / 0.3))
