"""Continuing a run from its checkpoint: which flags come from it, which must match, which may change.

A resumed run takes every flag from the checkpoint except those typed on the command line. A typed
flag that would change the model's shape or the tokenizer is an error; any other typed change
(``--max_steps``, ``--eval_interval``, ``--lr``, ...) is allowed and reported. The merged flags are a
new namespace: the parsed command line is never written to.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import checkpoint as ckpt_io
import tokenizer
from checkpoint import CheckpointError
from model import LAYOUT_FIELDS

# Typed with a different value, these would give a model (or, for --optimizer, an optimizer state, and for
# the tokenizer flags, a token stream) that the checkpoint does not fit: a resumed run keeps its own.
FIXED_FLAGS = ("preset", "vocab_size", "n_layer", "n_head", "n_embed", "block_size", "optimizer",
               "tokenizer_type", "tokenizer_path", "tokenizer_train_bytes", "min_frequency",
               *(name for name in LAYOUT_FIELDS if name != "zero_init_proj"))  # initialisation only
# One corpus flag typed replaces both: they are mutually exclusive.
CORPUS_FLAGS = ("data_file", "data_dir")
# Never taken from a checkpoint: what this command asks for.
OWN_FLAGS = ("resume", "plot_only")
# What train_bpe.py must have saved for a run to continue exactly where it stopped.
RESUME_KEYS = ("args", "optimizer", "scaler", "step", "best_val_loss", "rng", "corpus_fingerprint")


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run continues, and which flags the user typed (the rest came from it)."""

    path: Path
    state: dict
    typed: frozenset[str]


def resume_path(value: str, out_dir: Path, last_name: str) -> Path:
    """--resume PATH, or --resume alone: the last checkpoint in --out_dir."""
    return Path(value) if value else Path(out_dir) / last_name


def merged_flags(defaults: dict, typed: dict, saved: dict, path_flags: set[str],
                 ckpt: Path) -> tuple[argparse.Namespace, list[str]]:
    """The flags of a resumed run: typed ones, else the checkpoint's, else today's defaults.

    Returns a new namespace and the typed changes as "--flag old -> new". Raises CheckpointError naming
    the flag when a typed value would change what the checkpoint holds.
    """
    saved = {k: (Path(v) if k in path_flags and v is not None else v)
             for k, v in saved.items() if k in defaults and k not in OWN_FLAGS}  # flags this version still has
    changes = []
    for name, new in typed.items():
        if name not in saved or saved[name] == new:
            continue
        old = saved[name]
        if name in FIXED_FLAGS:
            raise CheckpointError(
                f"--{name} {new} conflicts with --resume {ckpt}, which was trained with --{name} {old}: "
                f"drop --{name} to resume, or start a new run in another --out_dir"
            )
        if new is not None:
            changes.append(f"--{name} {old} -> {new}")
    if set(typed) & set(CORPUS_FLAGS):  # a corpus typed now replaces the saved one, whichever flag it used
        saved = {k: v for k, v in saved.items() if k not in CORPUS_FLAGS}
    merged = {**defaults, **saved, **typed}
    if "out_dir" not in typed:  # keep writing beside the checkpoint, even if its folder was moved
        merged["out_dir"] = ckpt.parent
    return argparse.Namespace(**merged), changes


def load(path: Path, defaults: dict, typed: dict, path_flags: set[str]) -> tuple[argparse.Namespace, Resume, str]:
    """Loads a checkpoint to resume: (the run's flags, the Resume, a line saying what changed)."""
    state = ckpt_io.load_checkpoint(path, flag="--resume")
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"--resume {path} cannot be resumed (it lacks {', '.join(missing)}); it can still be sampled from"
        )
    ckpt_io.check_resumable(state, path)
    args, changes = merged_flags(defaults, typed, state["args"], path_flags, path)
    if state["step"] >= args.max_steps:
        raise CheckpointError(
            f"--resume {path} is already at step {state['step']} of --max_steps {args.max_steps}: "
            f"pass a larger --max_steps to train further"
        )
    trained = float(state.get("train_time", 0.0))
    if args.max_time and trained >= args.max_time:
        raise CheckpointError(
            f"--resume {path} has already trained {trained:.0f}s of its --max_time {args.max_time:.0f}s: "
            f"pass a larger --max_time (e.g. --max_time {2 * args.max_time:.0f}) or --max_time 0 to train on "
            f"to --max_steps"
        )
    line = f"resuming from {path} at step {state['step']}" + (f"; changed: {', '.join(changes)}" if changes
                                                               else "; same settings")
    return args, Resume(path, state, frozenset(typed)), line


def checkpoint_tokenizer(args, resume: Resume):
    """The tokenizer inside the checkpoint, and the path it was saved at; a --tokenizer typed now must be
    the same one."""
    tok = ckpt_io.embedded_tokenizer(resume.state, f"--resume {resume.path}")
    if "tokenizer" in resume.typed and args.tokenizer is not None:
        if tokenizer.load(args.tokenizer).to_str() != tok.to_str():
            raise CheckpointError(
                f"--tokenizer {args.tokenizer} differs from the one inside --resume {resume.path}: "
                f"drop --tokenizer (the checkpoint carries its own)"
            )
    return tok, Path(resume.state.get("tokenizer_path") or "(inside the checkpoint)")


def corpus_fingerprint(token_data) -> str:
    """A hash of the train and val token streams: it changes when the corpus text (or the tokenizer) does.

    Content, not paths or modification times, so a corpus that was copied or moved still resumes; the
    price is one read of the tokens (about a second per GB).
    """
    h = hashlib.blake2b(digest_size=8)
    for part in (token_data.train, token_data.val):
        h.update(np.ascontiguousarray(part).data)
    return h.hexdigest()


def restore_training_state(state: dict, ckpt: Path, raw_model, optimizer, scaler, batch_generator) -> None:
    """Loads weights, optimizer, GradScaler and every RNG from a checkpoint into the given objects."""
    # The flags of this run (weight decay, fused kernels for this device) win over the saved groups';
    # the learning rate is set again at every step.
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group, h in zip(optimizer.param_groups, hyper):
            group.update(h)
        if state["scaler"]:  # empty when it was saved with fp16 scaling off
            scaler.load_state_dict(state["scaler"])
        ckpt_io.restore_rng_state(state["rng"], batch_generator)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"--resume {ckpt} does not fit this model ({reason})") from None
