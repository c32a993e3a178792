"""Corpus → tokens → batches: finding corpus files, reading them safely in pieces, encoding, random blocks.

A corpus is one file (``--data_file``) or a folder searched recursively (``--data_dir``).
Every accepted file is one *document*. Files are read in bounded pieces, encoded in parallel
batches, each document followed by the end-of-text token, and (token_cache.py) the ids are appended
to a binary array on disk that training reads through ``numpy.memmap``: peak memory does not grow
with the corpus. The tokenizers themselves live in tokenizer.py.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import math
import os
import stat
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

# Extensions we read as text. Prose first, then code and config formats.
TEXT_EXTENSIONS = (".txt", ".md", ".rst")
CODE_EXTENSIONS = (
    ".py", ".js", ".ts", ".java", ".go", ".rs", ".c", ".cpp", ".h", ".hpp",
    ".json", ".toml", ".yaml", ".yml", ".sh",
)
ACCEPTED_EXTENSIONS = TEXT_EXTENSIONS + CODE_EXTENSIONS

# Folders that hold tooling output rather than anyone's writing. Hidden folders (".x") are skipped too.
SKIP_DIRS = frozenset({"node_modules", "__pycache__", "venv", "env", "site-packages", "dist", "build"})
OUTPUT_REASON = "output of this run"  # --out_dir, the token cache or the tokenizer inside the corpus folder
IGNORED_REASONS = frozenset({"other extension", "ignored folder", OUTPUT_REASON})  # not problems, not text we read

VAL_FRACTION = 0.1
UTF16_REASON = "UTF-16 (convert it to UTF-8)"
# How training batches are drawn (--batch_order): independent random windows, or shuffled passes (epochs).
BATCH_ORDERS = ("random", "epochs")
BINARY_SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks a file as binary (as git does)

# The tokenizer's working memory is ~100 bytes per input character (it keeps per-byte alignments while
# pre-tokenizing), so text never reaches it whole: files are read READ_CHUNK bytes at a time, cut into
# pieces of at most PIECE_CHARS characters, and encoded BATCH_CHARS characters per parallel call.
READ_CHUNK = 1 << 20
PIECE_CHARS = 1 << 15
BATCH_CHARS = 1 << 18
DEFAULT_TOKENIZER_TRAIN_BYTES = 100_000_000  # bigger corpora train the tokenizer on an even sample
SAMPLE_WINDOW = 1 << 16  # the sample is made of windows this long, spread evenly over the corpus


class DataError(Exception):
    """A problem with the user's corpus or tokenizer: shown as one line, never a traceback."""


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """The accepted files of a corpus (sorted) and what was left out, by reason.

    Paths are plain strings and sizes packed arrays: a corpus may hold millions of files, and a Path
    object costs several times its string.
    """

    root: str | None = None  # the --data_dir folder; None for a single --data_file
    files: list[str] = field(default_factory=list)
    sizes: array = field(default_factory=lambda: array("q"))
    mtimes: array = field(default_factory=lambda: array("q"))  # st_mtime_ns, for the fingerprint
    skipped: Counter = field(default_factory=Counter)  # reason -> count, for files that look like text
    ignored: Counter = field(default_factory=Counter)  # other extensions, hidden and tooling folders
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of both, for --verbose

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    def skip(self, path: str, reason: str) -> None:
        (self.ignored if reason in IGNORED_REASONS else self.skipped)[reason] += 1
        self.skipped_files.append((path, reason))

    def summary(self) -> str:
        line = f"corpus: {len(self.files)} file(s), {self.total_bytes / 1e6:.2f} MB used"
        for what, counts in (("skipped", self.skipped), ("ignored", self.ignored)):
            if counts:
                line += f"; {what} {sum(counts.values())} ({_reasons(counts)})"
        return line + ("; --verbose lists them" if self.skipped_files else "")

    def documents(self) -> Iterator[str]:
        """Every file's whole text, in corpus order (for small corpora; big ones go through the token cache)."""
        for path in self.files:
            yield read_text(path)

    def fingerprint(self) -> str:
        """Changes when a file is added, removed, renamed, resized or touched."""
        h = hashlib.sha256()
        for path, size, mtime in zip(self.files, self.sizes, self.mtimes):
            h.update(f"{os.path.abspath(path)}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:16]


def _reasons(counts: Counter) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(counts.items()))


def _check_file(path: str) -> str | None:
    """None if the file is a non-empty UTF-8 text file, else the reason it is skipped.

    Reads the whole file, a chunk at a time, so that an encoding error cannot surprise us later.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "not a regular file"  # a FIFO would block forever, a device never ends
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        chars = 0
        with open(path, "rb") as f:
            first = True
            while chunk := f.read(READ_CHUNK):
                if first and chunk.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                    return UTF16_REASON  # Windows tools write text this way: NULs everywhere, but not binary
                if first and b"\x00" in chunk[:BINARY_SNIFF_BYTES]:
                    return "binary"
                first = False
                chars += len(decoder.decode(chunk))
            chars += len(decoder.decode(b"", final=True))
    except UnicodeDecodeError:
        return "not UTF-8"
    except OSError:
        return "unreadable"
    return None if chars else "empty"


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in SKIP_DIRS


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _walk(root: str, corpus: Corpus, excluded: set[tuple[int, int]] = frozenset()) -> Iterator[str]:
    """Every candidate file under root, each real file once, leaving out the files and folders in excluded
    ((st_dev, st_ino) keys: the run's own output).

    Plain folders are walked first; links are followed afterwards, and only when their target lies
    inside root and was not reached already, so a loop or a link to ``/`` cannot trap or widen the scan.
    """
    excluded_inodes = {ino for _, ino in excluded}
    root_real = os.path.realpath(root)
    seen_dirs, linked_files = set(), set()  # (st_dev, st_ino) of folders walked, of files reached by a link
    folders, links = [root], []
    while folders or links:
        if not folders:
            link = links.pop(0)
            target = os.path.realpath(link)
            if problem := _link_problem(link):
                corpus.skip(link, problem)
            elif not _inside(target, root_real):
                corpus.skip(link, "link outside folder")
            elif _file_key(link) in excluded:
                corpus.skip(link, OUTPUT_REASON)
            elif os.path.isdir(link):
                if _file_key(link) not in seen_dirs:
                    folders.append(link)
                elif _inside(os.path.realpath(os.path.dirname(link)), target):
                    corpus.skip(link, "symlink loop")
                else:
                    corpus.skip(link, "duplicate link")
            elif _file_key(link) in linked_files or _walked(target, root_real):
                corpus.skip(link, "duplicate link")
            else:
                linked_files.add(_file_key(link))
                yield link
            continue
        folder = folders.pop()
        seen_dirs.add(_file_key(folder))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError:
            corpus.skip(folder, "unreadable folder")
            continue
        for entry in entries:
            if entry.inode() in excluded_inodes and _file_key(entry.path) in excluded:
                corpus.skip(entry.path, OUTPUT_REASON)
            elif entry.is_symlink():
                links.append(entry.path)
            elif entry.is_dir():
                if _ignored(entry.name):
                    corpus.skip(entry.path, "ignored folder")
                else:
                    folders.append(entry.path)
            else:
                yield entry.path


def _walked(real_file: str, root_real: str) -> bool:
    """Whether the plain walk (no links) reaches this real file: no folder on its way is ignored."""
    return not any(_ignored(part) for part in os.path.relpath(real_file, root_real).split(os.sep)[:-1])


def _file_key(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _link_problem(link: str) -> str | None:
    try:
        os.stat(link)
    except OSError as exc:
        return "symlink loop" if exc.errno == errno.ELOOP else "broken link"
    return None


def scan_corpus(data_file: str | Path | None = None, data_dir: str | Path | None = None,
                exclude: Iterable[str | Path] = (), flags: tuple[str, str] = ("--data_file", "--data_dir")) -> Corpus:
    """Finds the accepted, readable, non-empty UTF-8 text files of a corpus (one file or a folder tree).

    Files and folders in exclude (the run's own output, when it lies inside the folder) are left out.
    flags are the names of the file and folder flags, for messages (score_bpe.py calls them --file, --data_dir).
    """
    file_flag, dir_flag = flags
    corpus = Corpus()
    if data_file is not None:
        path = os.fspath(data_file)
        if not os.path.exists(path):
            raise DataError(f"{file_flag} {path} does not exist: pass a text file")
        if os.path.isdir(path):
            raise DataError(f"{file_flag} {path} is a folder: use {dir_flag} {path} instead")
        reason = _check_file(path)
        if reason == UTF16_REASON:
            raise DataError(f"{file_flag} {path} is UTF-16 text: convert it to UTF-8, e.g. "
                            f"iconv -f UTF-16 -t UTF-8 {path} > {Path(path).stem}-utf8.txt")
        if reason:
            raise DataError(f"{file_flag} {path} is {reason}: pass a non-empty UTF-8 text file")
        candidates = [path]
    else:
        root = os.fspath(data_dir)
        if not os.path.exists(root):
            raise DataError(f"{dir_flag} {root} does not exist: pass a folder of text or code files")
        if not os.path.isdir(root):
            raise DataError(f"{dir_flag} {root} is a file: use {file_flag} {root} instead")
        corpus.root = root
        candidates = []
        excluded = {_file_key(p) for p in map(os.fspath, exclude) if os.path.exists(p)}
        for path in tqdm(_walk(root, corpus, excluded), desc="scanning", unit=" files", leave=False):
            if os.path.splitext(path)[1].lower() not in ACCEPTED_EXTENSIONS:
                corpus.skip(path, "other extension")
            elif reason := _check_file(path):
                corpus.skip(path, reason)
            else:
                candidates.append(path)
        if not candidates:
            counts = corpus.skipped + corpus.ignored
            skipped = f"; skipped {sum(counts.values())}: {_reasons(counts)}" if counts else ""
            raise DataError(f"{dir_flag} {root} has no usable text files "
                            f"(looked for {' '.join(ACCEPTED_EXTENSIONS)}{skipped})")
    candidates.sort(key=lambda p: p.split(os.sep))  # by path parts: a/b.txt, a/c/d.txt, b.txt
    for path in candidates:
        st = os.stat(path)
        corpus.files.append(path)
        corpus.sizes.append(st.st_size)
        corpus.mtimes.append(st.st_mtime_ns)
    corpus.skipped_files.sort()
    return corpus


# --------------------------------------------------------------------------- reading in pieces


def _cut(text: str, start: int, limit: int) -> int:
    """Where to end a piece that starts at start and may not pass limit: after a newline if there is
    one, else before a space (so ' word' stays whole), else at limit."""
    newline = text.rfind("\n", start, limit)
    if newline >= start:
        return newline + 1
    space = text.rfind(" ", start + 1, limit)
    return space if space > start else limit


def _split(text: str, final: bool) -> tuple[list[str], str]:
    """Cuts pieces of at most PIECE_CHARS characters off the front of text; returns them and the rest
    (which is empty when final, else shorter than a piece and kept until more text arrives)."""
    pieces, start = [], 0
    while len(text) - start > PIECE_CHARS:
        end = _cut(text, start, start + PIECE_CHARS)
        pieces.append(text[start:end])
        start = end
    if final and start < len(text):
        pieces.append(text[start:])
        start = len(text)
    return pieces, text[start:]


def split_text(text: str) -> list[str]:
    """text in consecutive pieces of at most PIECE_CHARS characters; they join back to text exactly."""
    return _split(text, final=True)[0]


def read_pieces(path: str | Path, limit: int | None = None) -> Iterator[str]:
    """A file's text (UTF-8, byte order mark dropped) in the pieces split_text gives, read in chunks; with
    limit, only the text of its first limit bytes (a character cut there is dropped)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    rest, left = "", math.inf if limit is None else limit
    with open(path, "rb") as f:
        while left > 0 and (chunk := f.read(min(READ_CHUNK, left))):
            left -= len(chunk)
            pieces, rest = _split(rest + decoder.decode(chunk), final=False)
            yield from pieces
    tail = decoder.decode(b"", final=True) if limit is None else ""  # a cut character is no error
    yield from _split(rest + tail, final=True)[0]


def read_text(path: str | Path) -> str:
    """A whole file's text (for small files; big corpora go through read_pieces)."""
    return "".join(read_pieces(path))


def document_pieces(paths: Iterable[str]) -> Iterator[tuple[str, bool, int]]:
    """(piece, ends its document, bytes it advances the file by) for every piece of every file.

    Within a file the advance is counted in characters (never more than bytes); a file's last piece
    makes up the rest, so a progress bar in bytes is exact at every file's end.
    """
    for path in paths:
        previous, counted = None, 0
        try:
            before = os.stat(path)
            for piece in read_pieces(path):
                if previous is not None:
                    counted += len(previous)
                    yield previous, False, len(previous)
                previous = piece
            after = os.stat(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path} could not be read any more ({exc}): rerun when the corpus is stable") from None
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or previous is None:
            raise DataError(f"{path} changed while it was being read: rerun when it is finished")
        yield previous, True, after.st_size - counted


# --------------------------------------------------------------------------- tokenizer


def training_texts(corpus: Corpus, max_bytes: int | None = None, end: int | None = None) -> Iterator[str]:
    """Text to train a tokenizer on, in pieces, from the first `end` bytes of the corpus (all of it for None):
    all of that, or, when it is bigger than max_bytes, a deterministic sample of about max_bytes made of
    SAMPLE_WINDOW-byte windows spread evenly over it (the same corpus always gives the same sample)."""
    total = corpus.total_bytes if end is None else min(end, corpus.total_bytes)
    if not max_bytes or max_bytes >= total:
        offset = 0
        for path, size in stream_order(corpus):
            if offset >= total:
                return
            yield from read_pieces(path, None if offset + size <= total else total - offset)
            offset += size
        return
    width = min(SAMPLE_WINDOW, max(max_bytes // 64, 1))  # at least ~64 windows, however small the sample
    stride = width * total / max_bytes  # window k covers [k * stride, k * stride + width)
    offset = 0  # where the current file starts in the concatenated corpus
    for path, size in stream_order(corpus):
        if offset >= total:
            return
        k = math.ceil(max(offset - width, 0) / stride)
        stop = min(offset + size, total)  # the end of this file's part of the text
        if k * stride >= stop:  # no window reaches this file: do not even open it
            offset += size
            continue
        with open(path, "rb") as f:
            while (window := k * stride) < stop:
                lo, hi = max(int(window), offset), min(int(window) + width, stop)
                if hi > lo:
                    f.seek(lo - offset)
                    raw = f.read(hi - lo)
                    if lo == offset:
                        raw = raw.removeprefix(codecs.BOM_UTF8)
                    yield raw.decode("utf-8", errors="ignore")  # only a window's cut ends can be partial
                k += 1
        offset += size


def stream_order(corpus: Corpus) -> list[tuple[str, int]]:
    """(path, size) of the corpus' files in the order of its token stream: by a hash of their names, so
    that the validation split (the last ~10%) is a mix of the corpus, not its alphabetically last folder."""
    def name_hash(path: str) -> bytes:
        name = os.path.relpath(path, corpus.root) if corpus.root is not None else os.path.basename(path)
        return hashlib.sha1(name.encode("utf-8", "surrogateescape")).digest()

    return sorted(zip(corpus.files, corpus.sizes), key=lambda file: name_hash(file[0]))


def tokenizer_text_end(corpus: Corpus) -> int:
    """How many bytes of the corpus, from the start of its stream_order, a new tokenizer is trained on: the
    text before the validation split. Held-out text must not shape the vocabulary: BPE would make its
    own words into tokens, and held-out scores would flatter big vocabularies (bench/RESULTS.md measured
    0.23 bits/byte on Shakespeare at 8192 tokens). Validation starts at the document end nearest to 90%
    of the tokens, no earlier than 85%, so the tokenizer stops at 83% of the bytes (bytes per token vary
    a little)."""
    return int(corpus.total_bytes * (1 - 1.5 * VAL_FRACTION - 0.02))


# --------------------------------------------------------------------------- encoding


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def encode_pieces(tok, pieces: Iterable[tuple[str, bool, int]], eos_id: int, bar: tqdm | None = None,
                  ) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Encodes (text, ends a document, bytes done) pieces in parallel batches of about BATCH_CHARS.

    Yields each batch's ids, with eos_id after every document, and the offsets within the batch where
    documents end. The pieces of one document are encoded separately and their ids concatenated, which
    still decodes to the document's exact text (byte-level BPE has no state across pieces).
    """
    dtype = token_dtype(tok.get_vocab_size())
    texts, ends, chars = [], [], 0

    def flush():
        encodings = tok.encode_batch_fast(texts, add_special_tokens=False)  # no offsets: faster
        parts, doc_ends, n = [], [], 0
        for enc, ends_doc in zip(encodings, ends):
            ids = enc.ids + [eos_id] if ends_doc else enc.ids
            parts.append(np.array(ids, dtype=dtype))
            n += len(ids)
            if ends_doc:
                doc_ends.append(n)
        texts.clear()
        ends.clear()
        return np.concatenate(parts), doc_ends

    for text, ends_doc, done_bytes in pieces:
        texts.append(text)
        ends.append(ends_doc)
        chars += len(text)
        if bar is not None and done_bytes:
            bar.update(done_bytes)
        if chars >= BATCH_CHARS:
            yield flush()
            chars = 0
    if texts:
        yield flush()


def encode_corpus(tok, documents: Iterable[str], eos_id: int, num_docs: int | None = None) -> np.ndarray:
    """All documents' ids, each followed by eos_id, as one in-memory array (for small corpora and tests;
    train_bpe.py goes through the on-disk cache). Gives the same ids as the cache for the same texts."""

    def pieces():
        for text in tqdm(documents, total=num_docs, desc="encoding", unit=" docs", leave=False):
            parts = split_text(text)
            for i, part in enumerate(parts):
                yield part, i == len(parts) - 1, 0

    arrays = [ids for ids, _ in encode_pieces(tok, pieces(), eos_id)]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=token_dtype(tok.get_vocab_size()))


# --------------------------------------------------------------------------- batching


class TokenData:
    """Train and validation token streams (in-memory arrays or memmaps), and random (x, y) blocks."""

    def __init__(self, tokens: np.ndarray, block_size: int, val_fraction: float = VAL_FRACTION,
                 val_start: int | None = None, val_bytes: int | None = None):
        split = int(len(tokens) * (1 - val_fraction)) if val_start is None else val_start
        self.train, self.val = tokens[:split], tokens[split:]
        self.block_size = block_size
        self.val_bytes = val_bytes  # UTF-8 bytes the validation tokens stand for, when known
        self._epoch: tuple[tuple[int, int] | None, list[int]] = (None, [])  # ((seed, epoch), its window starts)
        for name, part in (("training", self.train), ("validation", self.val)):
            if len(part) <= block_size:
                raise DataError(
                    f"the corpus is too small: its {name} split has {len(part)} tokens "
                    f"({len(tokens)} in all), but one block needs {block_size + 1}; "
                    f"add text or lower --block_size"
                )

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator | None = None):
        """x: (B, T) token ids, y: (B, T) the same ids shifted left by one."""
        data = self.train if split == "train" else self.val
        starts = torch.randint(len(data) - self.block_size, (batch_size,), generator=generator).tolist()
        return self._blocks(data, starts)

    def _blocks(self, data: np.ndarray, starts: list[int]):
        blocks = np.stack([data[i : i + self.block_size + 1] for i in starts]).astype(np.int64)  # (B, T+1)
        blocks = torch.from_numpy(blocks)
        return blocks[:, :-1], blocks[:, 1:]

    def windows_per_epoch(self) -> int:
        """How many non-overlapping training windows one pass holds (whatever its random offset)."""
        return max(1, (len(self.train) - self.block_size) // self.block_size)

    def epoch_starts(self, epoch: int, seed: int) -> torch.Tensor:
        """Start of every training window of one pass, in that pass's random order.

        A pass cuts the training tokens into block_size windows from a random offset below block_size,
        so over many passes every position starts a window and every token is a target once per pass
        (random windows, by contrast, leave ~1/e of the text out of any one pass's worth of batches and
        repeat other parts). The offset and order depend on (seed, epoch) only.
        """
        n, block = self.windows_per_epoch(), self.block_size
        # torch's CPU generator keeps only 32 bits of a seed: hash both numbers into them.
        key = hashlib.sha256(f"batch order {seed} {epoch}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(key[:4], "little"))
        offset = torch.randint(min(block - 1, len(self.train) - 1 - n * block) + 1, (1,), generator=gen).item()
        return offset + torch.randperm(n, generator=gen) * block  # (n,)

    def epoch_batch(self, draw: int, batch_size: int, seed: int):
        """The draw-th batch of the "epochs" order: windows draw * batch_size ... of the endless sequence of
        passes (a batch may straddle two). A pure function of its arguments: nothing to save for a resume."""
        n = self.windows_per_epoch()
        starts = []
        for g in range(draw * batch_size, (draw + 1) * batch_size):
            epoch = g // n
            if self._epoch[0] != (seed, epoch):  # one pass's order is kept at a time
                self._epoch = ((seed, epoch), self.epoch_starts(epoch, seed).tolist())
            starts.append(self._epoch[1][g % n])
        return self._blocks(self.train, starts)


def bits_per_byte(mean_loss_nats: float, num_tokens: int, num_bytes: int) -> float:
    """Tokenizer-independent loss: total nats over the bytes they encode, in bits."""
    return mean_loss_nats * num_tokens / max(num_bytes, 1) / math.log(2)
