"""The on-disk token cache: a corpus encoded once into a binary array that training memory-maps.

``<cache_dir>/tokens.bin`` holds the ids (uint16 while the vocabulary fits); ``tokens.json`` beside it
says what they are: format version, dtype, token and document counts, where validation starts, the
tokenizer's hash and the corpus fingerprint (paths, sizes, mtimes). A cache is reused only when all of
these match and the array has the size the sidecar promises; anything else is rebuilt, never trusted.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import data
import tokenizer
from files import advice, atomic_write_text, new_file_mode
from files import reason as reason_of

CACHE_FORMAT, CACHE_VERSION = "mini-gpt-token-cache", 1
CACHE_BIN, CACHE_META = "tokens.bin", "tokens.json"
COUNT_CHUNK = 1 << 16  # tokens read back at a time to count the validation split's bytes


def split_point(num_tokens: int, doc_ends: list[int] | array, val_fraction: float = data.VAL_FRACTION) -> int:
    """Where validation starts: the document end nearest to (1 - val_fraction) of the tokens, if it is
    within val_fraction / 2 of it, else exactly there (one file, or documents too big to keep whole)."""
    target = int(num_tokens * (1 - val_fraction))
    inner = doc_ends[:-1]  # the last document ends the stream
    i = bisect.bisect_left(inner, target)
    nearest = min(inner[max(i - 1, 0) : i + 1], key=lambda e: abs(e - target), default=None)
    if nearest is not None and abs(nearest - target) <= val_fraction / 2 * num_tokens:
        return nearest
    return target


@dataclass
class TokenCache:
    """A validated token cache: the ids on disk and what the sidecar says about them.

    A freshly encoded cache stays in a temporary file until commit() puts it in place, so a caller can
    check it first (is it big enough? the corpus a resumed run expects?) and a failed check leaves the
    previous cache as it was. Used as a context manager it commits on success and discards on error.
    """

    path: Path  # the binary array of ids, once committed
    meta: dict
    reused: bool
    reason: str  # why it was rebuilt, or "" when reused
    pending: Path | None = None  # the new array, until commit()
    made_dir: bool = False  # whether encoding created the cache folder (discard() removes it again)

    def __enter__(self) -> TokenCache:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.discard() if exc_type else self.commit()

    def commit(self) -> None:
        """Renames the new array into place and writes the sidecar last: a crash between the two leaves
        no sidecar, which reads as no cache, never as a sidecar describing the wrong array."""
        if self.pending is None:
            return
        meta_path = self.path.with_name(CACHE_META)
        try:
            meta_path.unlink(missing_ok=True)
            os.replace(self.pending, self.path)
            self.pending = None
            atomic_write_text(meta_path, json.dumps(self.meta, indent=1))
        except OSError as exc:
            self.discard()
            raise data.DataError(f"the token cache in {self.path.parent} cannot be written ({reason_of(exc)}): "
                                 f"{advice(exc)}") from None

    def discard(self) -> None:
        if self.pending is None:
            return
        self.pending.unlink(missing_ok=True)
        self.pending = None
        if self.made_dir:
            with contextlib.suppress(OSError):  # only if still empty
                self.path.parent.rmdir()

    def tokens(self) -> np.memmap:
        return np.memmap(self.pending or self.path, dtype=np.dtype(self.meta["dtype"]), mode="r",
                         shape=(self.meta["num_tokens"],))

    def token_data(self, block_size: int) -> data.TokenData:
        return data.TokenData(self.tokens(), block_size, val_start=self.meta["val_start"],
                              val_bytes=self.meta["val_bytes"])

    def message(self) -> str:
        m = self.meta
        what = "reusing" if self.reused else f"built ({self.reason})"
        return (f"token cache: {what} {self.path}: {m['num_tokens']:,} tokens from {m['num_documents']:,} "
                f"document(s), validation from token {m['val_start']:,}")


def _cache_key(corpus: data.Corpus, tok) -> dict:
    return {
        "format": CACHE_FORMAT, "version": CACHE_VERSION,
        "dtype": data.token_dtype(tok.get_vocab_size()).name,
        "tokenizer_hash": tokenizer.tokenizer_hash(tok),
        "corpus_fingerprint": corpus.fingerprint(),
        "val_fraction": data.VAL_FRACTION,
    }


def _stale_reason(cache_dir: Path, key: dict) -> str | None:
    """None if the cache in cache_dir matches key and is whole, else why it must be rebuilt."""
    bin_path, meta_path = cache_dir / CACHE_BIN, cache_dir / CACHE_META
    if not meta_path.exists():
        return "no cache yet"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            return "sidecar unreadable"
        if meta.get("version") != CACHE_VERSION:
            return f"format version {meta.get('version')}, this code writes {CACHE_VERSION}"
        for name, what in (("corpus_fingerprint", "corpus changed"), ("tokenizer_hash", "tokenizer changed")):
            if meta.get(name) != key[name]:
                return what
        if any(meta.get(k) != v for k, v in key.items()):
            return "settings changed"
        if bin_path.stat().st_size != meta["num_tokens"] * np.dtype(meta["dtype"]).itemsize:
            return "token file has the wrong size (truncated?)"
        if not 0 < meta["val_start"] < meta["num_tokens"]:
            return "sidecar inconsistent"
    except (OSError, ValueError, KeyError, TypeError):
        return "sidecar or token file unreadable"
    return None


def load_or_build_cache(corpus: data.Corpus, tok, cache_dir: str | Path) -> TokenCache:
    """The token cache for this corpus and tokenizer, reused or rebuilt, committed."""
    cache = reuse_or_encode(corpus, tok, cache_dir)
    cache.commit()
    return cache


def reuse_or_encode(corpus: data.Corpus, tok, cache_dir: str | Path) -> TokenCache:
    """The token cache for this corpus and tokenizer: reused when its sidecar matches (same files, sizes,
    mtimes, tokenizer, format) and the array is whole, else encoded from the files (not yet committed)."""
    cache_dir = Path(cache_dir)
    key = _cache_key(corpus, tok)
    reason = _stale_reason(cache_dir, key)
    if reason is None:
        meta = json.loads((cache_dir / CACHE_META).read_text(encoding="utf-8"))
        return TokenCache(cache_dir / CACHE_BIN, meta, reused=True, reason="")
    made_dir = not cache_dir.exists()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        pending, meta = encode_to_file(corpus, tok, cache_dir, key)
    except BaseException as exc:  # a bad corpus, a full disk, Ctrl-C: leave no empty folder behind
        if made_dir:
            with contextlib.suppress(OSError):
                cache_dir.rmdir()
        if isinstance(exc, OSError):  # reading the corpus raises DataError; this is the cache folder or the disk
            raise data.DataError(f"the token cache in {cache_dir} cannot be written ({reason_of(exc)}): "
                                 f"{advice(exc)}") from None
        raise
    return TokenCache(cache_dir / CACHE_BIN, meta, reused=False, reason=reason, pending=pending, made_dir=made_dir)


def encode_to_file(corpus: data.Corpus, tok, cache_dir: Path, key: dict) -> tuple[Path, dict]:
    """Encodes the corpus into a temporary file in cache_dir; returns it and the sidecar it needs."""
    for stale in cache_dir.glob(f".{CACHE_BIN}.*.tmp"):  # left by a run killed while encoding
        stale.unlink(missing_ok=True)
    order = [path for path, _ in data.stream_order(corpus)]  # the tokenizer's text follows the same order
    doc_ends = array("q")
    num_tokens, eos = 0, tokenizer.special_ids(tok).eos
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{CACHE_BIN}.", suffix=".tmp")
    try:
        os.chmod(tmp, new_file_mode())  # mkstemp makes it private (0600); the cache's other files are not
        with os.fdopen(fd, "wb") as f, tqdm(total=corpus.total_bytes, desc="encoding", unit="B",
                                            unit_scale=True, leave=False) as bar:
            for ids, ends in data.encode_pieces(tok, data.document_pieces(order), eos, bar):
                f.write(ids.tobytes())
                doc_ends.extend(num_tokens + e for e in ends)
                num_tokens += len(ids)
            f.flush()
            os.fsync(f.fileno())
        val_start = split_point(num_tokens, doc_ends)
        val_bytes = _count_val_bytes(tmp, np.dtype(key["dtype"]), val_start, tok)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = {**key, "num_tokens": num_tokens, "num_documents": len(doc_ends), "val_start": val_start,
            "val_bytes": val_bytes, "corpus_bytes": corpus.total_bytes}
    return Path(tmp), meta


def _count_val_bytes(path: str, dtype: np.dtype, val_start: int, tok) -> int:
    """UTF-8 bytes of the validation tokens, read back in chunks with plain reads (a memmap would add
    every page it touched to this process's resident set)."""
    counts = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    with open(path, "rb") as f:
        f.seek(val_start * dtype.itemsize)
        while (chunk := np.fromfile(f, dtype=dtype, count=COUNT_CHUNK)).size:
            counts += np.bincount(chunk, minlength=len(counts))
    return int(counts @ tokenizer.byte_lengths(tok))
