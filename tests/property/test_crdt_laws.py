"""G-counter merge laws: the state a replica ends up with depends only on which
messages it has seen, not on their order, loss-then-resend or duplication."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from hivemind_ratelimit.core.gcounter import merge, merge_into, total
from hivemind_ratelimit.core.store import Counter

SLOTS = [f"node-{n}#{i}" for n in "abcde" for i in (1, 2)]
slot_maps = st.dictionaries(st.sampled_from(SLOTS), st.integers(0, 1_000), max_size=len(SLOTS))

FAST = settings(max_examples=60, deadline=None)
SLOW = settings(max_examples=30, deadline=None)


def norm(slots: Mapping[str, int]) -> dict[str, int]:
    """A missing slot and a slot at 0 mean the same: nothing counted."""
    return {slot: count for slot, count in slots.items() if count}


@FAST
@given(slot_maps, slot_maps)
def test_merge_is_commutative(a: dict[str, int], b: dict[str, int]) -> None:
    assert norm(merge(a, b)) == norm(merge(b, a))


@FAST
@given(slot_maps, slot_maps, slot_maps)
def test_merge_is_associative(a: dict[str, int], b: dict[str, int], c: dict[str, int]) -> None:
    assert norm(merge(merge(a, b), c)) == norm(merge(a, merge(b, c)))


@FAST
@given(slot_maps, slot_maps)
def test_merge_is_idempotent(a: dict[str, int], b: dict[str, int]) -> None:
    assert merge(a, a) == a
    ab = merge(a, b)
    assert merge(ab, b) == ab
    assert merge(ab, a) == ab


@FAST
@given(slot_maps, slot_maps)
def test_merge_is_the_least_upper_bound(a: dict[str, int], b: dict[str, int]) -> None:
    merged = merge(a, b)
    for slot in set(a) | set(b):
        assert merged.get(slot, 0) == max(a.get(slot, 0), b.get(slot, 0))
    assert set(norm(merged)) <= set(a) | set(b)
    assert total(merged) >= max(total(a), total(b))
    assert total(merged) <= total(a) + total(b)


@FAST
@given(slot_maps, slot_maps)
def test_merge_into_agrees_with_merge(a: dict[str, int], b: dict[str, int]) -> None:
    target = dict(a)
    changed = merge_into(target, b)
    assert target == merge(a, b)
    assert changed == (target != a)


# -- replicas ----------------------------------------------------------------------------------------

# A history: each step, one node adds some hits to its own slot and may then send its
# whole state (absolute values, as the sync protocol does).
steps = st.lists(st.tuples(st.sampled_from(SLOTS[:6]), st.integers(1, 20), st.booleans()), max_size=30)


def play(history: list[tuple[str, int, bool]]) -> tuple[dict[str, int], list[dict[str, int]]]:
    """The true per-slot counts and the messages sent along the way."""
    truth: dict[str, int] = {}
    messages = []
    for slot, hits, send in history:
        truth[slot] = truth.get(slot, 0) + hits
        if send:
            messages.append({slot: truth[slot]})
    return truth, messages


@SLOW
@given(steps, st.data())
def test_replicas_converge_whatever_the_delivery_order(
    history: list[tuple[str, int, bool]], data: st.DataObject
) -> None:
    truth, messages = play(history)
    final = [{slot: count} for slot, count in truth.items()]  # everyone's last full sync
    expected = norm(truth)

    replicas = []
    for _ in range(3):
        # any order, any duplication, any subset of the intermediate messages, plus the final ones
        delivered = data.draw(st.lists(st.sampled_from(messages), max_size=40)) if messages else []
        delivered = data.draw(st.permutations(delivered + final))
        state: dict[str, int] = {}
        for message in delivered:
            merge_into(state, message)
        replicas.append(state)
    assert all(norm(state) == expected for state in replicas)


@SLOW
@given(steps, st.data())
def test_store_counters_converge_and_keep_their_own_slot(
    history: list[tuple[str, int, bool]], data: st.DataObject
) -> None:
    truth, messages = play(history)
    own = SLOTS[0]
    full_states = [dict(truth), *messages]
    counters = []
    for _ in range(2):
        counter = Counter("k", 0, 60, 62.0)
        counter.own = truth.get(own, 0)
        deliveries = data.draw(st.lists(st.sampled_from(full_states), min_size=1, max_size=20))
        deliveries = data.draw(st.permutations([*deliveries, dict(truth)]))
        for message in deliveries:
            counter.merge_remote(message, own)
            # our slot never goes down, and never shows among the remote slots
            assert counter.own == truth.get(own, 0)
            assert counter.remote is None or own not in counter.remote
            assert counter.remote_total == sum((counter.remote or {}).values())
        counters.append(counter)
    assert all(norm(c.slots(own)) == norm(truth) for c in counters)
    assert all(c.total == total(truth) for c in counters)


@SLOW
@given(steps, st.data())
def test_slot_by_slot_merges_agree_with_whole_state_merges(
    history: list[tuple[str, int, bool]], data: st.DataObject
) -> None:
    """Peers send one slot's absolute count at a time; in any order, duplicated, the
    counter ends where merging whole states would."""
    truth, messages = play(history)
    own = "observer#1"
    singles = [(slot, count) for message in messages for slot, count in message.items()]
    singles += list(truth.items())
    extra = data.draw(st.lists(st.sampled_from(singles), max_size=10)) if singles else []
    delivered = data.draw(st.permutations(singles + extra))
    by_slot, by_state = Counter("k", 0, 60, 62.0), Counter("k", 0, 60, 62.0)
    for slot, count in delivered:
        before = by_slot.total
        rose = by_slot.merge_slot(slot, count, 0)
        assert rose == (by_slot.total > before)
        assert by_slot.total >= before
    by_state.merge_remote(dict(truth), own)
    assert by_slot.total == by_state.total == total(truth)
    assert norm(by_slot.slots(own)) == norm(by_state.slots(own)) == norm(truth)
