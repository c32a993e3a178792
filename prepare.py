"""A training run's data: corpus → tokenizer → token cache, checked before anything on disk is replaced.

The tokenizer comes from, in this order: the checkpoint a run resumes, the model it starts from
(``--init_from``), the file rank 0 saved (other DDP ranks), ``--tokenizer``, or a new one trained on the
corpus. A rebuilt token cache replaces the old one, and a new tokenizer is saved, only once the corpus
has passed its checks (big enough, the corpus a resumed run expects).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import data
import distributed
import resume as resume_
import token_cache
import tokenizer
from checkpoint import CheckpointError
from files import advice, reason

DEFAULT_DATA_FILE = Path(__file__).resolve().parent / "data" / "input.txt"


@dataclass(frozen=True)
class RunData:
    """What the training loop reads: the tokenizer, its special ids and the token streams."""

    tok: object  # tokenizers.Tokenizer or tokenizer.SentencePieceTokenizer
    tok_path: Path  # where the tokenizer file is (or "(inside the checkpoint)")
    specials: tokenizer.SpecialIds
    token_data: data.TokenData
    fingerprint: str  # of the token streams: a resumed run must see the same ones
    corpus_bytes: int


def cache_dir(args) -> Path:
    return args.cache_dir or args.out_dir / "token_cache"


def corpus_flag(args) -> tuple[str, Path]:
    """The flag and path that name the corpus, for messages (the bundled file when neither is given)."""
    if args.data_dir:
        return "--data_dir", args.data_dir
    return "--data_file", args.data_file or DEFAULT_DATA_FILE


def own_outputs(args) -> list[Path]:
    """What this run writes that could lie inside a --data_dir: left out of the corpus.

    A folder that holds the corpus folder itself (``cd notes && train_bpe.py --data_dir .``) cannot be
    left out whole; then only the files the run writes there are.
    """
    if not args.data_dir:
        return []
    root = Path(args.data_dir).resolve()
    paths = []
    for folder in (args.out_dir, cache_dir(args)):
        folder = Path(folder).resolve()
        if folder == root or folder in root.parents:
            paths.append(folder / "token_cache")
        else:
            paths.append(folder)
    tok_path = Path(args.tokenizer_path).resolve()
    pattern = re.compile(re.escape(tok_path.stem) + r"(-\d+)?\.(json|model)")
    if tok_path.parent.is_dir():  # the tokenizer and its -1, -2, ... siblings
        paths += [p for p in tok_path.parent.iterdir() if pattern.fullmatch(p.name)]
    return paths


def scan(args) -> data.Corpus:
    flag, path = corpus_flag(args)
    if flag == "--data_dir":
        corpus = data.scan_corpus(data_dir=path, exclude=own_outputs(args))
    else:
        corpus = data.scan_corpus(data_file=path)
    print(corpus.summary())
    if args.verbose:
        for file, why in corpus.skipped_files:
            # A file name that is not UTF-8 prints as escapes, never as an encoding error.
            print(f"  {why}: {file.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')}")
    return corpus


def choose_tokenizer(args, corpus: data.Corpus, world: distributed.World, resume: resume_.Resume | None,
                     start_tok) -> tuple[object, Path | None]:
    """(tokenizer, its file); the file is None for a tokenizer trained just now (saved once checks pass)."""
    main_tok_path = None if world.is_main else Path(world.wait_for_main())
    if resume is not None:
        return resume_.checkpoint_tokenizer(args, resume)
    if start_tok is not None:
        return start_tok
    if main_tok_path is not None:
        if not main_tok_path.is_file():
            raise data.DataError(
                f"cannot read the tokenizer rank 0 saved at {main_tok_path}: on several nodes, put --out_dir, "
                f"--tokenizer_path and the corpus on storage every node shares (same path)"
            )
        return tokenizer.load(main_tok_path), main_tok_path
    if args.tokenizer:
        return tokenizer.load(args.tokenizer), args.tokenizer
    return tokenizer.train(args.tokenizer_type, corpus, args.vocab_size, args.tokenizer_train_bytes,
                           end=data.tokenizer_text_end(corpus),  # never the held-out text
                           min_frequency=args.min_frequency), None


def prepare_data(args, world: distributed.World, resume: resume_.Resume | None = None,
                 start_tok: tuple[object, Path] | None = None) -> RunData:
    """Corpus → tokenizer → token cache, checked against a resumed run."""
    # Under torchrun rank 0 prepares the data first; the other ranks wait (in choose_tokenizer) for the path
    # of the tokenizer it saved, then read the same files: that tokenizer and the token cache it built.
    corpus = scan(args) if world.is_main else None
    tok, tok_path = choose_tokenizer(args, corpus, world, resume, start_tok)
    trained_now = tok_path is None
    if corpus is None:
        corpus = scan(args)
    specials = tokenizer.special_ids(tok)
    # A new cache replaces the old one only if these checks pass: a mistyped corpus keeps the right cache.
    where = cache_dir(args)
    with token_cache.reuse_or_encode(corpus, tok, where) as cache:
        if not world.is_main and not cache.reused:  # rank 0 has just built it: we must be on other storage
            raise data.DataError(
                f"the token cache rank 0 built in {where} is not valid for this rank ({cache.reason}): "
                f"on several nodes, put --out_dir (or --cache_dir) on storage every node shares (same path)"
            )
        token_data = cache.token_data(args.block_size)
        fingerprint = resume_.corpus_fingerprint(token_data)
        if resume is not None and fingerprint != resume.state["corpus_fingerprint"]:
            flag, path = corpus_flag(args)
            raise CheckpointError(
                f"{flag} {path} is not the corpus --resume {resume.path} was trained on (its text changed): "
                f"pass the original corpus, or start a new run in another --out_dir"
            )
        if tok_path is None:  # inside the block: a tokenizer that cannot be saved leaves the old cache too
            tok_path = save_tokenizer(tok, args)
    print(cache.message())
    if trained_now:
        check_tokenizer_text(corpus, token_data)
    if world.is_main:
        world.broadcast(str(tok_path))  # lets the other ranks go
    if trained_now and args.min_frequency and tok.get_vocab_size() < args.vocab_size:
        print(f"note: the tokenizer stopped at {tok.get_vocab_size()} of --vocab_size {args.vocab_size} tokens: the "
              f"corpus has no more pairs that occur at least --min_frequency {args.min_frequency} times (rarer "
              f"tokens would be too rare to learn; --min_frequency 0 merges up to --vocab_size)")
    print(f"tokenizer: {tok.get_vocab_size()} tokens ({tok_path}); dataset: "
          f"{len(token_data.train) + len(token_data.val):,} tokens, "
          f"{len(token_data.train):,} train / {len(token_data.val):,} val")
    return RunData(tok, tok_path, specials, token_data, fingerprint, corpus.total_bytes)


def check_tokenizer_text(corpus: data.Corpus, token_data: data.TokenData) -> None:
    """One line when the text a new tokenizer was trained on reached into the validation split: possible in a
    folder whose held-out documents take many more bytes per token than the rest (data.tokenizer_text_end)."""
    if token_data.val_bytes is None:
        return
    val_from = corpus.total_bytes - token_data.val_bytes  # where validation starts in the stream, in bytes
    end = data.tokenizer_text_end(corpus)
    if end > val_from:
        print(f"note: the tokenizer was trained on the first {end:,} bytes, and validation "
              f"starts at about byte {val_from:,} (its documents take far more bytes per token than the rest): "
              f"the validation loss may flatter the model; --tokenizer with one trained on other text avoids it")


def save_tokenizer(tok, args) -> Path:
    """Saves a newly trained tokenizer at --tokenizer_path (a different one there is kept, see tokenizer.save)."""
    try:
        path, note = tokenizer.save(tok, args.tokenizer_path, args.overwrite_tokenizer)
    except OSError as exc:
        raise data.DataError(
            f"--tokenizer_path {args.tokenizer_path} cannot be written ({reason(exc)}): {advice(exc)}"
        ) from None
    if note:
        print(note)
    return path
