"""Ctrl-C and SIGTERM during training: finish the step, save, exit; a second signal stops at once."""

from __future__ import annotations

import os
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopNow(BaseException):
    """A second signal: unwind immediately (an unfinished atomic write removes its temporary file).

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class GracefulStop:
    """Catches SIGINT/SIGTERM while active. The loop checks ``stop_requested`` once per optimizer step.

        with GracefulStop() as stop:
            prepare()                 # a signal here raises StopNow: there is nothing to save yet
            stop.arm()
            for step in ...:
                train_one_step()
                if stop.stop_requested:
                    save(); return stop.exit_code
    """

    def __init__(self):
        self.signum: int | None = None
        self.armed = False
        self._previous: dict[int, object] = {}

    def arm(self) -> None:
        """From now on the first signal only asks the loop to stop after its current step."""
        self.armed = True

    @property
    def stop_requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by it: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + (self.signum or 0)

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
