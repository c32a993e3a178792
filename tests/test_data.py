import json
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import tokenizer

ROUND_TRIP_CASES = {
    "prose": "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "code with tabs and indentation": "def f(x):\n\tif x:\n\t\treturn [i for i in x]\n\n\n    # four spaces\n",
    "crlf": "line one\r\nline two\r\n\r\n",
    "unicode and emoji": "naïve café — 東京 🙂👍🏽 ∑ x² \u200b",
    "odd whitespace": "  leading\t\ttabs   trailing  \n\n\n \x0b\x0c",
}


@pytest.mark.parametrize("text", ROUND_TRIP_CASES.values(), ids=ROUND_TRIP_CASES.keys())
def test_round_trip_is_exact(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text, add_special_tokens=False).ids
    assert tiny_tokenizer.decode(ids) == text


def test_tokenizer_has_specials_at_fixed_ids_and_every_byte(tiny_tokenizer):
    for i, name in enumerate(tokenizer.SPECIAL_TOKENS):
        assert tiny_tokenizer.token_to_id(name) == i
    # Never an <unk>: any byte sequence is representable.
    assert tiny_tokenizer.token_to_id("<unk>") not in tiny_tokenizer.encode("\x00\x7f€𝄞", add_special_tokens=False).ids


def test_vocab_size_below_byte_alphabet_is_refused(tiny_file):
    with pytest.raises(data.DataError, match="--vocab_size 100"):
        tokenizer.train_bpe(data.scan_corpus(data_file=tiny_file), vocab_size=100)


def merges(tok) -> list:
    return json.loads(tok.to_str())["model"]["merges"]


def test_min_frequency_stops_a_small_corpus_vocabulary_early(tiny_file):
    """--min_frequency: merging stops at the first pair rarer than the count, so the vocabulary is the
    head of the one merged without it, and text still round-trips."""
    corpus = data.scan_corpus(data_file=tiny_file)
    full = tokenizer.train_bpe(corpus, vocab_size=2000)
    counts = [tokenizer.train_bpe(corpus, vocab_size=2000, min_frequency=n) for n in (4, 16, 10**6)]
    sizes = [tok.get_vocab_size() for tok in counts]
    assert full.get_vocab_size() > sizes[0] > sizes[1] > sizes[2]
    assert sizes[2] == 256 + len(tokenizer.SPECIAL_TOKENS)  # no pair occurs a million times: bytes only
    for tok in counts:
        assert merges(tok) == merges(full)[: len(merges(tok))]
        text = tiny_file.read_text(encoding="utf-8")
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text


def test_min_frequency_changes_nothing_where_the_text_has_enough_pairs(tiny_file):
    """A corpus with enough text reaches --vocab_size before any pair is rarer than the count: the same
    tokenizer, so a large corpus trains exactly as without the flag."""
    corpus = data.scan_corpus(data_file=tiny_file)
    assert tokenizer.train_bpe(corpus, 280, min_frequency=4).to_str() == tokenizer.train_bpe(corpus, 280).to_str()


def test_folder_order_extension_filter_and_skip_rules(tmp_path):
    files = {
        "b/z.py": "print('z')\n", "b/a.md": "# a\n", "a.txt": "first\n", "c/notes.rst": "rst\n",
        "image.png": "not text by extension", "script.js": "let x = 1;\n",
        ".git/config.txt": "hidden folder", ".venv/lib.py": "venv", "node_modules/m.js": "junk",
        "__pycache__/x.py": "cache", "empty.txt": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02binary")

    corpus = data.scan_corpus(data_dir=tmp_path)

    used = [Path(p).relative_to(tmp_path).as_posix() for p in corpus.files]
    assert used == ["a.txt", "b/a.md", "b/z.py", "c/notes.rst", "script.js"]
    assert corpus.skipped == {"empty": 1, "not UTF-8": 1, "binary": 1}
    summary = corpus.summary()
    assert "5 file(s)" in summary and "1 binary" in summary and "1 not UTF-8" in summary


def test_folder_without_text_files_names_the_extensions(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(data.DataError, match=r"no usable text files.*\.txt .*\.py"):
        data.scan_corpus(data_dir=tmp_path)


def test_file_and_folder_flags_swapped_are_explained(tmp_path, tiny_file):
    with pytest.raises(data.DataError, match="use --data_dir"):
        data.scan_corpus(data_file=tmp_path)
    with pytest.raises(data.DataError, match="use --data_file"):
        data.scan_corpus(data_dir=tiny_file)


def test_documents_end_with_eos_and_array_is_compact(tiny_tokenizer):
    docs = ["hello world", "second doc\n"]
    EOS_ID = tokenizer.special_ids(tiny_tokenizer).eos
    tokens = data.encode_corpus(tiny_tokenizer, docs, EOS_ID, len(docs))
    assert tokens.dtype == np.uint16
    assert (tokens == EOS_ID).sum() == 2 and tokens[-1] == EOS_ID
    first = tiny_tokenizer.encode(docs[0], add_special_tokens=False).ids
    assert tokens[: len(first)].tolist() == first and tokens[len(first)] == EOS_ID


def test_uint32_for_large_vocabularies():
    assert data.token_dtype(65536) == np.uint16 and data.token_dtype(65537) == np.uint32


def test_batches_have_block_shape_and_targets_shifted_by_one():
    tokens = np.arange(1000, dtype=np.uint16)
    td = data.TokenData(tokens, block_size=16)
    assert len(td.train) == 900 and len(td.val) == 100
    x, y = td.get_batch("train", 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    xv, _ = td.get_batch("val", 4, torch.Generator().manual_seed(0))
    assert xv.min() >= 900  # validation blocks come only from the held-out tail


def test_batches_are_reproducible_with_a_seed():
    td = data.TokenData(np.arange(500, dtype=np.uint16), block_size=8)
    a = td.get_batch("train", 3, torch.Generator().manual_seed(7))
    b = td.get_batch("train", 3, torch.Generator().manual_seed(7))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_corpus_too_small_for_a_block_says_how_small():
    with pytest.raises(data.DataError, match=r"validation split has 5 tokens \(50 in all\).*needs 17"):
        data.TokenData(np.arange(50, dtype=np.uint16), block_size=16)


def test_bits_per_byte_counts_real_bytes(tiny_tokenizer):
    text = "héllo wörld 🙂"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False).ids
    lengths = tokenizer.byte_lengths(tiny_tokenizer)
    assert lengths[ids].sum() == len(text.encode("utf-8"))
    assert lengths[tokenizer.special_ids(tiny_tokenizer).eos] == 0
    # ln(2) nats per token over one byte per token is exactly one bit per byte.
    assert data.bits_per_byte(np.log(2), num_tokens=10, num_bytes=10) == pytest.approx(1.0)
