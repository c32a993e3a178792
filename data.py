"""Corpus → byte-level BPE tokenizer → one array of token ids → random training blocks.

A corpus is one file (``--data_file``) or a folder searched recursively (``--data_dir``).
Every accepted file is one *document*; documents are encoded, each followed by ``<eos>``,
and concatenated into a single numpy array.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
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

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")  # ids 0, 1, 2, 3 (trained first, in this order)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte, plus the specials

VAL_FRACTION = 0.1
BINARY_SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks a file as binary (as git does)


class DataError(Exception):
    """A problem with the user's corpus or tokenizer: shown as one line, never a traceback."""


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """The accepted files of a corpus, in the order they are read, and what was left out."""

    files: list[Path]
    total_bytes: int
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    skipped_files: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        line = f"corpus: {len(self.files)} file(s), {self.total_bytes / 1e6:.2f} MB used"
        if self.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
            line += f"; skipped {sum(self.skipped.values())} ({reasons})"
        return line

    def documents(self) -> Iterator[str]:
        """Yields every file's text, in corpus order (files are read again, one at a time)."""
        for path in self.files:
            yield read_text(path)


def read_text(path: Path) -> str:
    """The file's text, decoded as UTF-8 (a byte order mark is dropped). Raises ValueError for binary."""
    raw = path.read_bytes()
    if b"\x00" in raw[:BINARY_SNIFF_BYTES]:
        raise ValueError("binary")
    return raw.decode("utf-8-sig")  # UnicodeDecodeError is a ValueError too


def _check_file(path: Path) -> str | None:
    """None if the file is usable, else the reason it is skipped."""
    try:
        text = read_text(path)
    except UnicodeDecodeError:
        return "not UTF-8"
    except ValueError:
        return "binary"
    except OSError:
        return "unreadable"
    return None if text else "empty"


def _walk(root: Path) -> list[Path]:
    """Every file under root, sorted by path (a/b.txt before a/c/d.txt before b.txt), skipping
    hidden and tooling folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS]
        found.extend(Path(dirpath) / name for name in filenames)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def scan_corpus(data_file: str | Path | None = None, data_dir: str | Path | None = None) -> Corpus:
    """Finds the accepted, readable UTF-8 text files of a corpus (one file or a folder tree)."""
    if data_file is not None:
        path = Path(data_file)
        if not path.exists():
            raise DataError(f"--data_file {path} does not exist: pass a text file")
        if path.is_dir():
            raise DataError(f"--data_file {path} is a folder: use --data_dir {path} instead")
        reason = _check_file(path)
        if reason:
            raise DataError(f"--data_file {path} is {reason}: pass a UTF-8 text file")
        return Corpus([path], path.stat().st_size)

    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"--data_dir {root} does not exist: pass a folder of text or code files")
    if not root.is_dir():
        raise DataError(f"--data_dir {root} is a file: use --data_file {root} instead")
    corpus = Corpus([], 0)
    for path in tqdm(_walk(root), desc="scanning", unit=" files", leave=False):
        if path.suffix.lower() not in ACCEPTED_EXTENSIONS:
            continue
        reason = _check_file(path)
        if reason:
            corpus.skipped[reason] += 1
            corpus.skipped_files.append((path, reason))
            continue
        corpus.files.append(path)
        corpus.total_bytes += path.stat().st_size
    if not corpus.files:
        raise DataError(
            f"--data_dir {root} has no usable text files (looked for {' '.join(ACCEPTED_EXTENSIONS)})"
        )
    return corpus


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(corpus: Corpus, vocab_size: int) -> Tokenizer:
    """Trains a byte-level BPE: every string round-trips exactly, whitespace and emoji included."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"--vocab_size {vocab_size} is too small: byte-level BPE needs at least {MIN_VOCAB_SIZE}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,  # our own bar below counts documents
    )
    docs = tqdm(corpus.documents(), total=len(corpus.files), desc="training tokenizer", unit=" docs", leave=False)
    tok.train_from_iterator(docs, trainer=trainer, length=len(corpus.files))
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--tokenizer {path} does not exist: pass a tokenizer.json or omit the flag to train one")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception for any parse failure
        raise DataError(f"--tokenizer {path} is not a Hugging Face tokenizer.json ({exc})") from None


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for bits-per-byte.

    In a byte-level vocabulary every character of a token's string stands for exactly one byte.
    """
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    specials = set(SPECIAL_TOKENS)
    for token, idx in tok.get_vocab().items():
        lengths[idx] = 0 if token in specials else len(token)
    return lengths


# --------------------------------------------------------------------------- dataset


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def encode_corpus(tok: Tokenizer, documents: Iterable[str], num_docs: int, batch: int = 64) -> np.ndarray:
    """All documents' ids, each followed by <eos>, as one array (uint16 where the vocabulary fits)."""
    dtype = token_dtype(tok.get_vocab_size())
    eos = np.array([EOS_ID], dtype=dtype)
    pieces: list[np.ndarray] = []
    bar = tqdm(total=num_docs, desc="encoding", unit=" docs", leave=False)
    pending: list[str] = []

    def flush() -> None:
        for enc in tok.encode_batch(pending, add_special_tokens=False):
            pieces.extend((np.asarray(enc.ids, dtype=dtype), eos))
        bar.update(len(pending))
        pending.clear()

    for text in documents:
        pending.append(text)
        if len(pending) == batch:
            flush()
    flush()
    bar.close()
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


class TokenData:
    """Train and validation token streams, and random (x, y) blocks drawn from them."""

    def __init__(self, tokens: np.ndarray, block_size: int, val_fraction: float = VAL_FRACTION):
        split = int(len(tokens) * (1 - val_fraction))
        self.train, self.val = tokens[:split], tokens[split:]
        self.block_size = block_size
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
        blocks = np.stack([data[i : i + self.block_size + 1] for i in starts]).astype(np.int64)  # (B, T+1)
        blocks = torch.from_numpy(blocks)
        return blocks[:, :-1], blocks[:, 1:]


def bits_per_byte(mean_loss_nats: float, num_tokens: int, num_bytes: int) -> float:
    """Tokenizer-independent loss: total nats over the bytes they encode, in bits."""
    return mean_loss_nats * num_tokens / max(num_bytes, 1) / math.log(2)
