"""Why training stops early, and how it stops without losing work.

A signal (Ctrl-C, SIGTERM): finish the step, save, exit; a second signal stops at once.
Non-finite losses or gradients: skip the step; too many in a row end the run.
"""

from __future__ import annotations

import os
import signal
import threading

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopNow(BaseException):
    """A second signal: unwind immediately (an unfinished atomic write removes its temporary file).

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class GracefulStop:
    """Catches SIGINT/SIGTERM while active. The loop reads ``signum`` once per optimizer step.

        with GracefulStop() as stop:
            prepare()                 # a signal here raises StopNow: there is nothing to save yet
            stop.arm()
            for step in ...:
                train_one_step()
                if stop.signum:
                    save(); return 128 + stop.signum
    """

    def __init__(self):
        self.signum: int | None = None
        self.armed = False
        self._previous: dict[int, object] = {}

    def arm(self) -> None:
        """From now on the first signal only asks the loop to stop after its current step."""
        self.armed = True

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame) -> None:
        if self.signum is not None or not self.armed:
            raise StopNow(signum)
        self.signum = signum
        # os.write, not print: a handler may run while the main thread is inside a print or a tqdm
        # refresh, and Python's buffered streams raise on such a reentrant call.
        os.write(2, f"\n{self.signal_name}: finishing this step, then saving; "
                    f"press Ctrl-C again to stop at once without saving\n".encode())

    def __enter__(self) -> "GracefulStop":
        # Handlers can only be installed from the main thread (not when main() runs in a worker thread).
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


class TrainingDiverged(Exception):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class SkippedSteps:
    """Counts optimizer steps skipped for a non-finite loss or gradient; too many in a row end the run."""

    def __init__(self, limit: int):
        self.limit, self.total, self.in_a_row = limit, 0, 0

    def record(self, loss_finite: bool, grads_finite: bool, scaler_on: bool) -> bool:
        """Returns whether to take the step. An fp16 overflow (finite loss, inf gradients under a
        GradScaler) is the scaler calibrating its scale, skipped but not counted towards the limit."""
        if loss_finite and grads_finite:
            self.in_a_row = 0
            return True
        self.total += 1
        if not (scaler_on and loss_finite):
            self.in_a_row += 1
        return False

    @property
    def diverged(self) -> bool:
        return self.in_a_row >= self.limit


def finite_weights(model: torch.nn.Module) -> bool:
    """Whether every weight is a finite number (one device sync for the whole model)."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
