"""G-counter slot maps: merge by per-slot maximum."""

from __future__ import annotations

from hivemind_ratelimit.core.gcounter import make_slot, merge, merge_into, total


def test_make_slot_names_node_and_incarnation() -> None:
    assert make_slot("node-a", 1700000000123) == "node-a#1700000000123"
    assert make_slot("a", 1) != make_slot("a", 2)


def test_merge_takes_the_maximum_per_slot() -> None:
    a = {"x#1": 3, "y#1": 1}
    b = {"y#1": 4, "z#1": 2}
    assert merge(a, b) == {"x#1": 3, "y#1": 4, "z#1": 2}
    assert a == {"x#1": 3, "y#1": 1}  # inputs untouched
    assert b == {"y#1": 4, "z#1": 2}


def test_merge_never_lowers_a_slot() -> None:
    assert merge({"x#1": 5}, {"x#1": 2}) == {"x#1": 5}


def test_merge_into_reports_change() -> None:
    target = {"x#1": 3}
    assert merge_into(target, {"x#1": 4}) is True
    assert target == {"x#1": 4}
    assert merge_into(target, {"x#1": 4}) is False
    assert merge_into(target, {"x#1": 1}) is False
    assert merge_into(target, {}) is False
    assert merge_into(target, {"y#1": 1}) is True
    assert target == {"x#1": 4, "y#1": 1}


def test_total_is_the_sum_of_slots() -> None:
    assert total({}) == 0
    assert total({"x#1": 3, "y#1": 4}) == 7
