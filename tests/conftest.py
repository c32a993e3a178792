"""Shared tiny fixtures: a few KB of text, a tokenizer trained on it, and a checkpoint trained from it."""

from pathlib import Path

import pytest

import data
import train_bpe

ROOT = Path(__file__).resolve().parent.parent

# A slice of the bundled corpus plus code with tabs, blank lines, CRLF and emoji: what users feed us.
TINY_TEXT = (ROOT / "data" / "input.txt").read_text(encoding="utf-8")[:12000] + (
    "\ndef train_model(x):\n\tif x:\n\t\treturn x  # tabs\n\n\n    spaces = 4\r\nwindows line\r\n🙂 naïve café ✓\n"
)

# A model small enough to train a few dozen steps in seconds.
TINY_MODEL_ARGS = [
    "--vocab_size", "300", "--n_layer", "2", "--n_head", "2", "--n_embed", "32", "--block_size", "32",
    "--dropout", "0", "--batch_size", "8", "--grad_accum_steps", "1", "--device", "cpu",
]


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8", newline="")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_file):
    return data.train_tokenizer(data.scan_corpus(data_file=tiny_file), vocab_size=300)


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
