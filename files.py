"""Writing files so that no failure loses or tears one: atomic writes, and output folders checked up front.

Every file the project writes (checkpoints, tokenizers, the token cache, metrics, plots, exports) goes
through ``atomic_write`` or is appended line by line (metrics.py). A write that fails raises
``OutputError`` with one line naming the file, the reason and what to do; the previous file stays.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path


class OutputError(Exception):
    """A file or folder that cannot be written (full disk, read-only, a file where a folder should be)."""


def reason(exc: OSError) -> str:
    """An OSError as a few words: "No space left on device", "Permission denied", ..."""
    return exc.strerror or str(exc) or type(exc).__name__


def advice(exc: OSError) -> str:
    """What the user can do about a failed write."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some disk space"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "pick a folder you can write to"
    if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        return "remove what is in the way or pick another path"
    return "check the disk and the path"


def atomic_write(path: str | Path, write, by_name: bool = False) -> None:
    """Calls write(file) on a temporary file beside path, syncs it, then renames it over path.

    A crash at any moment leaves either the old file or the new one, never a torn one. Raises OSError
    (the caller names the flag); the temporary file is removed whatever happens. by_name: write gets
    the temporary file's path instead, for a writer that opens its file itself (gguf's GGUFWriter) and
    closes it before returning; the fsync below still covers what it wrote (it syncs the file, not a
    descriptor's buffer).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, _file_mode(path))  # mkstemp makes it private (0600); give it the usual mode
            write(Path(tmp) if by_name else f)
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


def new_file_mode() -> int:
    """What open() gives a new file under the current umask (0644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _file_mode(path: Path) -> int:
    """The replaced file's mode, or a new file's."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return new_file_mode()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def check_writable(folder: Path, flag: str, shown: Path | None = None) -> None:
    """Creates folder if needed and writes a file in it, or raises OutputError naming flag and shown
    (the path as the user typed it, default folder).

    Checked by really writing (permission bits lie on read-only mounts and for root).
    """
    folder, shown = Path(folder), shown or folder
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise OutputError(f"{flag} {shown} cannot be created: {blocker} is a file, not a folder; pick another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OutputError(f"{flag} {shown} is not writable ({reason(exc)}): {advice(exc)}") from None


def check_file_target(path: Path, flag: str) -> None:
    """Raises OutputError when path cannot become a file: a folder stands there, or its folder cannot be made."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder: pass a file path (or remove the folder)")
    check_writable(path.parent, flag, path)


def check_free_space(folder: Path, needed_bytes: int, flag: str, names=()) -> None:
    """Fails fast when folder has less than needed_bytes free; existing files in ``names`` are replaced,
    so their size counts as available."""
    folder = Path(folder)
    reusable = sum((folder / n).stat().st_size for n in names if (folder / n).is_file())
    free = shutil.disk_usage(folder).free + reusable
    if free < needed_bytes:
        raise OutputError(
            f"{flag} {folder} has {free / 1e6:,.1f} MB free but this run needs about "
            f"{needed_bytes / 1e6:,.1f} MB: free some space or pick another folder"
        )


def remove_stale_temps(folder: Path, names) -> list[Path]:
    """Deletes temporary files that a killed run left behind while writing one of ``names``."""
    stale = [p for n in names for p in Path(folder).glob(f".{n}.*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
