"""What the tests share besides fixtures: the tiny corpus, the tiny model's flags, paths, a signal at a step.

Imported as ``from helpers import ...`` (pytest puts tests/ on the path); fixtures live in conftest.py.
"""

import os
import signal
from pathlib import Path

import trainer

ROOT = Path(__file__).resolve().parent.parent

# A slice of the bundled corpus plus code with tabs, blank lines, CRLF and emoji: what users feed us.
TINY_TEXT = (ROOT / "data" / "input.txt").read_text(encoding="utf-8")[:12000] + (
    "\ndef train_model(x):\n\tif x:\n\t\treturn x  # tabs\n\n\n    spaces = 4\r\nwindows line\r\n🙂 naïve café ✓\n"
)

# A model small enough to train a few dozen steps in seconds. fp32 (--no-amp), so that a test trains the
# same way on a CPU with bf16 matrix instructions as on one without; test_levers.py covers bf16.
TINY_MODEL_ARGS = [
    "--vocab_size", "300", "--n_layer", "2", "--n_head", "2", "--n_embed", "32", "--block_size", "32",
    "--dropout", "0", "--batch_size", "8", "--grad_accum_steps", "1", "--device", "cpu", "--no-amp",
]

# A checkpoint written by the code before special ids, the tokenizer module and the other format changes
# of late 2026 (main at 6555438): --max_steps 20 on tiny.txt (TINY_TEXT) with TINY_MODEL_ARGS. Every later
# version must keep loading, sampling, resuming and exporting it.
OLD_RUN = ROOT / "tests" / "fixtures" / "v1-6555438"


def signal_at_step(monkeypatch, step: int, signum=signal.SIGINT):
    """Sends signum to this process while optimizer step ``step`` (0-based) is starting."""
    real = trainer.lr_factor

    def lr_factor(s, *args, **kwargs):
        if s == step:
            os.kill(os.getpid(), signum)
        return real(s, *args, **kwargs)

    monkeypatch.setattr(trainer, "lr_factor", lr_factor)
