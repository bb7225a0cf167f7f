"""Window arithmetic for any time and any window length."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from hivemind_ratelimit.core.windows import (
    UNIT_SECONDS,
    seconds_until_reset,
    sliding_weight_count,
    window_length,
    window_start,
)

FAST = settings(max_examples=60, deadline=None)

times = st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False, allow_infinity=False)  # up to 2100
lengths = st.builds(window_length, st.sampled_from(sorted(UNIT_SECONDS)), st.integers(1, 1000))


@FAST
@given(times, lengths)
def test_the_window_contains_now(now: float, length: int) -> None:
    start = window_start(now, length)
    assert start <= now < start + length
    assert start % length == 0


@FAST
@given(times, lengths)
def test_seconds_until_reset_is_within_the_window(now: float, length: int) -> None:
    left = seconds_until_reset(now, length)
    assert 1 <= left <= length
    # The reset is the end of the window, counted from the whole second of now.
    assert left == window_start(now, length) + length - math.floor(now)


@FAST
@given(times, lengths, st.floats(min_value=0, max_value=1, exclude_max=True))
def test_every_moment_of_a_window_shares_its_start(now: float, length: int, fraction: float) -> None:
    start = window_start(now, length)
    other = start + fraction * length
    if other < start + length:  # float rounding at the very end
        assert window_start(other, length) == start


@FAST
@given(times, lengths)
def test_the_next_window_starts_where_this_one_ends(now: float, length: int) -> None:
    start = window_start(now, length)
    assert window_start(start + length, length) == start + length
    assert window_start(start, length) == start


@FAST
@given(
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.integers(1, 86_400),
    st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_sliding_count_is_between_current_and_current_plus_previous(
    previous: int, current: int, length: int, fraction: float
) -> None:
    start = 1_700_000_000 // length * length
    now = start + fraction * length
    count = sliding_weight_count(previous, current, now, start, length)
    assert current <= count <= current + previous
    exact = current + previous * (length - (now - start)) / length
    assert count >= math.floor(exact)  # never under the estimate (beyond float noise)
    assert count <= math.ceil(exact) + 1e-9


@FAST
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 3600), st.data())
def test_sliding_count_decays_as_the_window_goes_on(
    previous: int, current: int, length: int, data: st.DataObject
) -> None:
    start = 1_700_000_000 // length * length
    a, b = sorted(data.draw(st.floats(0, 1, exclude_max=True)) for _ in range(2))
    early = sliding_weight_count(previous, current, start + a * length, start, length)
    late = sliding_weight_count(previous, current, start + b * length, start, length)
    assert early >= late
    assert sliding_weight_count(previous, current, start + length, start, length) == current
