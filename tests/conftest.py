"""Shared tiny fixtures: a few KB of text, a tokenizer trained on it, and a checkpoint trained from it."""

from pathlib import Path

import pytest

import data
import tokenizer
import train_bpe

from helpers import TINY_MODEL_ARGS, TINY_TEXT


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8", newline="")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_file):
    return tokenizer.train_bpe(data.scan_corpus(data_file=tiny_file), vocab_size=300)


@pytest.fixture(scope="session")
def tiny_run(tiny_file, tmp_path_factory) -> Path:
    """An out_dir holding bpe_best.pt and mini_gpt_last.pt from a 40-step run on the tiny corpus."""
    out = tmp_path_factory.mktemp("run")
    code = train_bpe.main([
        "--data_file", str(tiny_file), "--tokenizer_path", str(out / "tok.json"), "--out_dir", str(out),
        *TINY_MODEL_ARGS, "--max_steps", "40", "--eval_interval", "20", "--eval_iters", "4",
        "--use_cosine", "--warmup_steps", "5", "--lr", "3e-3",
    ])
    assert code == 0
    return out
