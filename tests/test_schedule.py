import math

import pytest

from schedule import lr_factor

W, T, M = 10, 100, 0.1


def test_first_step_already_trains():
    assert lr_factor(0, W, T, M) == pytest.approx(1 / W)  # never 0 at step 0


def test_warmup_reaches_full_rate_on_its_last_step():
    assert lr_factor(W - 1, W, T, M) == pytest.approx(1.0)
    assert lr_factor(W // 2 - 1, W, T, M) == pytest.approx(0.5)


def test_cosine_starts_at_full_rate_after_warmup():
    assert lr_factor(W, W, T, M) == pytest.approx(1.0)


def test_cosine_is_halfway_at_the_midpoint_and_monotone():
    mid = W + (T - W) // 2
    assert lr_factor(mid, W, T, M) == pytest.approx(M + 0.5 * (1 - M))
    factors = [lr_factor(t, W, T, M) for t in range(W, T + 1)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_last_step_is_just_above_the_floor():
    expected = M + 0.5 * (1 - M) * (1 + math.cos(math.pi * (T - 1 - W) / (T - W)))
    assert lr_factor(T - 1, W, T, M) == pytest.approx(expected)
    assert M < lr_factor(T - 1, W, T, M) < M + 0.01


def test_floor_at_and_past_the_end():
    assert lr_factor(T, W, T, M) == pytest.approx(M)
    assert lr_factor(T + 10, W, T, M) == pytest.approx(M)


def test_no_warmup_starts_at_full_rate():
    assert lr_factor(0, 0, T, M) == pytest.approx(1.0)
