"""The counter store: every live counter of this node, bounded in number.

A counter is identified by (counter key, window start). Its state is a G-counter
(see gcounter.py) split for speed and memory: this node's own slot is a plain int,
the other slots live in a dict that exists only once a peer has reported a count.
The global count is `own + remote_total`.

Counters are dropped once their retention time has passed (the window end, plus the
next window for sliding windows, plus a grace period for late peer messages). When
`max_counters` are live and a new counter is needed, expired counters are swept
first; if none can be dropped the caller gets None and applies its overflow policy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from hivemind_ratelimit.core.gcounter import Slot, merge_into

CounterId = tuple[str, int]


class Counter:
    __slots__ = (
        "admitted",
        "admitted_remote",
        "allowance",
        "fresh",
        "key",
        "lease_until",
        "leases",
        "length",
        "limit",
        "own",
        "remote",
        "remote_total",
        "reserve_gen",
        "reserved",
        "retain_until",
        "seen",
        "shared",
        "spent",
        "stale",
        "window_start",
    )

    def __init__(self, key: str, window_start: int, length: int, retain_until: float) -> None:
        self.key = key
        self.window_start = window_start
        self.length = length
        self.own = 0
        self.remote: dict[Slot, int] | None = None
        self.remote_total = 0
        self.retain_until = retain_until
        # Mesh bookkeeping (see core/allowance.py and mesh/protocol.py):
        self.shared = True  # replicated to peers (False for `local` consistency)
        self.seen = 0  # hits seen since the last sync tick, admitted or not (demand)
        self.allowance = -1  # bounded mode: hits this node may admit since the last merge; -1 stale
        self.spent = 0  # hits admitted against `allowance`
        self.stale = False  # the view changed since `allowance` was computed
        self.fresh = False  # the counter was new to the cluster when `allowance` was computed
        self.reserved = 0  # hits kept for unreachable members (bounded mode, see allowance.py)
        self.reserve_gen = -1  # the ClusterView.unreachable generation `reserved` was computed for
        self.lease_until = 0.0  # `allowance` may be spent until then, then it is recomputed
        self.leases: dict[Slot, tuple[int, float]] | None = None  # peer slot -> (unspent, valid until)
        # Admitted hits per slot (a second G-counter), to measure over-admission per window.
        self.limit = 0
        self.admitted = 0
        self.admitted_remote: dict[Slot, int] | None = None

    @property
    def admitted_total(self) -> int:
        return self.admitted + (sum(self.admitted_remote.values()) if self.admitted_remote else 0)

    def admitted_slots(self, own_slot: Slot) -> dict[Slot, int]:
        out = dict(self.admitted_remote) if self.admitted_remote else {}
        if self.admitted:
            out[own_slot] = self.admitted
        return out

    def merge_slot(self, slot: Slot, count: int, admitted: int) -> bool:
        """Merge one peer slot (the common case: a delta); True when the count rose."""
        remote = self.remote
        if remote is None:
            remote = self.remote = {}
            self.admitted_remote = {}
        old = remote.get(slot, 0)
        if admitted:
            admitted_remote = self.admitted_remote
            if admitted_remote is None:
                admitted_remote = self.admitted_remote = {}
            if admitted > admitted_remote.get(slot, 0):
                admitted_remote[slot] = admitted
        if count <= old:
            return False
        remote[slot] = count
        self.remote_total += count - old
        self.stale = True
        return True

    def merge_admitted(self, slots: Mapping[Slot, int], own_slot: Slot) -> None:
        incoming = dict(slots)
        mine = incoming.pop(own_slot, 0)
        if mine > self.admitted:
            self.admitted = mine
        if incoming:
            if self.admitted_remote is None:
                self.admitted_remote = {}
            merge_into(self.admitted_remote, incoming)

    @property
    def total(self) -> int:
        return self.own + self.remote_total

    def slots(self, own_slot: Slot) -> dict[Slot, int]:
        """The full G-counter state, this node's slot included."""
        out = dict(self.remote) if self.remote else {}
        if self.own:
            out[own_slot] = self.own
        return out

    def merge_remote(self, slots: Mapping[Slot, int], own_slot: Slot) -> bool:
        """Merge a peer's view; our own slot is only ever raised by us (or a stale echo)."""
        changed = False
        incoming = dict(slots)
        mine = incoming.pop(own_slot, 0)
        if mine > self.own:  # we restarted with the same incarnation: never go backwards
            self.own = mine
            changed = True
        if incoming:
            if self.remote is None:
                self.remote = {}
            if merge_into(self.remote, incoming):
                self.remote_total = sum(self.remote.values())
                changed = True
        if changed:
            self.stale = True  # the view changed: a new allowance may be asked for
        return changed


class CounterStore:
    def __init__(self, max_counters: int, sweep_every: float = 1.0) -> None:
        if max_counters < 1:
            raise ValueError("max_counters must be at least 1")
        self.max_counters = max_counters
        self._counters: dict[CounterId, Counter] = {}
        self.dirty: set[Counter] = set()  # shared counters changed since the last sync tick
        self._sweep_every = sweep_every
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._counters)

    def __iter__(self) -> Iterator[Counter]:
        return iter(list(self._counters.values()))

    def get(self, key: str, window_start: int) -> Counter | None:
        return self._counters.get((key, window_start))

    def get_or_create(
        self, key: str, window_start: int, length: int, retain_until: float, now: float
    ) -> Counter | None:
        """The counter, created if needed; None when the store is full of live counters."""
        cid = (key, window_start)
        counter = self._counters.get(cid)
        if counter is not None:
            return counter
        if len(self._counters) >= self.max_counters:
            # Sweep at most every `sweep_every` seconds, so a store full of live
            # counters does not turn every request into a full scan.
            if now < self._next_sweep:
                return None
            self._next_sweep = now + self._sweep_every
            if self.expire(now) == 0:
                return None
        counter = Counter(key, window_start, length, retain_until)
        self._counters[cid] = counter
        return counter

    def expire(self, now: float, closed: list[Counter] | None = None) -> int:
        """Drop every counter whose retention has passed; returns how many.

        Dropped counters are appended to `closed` when given (to measure their totals).
        """
        dead = [cid for cid, c in self._counters.items() if c.retain_until <= now]
        for cid in dead:
            counter = self._counters.pop(cid)
            self.dirty.discard(counter)
            if closed is not None:
                closed.append(counter)
        return len(dead)
