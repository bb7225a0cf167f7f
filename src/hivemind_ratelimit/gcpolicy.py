"""Garbage collection for a process that holds up to millions of live counters.

CPython's cyclic collector walks every tracked object in a full collection, and a
full collection runs whenever the objects that survived since the last one reach a
quarter of those that were there before. A counter is a tracked object, so with many
live counters and windows that roll (every counter of a key is new in each window),
full collections come often and take long: measured here (bench/gc_pauses.py), 1M
live counters make each one a ~0.3 s stall of the event loop, and the ~60k objects
that start-up leaves (modules, protobuf descriptors, rules) cost ~20 ms per full
collection on their own.

Counters do not form reference cycles: they are freed by reference counting when the
store drops them, so the cyclic collector need not look at them at all. The policy:

- at start, after everything is loaded: collect once, then freeze what is left
  (`gc.freeze`: the collector ignores it from then on; reference counting still frees
  it);
- the young generation is collected every 10,000 net allocations instead of 700;
- every `tick` (ten times a second) freezes what survived since the last tick, so no
  collection walks more than about a tenth of a second's worth of new objects (at a
  second's worth, a burst of new clients made young collections of 50-100 ms);
- every `full_interval` (10 minutes) everything is unfrozen and collected once, so
  garbage in reference cycles that was frozen while it was alive is reclaimed: that
  one collection costs what a full collection costs without this policy.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

YOUNG_THRESHOLD = 10_000
FULL_INTERVAL = 600.0


class GcPolicy:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        full_interval: float = FULL_INTERVAL,
        young_threshold: int = YOUNG_THRESHOLD,
    ) -> None:
        self._clock = clock
        self.full_interval = full_interval
        self.young_threshold = young_threshold
        self._next_full = 0.0
        self._previous: tuple[int, int, int] | None = None
        self.full_collections = 0

    def start(self) -> None:
        """Collect, set the young threshold, freeze what start-up left."""
        self._previous = gc.get_threshold()
        _, middle, old = self._previous
        gc.collect()
        gc.set_threshold(self.young_threshold, middle, old)
        gc.freeze()
        self._next_full = self._clock() + self.full_interval

    def tick(self) -> None:
        """Freeze the survivors since the last tick; a full collection when it is due."""
        if self._previous is None:
            return
        if self._clock() >= self._next_full:
            gc.unfreeze()
            gc.collect()
            self.full_collections += 1
            self._next_full = self._clock() + self.full_interval
        gc.freeze()

    def stop(self) -> None:
        """Back to the interpreter's defaults (for a process that goes on, e.g. tests)."""
        if self._previous is None:
            return
        gc.unfreeze()
        gc.set_threshold(*self._previous)
        self._previous = None
