"""Real corpora: messy folders, streamed reading in bounded pieces, the token cache, bounded memory."""

import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import token_cache
import tokenizer
import train_bpe

from helpers import TINY_MODEL_ARGS, TINY_TEXT

EOS_ID = 3  # <eos> in the tokenizers we train

GOOD = "A line of plain text that the scanner must keep.\n" * 3


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def scan(root):
    return data.scan_corpus(data_dir=root)


# --------------------------------------------------------------------------- messy folders


def _unreadable(root, monkeypatch):
    path = write(root / "secret.txt", GOOD)
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: make open() fail the way it would for a user
        real_open = open

        def deny(p, *a, **k):
            if os.fspath(p) == os.fspath(path):
                raise PermissionError(13, "Permission denied", os.fspath(p))
            return real_open(p, *a, **k)

        monkeypatch.setattr(data, "open", deny, raising=False)
    return path


MESSY_CASES = {
    # case: (make the entry under root, reason it is skipped)
    "binary with a text extension": (lambda r, m: write(r / "blob.txt", b"\x89PNG\x00\x00binary"), "binary"),
    "latin-1 text": (lambda r, m: write(r / "old.txt", "café naïve\n".encode("latin-1")), "not UTF-8"),
    "empty file": (lambda r, m: write(r / "empty.md", b""), "empty"),
    "only a byte order mark": (lambda r, m: write(r / "bom.md", b"\xef\xbb\xbf"), "empty"),
    "other extension": (lambda r, m: write(r / "photo.jpg", GOOD), "other extension"),
    "hidden folder": (lambda r, m: write(r / ".git" / "notes.txt", GOOD).parent, "ignored folder"),
    "tooling folder": (lambda r, m: write(r / "node_modules" / "x.js", GOOD).parent, "ignored folder"),
    "fifo with a text extension": (lambda r, m: os.mkfifo(r / "pipe.txt") or r / "pipe.txt", "not a regular file"),
    "link outside the folder": (lambda r, m: _link(r / "out.txt", write(r.parent / "elsewhere.txt", GOOD)),
                                "link outside folder"),
    "folder link outside": (lambda r, m: _link(r / "outdir", write(r.parent / "od" / "x.txt", GOOD).parent),
                            "link outside folder"),
    "broken link": (lambda r, m: _link(r / "gone.txt", r / "missing.txt"), "broken link"),
    "link to itself": (lambda r, m: _link(r / "self.txt", r / "self.txt"), "symlink loop"),
    "folder link to an ancestor": (lambda r, m: _link(r / "sub" / "up", r), "symlink loop"),
    "second link to a kept file": (lambda r, m: _link(r / "alias.txt", r / "keep.txt"), "duplicate link"),
    "unreadable file": (_unreadable, "unreadable"),
}


def _link(link, target):
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("case", list(MESSY_CASES))
def test_messy_entry_is_skipped_counted_and_listed(case, tmp_path, monkeypatch):
    root = tmp_path / "corpus"
    keep = write(root / "keep.txt", GOOD)
    make, reason = MESSY_CASES[case]
    entry = make(root, monkeypatch)
    corpus = scan(root)
    assert corpus.files == [str(keep)]  # nothing of the bad entry is read, and the good file still is
    assert corpus.skipped + corpus.ignored == {reason: 1}
    assert (str(entry), reason) in corpus.skipped_files
    assert f"1 {reason}" in corpus.summary()


def test_link_inside_the_folder_is_followed_once(tmp_path):
    root = tmp_path / "corpus"
    real = write(root / "repos" / "a" / "main.py", "print('hi')\n")
    _link(root / "linked", root / "repos")  # the same tree twice: read once
    _link(root / "notes.md", root / "repos" / "a" / "main.py")
    corpus = scan(root)
    assert corpus.files == [str(real)]
    assert sorted(r for _, r in corpus.skipped_files) == ["duplicate link", "duplicate link"]


def test_folder_without_accepted_files_names_the_extensions(tmp_path):
    write(tmp_path / "a.bin", b"\x00\x01")
    write(tmp_path / "b.txt", b"")
    with pytest.raises(data.DataError) as err:
        scan(tmp_path)
    message = str(err.value)
    assert ".txt" in message and ".py" in message and ".md" in message
    assert "1 empty" in message and "1 other extension" in message


@pytest.mark.parametrize("flag", ["--data_file", "--data_dir"])
def test_file_and_folder_flags_swapped_is_one_line_exit_2(flag, tmp_path, tiny_file, capsys):
    target = tmp_path if flag == "--data_file" else tiny_file
    assert train_bpe.main([flag, str(target), "--out_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err
    assert ("--data_dir" if flag == "--data_file" else "--data_file") in err  # says what to use instead


@pytest.mark.parametrize("where", ["a file", "inside a file"])
def test_unusable_cache_dir_is_one_line_exit_2(where, tmp_path, tiny_file, capsys):
    blocker = write(tmp_path / "not_a_folder", "a file where the cache folder should go\n")
    cache_dir = blocker if where == "a file" else blocker / "cache"  # the second fails only when writing
    argv = ["--data_file", str(tiny_file), "--out_dir", str(tmp_path / "o"), "--cache_dir", str(cache_dir),
            "--tokenizer_path", str(tmp_path / "tok.json"), *TINY_MODEL_ARGS]
    try:
        code = train_bpe.main(argv)
    except SystemExit as exc:  # flag errors exit from the parser
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("train_bpe.py: error: --cache_dir")
    assert blocker.read_text() == "a file where the cache folder should go\n"  # untouched


def test_file_vanishing_before_encoding_is_a_clear_error(tmp_path, tiny_tokenizer):
    root = tmp_path / "corpus"
    write(root / "a.txt", GOOD)
    gone = write(root / "b.txt", GOOD)
    corpus = scan(root)
    gone.unlink()
    with pytest.raises(data.DataError, match="b.txt"):
        token_cache.load_or_build_cache(corpus, tiny_tokenizer, tmp_path / "cache")
    assert not (tmp_path / "cache" / token_cache.CACHE_META).exists()


def _decode_documents(tok, tokens):
    """The documents a token stream holds, split at <eos>."""
    ids = np.asarray(tokens).tolist()
    docs, start = [], 0
    for i, t in enumerate(ids):
        if t == EOS_ID:
            docs.append(tok.decode(ids[start:i], skip_special_tokens=False))
            start = i + 1
    return docs


def test_bom_dropped_crlf_kept_exactly(tmp_path, tiny_tokenizer):
    root = tmp_path / "corpus"
    write(root / "bom.txt", b"\xef\xbb\xbfFirst line\r\nSecond line\r\n")
    write(root / "plain.md", "no bom 🙂\n")
    corpus = scan(root)
    cache = token_cache.load_or_build_cache(corpus, tiny_tokenizer, tmp_path / "cache")
    assert sorted(_decode_documents(tiny_tokenizer, cache.tokens())) == ["First line\r\nSecond line\r\n", "no bom 🙂\n"]


@pytest.mark.parametrize("one_line", [True, False])
def test_huge_file_is_encoded_in_bounded_pieces_and_round_trips(one_line, tmp_path, tiny_tokenizer, monkeypatch):
    # Shrunk limits stand in for a file of hundreds of MB: a 1 KiB piece limit on a ~60 KB file, and
    # 777-byte reads so chunk ends fall inside multi-byte characters.
    monkeypatch.setattr(data, "PIECE_CHARS", 1024)
    monkeypatch.setattr(data, "READ_CHUNK", 777)
    monkeypatch.setattr(data, "BATCH_CHARS", 4096)
    words = "naïve café ✓ 🙂 token\tstream " * 2000
    text = words.replace(" ", "") if one_line else words.replace("✓ ", "✓\r\n")
    write(tmp_path / "big" / "huge.txt", text)
    seen = []
    real_encode = tiny_tokenizer.encode_batch_fast

    class Spy:  # a Tokenizer cannot be monkeypatched (Rust type): wrap it and record what it is given
        def __getattr__(self, name):
            return getattr(tiny_tokenizer, name)

        def encode_batch_fast(self, texts, **kw):
            seen.extend(len(t) for t in texts)
            return real_encode(texts, **kw)

    corpus = scan(tmp_path / "big")
    cache = token_cache.load_or_build_cache(corpus, Spy(), tmp_path / "cache")
    assert _decode_documents(tiny_tokenizer, cache.tokens()) == [text]
    assert max(seen) <= 1024 and sum(seen) == len(text)


def test_thousands_of_tiny_files(tmp_path, tiny_tokenizer):
    root = tmp_path / "many"
    for i in range(2000):
        write(root / f"d{i // 100}" / f"{i}.txt", f"note {i}\n")
    corpus = scan(root)
    cache = token_cache.load_or_build_cache(corpus, tiny_tokenizer, tmp_path / "cache")
    docs = _decode_documents(tiny_tokenizer, cache.tokens())
    assert len(corpus.files) == cache.meta["num_documents"] == 2000
    assert sorted(docs) == sorted(f"note {i}\n" for i in range(2000))


# --------------------------------------------------------------------------- split and batches


def test_folder_split_keeps_documents_whole_single_file_keeps_90_10(tmp_path, tiny_tokenizer, tiny_file):
    root = tmp_path / "docs"
    for i in range(30):
        write(root / f"{i:02d}.txt", TINY_TEXT[i * 300 : (i + 1) * 300 + 50 * (i % 7)])
    cache = token_cache.load_or_build_cache(scan(root), tiny_tokenizer, tmp_path / "c1")
    tokens = np.asarray(cache.tokens())
    val_start = cache.meta["val_start"]
    assert tokens[val_start - 1] == EOS_ID  # validation begins right after a document's <eos>
    assert abs(val_start / len(tokens) - 0.9) <= 0.05

    single = token_cache.load_or_build_cache(data.scan_corpus(data_file=tiny_file), tiny_tokenizer, tmp_path / "c2")
    assert single.meta["val_start"] == int(single.meta["num_tokens"] * 0.9)


def test_memmap_batches_equal_in_memory_batches(tmp_path, tiny_tokenizer, tiny_file):
    corpus = data.scan_corpus(data_file=tiny_file)
    cache = token_cache.load_or_build_cache(corpus, tiny_tokenizer, tmp_path / "cache")
    in_memory = data.encode_corpus(tiny_tokenizer, [tiny_file.read_bytes().decode("utf-8")], EOS_ID)
    np.testing.assert_array_equal(cache.tokens(), in_memory)  # streamed file reading = whole-text encoding

    mapped = cache.token_data(block_size=16)
    assert isinstance(mapped.train, np.memmap)
    plain = data.TokenData(in_memory, block_size=16)
    for split in ("train", "val"):
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        for _ in range(3):
            for a, b in zip(mapped.get_batch(split, 4, g1), plain.get_batch(split, 4, g2)):
                assert torch.equal(a, b)
    lengths = tokenizer.byte_lengths(tiny_tokenizer)
    assert mapped.val_bytes == int(lengths[plain.val].sum())  # bits per byte sees the same byte count


# --------------------------------------------------------------------------- cache reuse and invalidation


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "corpus"
    for i in range(4):
        write(root / f"part{i}.md", TINY_TEXT[i * 2000 : (i + 1) * 2000])
    return root


def _touch_later(path):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


INVALIDATIONS = {
    "file edited": (lambda root: (write(root / "part1.md", "different text\n"),), "corpus changed"),
    "file touched": (lambda root: _touch_later(root / "part2.md"), "corpus changed"),
    "file added": (lambda root: write(root / "new.txt", "more text\n"), "corpus changed"),
    "file removed": (lambda root: (root / "part3.md").unlink(), "corpus changed"),
    "file renamed": (lambda root: (root / "part0.md").rename(root / "renamed.md"), "corpus changed"),
}


def test_second_run_reuses_the_cache(folder, tiny_tokenizer, tmp_path):
    first = token_cache.load_or_build_cache(scan(folder), tiny_tokenizer, tmp_path / "cache")
    stamp = first.path.stat().st_mtime_ns
    second = token_cache.load_or_build_cache(scan(folder), tiny_tokenizer, tmp_path / "cache")
    assert not first.reused and second.reused and "reusing" in second.message()
    assert second.path.stat().st_mtime_ns == stamp  # not rewritten
    assert second.meta == first.meta


@pytest.mark.parametrize("change", list(INVALIDATIONS))
def test_corpus_change_rebuilds_the_cache(change, folder, tiny_tokenizer, tmp_path):
    token_cache.load_or_build_cache(scan(folder), tiny_tokenizer, tmp_path / "cache")
    mutate, reason = INVALIDATIONS[change]
    mutate(folder)
    corpus = scan(folder)
    cache = token_cache.load_or_build_cache(corpus, tiny_tokenizer, tmp_path / "cache")
    assert not cache.reused and cache.reason == reason
    fresh = token_cache.load_or_build_cache(corpus, tiny_tokenizer, tmp_path / "fresh")
    np.testing.assert_array_equal(cache.tokens(), fresh.tokens())


def test_tokenizer_change_rebuilds_the_cache(folder, tiny_tokenizer, tmp_path):
    corpus = scan(folder)
    token_cache.load_or_build_cache(corpus, tiny_tokenizer, tmp_path / "cache")
    other = tokenizer.train_bpe(corpus, vocab_size=280)
    cache = token_cache.load_or_build_cache(corpus, other, tmp_path / "cache")
    assert not cache.reused and cache.reason == "tokenizer changed"
    assert int(np.asarray(cache.tokens()).max()) < 280


def _truncate(cache_dir):
    path = cache_dir / token_cache.CACHE_BIN
    path.write_bytes(path.read_bytes()[:-2])


def _set_meta(cache_dir, **changes):
    path = cache_dir / token_cache.CACHE_META
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


DAMAGE = {
    "truncated token file": (_truncate, "truncated"),
    "future format version": (lambda d: _set_meta(d, version=token_cache.CACHE_VERSION + 1), "format version"),
    "sidecar not JSON": (lambda d: (d / token_cache.CACHE_META).write_text("{not json"), "unreadable"),
    "sidecar removed": (lambda d: (d / token_cache.CACHE_META).unlink(), "no cache yet"),
    "token file removed": (lambda d: (d / token_cache.CACHE_BIN).unlink(), "unreadable"),
    "dtype changed": (lambda d: _set_meta(d, dtype="uint32"), "settings changed"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_is_rebuilt_not_trusted(damage, folder, tiny_tokenizer, tmp_path):
    corpus = scan(folder)
    good = token_cache.load_or_build_cache(corpus, tiny_tokenizer, tmp_path / "cache")
    expected = np.array(good.tokens())
    spoil, reason = DAMAGE[damage]
    spoil(tmp_path / "cache")
    write(tmp_path / "cache" / f".{token_cache.CACHE_BIN}.killed.tmp", b"half an array")  # a killed build's
    cache = token_cache.load_or_build_cache(corpus, tiny_tokenizer, tmp_path / "cache")
    assert not cache.reused and reason in cache.reason
    np.testing.assert_array_equal(cache.tokens(), expected)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_failed_check_keeps_the_previous_cache(folder, tiny_tokenizer, tmp_path):
    good = token_cache.load_or_build_cache(scan(folder), tiny_tokenizer, tmp_path / "cache")
    expected = np.array(good.tokens())
    write(folder / "extra.txt", "a file the user added by mistake\n")
    with pytest.raises(data.DataError, match="too small"):
        with token_cache.reuse_or_encode(scan(folder), tiny_tokenizer, tmp_path / "cache") as cache:
            assert not cache.reused
            cache.token_data(block_size=10**6)  # the kind of check train_bpe.py makes before committing
    (folder / "extra.txt").unlink()
    again = token_cache.load_or_build_cache(scan(folder), tiny_tokenizer, tmp_path / "cache")
    assert again.reused
    np.testing.assert_array_equal(again.tokens(), expected)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [token_cache.CACHE_BIN, token_cache.CACHE_META]


# --------------------------------------------------------------------------- streaming and memory


def test_tokenizer_sample_is_even_deterministic_and_bounded(folder):
    corpus = scan(folder)
    budget = 2000
    sample = list(data.training_texts(corpus, budget))
    assert sample == list(data.training_texts(corpus, budget))
    assert budget * 0.9 <= sum(map(len, sample)) <= budget * 1.1
    whole = {p: Path(p).read_bytes().decode("utf-8") for p in corpus.files}
    sources = {p for piece in sample for p, text in whole.items() if piece and piece in text}
    assert len(sources) == len(corpus.files)  # drawn from every file, not just the first ones
    assert "".join(data.training_texts(corpus, None)) == "".join(whole[p] for p, _ in data.stream_order(corpus))


def _traced_peak(root, cache_dir, tok):
    """Peak Python + numpy memory (tracemalloc sees both) of scanning, encoding and drawing batches."""
    tracemalloc.start()
    try:
        cache = token_cache.load_or_build_cache(scan(root), tok, cache_dir)
        batches = cache.token_data(block_size=32)
        for _ in range(5):
            batches.get_batch("train", 8)
        return tracemalloc.get_traced_memory()[1], cache.meta["num_tokens"]
    finally:
        tracemalloc.stop()


def test_building_the_cache_never_holds_the_corpus_in_memory(tmp_path, tiny_tokenizer, monkeypatch):
    """Chosen over an RLIMIT_AS subprocess (torch maps gigabytes of address space it never touches):
    with the read and batch sizes shrunk so a 2 MB corpus counts as large, the traced peak stays below
    the finished uint16 token array and does not grow when the corpus grows 5x. The tokenizer's own
    Rust memory is bounded per batch the same way; bench/ingest.py measures the real RSS."""
    monkeypatch.setattr(data, "READ_CHUNK", 1 << 14)
    monkeypatch.setattr(data, "PIECE_CHARS", 1 << 12)
    monkeypatch.setattr(data, "BATCH_CHARS", 1 << 14)
    monkeypatch.setattr(token_cache, "COUNT_CHUNK", 1 << 14)
    peaks = {}
    for copies in (8, 40):
        root = tmp_path / f"corpus{copies}"
        for i in range(copies):
            write(root / f"{i}.txt", TINY_TEXT * 3)
        write(root / "one_line.txt", TINY_TEXT.replace("\n", " ") * (copies // 2))
        peaks[copies], num_tokens = _traced_peak(root, tmp_path / f"cache{copies}", tiny_tokenizer)
    assert num_tokens * 2 > 2_000_000
    assert peaks[40] < num_tokens * 2 / 2, f"peak {peaks[40]:,} bytes for {num_tokens:,} tokens"
    assert peaks[40] < 1.5 * peaks[8], f"peak grew with the corpus: {peaks}"


def test_train_bpe_folder_run_reports_skips_and_reuses_cache(tmp_path, folder, capsys):
    write(folder / "junk.txt", b"\x00\x00")
    args = ["--data_dir", str(folder), "--out_dir", str(tmp_path / "out"), "--tokenizer_path",
            str(tmp_path / "tok.json"), *TINY_MODEL_ARGS, "--block_size", "16", "--max_steps", "2",
            "--warmup_steps", "0", "--eval_interval", "2", "--eval_iters", "1", "--verbose"]
    assert train_bpe.main(args) == 0
    out = capsys.readouterr().out
    assert "4 file(s)" in out and "1 binary" in out and f"binary: {folder / 'junk.txt'}" in out
    assert "token cache: built" in out and (tmp_path / "out" / "token_cache" / "tokens.bin").exists()
    assert train_bpe.main(args + ["--cache_dir", str(tmp_path / "elsewhere")]) == 0
    assert "token cache: built" in capsys.readouterr().out
    assert train_bpe.main(args) == 0
    assert "token cache: reusing" in capsys.readouterr().out


def test_tokenizer_text_can_end_before_the_held_out_part(folder):
    corpus = scan(folder)
    whole = b"".join(Path(p).read_bytes() for p, _ in data.stream_order(corpus))  # the token stream's order
    end = len(whole) * 2 // 3  # inside a file
    assert "".join(data.training_texts(corpus, None, end)) == whole[:end].decode("utf-8", errors="ignore")
    sample = "".join(data.training_texts(corpus, 300, end))
    assert 250 <= len(sample.encode()) <= 350
    assert all(piece in whole[:end].decode("utf-8", errors="ignore") for piece in data.training_texts(corpus, 300, end))


def test_a_new_tokenizer_never_sees_the_validation_text(tmp_path):
    # A word only in the last 10% of the corpus, frequent enough there that BPE would give it one token.
    text = TINY_TEXT + " zqxjvkw" * 150
    corpus_file = write(tmp_path / "corpus.txt", text)
    code = train_bpe.main(["--data_file", str(corpus_file), "--out_dir", str(tmp_path / "out"), *TINY_MODEL_ARGS,
                           "--vocab_size", "400", "--max_steps", "1", "--warmup_steps", "0", "--eval_interval", "1", "--eval_iters", "1",
                           "--tokenizer_path", str(tmp_path / "tok.json")])
    assert code == 0
    tok = tokenizer.load(tmp_path / "tok.json")
    assert len(tok.encode(" zqxjvkw").ids) > 2  # spelled out in pieces: the word never reached the tokenizer
    whole = tokenizer.train("bpe", data.scan_corpus(data_file=corpus_file), 400)
    assert len(whole.encode(" zqxjvkw").ids) == 1  # trained on everything, it would have been one token


def test_in_a_folder_the_tokenizer_never_sees_the_validation_documents(tmp_path, capsys):
    root = tmp_path / "corpus"
    for i in range(40):
        write(root / f"doc{i:02d}.txt", TINY_TEXT[i * 300 : (i + 1) * 300])
    order = [Path(p).name for p, _ in data.stream_order(scan(root))]
    for name in order[-4:]:  # the documents the token stream puts last: validation's
        write(root / name, " zqxjvkw" * 40)
    corpus = scan(root)
    seen = "".join(data.training_texts(corpus, None, data.tokenizer_text_end(corpus)))
    assert "zqxjvkw" not in seen and len(seen) > 0.8 * corpus.total_bytes
    sampled = "".join(data.training_texts(corpus, 2000, data.tokenizer_text_end(corpus)))
    assert "zqxjvkw" not in sampled
    code = train_bpe.main(["--data_dir", str(root), "--out_dir", str(tmp_path / "out"), *TINY_MODEL_ARGS,
                           "--vocab_size", "300", "--max_steps", "1", "--warmup_steps", "0", "--eval_iters", "1",
                           "--tokenizer_path", str(tmp_path / "tok.json")])
    assert code == 0
    assert len(tokenizer.load(tmp_path / "tok.json").encode(" zqxjvkw").ids) > 2
    assert "note: the tokenizer was trained" not in capsys.readouterr().out  # an ordinary folder: no note


def test_a_tokenizer_that_reached_into_validation_is_named(tmp_path, capsys):
    # Validation (the last 10% of the tokens) is mostly long runs of one letter, a few tokens for many bytes:
    # it starts far before 83% of the bytes, the part the tokenizer reads.
    rng = np.random.default_rng(0)
    root = tmp_path / "corpus"
    names = [f"doc{i:02d}.txt" for i in range(24)]
    order = [Path(p).name for p, _ in data.stream_order(data.Corpus(root=str(root), files=[str(root / n) for n in names],
                                                                     sizes=[1] * len(names)))]
    for name in order[:-3]:
        write(root / name, " ".join("".join(rng.choice(list("qwertyuiopasdfghjklzxcvbnm"), 5)) for _ in range(200)))
    for name in order[-3:]:
        write(root / name, "a" * 20000)
    code = train_bpe.main(["--data_dir", str(root), "--out_dir", str(tmp_path / "out"), *TINY_MODEL_ARGS,
                           "--max_steps", "1", "--warmup_steps", "0", "--eval_iters", "1",
                           "--tokenizer_path", str(tmp_path / "tok.json")])
    assert code == 0
    assert "note: the tokenizer was trained on the first" in capsys.readouterr().out
