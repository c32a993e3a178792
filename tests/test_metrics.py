"""metrics.jsonl written during training, loss.png drawn from it, and --plot_only."""

import json
import math

import pytest

import metrics
import progress
import train_bpe
from files import OutputError


def records(path, kind):
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def test_training_writes_metrics_per_log_interval_and_eval(tiny_run):
    path = tiny_run / metrics.METRICS_NAME
    tokens_per_step = 8 * 32  # --batch_size 8, --block_size 32, one micro-batch
    train = records(path, "train")
    evals = records(path, "eval")
    assert [r["step"] for r in train] == [10, 20, 30, 40]  # default --log_interval 10, --max_steps 40
    assert [r["step"] for r in evals] == [20, 40]  # --eval_interval 20
    for r in train + evals:
        assert r["tokens"] == r["step"] * tokens_per_step
        assert r["elapsed"] > 0 and r["tok_s"] > 0 and r["lr"] > 0
    for r in evals:
        assert math.isclose(r["val_ppl"], math.exp(r["val_loss"]), rel_tol=1e-9)
        assert 0 < r["val_bpb"] < 16  # a byte holds 8 bits; a 40-step model is worse than that but not absurd
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] + 0.5


def test_loss_png_is_drawn_at_the_end_and_redrawn_by_plot_only(tiny_run, tmp_path):
    pytest.importorskip("matplotlib", reason="loss.png needs matplotlib (requirements-extra.txt)")
    import matplotlib.image

    png = tiny_run / metrics.PLOT_NAME
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert width > 400 and height > 200

    copy = tmp_path / metrics.METRICS_NAME
    copy.write_bytes((tiny_run / metrics.METRICS_NAME).read_bytes())
    assert train_bpe.main(["--plot_only", str(copy)]) == 0
    assert (tmp_path / metrics.PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_only_with_a_missing_file_is_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plot_only needs matplotlib (requirements-extra.txt)")
    assert train_bpe.main(["--plot_only", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.jsonl does not exist" in err


def test_without_matplotlib_one_line_says_how_to_get_the_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(metrics, "have_matplotlib", lambda: False)
    path = tmp_path / metrics.METRICS_NAME
    metrics.MetricsLog(path).write("eval", step=1, tokens=1, lr=1e-3, train_loss=1.0, val_loss=1.0)
    progress.draw_plot(path)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "pip install -r requirements-extra.txt" in out
    assert not (tmp_path / metrics.PLOT_NAME).exists()
    assert train_bpe.main(["--plot_only", str(path)]) == 2
    assert "needs matplotlib" in capsys.readouterr().err


def test_reader_keeps_only_the_latest_timeline(tmp_path):
    path = tmp_path / metrics.METRICS_NAME
    log = metrics.MetricsLog(path)
    log.write("start", step=0)
    for step in (10, 20, 30):
        log.write("train", step=step, tokens=step, loss=float("nan") if step == 30 else 1.0)
    log.write("start", step=20)  # resumed from the step-20 checkpoint: the old step 30 is superseded
    log.write("train", step=30, tokens=30, loss=0.5)
    with open(path, "a") as f:
        f.write('{"kind": "train", "st')  # torn by a crash mid-write
    got = [(r["step"], r["loss"]) for r in metrics.read_metrics(path) if r["kind"] == "train"]
    assert got == [(10, 1.0), (20, 1.0), (30, 0.5)]
    assert json.loads(path.read_text().splitlines()[3])["loss"] is None  # NaN is stored as valid JSON


def test_non_finite_values_at_any_depth_are_stored_as_null(tmp_path):
    path = tmp_path / metrics.METRICS_NAME
    metrics.MetricsLog(path).write("start", step=0, config={"grad_clip": math.inf, "lrs": [1e-3, math.nan]})
    record = json.loads(path.read_text())
    assert record["config"] == {"grad_clip": None, "lrs": [1e-3, None]}


def test_a_log_that_cannot_be_written_is_one_error_naming_it(tmp_path):
    path = tmp_path / metrics.METRICS_NAME
    path.mkdir()  # a folder where the file should be
    with pytest.raises(OutputError, match=f"cannot append to {path}"):
        metrics.MetricsLog(path).write("train", step=1)
