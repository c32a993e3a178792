"""score_bpe.py: bits per byte of a checkpoint on your own text, checked against direct computations."""

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import score_bpe
import trainer
from checkpoint import load_model
from evaluate import stream_windows

from helpers import ROOT

KEYS = {"tokens", "bytes", "nats_per_token", "perplexity", "bits_per_byte"}


def score(capsys, *argv) -> dict:
    assert score_bpe.main([*argv, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bits_per_byte_of_a_text_equals_a_direct_computation(tiny_run, capsys):
    ckpt = tiny_run / trainer.BEST_NAME
    text = "ROMEO: But soft, what light 🙂"
    got = score(capsys, "--ckpt", str(ckpt), "--text", text)
    assert KEYS <= got.keys()
    model, tok, specials, _ = load_model(ckpt)
    ids = tok.encode(text, add_special_tokens=False).ids
    assert len(ids) < model.config.block_size  # one window: the whole text after <eos>
    x = torch.tensor([[specials.eos, *ids[:-1]]])
    with torch.no_grad():
        nats = F.cross_entropy(model(x)[0][0], torch.tensor(ids), reduction="sum").item()
    num_bytes = len(text.encode("utf-8"))
    assert got["tokens"] == len(ids) and got["bytes"] == num_bytes
    assert got["nats_per_token"] == pytest.approx(nats / len(ids), rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(nats / num_bytes / math.log(2), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nats / len(ids)), rel=1e-5)


def test_a_long_file_is_scored_in_windows_that_predict_each_token_once(tiny_run, tmp_path, capsys):
    ckpt = tiny_run / trainer.BEST_NAME
    path = tmp_path / "long.txt"
    path.write_text((ROOT / "data" / "input.txt").read_text(encoding="utf-8")[50000:53000], encoding="utf-8")
    model, tok, specials, _ = load_model(ckpt)
    ids = [specials.eos, *tok.encode(path.read_text(encoding="utf-8"), add_special_tokens=False).ids]
    block = model.config.block_size
    # Non-overlapping windows, computed here one by one.
    total = 0.0
    for start in range(0, len(ids) - 1, block):
        window = torch.tensor(ids[start : start + block + 1])
        with torch.no_grad():
            total += F.cross_entropy(model(window[None, :-1])[0][0], window[1:], reduction="sum").item()
    plain = score(capsys, "--ckpt", str(ckpt), "--file", str(path))
    assert plain["tokens"] == len(ids) - 1 and plain["bytes"] == path.stat().st_size
    assert plain["nats_per_token"] == pytest.approx(total / (len(ids) - 1), rel=1e-5)
    # Overlapping windows score the same tokens, each once, but with other contexts.
    strided = score(capsys, "--ckpt", str(ckpt), "--file", str(path), "--stride", "8")
    assert strided["tokens"] == plain["tokens"] and strided["bytes"] == plain["bytes"]
    assert strided["nats_per_token"] != pytest.approx(plain["nats_per_token"], rel=1e-6)


@pytest.mark.parametrize("n, block, stride", [(100, 32, 8), (33, 32, 32), (40, 32, 32), (200, 16, 5), (2, 8, 3)])
def test_stride_never_scores_a_token_twice_and_keeps_its_context(n, block, stride):
    scored = []
    for i, (start, length, keep) in enumerate(stream_windows(n, block, stride)):
        assert 1 <= length <= block and 1 <= keep <= length
        targets = range(start + 1 + length - keep, start + length + 1)  # the tokens this window predicts
        if i:
            assert all(t - 1 - start >= block - stride for t in targets)  # context before each of them
        scored += targets
    assert scored == list(range(1, n))  # every token after the first, once, in order


def test_per_file_lists_the_hardest_file_first(tiny_run, tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    verse = (ROOT / "data" / "input.txt").read_text(encoding="utf-8")
    (folder / "verse.txt").write_text(verse[60000:62000], encoding="utf-8")
    (folder / "repeats.txt").write_text("ROMEO:\nO, she doth teach the torches to burn bright!\n\n" * 40)
    noise = "".join(random.Random(0).choice("qxzjkvw0123456789#$%") for _ in range(2000))
    (folder / "noise.md").write_text(noise, encoding="utf-8")
    got = score(capsys, "--ckpt", str(tiny_run / trainer.BEST_NAME), "--data_dir", str(folder), "--per_file")
    files = got["files"]
    names = [f["path"].rsplit("/", 1)[-1] for f in files]
    assert sorted(names) == ["noise.md", "repeats.txt", "verse.txt"] and names[0] == "noise.md"  # random symbols
    assert all(KEYS <= f.keys() for f in files)
    assert sum(f["tokens"] for f in files) == got["tokens"] and sum(f["bytes"] for f in files) == got["bytes"]
    assert np.all(np.diff([f["bits_per_byte"] for f in files]) <= 0)


def test_the_table_names_the_totals_and_the_files(tiny_run, tiny_file, capsys):
    assert score_bpe.main(["--ckpt", str(tiny_run / trainer.BEST_NAME), "--file", str(tiny_file), "--per_file",
                           "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "bits/byte" in out and "corpus: 1 file(s)" in out and str(tiny_file) in out
