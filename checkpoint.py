"""Self-contained checkpoints: weights, config, optimizer state and the tokenizer itself.

Everything inside is a tensor or a plain Python value, so ``torch.load(path, weights_only=True)``
reads it and a checkpoint from a stranger cannot run code. Files are written atomically.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

FORMAT = "mini-gpt-bpe"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "config", "tokenizer_json")


class CheckpointError(Exception):
    """A checkpoint that is missing, unsafe, broken or not ours: shown as one line."""


def atomic_write(path: str | Path, write) -> None:
    """Calls write(file) on a temporary file beside path, syncs it, then renames it over path.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(path: str | Path, state: dict) -> None:
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Loads and validates one of our checkpoints; anything else raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: train one with train_bpe.py or pass --ckpt PATH")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder: pass the .pt file inside it")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # not a pickle of objects at all: random bytes, text, ...
            raise CheckpointError(f"checkpoint {path} is not a PyTorch file: pass a .pt written by train_bpe.py") from None
        raise CheckpointError(
            f"checkpoint {path} holds Python objects that could run code; refusing to load it "
            f"(only load checkpoints written by train_bpe.py)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not a PyTorch file): {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = "a bare state_dict" if isinstance(state, dict) and _looks_like_state_dict(state) else "from another program"
        raise CheckpointError(f"checkpoint {path} is not a train_bpe.py checkpoint ({what}); pass one written by train_bpe.py")
    version = state.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, newer than this code's {FORMAT_VERSION}: update the code"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (missing {', '.join(missing)}): it cannot be used")
    return state


def _looks_like_state_dict(state: dict) -> bool:
    return bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())
