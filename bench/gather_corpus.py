"""Build the second benchmark corpus: a few MB of Python source copied from installed packages.

    python bench/gather_corpus.py                       # -> <temp dir>/py_corpus (about 6 MB)
    python bench/gather_corpus.py --out /tmp/py --site /path/to/site-packages

Tiny Shakespeare is one small prose file that a 2-minute run sees ~8 times; this corpus is code, in
hundreds of files, seen less than once in the same time. A lever that helps on both is not tuned to
one text. The folder keeps each package's structure, so train_bpe.py's hash-of-path split holds out
whole files.

Deterministic for the same installed packages: each package's .py files (tests and generated tables
left out) are ordered by a hash of their path and taken until the package's byte cap, so the sample
is spread over the whole package rather than its alphabetically first folders. The summary line ends
with a digest of the chosen paths and sizes: two machines built the same corpus when it matches.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

DEFAULT_SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"

# (package folder, byte cap): a mix of library styles (ML framework, numerics, plotting, graphs,
# symbolic maths, tooling, templating, HTTP) so that no single project's conventions dominate.
PACKAGES = [
    ("transformers", 1_600_000),
    ("numpy", 800_000),
    ("sympy", 800_000),
    ("matplotlib", 700_000),
    ("networkx", 600_000),
    ("huggingface_hub", 400_000),
    ("IPython", 400_000),
    ("_pytest", 300_000),
    ("jinja2", 200_000),
    ("requests", 150_000),
    ("urllib3", 150_000),
]
MAX_FILE_BYTES = 100_000  # bigger .py files are mostly generated tables (unicode data, lexer maps)
SKIP_PARTS = {"tests", "test", "testing", "__pycache__"}


def candidates(package_dir: Path) -> list[Path]:
    """The package's .py files that read as hand-written code, ordered by a hash of their relative path."""
    files = []
    for path in package_dir.rglob("*.py"):
        rel = path.relative_to(package_dir.parent)
        if SKIP_PARTS & set(rel.parts[:-1]) or path.is_symlink() or not path.is_file():
            continue
        size = path.stat().st_size
        if not 0 < size <= MAX_FILE_BYTES:
            continue
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(rel)
    return sorted(files, key=lambda rel: hashlib.sha1(rel.as_posix().encode()).hexdigest())


def gather(site: Path, out: Path) -> tuple[int, int, str]:
    """Copies the sample into out (replacing it); returns (files, bytes, digest)."""
    if out.exists():
        shutil.rmtree(out)
    digest = hashlib.sha1()
    n_files = n_bytes = 0
    for package, cap in PACKAGES:
        if not (site / package).is_dir():
            raise SystemExit(f"gather_corpus.py: error: {site / package} is not installed: pass --site")
        taken = 0
        for rel in candidates(site / package):
            size = (site / rel).stat().st_size
            if taken + size > cap:
                continue  # a smaller file further down may still fit
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(site / rel, out / rel)
            digest.update(f"{rel.as_posix()}\0{size}\n".encode())
            taken += size
            n_files += 1
        n_bytes += taken
    return n_files, n_bytes, digest.hexdigest()[:12]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--site", type=Path, default=DEFAULT_SITE, help="site-packages folder to copy from")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "py_corpus",
                   help="folder to (re)create")
    args = p.parse_args(argv)
    n_files, n_bytes, digest = gather(args.site, args.out)
    print(f"{args.out}: {n_files} files, {n_bytes / 1e6:.2f} MB, digest {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
