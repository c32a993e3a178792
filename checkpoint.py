"""Self-contained checkpoints: weights, config, optimizer state and the tokenizer itself.

Everything inside is a tensor or a plain Python value, so ``torch.load(path, weights_only=True)``
reads it and a checkpoint from a stranger cannot run code. Files are written atomically.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

FORMAT = "mini-gpt-bpe"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "config")
TOKENIZER_KEYS = ("tokenizer_json", "tokenizer_model")  # byte-level BPE or SentencePiece: one of them


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
            os.chmod(tmp, _file_mode(path))  # mkstemp makes it private (0600); give it the usual mode
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


def _file_mode(path: Path) -> int:
    """The replaced file's mode, or what open() would give a new file under the current umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Writes state atomically; a full disk or a lost folder leaves the previous file and raises CheckpointError."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except OSError as exc:
        raise CheckpointError(
            f"could not write {path} ({exc.strerror or exc}); the previous checkpoint there is intact: "
            f"free some space and resume from it"
        ) from None


def load_checkpoint(path: str | Path, map_location="cpu", flag: str = "--ckpt") -> dict:
    """Loads and validates one of our checkpoints; anything else raises CheckpointError naming flag."""
    path = Path(path)
    where = f"{flag} {path}"
    if not path.exists():
        raise CheckpointError(f"{where} does not exist: train one with train_bpe.py or pass the path of a .pt file")
    if path.is_dir():
        raise CheckpointError(f"{where} is a folder: pass the .pt file inside it")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # not a pickle of objects at all: random bytes, text, ...
            raise CheckpointError(f"{where} is not a PyTorch file: pass a .pt written by train_bpe.py") from None
        raise CheckpointError(
            f"{where} holds Python objects that could run code; refusing to load it "
            f"(only load checkpoints written by train_bpe.py)"
        ) from None
    except Exception as exc:  # torch's zip and legacy readers raise many kinds of error on garbage
        # torch's own reader errors say what is wrong ("failed finding central directory"); others do not.
        reason = f": {str(exc).split('. ')[0][:120]}" if isinstance(exc, RuntimeError) else ""
        raise CheckpointError(f"{where} is unreadable (truncated, or not a PyTorch file{reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = "a bare state_dict" if isinstance(state, dict) and _looks_like_state_dict(state) else "from another program"
        raise CheckpointError(f"{where} is not a train_bpe.py checkpoint ({what}); pass one written by train_bpe.py")
    version = state.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format version {version}, newer than this code's {FORMAT_VERSION}: update the code"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if not any(k in state for k in TOKENIZER_KEYS):
        missing.append(" or ".join(TOKENIZER_KEYS))
    if missing:
        raise CheckpointError(f"{where} is incomplete (missing {', '.join(missing)}): it cannot be used")
    return state


def _looks_like_state_dict(state: dict) -> bool:
    return bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())


# --------------------------------------------------------------------------- resumable state


def rng_state(batch_generator: torch.Generator) -> dict:
    """Every random stream a training step reads, as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": np_state["state"]["pos"]}},
        "torch": torch.get_rng_state(),
        "batches": batch_generator.get_state(),  # where the data sampler is in its random sequence
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, batch_generator: torch.Generator) -> None:
    """Puts back what rng_state captured, so the next step draws what it would have drawn."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state({**np_state, "state": {
        "key": np.array(np_state["state"]["key"], dtype=np.uint32), "pos": np_state["state"]["pos"]}})
    torch.set_rng_state(state["torch"])
    batch_generator.set_state(state["batches"])
    cuda = state.get("cuda")
    # A run moved between CUDA and CPU (or to another GPU count) cannot replay the GPU streams; dropout
    # then differs from the uninterrupted run, nothing else does.
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- output folder


def check_writable(folder: Path, flag: str, shown: Path | None = None) -> None:
    """Creates folder if needed and writes a file in it, or raises CheckpointError naming flag and shown
    (the path as the user typed it, default folder).

    Checked by really writing (permission bits lie on read-only mounts and for root).
    """
    folder, shown = Path(folder), shown or folder
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise CheckpointError(f"{flag} {shown} cannot be created: {blocker} is a file, not a folder; pick another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise CheckpointError(f"{flag} {shown} is not writable ({exc.strerror or exc}): pick another path") from None


def check_out_dir(out_dir: Path, needed_bytes: int, names=()) -> None:
    """Fails fast when out_dir cannot hold our checkpoints: not creatable, not writable, or too full.

    needed_bytes is the extra space the run will take; existing files in ``names`` are replaced, so
    their size counts as available.
    """
    out_dir = Path(out_dir)
    check_writable(out_dir, "--out_dir")
    reusable = sum((out_dir / n).stat().st_size for n in names if (out_dir / n).is_file())
    free = shutil.disk_usage(out_dir).free + reusable
    if free < needed_bytes:
        raise CheckpointError(
            f"--out_dir {out_dir} has {free / 1e6:,.1f} MB free but checkpoints need about "
            f"{needed_bytes / 1e6:,.1f} MB: free some space or pick another folder"
        )


def remove_stale_temps(out_dir: Path, names) -> list[Path]:
    """Deletes temporary files that a killed run left behind while writing one of ``names``."""
    stale = [p for n in names for p in Path(out_dir).glob(f".{n}.*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
