"""Continuing a run from its checkpoint: which flags come from it, which must match, which may change.

A resumed run takes every flag from the checkpoint except those typed on the command line. A typed
flag that would change the model's shape is an error; any other typed change (``--max_steps``,
``--eval_interval``, ``--lr``, ...) is allowed and reported.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

import spm
from checkpoint import CheckpointError, load_checkpoint, restore_rng_state

# Typed with a different value, these would give a model (or, for --optimizer, an optimizer state)
# the checkpoint does not fit.
FIXED_FLAGS = ("preset", "vocab_size", "n_layer", "n_head", "n_embed", "block_size", "optimizer")
# One corpus flag typed replaces both: they are mutually exclusive.
CORPUS_FLAGS = ("data_file", "data_dir")
# What train_bpe.py must have saved for a run to continue exactly where it stopped.
RESUME_KEYS = ("args", "optimizer", "scaler", "step", "best_val_loss", "rng", "corpus_fingerprint")

_UNSET = object()


def explicit_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The flags typed in argv, as dest names; argparse cannot tell a typed default from an untyped one.

    ``parser`` must be a fresh parser: its defaults are replaced by a marker to see which stay unset.
    (argparse has no public list of its actions; ``_actions`` has been stable for as long as it exists.)
    """
    parser.set_defaults(**{a.dest: _UNSET for a in parser._actions if a.dest != "help"})
    return {name for name, value in vars(parser.parse_args(argv)).items() if value is not _UNSET}


def path_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Flags whose values are paths: the checkpoint stores them as strings."""
    return {a.dest for a in parser._actions if a.type is Path}


def apply_saved_args(args, given: set[str], saved: dict, paths: set[str], ckpt: Path) -> list[str]:
    """Sets every flag not in ``given`` to its saved value; returns the typed changes as "--flag old -> new".

    Raises CheckpointError naming the flag when a typed value would change the model's shape.
    """
    typed_corpus = bool(given & set(CORPUS_FLAGS))
    changes = []
    for name, old in saved.items():
        if name == "resume" or not hasattr(args, name):  # a flag this version no longer has
            continue
        if name in paths and old is not None:
            old = Path(old)
        if name not in given and not (typed_corpus and name in CORPUS_FLAGS):
            setattr(args, name, old)
            continue
        new = getattr(args, name)
        if new == old:
            continue
        if name in FIXED_FLAGS:
            raise CheckpointError(
                f"--{name} {new} conflicts with --resume {ckpt}, which was trained with --{name} {old}: "
                f"drop --{name} to resume, or start a new run in another --out_dir"
            )
        if new is not None:
            changes.append(f"--{name} {old} -> {new}")
    return changes


def load_for_resume(args, path: Path, given: set[str], paths: set[str]) -> dict:
    """Loads the checkpoint at path, fills every flag not in ``given`` from it and reports the changes.

    The returned state carries ``given`` too: the tokenizer check needs to know what was typed.
    """
    state = load_checkpoint(path, flag="--resume")
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"--resume {path} cannot be resumed (it lacks {', '.join(missing)}); it can still be sampled from"
        )
    changes = apply_saved_args(args, given, state["args"], paths, path)
    if "out_dir" not in given:  # keep writing beside the checkpoint, even if its folder was moved
        args.out_dir = path.parent
    args.resume = path
    if state["step"] >= args.max_steps:
        raise CheckpointError(
            f"--resume {path} is already at step {state['step']} of --max_steps {args.max_steps}: "
            f"pass a larger --max_steps to train further"
        )
    print(f"resuming from {path} at step {state['step']}"
          + (f"; changed: {', '.join(changes)}" if changes else "; same settings"))
    state["given"] = given
    return state


def checkpoint_tokenizer(args, state: dict) -> tuple[Tokenizer | spm.SentencePieceTokenizer, Path]:
    """The tokenizer inside the checkpoint; a --tokenizer typed now must be the same one."""
    tok = spm.tokenizer_from_checkpoint(state)
    if "tokenizer" in state["given"] and args.tokenizer is not None:
        if spm.load_any(args.tokenizer).to_str() != tok.to_str():
            raise CheckpointError(
                f"--tokenizer {args.tokenizer} differs from the one inside --resume {args.resume}: "
                f"drop --tokenizer (the checkpoint carries its own)"
            )
    return tok, Path(state.get("tokenizer_path", "(inside the checkpoint)"))


def corpus_fingerprint(token_data) -> str:
    """A hash of the train and val token streams: it changes when the corpus text (or the tokenizer) does.

    Content, not paths or modification times, so a corpus that was copied or moved still resumes; the
    price is one read of the tokens (about a second per GB).
    """
    h = hashlib.blake2b(digest_size=8)
    for part in (token_data.train, token_data.val):
        h.update(np.ascontiguousarray(part).data)
    return h.hexdigest()


def restore_training_state(state: dict, ckpt: Path, raw_model, optimizer, scaler,
                           batch_generator) -> tuple[int, float]:
    """Loads weights, optimizer, GradScaler and every RNG from a checkpoint; returns (step, best val loss)."""
    # The flags of this run (weight decay, fused kernels for this device) win over the saved groups';
    # the learning rate is set again at every step.
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0]
        raise CheckpointError(f"--resume {ckpt} does not fit this model ({reason})") from None
    for group, h in zip(optimizer.param_groups, hyper):
        group.update(h)
    if state["scaler"]:  # empty when it was saved with fp16 scaling off
        scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"], batch_generator)
    return int(state["step"]), float(state["best_val_loss"])
