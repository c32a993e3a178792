"""SentencePiece as an alternative tokenizer, behind the few methods the code uses from tokenizers.Tokenizer.

The rest of the code calls ``encode(text).ids``, ``encode_batch(_fast)``, ``decode``, ``get_vocab_size``,
``token_to_id`` and ``to_str`` on whichever tokenizer it holds; ``SentencePieceTokenizer`` provides them.
This module also holds the few places that differ by kind: training, loading a file, and how a
checkpoint embeds the tokenizer. ``data.token_byte_lengths`` (bits per byte) asks the adapter for its
own ``token_byte_lengths``.

Round trips: we train with the identity normalisation, no dummy prefix, extra whitespace kept and
byte fallback, so decode(encode(text)) == text for ordinary text, code and emoji. What still differs:
the character U+2581 ("▁", SentencePiece's own space marker) in the input decodes as a plain space.
Training reads the corpus line by line, so a newline is always its own byte token.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

import data

TYPES = ("bpe", "sentencepiece")
INSTALL_HINT = "pip install sentencepiece (or pip install -r requirements-extra.txt)"
SPACE = "\u2581"  # how SentencePiece writes a space inside a piece
# SentencePiece keeps at most this many lines to train on (its own default is all of them, in memory).
MAX_TRAINING_LINES = 2_000_000


def _sentencepiece():
    try:
        import sentencepiece
    except ImportError:
        raise data.DataError(f"SentencePiece tokenizers need the sentencepiece package: {INSTALL_HINT}") from None
    return sentencepiece


class Encoding:
    """What encode returns: only .ids, the part of tokenizers.Encoding the code reads."""

    __slots__ = ("ids",)

    def __init__(self, ids: list[int]):
        self.ids = ids


class SentencePieceTokenizer:
    """A SentencePiece model with the tokenizers.Tokenizer methods this project uses."""

    type = "sentencepiece"

    def __init__(self, model_proto: bytes):
        sentencepiece = _sentencepiece()
        self.model_proto = bytes(model_proto)
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)

    # Special tokens are never added by encode: train_bpe.py puts <eos> between documents itself.
    def encode(self, text: str, add_special_tokens: bool = False) -> Encoding:
        return Encoding(self.sp.encode(text))

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[Encoding]:
        return [Encoding(ids) for ids in self.sp.encode(list(texts))]

    encode_batch_fast = encode_batch  # tokenizers' variant without offsets; SentencePiece has none anyway

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.sp.decode([int(i) for i in ids])

    def get_vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def token_to_id(self, piece: str) -> int | None:
        idx = self.sp.piece_to_id(piece)
        return idx if self.sp.id_to_piece(idx) == piece else None  # unknown pieces map to <unk>

    def to_str(self) -> str:
        """The model as text (base64 of its bytes): stable, so data.tokenizer_hash works on it too."""
        return base64.b64encode(self.model_proto).decode("ascii")

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each id stands for: 1 for a byte piece, 0 for specials, else the piece's text."""
        sp = self.sp
        lengths = np.zeros(sp.get_piece_size(), dtype=np.int64)
        for i in range(sp.get_piece_size()):
            if sp.is_byte(i):
                lengths[i] = 1
            elif not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)):
                lengths[i] = len(sp.id_to_piece(i).replace(SPACE, " ").encode("utf-8"))
        return lengths


def train_sentencepiece(corpus: data.Corpus, vocab_size: int, max_bytes: int | None = None) -> SentencePieceTokenizer:
    """Trains a BPE SentencePiece model with the same special ids as the byte-level BPE (pad 0 … eos 3),
    on the same text data.train_tokenizer reads (the whole corpus, or its max_bytes sample)."""
    sentencepiece = _sentencepiece()
    total = min(max_bytes or corpus.total_bytes, corpus.total_bytes)

    def lines():
        # The bar counts the text read; SentencePiece then merges without reporting progress.
        with tqdm(total=total, desc="reading text for the tokenizer", unit="B", unit_scale=True, leave=False) as bar:
            for text in data.training_texts(corpus, max_bytes):
                bar.update(len(text))
                yield from (line for line in text.split("\n") if line)

    proto = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=lines(), model_writer=proto, model_type="bpe", vocab_size=vocab_size,
            pad_id=data.PAD_ID, unk_id=data.UNK_ID, bos_id=data.BOS_ID, eos_id=data.EOS_ID,
            pad_piece="<pad>", unk_piece="<unk>", bos_piece="<bos>", eos_piece="<eos>",
            byte_fallback=True,  # any text encodes: unseen characters become their UTF-8 bytes
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,  # indentation runs become tokens, as in the byte-level BPE
            character_coverage=1.0, hard_vocab_limit=False,  # a tiny corpus gets a smaller vocabulary, not an error
            input_sentence_size=MAX_TRAINING_LINES, shuffle_input_sentence=True, minloglevel=2,
        )
    except RuntimeError as exc:  # SentencePiece reports every training problem as a RuntimeError
        reason = str(exc).split("]", 1)[-1].strip() or str(exc)
        needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", reason)
        if needed:
            raise data.DataError(
                f"--vocab_size {vocab_size} is too small for SentencePiece on this corpus: it needs at least "
                f"{needed.group(1)} (256 bytes, the specials and every distinct character); raise --vocab_size"
            ) from None
        raise data.DataError(f"--tokenizer_type sentencepiece could not train on this corpus: {reason}") from None
    return SentencePieceTokenizer(proto.getvalue())


def load_sentencepiece(path: str | Path) -> SentencePieceTokenizer:
    path = Path(path)
    if not path.is_file():
        raise data.DataError(f"--tokenizer {path} does not exist: pass a SentencePiece .model or omit the flag to train one")
    try:
        return SentencePieceTokenizer(path.read_bytes())
    except RuntimeError:
        raise data.DataError(f"--tokenizer {path} is not a SentencePiece model: pass a .model file") from None


# --------------------------------------------------------------------------- the two kinds side by side


def is_sentencepiece_file(path: str | Path) -> bool:
    return Path(path).suffix == ".model"


def load_any(path: str | Path):
    """--tokenizer PATH: a SentencePiece .model, else a Hugging Face tokenizer.json."""
    return load_sentencepiece(path) if is_sentencepiece_file(path) else data.load_tokenizer(path)


def tokenizer_type(tok) -> str:
    return getattr(tok, "type", "bpe")


def tokenizer_file_bytes(tok) -> bytes:
    """What a tokenizer file holds: tokenizer.json text or the SentencePiece .model bytes."""
    if isinstance(tok, SentencePieceTokenizer):
        return tok.model_proto
    return tok.to_str().encode("utf-8")


def checkpoint_fields(tok) -> dict:
    """How a checkpoint embeds the tokenizer; only strings and tensors, so weights_only=True loads it."""
    if isinstance(tok, SentencePieceTokenizer):
        model = torch.frombuffer(bytearray(tok.model_proto), dtype=torch.uint8)
        return {"tokenizer_type": "sentencepiece", "tokenizer_model": model}
    return {"tokenizer_type": "bpe", "tokenizer_json": tok.to_str()}


def tokenizer_from_checkpoint(state: dict):
    """The tokenizer a checkpoint embeds (checkpoints from before tokenizer_type existed are byte-level BPE)."""
    kind = state.get("tokenizer_type", "bpe")
    if kind == "sentencepiece":
        return SentencePieceTokenizer(state["tokenizer_model"].numpy().tobytes())
    if kind == "bpe":
        from tokenizers import Tokenizer

        return Tokenizer.from_str(state["tokenizer_json"])
    raise ValueError(f"unknown tokenizer_type {kind!r}")
