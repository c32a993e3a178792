"""Both tokenizers: byte-level BPE (Hugging Face ``tokenizers``) and SentencePiece, behind one set of functions.

The code holds either a ``tokenizers.Tokenizer`` or a ``SentencePieceTokenizer``, which offers the few
methods the rest of the project calls (``encode(text).ids``, ``encode_batch_fast``, ``decode``,
``get_vocab_size``, ``token_to_id``, ``to_str``). Everything that differs by kind lives here: training,
loading and saving a file, how a checkpoint embeds the tokenizer, which ids are special, and how many
UTF-8 bytes each token stands for (for bits per byte).

Special tokens are data, not constants: our own tokenizers put ``<pad> <unk> <bos> <eos>`` at ids 0-3;
GPT-2's has one, ``<|endoftext|>``, as both start and end of text. ``special_ids`` finds them by name and
checkpoints store what it found.

SentencePiece round trips: we train with the identity normalisation, no dummy prefix, extra whitespace
kept and byte fallback, so decode(encode(text)) == text for ordinary text, code and emoji. What still
differs: U+2581 ("▁", SentencePiece's own space marker) in the input decodes as a plain space, and
training reads the corpus line by line, so a newline is always its own token.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

import data
from files import atomic_write

TYPES = ("bpe", "sentencepiece")
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")  # ids 0, 1, 2, 3 in the tokenizers we train
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte, plus the specials
SPM_INSTALL_HINT = "pip install sentencepiece (or pip install -r requirements-extra.txt)"
SPACE = "\u2581"  # how SentencePiece writes a space inside a piece
# SentencePiece keeps at most this many lines to train on (its own default is all of them, in memory).
MAX_TRAINING_LINES = 2_000_000

# The names a tokenizer may give its specials, ours first, then GPT-2's, then SentencePiece-style ones.
EOS_NAMES = ("<eos>", "<|endoftext|>", "</s>")
BOS_NAMES = ("<bos>", "<|endoftext|>", "<s>")
PAD_NAMES = ("<pad>",)
UNK_NAMES = ("<unk>",)


# --------------------------------------------------------------------------- special ids


@dataclass(frozen=True)
class SpecialIds:
    """The ids the pipeline gives a meaning to."""

    eos: int  # ends every document in the token stream; --stop_at_eos stops there
    bos: int | None = None  # starts an empty prompt (the eos id when the tokenizer has no own start token)
    pad: int | None = None
    unk: int | None = None

    @property
    def start(self) -> int:
        """What generation starts from when there is no prompt."""
        return self.bos if self.bos is not None else self.eos


def special_ids(tok) -> SpecialIds:
    """Finds the special ids by name; DataError when there is no end-of-text token at all."""

    def find(names):
        return next((i for i in (tok.token_to_id(n) for n in names) if i is not None), None)

    eos = find(EOS_NAMES)
    if eos is None:
        raise data.DataError(f"the tokenizer has no end-of-text token (one of {', '.join(EOS_NAMES)})")
    return SpecialIds(eos=eos, bos=find(BOS_NAMES), pad=find(PAD_NAMES), unk=find(UNK_NAMES))


# --------------------------------------------------------------------------- SentencePiece behind the same methods


def _sentencepiece():
    try:
        import sentencepiece
    except ImportError:
        raise data.DataError(f"SentencePiece tokenizers need the sentencepiece package: {SPM_INSTALL_HINT}") from None
    return sentencepiece


class Encoding:
    """What encode returns: only .ids, the part of tokenizers.Encoding the code reads."""

    __slots__ = ("ids",)

    def __init__(self, ids: list[int]):
        self.ids = ids


class SentencePieceTokenizer:
    """A SentencePiece model with the tokenizers.Tokenizer methods this project uses."""

    def __init__(self, model_proto: bytes):
        sentencepiece = _sentencepiece()
        self.model_proto = bytes(model_proto)
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)

    # Special tokens are never added by encode: the token stream puts <eos> between documents itself.
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
        """The model as text (base64 of its bytes): stable, so tokenizer_hash works on it too."""
        return base64.b64encode(self.model_proto).decode("ascii")

    def byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each id stands for: 1 for a byte piece, 0 for specials, else the piece's text."""
        sp = self.sp
        lengths = np.zeros(sp.get_piece_size(), dtype=np.int64)
        for i in range(sp.get_piece_size()):
            if sp.is_byte(i):
                lengths[i] = 1
            elif not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)):
                lengths[i] = len(sp.id_to_piece(i).replace(SPACE, " ").encode("utf-8"))
        return lengths


def kind(tok) -> str:
    """"bpe" or "sentencepiece": what --tokenizer_type and checkpoints call it."""
    return "sentencepiece" if isinstance(tok, SentencePieceTokenizer) else "bpe"


# --------------------------------------------------------------------------- training


def train(tokenizer_type: str, corpus: data.Corpus, vocab_size: int, max_bytes: int | None = None,
          end: int | None = None, min_frequency: int = 0):
    """A new tokenizer of the given kind, trained on the corpus' first `end` bytes (all for None) or their
    max_bytes sample (data.training_texts). min_frequency is byte-level BPE's (train_bpe); train_bpe.check_args
    refuses it with SentencePiece."""
    if tokenizer_type == "sentencepiece":
        return train_sentencepiece(corpus, vocab_size, max_bytes, end)
    return train_bpe(corpus, vocab_size, max_bytes, end, min_frequency)


def _text_with_progress(corpus: data.Corpus, max_bytes: int | None, end: int | None, desc: str) -> Iterator[str]:
    text_bytes = corpus.total_bytes if end is None else min(end, corpus.total_bytes)
    with tqdm(total=min(max_bytes or text_bytes, text_bytes), desc=desc, unit="B", unit_scale=True, leave=False) as bar:
        for text in data.training_texts(corpus, max_bytes, end):
            bar.update(len(text))  # characters: close enough to bytes for a progress bar
            yield text


def train_bpe(corpus: data.Corpus, vocab_size: int, max_bytes: int | None = None, end: int | None = None,
              min_frequency: int = 0) -> Tokenizer:
    """Trains a byte-level BPE on a stream of the corpus' text (or its max_bytes sample): every string
    round-trips exactly, whitespace and emoji included. With min_frequency, only pairs that occur at least
    that many times in the text are merged: the vocabulary stops growing below vocab_size on a small corpus
    rather than adding tokens too rare for the model to learn."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise data.DataError(f"--vocab_size {vocab_size} is too small: byte-level BPE needs at least {MIN_VOCAB_SIZE}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,  # our own bar counts bytes
    )
    tok.train_from_iterator(_text_with_progress(corpus, max_bytes, end, "training tokenizer"), trainer=trainer)
    return tok


def train_sentencepiece(corpus: data.Corpus, vocab_size: int, max_bytes: int | None = None,
                        end: int | None = None) -> SentencePieceTokenizer:
    """Trains a BPE SentencePiece model with the same special ids as our byte-level BPE (pad 0 … eos 3),
    on the same text train_bpe reads (the corpus' first `end` bytes, or their max_bytes sample)."""
    sentencepiece = _sentencepiece()

    def lines():  # the bar counts the text read; SentencePiece then merges without reporting progress
        for text in _text_with_progress(corpus, max_bytes, end, "reading text for the tokenizer"):
            yield from (line for line in text.split("\n") if line)

    proto = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=lines(), model_writer=proto, model_type="bpe", vocab_size=vocab_size,
            pad_id=0, unk_id=1, bos_id=2, eos_id=3,
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


# --------------------------------------------------------------------------- files


def load(path: str | Path, flag: str = "--tokenizer"):
    """A tokenizer file: a SentencePiece .model, else a Hugging Face tokenizer.json (byte-level BPE)."""
    path = Path(path)
    if path.is_dir():
        raise data.DataError(f"{flag} {path} is a folder: pass the tokenizer.json (or .model) file inside it")
    if not path.is_file():
        raise data.DataError(f"{flag} {path} does not exist: pass a tokenizer.json or omit the flag to train one")
    if path.suffix == ".model":
        try:
            return SentencePieceTokenizer(path.read_bytes())
        except RuntimeError:
            raise data.DataError(f"{flag} {path} is not a SentencePiece model: pass a .model file") from None
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception for any parse failure
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise data.DataError(f"{flag} {path} is not a Hugging Face tokenizer.json ({reason})") from None
    check_byte_level(tok, f"{flag} {path}")
    return tok


def check_byte_level(tok: Tokenizer, where: str) -> None:
    """Refuses a tokenizer.json that is not byte-level BPE: bits per byte and exact round trips rely on it."""
    spec = json.loads(tok.to_str())
    if (spec.get("decoder") or {}).get("type") != "ByteLevel" or (spec.get("model") or {}).get("type") != "BPE":
        raise data.DataError(f"{where} is not a byte-level BPE tokenizer (like GPT-2's): train one with train_bpe.py")


def file_bytes(tok) -> bytes:
    """What a tokenizer file holds: tokenizer.json text or the SentencePiece .model bytes."""
    if isinstance(tok, SentencePieceTokenizer):
        return tok.model_proto
    return tok.to_str().encode("utf-8")


def file_path(tok, path: Path) -> Path:
    """Where --tokenizer_path puts this kind: SentencePiece models get a .model suffix."""
    return path.with_suffix(".model") if isinstance(tok, SentencePieceTokenizer) else path


def save(tok, path: Path, overwrite: bool = False) -> tuple[Path, str | None]:
    """Writes the tokenizer at path (atomically); returns where it went and a note for the user, if any.

    A different tokenizer already at path is kept and the new one gets the first free -1, -2, ... name,
    unless overwrite. Raises OSError when the file cannot be written.
    """
    path = file_path(tok, Path(path))
    content, note = file_bytes(tok), None
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_bytes() != content:
        if overwrite:
            note = f"{path} holds a different tokenizer; replacing it (--overwrite_tokenizer)"
        else:
            stem, n = path.with_suffix(""), 1
            while (alt := Path(f"{stem}-{n}{path.suffix}")).exists():
                n += 1
            note = (f"{path} holds a different tokenizer; keeping it and saving the new one as {alt} "
                    f"(--overwrite_tokenizer replaces it)")
            path = alt
    if not (path.is_file() and path.read_bytes() == content):  # the same file already there: leave it be
        atomic_write(path, lambda f: f.write(content))
    return path, note


def tokenizer_hash(tok) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- checkpoints


def checkpoint_fields(tok) -> dict:
    """How a checkpoint embeds the tokenizer; only strings, ints and tensors, so weights_only=True loads it."""
    ids = {"special_ids": asdict(special_ids(tok))}
    if isinstance(tok, SentencePieceTokenizer):
        model = torch.frombuffer(bytearray(tok.model_proto), dtype=torch.uint8)
        return {"tokenizer_type": "sentencepiece", "tokenizer_model": model, **ids}
    return {"tokenizer_type": "bpe", "tokenizer_json": tok.to_str(), **ids}


def from_checkpoint(state: dict):
    """The tokenizer a checkpoint embeds (checkpoints from before tokenizer_type existed are byte-level BPE).

    Raises ValueError when the embedded tokenizer is damaged, DataError when it needs a missing package.
    """
    kind_ = state.get("tokenizer_type", "bpe")
    if kind_ == "sentencepiece":
        model = state.get("tokenizer_model")
        if not isinstance(model, torch.Tensor):
            raise ValueError("tokenizer_model is not a tensor")
        try:
            return SentencePieceTokenizer(model.numpy().tobytes())
        except RuntimeError as exc:
            raise ValueError(f"the embedded SentencePiece model does not load ({exc})") from None
    if kind_ == "bpe":
        text = state.get("tokenizer_json")
        if not isinstance(text, str):
            raise ValueError("tokenizer_json is not text")
        try:
            return Tokenizer.from_str(text)
        except Exception:  # the Rust side raises a bare Exception for any parse failure
            raise ValueError("tokenizer_json is not a tokenizer.json") from None
    raise ValueError(f"unknown tokenizer_type {kind_!r}")


def checkpoint_special_ids(state: dict, tok) -> SpecialIds:
    """The special ids a checkpoint stored; older checkpoints (before they were stored) had <bos> 2, <eos> 3."""
    saved = state.get("special_ids")
    if isinstance(saved, dict) and isinstance(saved.get("eos"), int):
        return SpecialIds(**{k: saved.get(k) for k in ("eos", "bos", "pad", "unk")})
    return special_ids(tok)


# --------------------------------------------------------------------------- bits per byte


def byte_lengths(tok) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for bits per byte.

    In a byte-level vocabulary every character of a token's string stands for exactly one byte.
    """
    if isinstance(tok, SentencePieceTokenizer):
        return tok.byte_lengths()
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for token, idx in tok.get_vocab().items():
        lengths[idx] = len(token)
    for idx, added in tok.get_added_tokens_decoder().items():
        if added.special:
            lengths[idx] = 0
    return lengths
