"""Learning-rate schedule and time budget: pure functions of the step and the elapsed time.

The LR is applied as ``base_lr * lr_factor(...)``. Nothing here reads a clock: the training loop
passes the elapsed seconds in, so tests can give any time they like.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("cosine", "wsd")  # lr_factor's shapes after warmup (--lr_schedule)


def progress(step: int, max_steps: int, elapsed: float = 0.0, max_time: float | None = None) -> float:
    """Fraction of the run spent, in [0, 1]: steps done, or time used if a time budget runs out sooner."""
    done = step / max(1, max_steps)
    if max_time:
        done = max(done, elapsed / max_time)
    return min(1.0, max(0.0, done))


def budget_spent(step: int, max_steps: int, elapsed: float = 0.0, max_time: float | None = None) -> bool:
    """True once step steps are done or the time budget is used up: training stops there."""
    return progress(step, max_steps, elapsed, max_time) >= 1.0


def fitted_warmup(warmup_steps: int, max_steps: int) -> int:
    """A default warmup (one the user did not type) cut to a tenth of a short run: --max_steps 60 warms up
    for 6 steps instead of being refused, and 300 steps do not spend two thirds of the run warming up."""
    return min(warmup_steps, max_steps // 10)


def lr_factor(
    step: int,
    warmup_steps: int,
    max_steps: int,
    min_factor: float = 0.1,
    elapsed: float = 0.0,
    max_time: float | None = None,
    shape: str = "cosine",
    warmdown: float = 0.3,
) -> float:
    """Linear warmup to 1, a decay to min_factor at the end of the run, then min_factor.

    Step 0 already trains: warmup gives (step + 1) / warmup_steps, never 0. Warmup counts steps even
    with a time budget. After it, the decay follows the larger of the step progress past warmup
    and elapsed / max_time, so the LR has finished decaying when either budget ends. shape "cosine"
    decays along a half cosine; "wsd" (warmup-stable-decay, the "trapezoid" of modded-nanogpt and
    Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations")
    stays at 1 and decays linearly over the last `warmdown` fraction of the run.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    done = progress(step - warmup_steps, max_steps - warmup_steps, elapsed, max_time)
    if step >= max_steps or done >= 1.0:
        return min_factor
    if shape == "wsd":
        return min_factor + (1.0 - min_factor) * min(1.0, (1.0 - done) / warmdown)
    return min_factor + 0.5 * (1.0 - min_factor) * (1.0 + math.cos(math.pi * done))


def parse_duration(text: str) -> float:
    """Seconds from "90", "90.5", "2:30" (M:SS) or "1:02:30" (H:MM:SS); ValueError if malformed or <= 0."""
    parts = text.strip().split(":")
    if len(parts) > 3 or any(not p.strip() for p in parts):
        raise ValueError(f"{text!r} is not a duration: use seconds (e.g. 300) or H:MM:SS (e.g. 0:05:00)")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{text!r} is not a duration: use seconds (e.g. 300) or H:MM:SS (e.g. 0:05:00)") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{text!r} is not a finite duration: use seconds (e.g. 300) or H:MM:SS (e.g. 0:05:00)")
    if any(v < 0 for v in values):
        raise ValueError(f"{text!r} is negative: use a positive duration (or 0 for no time limit)")
    if any(v >= 60 for v in values[1:]):
        raise ValueError(f"{text!r} is not a duration: minutes and seconds after a colon must be below 60")
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration (0 means no time limit where a flag allows it)")
    return seconds
