"""Window arithmetic. Windows are aligned to the Unix epoch, as in envoyproxy/ratelimit.

A window of N units starts at a multiple of N x unit seconds since the epoch, so every
node computes the same window boundaries from the same time without talking.
"""

from __future__ import annotations

import math
from enum import IntEnum


class Unit(IntEnum):
    """Values match envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit."""

    UNKNOWN = 0
    SECOND = 1
    MINUTE = 2
    HOUR = 3
    DAY = 4
    MONTH = 5
    YEAR = 6
    WEEK = 7


UNIT_SECONDS: dict[Unit, int] = {
    Unit.SECOND: 1,
    Unit.MINUTE: 60,
    Unit.HOUR: 3600,
    Unit.DAY: 86400,
    Unit.WEEK: 7 * 86400,
    Unit.MONTH: 30 * 86400,
    Unit.YEAR: 365 * 86400,
}

UNIT_BY_NAME: dict[str, Unit] = {u.name.lower(): u for u in UNIT_SECONDS}


def window_length(unit: Unit, multiplier: int = 1) -> int:
    """Length in whole seconds of a window of `multiplier` units."""
    return UNIT_SECONDS[unit] * multiplier


def window_start(now: float, length: int) -> int:
    """Start (epoch seconds) of the window of `length` seconds that contains `now`."""
    return int(now // length) * length


def seconds_until_reset(now: float, length: int) -> int:
    """Whole seconds until the window that contains `now` ends: 1..length.

    Matches the reference, which computes `length - now % length` on integer seconds.
    """
    return length - int(now) % length


def sliding_weight_count(previous: int, current: int, now: float, start: int, length: int) -> int:
    """Sliding-window estimate: previous x (1 - elapsed/length) + current, rounded up.

    Rounding up never admits more than the exact estimate would.
    """
    elapsed = now - start
    if previous <= 0 or elapsed >= length:
        return current
    return current + math.ceil(previous * (length - elapsed) / length - 1e-9)
