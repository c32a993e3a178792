"""Training metrics as JSON lines, and the loss picture drawn from them.

Each line of ``<out_dir>/metrics.jsonl`` is one record with a ``kind``:

- ``start``: a run (or a resumed run) begins at ``step``; later records replace earlier ones from there on.
- ``train``: every log interval: step, tokens seen, elapsed seconds, lr, loss of the last batch, tokens/s.
- ``eval``: every evaluation: the same, plus train/val loss, val perplexity and val bits per byte.

Lines are appended, one ``write`` each, and flushed: a crash loses at most the line being written,
and a reader skips a torn last line. matplotlib is optional; without it there is no picture.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from files import OutputError, advice, atomic_write, reason

METRICS_NAME, PLOT_NAME = "metrics.jsonl", "loss.png"
PLOT_HINT = "install matplotlib (pip install -r requirements-extra.txt) to get loss.png"


class MetricsError(Exception):
    """A metrics file that is missing or holds no records: shown as one line."""


class MetricsLog:
    """Appends records to a metrics file; with path None (e.g. a non-zero DDP rank) it writes nothing."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None

    def write(self, kind: str, **fields) -> None:
        if self.path is None:
            return
        record = _plain({"kind": kind, **fields})
        line = json.dumps(record, allow_nan=False) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        except OSError as exc:
            raise OutputError(f"cannot append to {self.path} ({reason(exc)}): {advice(exc)}; the last "
                              f"checkpoint saved is intact") from None


def _plain(value):
    """JSON has no NaN or infinity: a diverged loss (at any depth) is written as null, not a broken file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_metrics(path: str | Path) -> list[dict]:
    """The records of the latest run: a ``start`` at step s drops earlier records after s (a restart or resume)."""
    path = Path(path)
    if path.is_dir():
        raise MetricsError(f"metrics file {path} is a folder: pass the {METRICS_NAME} inside it")
    if not path.is_file():
        raise MetricsError(f"metrics file {path} does not exist: pass the metrics.jsonl a training run wrote")
    records: list[dict] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash mid-write
        if not isinstance(record, dict) or "step" not in record:
            continue
        if record.get("kind") == "start":
            records = [r for r in records if r["step"] <= record["step"]]
        records.append(record)
    if not any(r.get("kind") in ("train", "eval") for r in records):
        raise MetricsError(f"metrics file {path} holds no training records yet: train for a while first")
    return records


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_metrics(metrics_path: str | Path, png_path: str | Path) -> Path:
    """Draws train and val loss against tokens seen, with the LR schedule on a second axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train" and r.get("loss") is not None]
    evals = [r for r in records if r.get("kind") == "eval"]

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot([r["tokens"] for r in train], [r["loss"] for r in train],
            color="tab:blue", alpha=0.35, lw=1, label="train loss (one batch)")
    for key, color, name in (("train_loss", "tab:blue", "train loss (eval)"), ("val_loss", "tab:orange", "val loss")):
        points = [(r["tokens"], r[key]) for r in evals if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), "o-", color=color, lw=2, ms=4, label=name)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.grid(alpha=0.3)

    lr_points = [(r["tokens"], r["lr"]) for r in train + evals if r.get("lr") is not None]
    lr_ax = ax.twinx()
    if lr_points:
        lr_points.sort()
        lr_ax.plot(*zip(*lr_points), color="tab:green", ls="--", lw=1, label="learning rate")
    lr_ax.set_ylabel("learning rate", color="tab:green")
    lr_ax.tick_params(axis="y", colors="tab:green")
    lr_ax.set_ylim(bottom=0)

    handles = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    if evals and evals[-1].get("val_loss") is not None:
        last = evals[-1]
        bpb = f", {last['val_bpb']:.3f} bits/byte" if last.get("val_bpb") is not None else ""
        ax.set_title(f"step {last['step']}: val loss {last['val_loss']:.3f}{bpb}", fontsize=10)
    fig.tight_layout()

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    png_path = Path(png_path)
    atomic_write(png_path, lambda f: f.write(buf.getvalue()))
    return png_path
