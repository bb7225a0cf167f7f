"""Window arithmetic: epoch-aligned windows, time to reset, sliding weights."""

from __future__ import annotations

import pytest

from hivemind_ratelimit.core.clock import ManualClock, SystemClock
from hivemind_ratelimit.core.windows import (
    UNIT_BY_NAME,
    UNIT_SECONDS,
    Unit,
    seconds_until_reset,
    sliding_weight_count,
    window_length,
    window_start,
)


def test_unit_values_match_the_rls_proto() -> None:
    from envoy.service.ratelimit.v3 import rls_pb2

    proto = dict(rls_pb2.RateLimitResponse.RateLimit.Unit.items())
    assert {u.name: u.value for u in Unit} == proto


@pytest.mark.parametrize(
    ("unit", "seconds"),
    [
        (Unit.SECOND, 1),
        (Unit.MINUTE, 60),
        (Unit.HOUR, 3600),
        (Unit.DAY, 86400),
        (Unit.WEEK, 604800),
        (Unit.MONTH, 2592000),  # 30 days
        (Unit.YEAR, 31536000),  # 365 days
    ],
)
def test_unit_lengths(unit: Unit, seconds: int) -> None:
    assert UNIT_SECONDS[unit] == seconds
    assert window_length(unit) == seconds
    assert window_length(unit, 5) == 5 * seconds
    assert UNIT_BY_NAME[unit.name.lower()] is unit


def test_unknown_unit_has_no_length() -> None:
    assert Unit.UNKNOWN not in UNIT_SECONDS
    assert "unknown" not in UNIT_BY_NAME
    with pytest.raises(KeyError):
        window_length(Unit.UNKNOWN)


@pytest.mark.parametrize(
    ("now", "length", "start"),
    [
        (0.0, 60, 0),
        (59.999, 60, 0),
        (60.0, 60, 60),
        (1_700_000_000.0, 60, 1_699_999_980),
        (1_700_000_000.5, 1, 1_700_000_000),
        (1_700_000_000.0, 30, 1_699_999_980),
        (1_700_000_000.0, 86400, 1_699_920_000),
    ],
)
def test_window_start(now: float, length: int, start: int) -> None:
    assert window_start(now, length) == start
    assert isinstance(window_start(now, length), int)


@pytest.mark.parametrize(
    ("now", "length", "left"),
    [
        (0.0, 60, 60),  # at the start a whole window is left
        (0.9, 60, 60),  # integer seconds, as the reference
        (1.0, 60, 59),
        (59.5, 60, 1),
        (60.0, 60, 60),
        (1_700_000_000.0, 60, 40),
        (1_700_000_000.7, 1, 1),
        (1_700_000_000.0, 3600, 2800),
    ],
)
def test_seconds_until_reset(now: float, length: int, left: int) -> None:
    assert seconds_until_reset(now, length) == left


def test_sliding_weight_count() -> None:
    # 15 s into a 60 s window: the previous one weighs 45/60.
    assert sliding_weight_count(previous=10, current=3, now=75.0, start=60, length=60) == 3 + 8  # 7.5 -> 8
    assert sliding_weight_count(previous=8, current=0, now=90.0, start=60, length=60) == 4  # exactly 4
    assert sliding_weight_count(previous=10, current=2, now=60.0, start=60, length=60) == 12  # full weight
    assert sliding_weight_count(previous=0, current=5, now=75.0, start=60, length=60) == 5
    assert sliding_weight_count(previous=10, current=5, now=120.0, start=60, length=60) == 5  # no overlap
    # Rounding up never counts less than the exact estimate; exact values are not bumped.
    assert sliding_weight_count(previous=3, current=0, now=80.0, start=60, length=60) == 2  # 3 x 2/3 = 2


def test_manual_clock() -> None:
    clock = ManualClock(100.0)
    assert clock.now() == 100.0
    clock.advance(2.5)
    assert clock.now() == 102.5
    clock.set(50.0)
    assert clock.now() == 50.0
    with pytest.raises(ValueError):
        clock.advance(-1)
    assert ManualClock().now() == 1_700_000_000.0


def test_system_clock_is_wall_time() -> None:
    import time

    before = time.time()
    now = SystemClock().now()
    assert before <= now <= time.time()
