"""The SentencePiece tokenizer option: training, round trips, bits per byte, checkpoints and sampling."""

import sys

import pytest
import torch

import data
import metrics
import sample_bpe
import tokenizer
import train_bpe
import trainer
from checkpoint import load_checkpoint, save_checkpoint

from helpers import TINY_MODEL_ARGS, TINY_TEXT

try:
    import sentencepiece  # noqa: F401
except ImportError:
    sentencepiece = None
needs_spm = pytest.mark.skipif(sentencepiece is None, reason="the SentencePiece option needs the sentencepiece extra")

# Characters the tiny corpus never shows (CJK, a rare emoji): byte fallback must still encode them.
UNSEEN = "  indented\tline\r\n\n中文 🦜 naïve ✓"


@pytest.fixture(scope="module")
def sp_tok(tiny_file):
    return tokenizer.train_sentencepiece(data.scan_corpus(data_file=tiny_file), vocab_size=400)


@needs_spm
def test_special_ids_match_the_byte_level_bpe(sp_tok):
    for idx, piece in enumerate(tokenizer.SPECIAL_TOKENS):
        assert sp_tok.token_to_id(piece) == idx
    assert sp_tok.token_to_id("no such piece") is None
    assert sp_tok.get_vocab_size() <= 400


@needs_spm
@pytest.mark.parametrize("text", [TINY_TEXT, UNSEEN], ids=["corpus", "unseen"])
def test_round_trip_is_exact_and_byte_lengths_add_up(sp_tok, text):
    ids = sp_tok.encode(text).ids
    assert 1 not in ids  # <unk>
    assert sp_tok.decode(ids) == text
    assert int(tokenizer.byte_lengths(sp_tok)[ids].sum()) == len(text.encode("utf-8"))  # bits per byte is honest
    assert [e.ids for e in sp_tok.encode_batch([text, "x"])] == [ids, sp_tok.encode("x").ids]


@needs_spm
def test_train_then_sample_with_sentencepiece(tiny_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data_file", str(tiny_file), "--out_dir", str(out), *TINY_MODEL_ARGS, "--max_steps", "6",
            "--warmup_steps", "1", "--eval_interval", "6", "--eval_iters", "1", "--vocab_size", "400"]
    assert train_bpe.main([*args, "--tokenizer_type", "sentencepiece", "--tokenizer_path", str(tmp_path / "t.json")]) == 0
    model_file = tmp_path / "t.model"  # the suffix follows the tokenizer type
    state = load_checkpoint(out / trainer.BEST_NAME)  # weights_only=True loads the embedded model
    assert state["tokenizer_type"] == "sentencepiece"
    assert state["tokenizer_model"].numpy().tobytes() == model_file.read_bytes()

    capsys.readouterr()
    assert sample_bpe.main(["--ckpt", str(out / trainer.BEST_NAME), "--prompt", "ROMEO:", "--temperature", "0",
                            "--max_new_tokens", "8", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:\n")

    # --resume continues with the embedded SentencePiece model; the metrics show one timeline.
    assert train_bpe.main(["--resume", str(out / trainer.LAST_NAME), "--max_steps", "8"]) == 0
    resumed = load_checkpoint(out / trainer.LAST_NAME)
    assert resumed["step"] == 8 and torch.equal(resumed["tokenizer_model"], state["tokenizer_model"])
    steps = [(r["kind"], r["step"]) for r in metrics.read_metrics(out / metrics.METRICS_NAME) if r["kind"] != "train"]
    assert steps == [("start", 0), ("eval", 6), ("start", 6), ("eval", 8)]

    # --tokenizer some.model reuses it: the new checkpoint embeds the very same model.
    out2 = tmp_path / "run2"
    assert train_bpe.main([*args[:2], "--out_dir", str(out2), *args[4:], "--tokenizer", str(model_file)]) == 0
    state2 = load_checkpoint(out2 / trainer.BEST_NAME)
    assert state2["tokenizer_type"] == "sentencepiece"
    assert torch.equal(state2["tokenizer_model"], state["tokenizer_model"])


def test_without_the_package_one_clear_line(tiny_file, tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # makes `import sentencepiece` fail
    code = train_bpe.main(["--data_file", str(tiny_file), "--out_dir", str(tmp_path), *TINY_MODEL_ARGS,
                           "--tokenizer_type", "sentencepiece", "--tokenizer_path", str(tmp_path / "t.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install sentencepiece" in err
    assert not (tmp_path / "t.model").exists()

    # Sampling from a SentencePiece checkpoint says the same, naming the checkpoint.
    state = load_checkpoint(tiny_run / trainer.BEST_NAME)
    del state["tokenizer_json"]
    state.update(tokenizer_type="sentencepiece", tokenizer_model=torch.zeros(8, dtype=torch.uint8))
    ckpt = tmp_path / "sp.pt"
    save_checkpoint(ckpt, {k: v for k, v in state.items() if k not in ("format", "format_version")})
    assert sample_bpe.main(["--ckpt", str(ckpt), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sp.pt" in err and "pip install sentencepiece" in err


@needs_spm
def test_too_small_a_vocabulary_names_the_flag(tiny_file, tmp_path, capsys):
    code = train_bpe.main(["--data_file", str(tiny_file), "--out_dir", str(tmp_path), *TINY_MODEL_ARGS,
                           "--tokenizer_type", "sentencepiece", "--tokenizer_path", str(tmp_path / "t.model")])
    assert code == 2  # TINY_MODEL_ARGS ask for 300: fewer than 256 bytes + 4 specials + the corpus's characters
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--vocab_size 300 is too small for SentencePiece" in err


@needs_spm
def test_a_file_that_is_not_a_model_is_one_line(tiny_file, tmp_path, capsys):
    bad = tmp_path / "bad.model"
    bad.write_text("not a model")
    code = train_bpe.main(["--data_file", str(tiny_file), "--out_dir", str(tmp_path), *TINY_MODEL_ARGS,
                           "--tokenizer", str(bad)])
    assert code == 2
    assert "bad.model is not a SentencePiece model" in capsys.readouterr().err
