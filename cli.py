"""The command-line pieces every script shares: the one-line parser, flag types, devices and precision.

Each entry script (train_bpe.py, sample_bpe.py, export_hf.py, ...) builds its parser from these and
never imports another script. A user's mistake in a flag is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import math
import os
import sys

import torch

from schedule import parse_duration


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default and keeps the examples' line breaks.

    A flag whose default is None (unset) or whose help already names its default gets no "(default: ...)".
    """

    def _get_help_string(self, action):  # the formatter hook ArgumentDefaultsHelpFormatter itself uses
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag in one line (not usage + message) and exits with code 2.

    Python 3.11's argparse names an unknown flag but does not guess what was meant; we add the closest one.
    """

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}{self.suggestion(message)} (see --help)\n")

    def suggestion(self, message: str) -> str:
        prefix = "unrecognized arguments: "
        if not message.startswith(prefix):
            return ""
        known = [s for action in self._actions for s in action.option_strings]
        hints = []
        for word in message[len(prefix):].split():
            flag = word.split("=", 1)[0]
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6) if flag.startswith("-") else []
            if close:
                hints.append((flag, close[0]))
        if len(hints) == 1:
            return f"; did you mean {hints[0][1]}?"
        return "".join(f"; {flag}: did you mean {match}?" for flag, match in hints)

    def parse_checked(self, argv, check) -> argparse.Namespace:
        """The flags, or exit 2 with one line: check(args) names what is wrong with them together, or None."""
        args = self.parse_args(argv)
        problem = check(args)
        if problem:
            self.error(problem)
        return args


class _Unset:
    """Marks a flag the user did not type (see typed_flags)."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET = _Unset()


def typed_flags(parser: argparse.ArgumentParser, argv, dests) -> dict:
    """Parses argv and returns only the flags the user typed, as {dest: value}.

    argparse fills every flag missing from the namespace it is given with its default; a namespace that
    already holds a marker for every dest keeps the marker where nothing was typed (public API only).
    """
    namespace = parser.parse_args(argv, namespace=argparse.Namespace(**{d: UNSET for d in dests}))
    return {d: v for d, v in vars(namespace).items() if v is not UNSET}


# --------------------------------------------------------------------------- flag types


def finite_float(text: str) -> float:
    """A float flag: nan and inf are refused here, so no flag can carry them into the run."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def bounded_int(low: int, high: int):
    """An integer flag in [low, high]: a huge value is refused with its range, not a traceback later."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,}, got {value:,}")
        return value

    parse.__name__ = "int"  # what argparse calls the type in its own messages
    return parse


SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed; NumPy's legacy seeding less
seed_int = bounded_int(0, SEED_MAX)


def duration(text: str) -> float | None:
    """--max_time: seconds or H:MM:SS; 0 (or 0.0, 0:00) switches a time budget (a preset's, say) off."""
    try:
        if all(float(part) == 0 for part in text.split(":")):
            return None
    except ValueError:
        pass
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def utf8_text(text: str) -> str:
    """A text flag (a prompt): bytes that are not UTF-8 reach Python as lone surrogates; refuse them here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            "is not valid UTF-8 text (set a UTF-8 locale, or put the text in a UTF-8 file)") from None
    return text


# --------------------------------------------------------------------------- devices and precision


def resolve_device(name: str) -> torch.device:
    """auto (CUDA, else MPS, else the CPU), or a named device that this machine has; ValueError otherwise."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise ValueError(f"--device {name} is not available on this machine: use --device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def device_problem(name: str) -> str | None:
    """What is wrong with a --device value on this machine, or None (for a script's flag checks)."""
    try:
        resolve_device(name)
    except ValueError as exc:
        return str(exc)
    return None


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively on this device (CPU: oneDNN's check for AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:  # a private but long-standing oneDNN query; a build without it gets fp32
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def amp_dtype(device_type: str, bf16_native: bool, enabled: bool = True, cpu_bf16: bool = True) -> torch.dtype | None:
    """The autocast dtype where the hardware does mixed precision natively; None = fp32.

    CUDA: bf16 where supported, else fp16 (which needs a GradScaler). CPU (unless cpu_bf16 is off): bf16
    only with bf16 matrix instructions (AVX512-BF16, AMX), where it is several times the fp32 matmul rate;
    emulated bf16 or fp16 would be slower than fp32. MPS and the rest: fp32.
    """
    if not enabled:
        return None
    if device_type == "cuda":
        return torch.bfloat16 if bf16_native else torch.float16
    if device_type == "cpu" and bf16_native and cpu_bf16:
        return torch.bfloat16
    return None


# --------------------------------------------------------------------------- output and interruptions


def silence_stdout() -> None:
    """Points stdout at /dev/null (after its reader went away, `| head`), so no later flush can fail."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def prepare_streams() -> bool:
    """Makes stdout and stderr safe to print to; returns False when stdout was closed (`>&-`).

    A closed stream becomes /dev/null (Python leaves it None, and tqdm would fail on it); a file name
    that is not UTF-8 prints as escapes rather than failing on a strict UTF-8 terminal.
    """
    was_open = sys.stdout is not None
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if stream is None:
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
            setattr(sys, name, open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False))
        elif hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="backslashreplace")
    return was_open


class KeepGoingStdout:
    """stdout for a long run: if it cannot be written any more (`| head`, a full disk), the run goes on.

    The first failed write or flush says so once on stderr, then output goes to /dev/null: a training
    run must not be lost because the program reading its log went away.
    """

    def __init__(self, stream, prog: str):
        self.stream, self.prog, self.failed = stream, prog, False

    def _guard(self, call, *args):
        if self.failed:
            return None
        try:
            return call(*args)
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            self.failed = True
            silence_stdout()
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.write(f"{self.prog}: note: stdout cannot be written ({why}); "
                                     f"carrying on without it\n")
            return None

    def write(self, text: str) -> int:
        self._guard(self.stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._guard(self.stream.flush)

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the real stream's
        return getattr(self.stream, name)


@contextlib.contextmanager
def keep_going_stdout(prog: str):
    """While active, a failing stdout is dropped instead of ending the program (see KeepGoingStdout)."""
    previous = sys.stdout
    sys.stdout = KeepGoingStdout(previous, prog)
    try:
        yield
    finally:
        sys.stdout = previous

