"""The store's expiry index keeps exactly the counters whose retention has not passed,
whatever the order of creations, extended retentions and sweeps (whole or in slices)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hivemind_ratelimit.core.store import CounterStore

KEYS = ("a", "b", "c", "d")
# (operation, key, window index or seconds to advance, extra retention or sweep budget)
create = st.tuples(st.just("create"), st.sampled_from(KEYS), st.integers(0, 5), st.integers(0, 3))
extend = st.tuples(st.just("extend"), st.sampled_from(KEYS), st.integers(0, 5), st.integers(1, 200))
sweep = st.tuples(st.just("sweep"), st.just(""), st.integers(0, 30), st.sampled_from((0, 1, 2, 5)))
operations = st.lists(st.one_of(create, extend, sweep), max_size=60)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_the_store_keeps_what_a_plain_model_keeps(ops: list[tuple[str, str, int, int]]) -> None:
    store = CounterStore(1000)
    model: dict[tuple[str, int], float] = {}  # (key, window start) -> retain until
    now = 0.0
    for op, key, n, m in ops:
        if op == "create":
            start = n * 10
            retain = max(now, start) + 10 + m
            assert store.get_or_create(key, start, 10, retain, now) is not None
            model.setdefault((key, start), retain)
        elif op == "extend":
            found = store.get(key, n * 10)
            if found is not None:
                found.retain_until += m
                model[(key, n * 10)] = found.retain_until
        else:
            now += n
            budget = m or None  # 0: the whole sweep in one call
            while True:
                dropped = store.expire(now, budget=budget)
                if budget is None or dropped < budget:
                    break
            model = {k: v for k, v in model.items() if v > now}
        live = [(counter.key, counter.window_start) for counter in store]
        assert sorted(live) == sorted(model)
        assert len(store) == len(live)
