"""Bounded consistency (core/allowance.py): the whole-hit split of a remaining budget,
and the ClusterView the limiter reads it from."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from hivemind_ratelimit.core.allowance import DEMAND_EPSILON, ClusterView, split
from hivemind_ratelimit.core.clock import ManualClock

MEMBERS = [f"node-{c}" for c in "abcdefgh"]
demand_maps = st.dictionaries(
    st.sampled_from(MEMBERS),
    st.one_of(st.just(0.0), st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)),
    min_size=1,
)
keys = st.text(min_size=1, max_size=20)
PROPS = settings(max_examples=100, deadline=None)


@PROPS
@given(st.integers(-1000, 10_000), demand_maps, keys)
def test_shares_never_exceed_the_remaining_budget(
    remaining: int, demands: dict[str, float], key: str
) -> None:
    shares = split(remaining, demands, key)
    assert set(shares) == set(demands)
    assert all(share >= 0 for share in shares.values())
    assert sum(shares.values()) <= max(remaining, 0)


@PROPS
@given(st.integers(1, 10_000), demand_maps, keys)
def test_a_positive_budget_is_shared_out_exactly(remaining: int, demands: dict[str, float], key: str) -> None:
    assert sum(split(remaining, demands, key).values()) == remaining


@PROPS
@given(st.integers(-100, 10_000), demand_maps, keys, st.randoms(use_true_random=False))
def test_the_split_is_deterministic_whatever_the_order(
    remaining: int, demands: dict[str, float], key: str, rnd: random.Random
) -> None:
    items = list(demands.items())
    rnd.shuffle(items)
    assert split(remaining, dict(items), key) == split(remaining, demands, key)


@PROPS
@given(st.integers(0, 10_000), st.sets(st.sampled_from(MEMBERS), min_size=1), keys)
def test_equal_shares_without_demand(remaining: int, members: set[str], key: str) -> None:
    shares = split(remaining, dict.fromkeys(members, 0.0), key)
    base = remaining // len(members)
    assert sorted(set(shares.values())) in ([base], [base, base + 1])
    assert sum(1 for s in shares.values() if s == base + 1) == remaining % len(members)


@PROPS
@given(st.integers(0, 10_000), demand_maps, keys)
def test_one_hit_each_then_shares_proportional_to_demand_within_one_hit(
    remaining: int, demands: dict[str, float], key: str
) -> None:
    """While the budget allows, every member gets one hit (sparse traffic makes demand
    noisy); what is left is split by demand."""
    n, total = len(demands), sum(demands.values())
    base = 1 if remaining >= n else 0
    rest = remaining - base * n
    shares = split(remaining, demands, key)
    for member, demand in demands.items():
        exact = rest * demand / total if total > 0 else rest / n
        assert abs(shares[member] - base - exact) < 1 + 1e-9
        if demand == 0 and total > 0:
            assert shares[member] == base  # no demand: nothing beyond the floor held back


@PROPS
@given(st.integers(1, 10_000), demand_maps, keys)
def test_more_demand_never_means_a_smaller_share_but_for_one_leftover_hit(
    remaining: int, demands: dict[str, float], key: str
) -> None:
    shares = split(remaining, demands, key)
    for a in demands:
        for b in demands:
            if demands[a] > demands[b]:
                assert shares[a] >= shares[b] - 1


def test_examples() -> None:
    # One hit each, then 8 split 6 / 2.
    assert split(10, {"a": 3.0, "b": 1.0}, "k") == {"a": 7, "b": 3}
    # One hit each, then 98 split 88.2 / 9.8: the leftover hit goes to the larger fraction.
    assert split(100, {"a": 9.0, "b": 1.0}, "k") == {"a": 89, "b": 11}
    # Fewer hits than members: no floor, all to demand.
    assert split(2, {"a": 5.0, "b": 0.0, "c": 0.0}, "k") == {"a": 2, "b": 0, "c": 0}
    assert split(0, {"a": 1.0}, "k") == {"a": 0}
    assert split(-5, {"a": 1.0, "b": 0.0}, "k") == {"a": 0, "b": 0}
    assert split(5, {}, "k") == {}
    assert split(2, {"a": 0.0, "b": 0.0, "c": 0.0}, "k") in (
        {"a": 1, "b": 1, "c": 0},
        {"a": 1, "b": 0, "c": 1},
        {"a": 0, "b": 1, "c": 1},
    )


def test_leftover_ties_are_broken_by_key_and_node_not_by_name() -> None:
    """Across many keys each member wins a 1-of-3 tie about as often: no fixed favourite."""
    wins = dict.fromkeys("abc", 0)
    for i in range(300):
        shares = split(1, dict.fromkeys("abc", 0.0), f"key-{i}")
        [winner] = [m for m, s in shares.items() if s]
        wins[winner] += 1
    assert all(60 < n < 140 for n in wins.values()), wins


# -- ClusterView -------------------------------------------------------------------------


def cluster(half_life: float = 1.0) -> tuple[ClusterView, ManualClock]:
    clock = ManualClock(1000.0)
    return ClusterView("me", clock, half_life=half_life), clock


def test_alone_the_view_is_inactive_and_the_whole_budget_is_ours() -> None:
    view, _ = cluster()
    assert not view.active
    assert view.is_new("k")
    assert view.allowance("k", 42) == 42


def test_members_start_with_equal_shares() -> None:
    view, _ = cluster()
    view.members = {"b", "c"}
    assert view.active and view.is_new("k")
    assert view.demands("k") == {"me": 0.0, "b": 0.0, "c": 0.0}
    assert sum(split(30, view.demands("k"), "k").values()) == 30
    assert view.allowance("k", 30) == 10


def test_own_demand_settles_at_the_hit_rate_and_fades_with_the_half_life() -> None:
    view, clock = cluster(half_life=1.0)
    for _ in range(200):  # 10 hits per second for 20 s
        view.record("k", 1)
        clock.advance(0.1)
    assert 9.0 < view.own("k") < 11.0
    before = view.own("k")
    clock.advance(1.0)
    assert math.isclose(view.own("k"), before / 2)
    clock.advance(20.0)
    assert view.own("k") < DEMAND_EPSILON
    assert view.is_new("k")
    assert view.forget_idle() == 1
    assert view.own_demand == {}


def test_peer_demand_decays_from_when_it_was_reported_and_only_counts_for_members() -> None:
    view, clock = cluster(half_life=1.0)
    view.members = {"b", "c"}
    view.reported("k", "b", 8.0)
    view.reported("k", "x", 100.0)  # not a live member (dead, left): no say in the split
    assert view.demands("k") == {"me": 0.0, "b": 8.0, "c": 0.0}
    assert not view.is_new("k")
    assert view.allowance("k", 10) == 1  # b has all the demand: only the floor of one hit is ours
    assert view.allowance("k", 2) == 0  # and no floor when there are fewer hits than members
    clock.advance(2.0)
    assert math.isclose(view.demands("k")["b"], 2.0)
    view.record("k", 1)  # we see traffic too
    assert view.allowance("k", 10) > 1
    view.reported("k", "b", 0.0)  # b reports none: forgotten at once
    assert "b" not in view.peer_demand["k"]


def test_forget_idle_drops_faded_peer_demand() -> None:
    view, clock = cluster(half_life=0.1)
    view.members = {"b"}
    view.reported("k", "b", 5.0)
    view.reported("j", "b", 5.0)
    clock.advance(5.0)
    assert view.forget_idle() == 2
    assert view.peer_demand == {}
