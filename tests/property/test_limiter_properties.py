"""A limit of N admits exactly N per window, whatever the traffic looks like."""

from __future__ import annotations

from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from hivemind_ratelimit.core.clock import ManualClock
from hivemind_ratelimit.core.limiter import Code, Limiter, LimiterOptions, Request, RequestDescriptor
from hivemind_ratelimit.core.store import CounterStore
from hivemind_ratelimit.core.windows import window_start
from hivemind_ratelimit.rules.loader import load_texts
from hivemind_ratelimit.rules.model import RuleSet
from hivemind_ratelimit.telemetry.stats import ServiceStats

FAST = settings(max_examples=60, deadline=None)
T0 = 1_700_006_400  # aligned to a day
LENGTH = 60
DESCRIPTOR = (RequestDescriptor((("k", "v"),)),)


@cache
def rules(limit: int, algorithm: str = "fixed_window") -> RuleSet:
    text = (
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: "
        f"{{unit: minute, requests_per_unit: {limit}, algorithm: {algorithm}}}\n"
    )
    return load_texts([("p.yaml", text)])


def limiter(
    limit: int, *, algorithm: str = "fixed_window", stop: bool = False
) -> tuple[Limiter, ManualClock]:
    clock = ManualClock(T0)
    options = LimiterOptions(stop_increment_when_over_limit=stop)
    return (
        Limiter(
            store=CounterStore(1000),
            clock=clock,
            stats=ServiceStats(),
            options=options,
            rules=rules(limit, algorithm),
        ),
        clock,
    )


def moments(windows: int) -> st.SearchStrategy[list[float]]:
    """Sorted offsets from T0 over `windows` windows, in whole milliseconds (T0 + 59.99999999
    would round to T0 + 60 in a float)."""
    ms = st.integers(0, windows * LENGTH * 1000 - 1).map(lambda m: m / 1000)
    return st.lists(ms, max_size=80).map(sorted)


offsets = moments(5)


@FAST
@given(st.integers(0, 40), moments(1))
def test_unit_hits_within_one_window(limit: int, times: list[float]) -> None:
    lim, clock = limiter(limit)
    admitted = []
    for offset in times:
        clock.set(T0 + offset)
        status = lim.decide(Request("d", DESCRIPTOR)).statuses[0]
        if status.code is Code.OK:
            admitted.append(status.remaining)
        else:
            assert status.remaining == 0
    assert len(admitted) == min(limit, len(times))
    assert admitted == list(range(limit - 1, limit - 1 - len(admitted), -1))


@FAST
@given(st.integers(0, 20), offsets)
def test_unit_hits_over_many_windows(limit: int, times: list[float]) -> None:
    lim, clock = limiter(limit)
    per_window: dict[int, list[bool]] = {}
    for offset in times:
        clock.set(T0 + offset)
        code = lim.decide(Request("d", DESCRIPTOR)).overall
        per_window.setdefault(window_start(T0 + offset, LENGTH), []).append(code is Code.OK)
    for outcomes in per_window.values():
        # the first min(N, k) of each window pass, the rest do not
        passed = min(limit, len(outcomes))
        assert outcomes == [True] * passed + [False] * (len(outcomes) - passed)


@FAST
@given(st.integers(0, 50), st.lists(st.integers(1, 15), max_size=40))
def test_any_hit_sizes_counting_refused_hits(limit: int, sizes: list[int]) -> None:
    lim, _ = limiter(limit)
    counted = 0
    for hits in sizes:
        ok = lim.decide(Request("d", DESCRIPTOR, hits)).overall is Code.OK
        assert ok == (counted + hits <= limit)
        counted += hits  # refused hits count too


@FAST
@given(st.integers(0, 50), st.lists(st.integers(1, 15), max_size=40))
def test_any_hit_sizes_with_stop_increment_when_over_limit(limit: int, sizes: list[int]) -> None:
    lim, _ = limiter(limit, stop=True)
    admitted = 0
    for hits in sizes:
        ok = lim.decide(Request("d", DESCRIPTOR, hits)).overall is Code.OK
        assert ok == (admitted + hits <= limit)
        if ok:
            admitted += hits
    assert admitted <= limit


@FAST
@given(st.integers(0, 20), offsets)
def test_sliding_window_never_admits_more_than_n_per_window(limit: int, times: list[float]) -> None:
    lim, clock = limiter(limit, algorithm="sliding_window")
    per_window: dict[int, int] = {}
    first_window = window_start(T0, LENGTH)
    seen_first = 0
    for offset in times:
        clock.set(T0 + offset)
        ok = lim.decide(Request("d", DESCRIPTOR)).overall is Code.OK
        start = window_start(T0 + offset, LENGTH)
        per_window[start] = per_window.get(start, 0) + ok
        seen_first += start == first_window
    assert all(count <= limit for count in per_window.values())
    # with nothing before it, the first window admits exactly as a fixed window does
    assert per_window.get(first_window, 0) == min(limit, seen_first)
