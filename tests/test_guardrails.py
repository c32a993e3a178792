"""Guardrails for small corpora: the epoch count, a note on memorising, --early_stop, a note on corpus size."""

import pytest

import metrics
import train_bpe
import trainer
from checkpoint import load_checkpoint

from helpers import TINY_MODEL_ARGS


def args(tiny_file, out, *extra):
    return ["--data_file", str(tiny_file), "--tokenizer_path", str(out / "tok.json"), "--out_dir", str(out),
            *TINY_MODEL_ARGS, "--warmup_steps", "1", "--eval_iters", "1", *extra]


def scripted_losses(monkeypatch, pairs):
    """Evaluations return these (train, val) losses in turn: a model that memorises, on demand."""
    it = iter(pairs)
    monkeypatch.setattr(trainer, "estimate_loss", lambda *a, **k: dict(zip(("train", "val"), next(it))))


def test_every_record_counts_the_passes_over_the_training_tokens(tiny_file, tmp_path, capsys):
    assert train_bpe.main(args(tiny_file, tmp_path, "--max_steps", "12", "--eval_interval", "6",
                               "--log_interval", "1")) == 0
    out = capsys.readouterr()
    train_tokens = int(out.out.split(" train / ")[0].rsplit(", ", 1)[1].replace(",", ""))
    records = [r for r in metrics.read_metrics(tmp_path / metrics.METRICS_NAME) if r["kind"] in ("train", "eval")]
    for r in records:
        assert r["epoch"] == pytest.approx(r["step"] * 8 * 32 / train_tokens, abs=1e-4)  # batch 8 x block 32
    assert "epoch=" in out.err  # on the progress bar too


def test_a_memorising_model_gets_one_note_naming_the_best_checkpoint(tiny_file, tmp_path, monkeypatch, capsys):
    losses = [(4.0, 4.5), (3.5, 4.4), (3.0, 4.6), (2.5, 4.7), (2.0, 4.8), (1.5, 4.9), (1.0, 5.0)]
    scripted_losses(monkeypatch, losses)
    assert train_bpe.main(args(tiny_file, tmp_path, "--max_steps", "14", "--eval_interval", "2")) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: the validation loss")]
    assert len(notes) == 1  # once, however long it goes on
    assert "memorising" in notes[0] and f"{tmp_path / trainer.BEST_NAME} holds step 4" in notes[0]
    assert load_checkpoint(tmp_path / trainer.BEST_NAME)["step"] == 4


def test_no_note_while_validation_improves_or_training_stalls(tiny_file, tmp_path, monkeypatch, capsys):
    losses = [(4.0, 4.5), (3.9, 4.6), (3.8, 4.4), (3.7, 4.5), (3.8, 4.6), (3.9, 4.7), (3.6, 4.3)]
    scripted_losses(monkeypatch, losses)
    assert train_bpe.main(args(tiny_file, tmp_path, "--max_steps", "14", "--eval_interval", "2")) == 0
    assert "memorising" not in capsys.readouterr().out


def test_early_stop_ends_the_run_after_n_evaluations_without_a_new_best(tiny_file, tmp_path, monkeypatch, capsys):
    losses = [(4.0, 4.5), (3.5, 4.2), (3.0, 4.3), (2.5, 4.25), (2.0, 4.4), (1.5, 4.5), (1.0, 4.6)]
    scripted_losses(monkeypatch, losses)
    code = train_bpe.main(args(tiny_file, tmp_path, "--max_steps", "100", "--eval_interval", "2", "--early_stop", "3"))
    out = capsys.readouterr().out
    assert code == 0 and "early stop at step 10: no new best validation loss in 3 evaluations" in out
    assert "time budget" not in out and "done in" in out
    assert load_checkpoint(tmp_path / trainer.LAST_NAME)["step"] == 10  # saved as at any end
    best = load_checkpoint(tmp_path / trainer.BEST_NAME)
    assert best["step"] == 4 and best["best_step"] == 4


def test_early_stop_counts_across_a_resume(tiny_file, tmp_path, monkeypatch, capsys):
    scripted_losses(monkeypatch, [(4.0, 4.5), (3.5, 4.2), (3.0, 4.3), (2.5, 4.4), (2.0, 4.5)])
    assert train_bpe.main(args(tiny_file, tmp_path, "--max_steps", "6", "--eval_interval", "2",
                               "--early_stop", "3")) == 0
    assert load_checkpoint(tmp_path / trainer.LAST_NAME)["evals_since_best"] == 1
    assert train_bpe.main(["--resume", str(tmp_path / trainer.LAST_NAME), "--max_steps", "100"]) == 0
    assert "early stop at step 10" in capsys.readouterr().out  # the evaluation at step 6 counted before the resume


def test_a_small_corpus_for_the_model_says_what_to_expect(tiny_file, tmp_path, capsys):
    assert train_bpe.main(args(tiny_file, tmp_path, "--max_steps", "2", "--eval_interval", "2")) == 0
    [note] = [line for line in capsys.readouterr().out.splitlines() if "per parameter" in line]
    assert "small corpus" in note and "memorise" in note and "--dropout" in note
