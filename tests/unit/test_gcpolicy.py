"""The garbage-collection policy: start-up objects frozen, survivors frozen every tick,
everything collected once per full interval, the interpreter's settings restored."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from hivemind_ratelimit.core.clock import ManualClock
from hivemind_ratelimit.gcpolicy import GcPolicy


class Node:
    """Something that can sit in a reference cycle and be watched by a weak reference."""

    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def policy() -> Iterator[tuple[GcPolicy, ManualClock]]:
    clock = ManualClock(0.0)
    before = gc.get_threshold()
    made = GcPolicy(clock=clock.now, full_interval=600.0, young_threshold=5000)
    made.start()
    try:
        yield made, clock
    finally:
        made.stop()
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0


def test_start_freezes_what_is_there_and_raises_the_young_threshold(
    policy: tuple[GcPolicy, ManualClock],
) -> None:
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == 5000


def test_a_tick_freezes_survivors_so_collections_skip_them(policy: tuple[GcPolicy, ManualClock]) -> None:
    made, _ = policy
    kept = [Node() for _ in range(1000)]
    frozen = gc.get_freeze_count()
    made.tick()
    assert gc.get_freeze_count() >= frozen + len(kept)
    assert made.full_collections == 0


def test_cycles_frozen_while_alive_are_collected_at_the_full_interval(
    policy: tuple[GcPolicy, ManualClock],
) -> None:
    made, clock = policy
    watched = cycle()
    made.tick()  # the cycle is frozen (it is garbage already, but nobody looked)
    gc.collect()
    assert watched() is not None  # a frozen cycle is not collected
    clock.advance(599.0)
    made.tick()
    assert watched() is not None and made.full_collections == 0
    clock.advance(1.0)
    made.tick()
    assert watched() is None
    assert made.full_collections == 1


def test_objects_without_cycles_are_freed_even_when_frozen(policy: tuple[GcPolicy, ManualClock]) -> None:
    made, _ = policy
    node = Node()
    watched = weakref.ref(node)
    made.tick()
    del node  # reference counting frees it; the collector is not needed
    assert watched() is None


def test_tick_and_stop_before_start_do_nothing() -> None:
    made = GcPolicy()
    made.tick()
    made.stop()
    assert gc.get_freeze_count() == 0
