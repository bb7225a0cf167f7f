"""The counter store: creation, lookup, expiry, capacity and merging of peer views."""

from __future__ import annotations

import pytest

from hivemind_ratelimit.core.store import Counter, CounterStore

OWN = "me#1"


def test_get_or_create_returns_the_same_counter() -> None:
    store = CounterStore(10)
    a = store.get_or_create("k", 60, 60, retain_until=122.0, now=61.0)
    assert a is not None
    assert (a.key, a.window_start, a.length, a.retain_until) == ("k", 60, 60, 122.0)
    assert (a.own, a.remote, a.remote_total, a.total) == (0, None, 0, 0)
    assert store.get_or_create("k", 60, 60, retain_until=999.0, now=62.0) is a
    assert a.retain_until == 122.0  # the first creation decides
    assert store.get("k", 60) is a
    assert store.get("k", 120) is None
    assert store.get("other", 60) is None
    assert len(store) == 1
    assert list(store) == [a]


def test_counters_are_per_key_and_window() -> None:
    store = CounterStore(10)
    a = store.get_or_create("k", 0, 60, 62.0, 1.0)
    b = store.get_or_create("k", 60, 60, 122.0, 61.0)
    c = store.get_or_create("j", 0, 60, 62.0, 1.0)
    assert len({id(a), id(b), id(c)}) == 3
    assert len(store) == 3


def test_expire_drops_only_counters_past_retention() -> None:
    store = CounterStore(10)
    store.get_or_create("a", 0, 60, 62.0, 1.0)
    store.get_or_create("b", 60, 60, 122.0, 61.0)
    assert store.expire(61.9) == 0
    assert store.expire(62.0) == 1  # retain_until <= now
    assert store.get("a", 0) is None
    assert store.get("b", 60) is not None
    assert store.expire(1000.0) == 1
    assert len(store) == 0


def test_expire_drops_an_older_window_behind_a_newer_one_of_the_same_key() -> None:
    store = CounterStore(10)
    old = store.get_or_create("k", 0, 60, 122.0, 1.0)  # kept for a sliding window
    new = store.get_or_create("k", 60, 60, 182.0, 61.0)
    assert old is not None and new is not None
    assert new.prev is old
    assert store.expire(122.0) == 1
    assert store.get("k", 60) is new and new.prev is None
    assert store.get("k", 0) is None
    assert list(store) == [new]


def test_expire_keeps_a_counter_whose_retention_was_extended() -> None:
    """A peer's late message can extend a counter's retention after it was filed."""
    store = CounterStore(10)
    counter = store.get_or_create("k", 0, 60, 62.0, 1.0)
    assert counter is not None
    counter.retain_until = 200.0
    assert store.expire(100.0) == 0
    assert store.get("k", 0) is counter
    assert store.expire(200.0) == 1
    assert len(store) == 0 and list(store) == []


def test_expire_with_a_budget_drops_the_rest_on_the_next_call() -> None:
    store = CounterStore(100)
    for i in range(10):
        store.get_or_create(f"k{i}", 0, 60, 62.0, 1.0)
    store.get_or_create("later", 60, 60, 122.0, 61.0)
    closed: list[Counter] = []
    assert store.expire(70.0, closed, budget=4) == 4
    assert len(store) == 7
    assert store.expire(70.0, closed, budget=4) == 4
    assert store.expire(70.0, closed, budget=4) == 2
    assert store.expire(70.0, closed, budget=4) == 0
    assert sorted(c.key for c in closed) == sorted(f"k{i}" for i in range(10))
    assert [c.key for c in store] == ["later"]


def test_expired_counters_leave_the_dirty_set() -> None:
    store = CounterStore(10)
    counter = store.get_or_create("k", 0, 60, 62.0, 1.0)
    assert counter is not None
    store.dirty.add(counter)
    assert store.expire(62.0) == 1
    assert not store.dirty


def test_full_store_sweeps_expired_counters_first() -> None:
    store = CounterStore(2)
    store.get_or_create("a", 0, 60, 62.0, 1.0)
    store.get_or_create("b", 0, 60, 62.0, 1.0)
    assert store.get_or_create("c", 0, 60, 62.0, 2.0) is None  # both live
    # Existing counters are still found when full.
    assert store.get_or_create("a", 0, 60, 62.0, 2.0) is not None
    created = store.get_or_create("c", 60, 60, 122.0, 70.0)  # a and b have expired
    assert created is not None
    assert len(store) == 1


def test_full_store_sweeps_at_most_every_sweep_interval() -> None:
    store = CounterStore(1, sweep_every=5.0)
    store.get_or_create("a", 0, 1, 1.5, 0.5)
    assert store.get_or_create("b", 0, 1, 1.5, 0.9) is None  # sweeps now, nothing expired
    # a has expired at 2.0, but the next sweep is not before 5.9
    assert store.get_or_create("b", 2, 1, 3.5, 2.0) is None
    assert store.get_or_create("b", 6, 1, 7.5, 6.0) is not None
    assert len(store) == 1


def test_max_counters_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CounterStore(0)


def make_counter() -> Counter:
    return Counter("k", 0, 60, 62.0)


def test_merge_remote_takes_per_slot_maximum() -> None:
    counter = make_counter()
    counter.own = 2
    assert counter.merge_remote({"b#1": 3, "c#1": 1}, OWN) is True
    assert (counter.remote, counter.remote_total, counter.total) == ({"b#1": 3, "c#1": 1}, 4, 6)
    assert counter.merge_remote({"b#1": 2, "c#1": 5}, OWN) is True
    assert (counter.remote, counter.remote_total, counter.total) == ({"b#1": 3, "c#1": 5}, 8, 10)
    assert counter.merge_remote({"b#1": 3}, OWN) is False  # nothing new
    assert counter.merge_remote({}, OWN) is False


def test_merge_remote_own_slot_only_goes_up() -> None:
    counter = make_counter()
    counter.own = 5
    assert counter.merge_remote({OWN: 3}, OWN) is False  # a stale echo of our own slot
    assert counter.own == 5
    assert counter.remote is None  # our slot never lands among the remote ones
    assert counter.merge_remote({OWN: 7}, OWN) is True  # a restart with the same incarnation
    assert counter.own == 7
    assert counter.total == 7


def test_slots_is_the_full_gcounter_state() -> None:
    counter = make_counter()
    assert counter.slots(OWN) == {}
    counter.own = 4
    counter.merge_remote({"b#1": 3}, OWN)
    assert counter.slots(OWN) == {OWN: 4, "b#1": 3}
    slots = counter.slots(OWN)
    slots["b#1"] = 100  # a copy
    assert counter.remote == {"b#1": 3}


def test_merging_a_replica_state_is_idempotent() -> None:
    a, b = make_counter(), make_counter()
    a.own, b.own = 3, 5
    a.merge_remote(b.slots("b#1"), OWN)
    snapshot = (a.own, dict(a.remote or {}), a.total)
    assert a.merge_remote(b.slots("b#1"), OWN) is False
    assert (a.own, dict(a.remote or {}), a.total) == snapshot == (3, {"b#1": 5}, 8)
