"""The counter store: every live counter of this node, bounded in number.

A counter is identified by (counter key, window start). Its state is a G-counter
(see gcounter.py) split for speed and memory: this node's own slot is a plain int,
the other slots live in a dict that exists only once a peer has reported a count.
The global count is `own + remote_total`.

Counters are dropped once their retention time has passed (the window end, plus the
next window for sliding windows, plus a grace period for late peer messages), found
through an index by that time, so a sweep never walks the live counters. When
`max_counters` are live and a new counter is needed, expired counters are swept
first; if none can be dropped the caller gets None and applies its overflow policy.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping

from hivemind_ratelimit.core.gcounter import Slot, merge_into

CounterId = tuple[str, int]
Window = tuple[int, int, float]  # (window start, length, retain until)

# Windows are interned: the counters of one window (and limit length) share one tuple
# instead of holding three numbers each. Cleared when this many are held (windows end).
MAX_INTERNED = 4096
_windows: dict[Window, Window] = {}


def _window(start: int, length: int, retain_until: float) -> Window:
    window = (start, length, retain_until)
    shared = _windows.get(window)
    if shared is None:
        if len(_windows) >= MAX_INTERNED:
            _windows.clear()
        shared = _windows[window] = window
    return shared


class CounterMesh:
    """The part of a counter that only matters with peers or in bounded mode.

    Created when a peer first reports the counter or the bounded allowance first needs
    it; a counter of a single node never has one, which keeps it small.
    """

    __slots__ = (
        "admitted_remote",
        "allowance",
        "fresh",
        "lease_until",
        "leases",
        "remote",
        "remote_total",
        "reserve_gen",
        "reserved",
        "spent",
        "stale",
    )

    def __init__(self) -> None:
        self.remote: dict[Slot, int] | None = None  # peer slots of the G-counter
        self.remote_total = 0  # their sum
        self.allowance = -1  # bounded mode: hits this node may admit since the last merge; -1 stale
        self.spent = 0  # hits admitted against `allowance`
        self.stale = False  # the view changed since `allowance` was computed
        self.fresh = False  # the counter was new to the cluster when `allowance` was computed
        self.reserved = 0  # hits kept for unreachable members (bounded mode, see allowance.py)
        self.reserve_gen = -1  # the ClusterView.unreachable generation `reserved` was computed for
        self.lease_until = 0.0  # `allowance` may be spent until then, then it is recomputed
        self.leases: dict[Slot, tuple[int, float]] | None = None  # peer slot -> (unspent, valid until)
        self.admitted_remote: dict[Slot, int] | None = None  # admitted hits per peer slot


_NO_MESH = CounterMesh()  # the defaults, read while a counter has no mesh part (never written)


class Counter:
    __slots__ = (
        "admitted",
        "key",
        "limit",
        "mesh",
        "own",
        "prev",
        "seen",
        "window",
    )

    def __init__(self, key: str, window_start: int, length: int, retain_until: float) -> None:
        self.key = key
        self.window = _window(window_start, length, retain_until)
        self.own = 0
        # Hits seen since the last sync tick, admitted or not (demand); -1 when the counter
        # is not replicated to peers (`local` consistency, see `shared`).
        self.seen = 0
        # Admitted hits of this node (a second G-counter, with the peer slots in `mesh`),
        # to measure over-admission per window.
        self.limit = 0
        self.admitted = 0
        self.mesh: CounterMesh | None = None  # peer and bounded-mode bookkeeping, when needed
        self.prev: Counter | None = None  # the store's next older window of the same key

    @property
    def window_start(self) -> int:
        return self.window[0]

    @property
    def length(self) -> int:
        return self.window[1]

    @property
    def retain_until(self) -> float:
        """Dropped from the store once this has passed; only ever raised."""
        return self.window[2]

    @retain_until.setter
    def retain_until(self, value: float) -> None:
        start, length, _ = self.window
        self.window = _window(start, length, value)

    def mesh_state(self) -> CounterMesh:
        """The mesh part, created if needed."""
        mesh = self.mesh
        if mesh is None:
            mesh = self.mesh = CounterMesh()
        return mesh

    @property
    def shared(self) -> bool:
        """Replicated to peers (False for `local` consistency); kept in `seen`'s sign."""
        return self.seen >= 0

    @shared.setter
    def shared(self, value: bool) -> None:
        if not value:
            self.seen = -1
        elif self.seen < 0:
            self.seen = 0

    # The mesh part's fields, read with their defaults while there is none.
    @property
    def remote_total(self) -> int:
        return (self.mesh or _NO_MESH).remote_total

    @remote_total.setter
    def remote_total(self, value: int) -> None:
        self.mesh_state().remote_total = value

    @property
    def remote(self) -> dict[Slot, int] | None:
        return (self.mesh or _NO_MESH).remote

    @remote.setter
    def remote(self, value: dict[Slot, int] | None) -> None:
        self.mesh_state().remote = value

    @property
    def admitted_remote(self) -> dict[Slot, int] | None:
        return (self.mesh or _NO_MESH).admitted_remote

    @admitted_remote.setter
    def admitted_remote(self, value: dict[Slot, int] | None) -> None:
        self.mesh_state().admitted_remote = value

    @property
    def allowance(self) -> int:
        return (self.mesh or _NO_MESH).allowance

    @allowance.setter
    def allowance(self, value: int) -> None:
        self.mesh_state().allowance = value

    @property
    def spent(self) -> int:
        return (self.mesh or _NO_MESH).spent

    @spent.setter
    def spent(self, value: int) -> None:
        self.mesh_state().spent = value

    @property
    def stale(self) -> bool:
        return (self.mesh or _NO_MESH).stale

    @stale.setter
    def stale(self, value: bool) -> None:
        self.mesh_state().stale = value

    @property
    def fresh(self) -> bool:
        return (self.mesh or _NO_MESH).fresh

    @fresh.setter
    def fresh(self, value: bool) -> None:
        self.mesh_state().fresh = value

    @property
    def reserved(self) -> int:
        return (self.mesh or _NO_MESH).reserved

    @reserved.setter
    def reserved(self, value: int) -> None:
        self.mesh_state().reserved = value

    @property
    def reserve_gen(self) -> int:
        return (self.mesh or _NO_MESH).reserve_gen

    @reserve_gen.setter
    def reserve_gen(self, value: int) -> None:
        self.mesh_state().reserve_gen = value

    @property
    def lease_until(self) -> float:
        return (self.mesh or _NO_MESH).lease_until

    @lease_until.setter
    def lease_until(self, value: float) -> None:
        self.mesh_state().lease_until = value

    @property
    def leases(self) -> dict[Slot, tuple[int, float]] | None:
        return (self.mesh or _NO_MESH).leases

    @leases.setter
    def leases(self, value: dict[Slot, tuple[int, float]] | None) -> None:
        self.mesh_state().leases = value

    @property
    def admitted_total(self) -> int:
        remote = self.mesh.admitted_remote if self.mesh is not None else None
        return self.admitted + (sum(remote.values()) if remote else 0)

    def admitted_slots(self, own_slot: Slot) -> dict[Slot, int]:
        remote = self.mesh.admitted_remote if self.mesh is not None else None
        out = dict(remote) if remote else {}
        if self.admitted:
            out[own_slot] = self.admitted
        return out

    def merge_slot(self, slot: Slot, count: int, admitted: int) -> bool:
        """Merge one peer slot (the common case: a delta); True when the count rose."""
        mesh = self.mesh_state()
        remote = mesh.remote
        if remote is None:
            remote = mesh.remote = {}
            mesh.admitted_remote = {}
        old = remote.get(slot, 0)
        if admitted:
            admitted_remote = mesh.admitted_remote
            if admitted_remote is None:
                admitted_remote = mesh.admitted_remote = {}
            if admitted > admitted_remote.get(slot, 0):
                admitted_remote[slot] = admitted
        if count <= old:
            return False
        remote[slot] = count
        mesh.remote_total += count - old
        mesh.stale = True
        return True

    def merge_admitted(self, slots: Mapping[Slot, int], own_slot: Slot) -> None:
        incoming = dict(slots)
        mine = incoming.pop(own_slot, 0)
        if mine > self.admitted:
            self.admitted = mine
        if incoming:
            mesh = self.mesh_state()
            if mesh.admitted_remote is None:
                mesh.admitted_remote = {}
            merge_into(mesh.admitted_remote, incoming)

    @property
    def total(self) -> int:
        mesh = self.mesh
        return self.own if mesh is None else self.own + mesh.remote_total

    def slots(self, own_slot: Slot) -> dict[Slot, int]:
        """The full G-counter state, this node's slot included."""
        remote = self.mesh.remote if self.mesh is not None else None
        out = dict(remote) if remote else {}
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
            mesh = self.mesh_state()
            if mesh.remote is None:
                mesh.remote = {}
            if merge_into(mesh.remote, incoming):
                mesh.remote_total = sum(mesh.remote.values())
                changed = True
        if changed:
            self.mesh_state().stale = True  # the view changed: a new allowance may be asked for
        return changed


class CounterStore:
    """Live counters, by key: each key holds its newest window's counter, whose `prev`
    chain holds the older windows still live (newest first; one or two in practice).

    Keyed by the key string alone, so no (key, window) tuple is kept per counter.
    """

    def __init__(self, max_counters: int, sweep_every: float = 1.0) -> None:
        if max_counters < 1:
            raise ValueError("max_counters must be at least 1")
        self.max_counters = max_counters
        self._heads: dict[str, Counter] = {}
        # Each key's newest counter, for a caller's lookup without a call (read only;
        # get_or_create when the window is not the one wanted).
        self.newest: Mapping[str, Counter] = self._heads
        self.size = 0  # live counters (read-only outside the store)
        self.dirty: set[Counter] = set()  # shared counters changed since the last sync tick
        self._sweep_every = sweep_every
        self._next_sweep = 0.0
        # The expiry index: counters by the time their retention ends (few distinct
        # times, as windows are aligned) and a heap of those times, so a sweep costs what
        # it drops, not what is live. A counter whose retention was extended since it was
        # filed is filed again when its old time comes.
        self._due: dict[float, list[Counter]] = {}
        self._times: list[float] = []

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Counter]:
        out: list[Counter] = []
        for head in self._heads.values():
            if head.prev is None:
                out.append(head)
                continue
            chain: list[Counter] = []
            counter: Counter | None = head
            while counter is not None:
                chain.append(counter)
                counter = counter.prev
            out.extend(reversed(chain))  # oldest first, as they were created
        return iter(out)

    def get(self, key: str, window_start: int) -> Counter | None:
        counter = self._heads.get(key)
        while counter is not None and counter.window[0] != window_start:
            counter = counter.prev
        return counter

    def get_or_create(
        self, key: str, window_start: int, length: int, retain_until: float, now: float
    ) -> Counter | None:
        """The counter, created if needed; None when the store is full of live counters."""
        heads = self._heads
        counter = heads.get(key)
        while counter is not None:
            if counter.window[0] == window_start:
                return counter
            counter = counter.prev
        if self.size >= self.max_counters:
            # Sweep at most every `sweep_every` seconds, so a store full of live
            # counters does not turn every request into a full scan.
            if now < self._next_sweep:
                return None
            self._next_sweep = now + self._sweep_every
            if self.expire(now) == 0:
                return None
        counter = Counter(key, window_start, length, retain_until)
        head = heads.get(key)
        if head is None or window_start > head.window[0]:
            counter.prev = head
            heads[key] = counter
        else:
            after = head
            while after.prev is not None and after.prev.window[0] > window_start:
                after = after.prev
            counter.prev = after.prev
            after.prev = counter
        self.size += 1
        self._file(counter)
        return counter

    def _file(self, counter: Counter) -> None:
        until = counter.window[2]
        bucket = self._due.get(until)
        if bucket is None:
            bucket = self._due[until] = []
            heapq.heappush(self._times, until)
        bucket.append(counter)

    def expire(self, now: float, closed: list[Counter] | None = None, budget: int | None = None) -> int:
        """Drop counters whose retention has passed; returns how many.

        At most `budget` when given (the caller sweeps again for the rest). Dropped
        counters are appended to `closed` when given (to measure their totals).
        """
        times, due, heads = self._times, self._due, self._heads
        dirty = self.dirty
        dropped = 0
        while times and times[0] <= now:
            until = times[0]
            bucket = due[until]
            while bucket:
                if budget is not None and dropped >= budget:
                    self.size -= dropped
                    return dropped
                counter = bucket.pop()
                if counter.window[2] > now:
                    self._file(counter)  # its retention was extended
                    continue
                if counter.prev is None and heads.get(counter.key) is counter:
                    del heads[counter.key]  # the usual case: the only window of its key
                else:
                    self._unlink(counter)
                if dirty:
                    dirty.discard(counter)
                if closed is not None:
                    closed.append(counter)
                dropped += 1
            heapq.heappop(times)
            del due[until]
        self.size -= dropped
        return dropped

    def _unlink(self, counter: Counter) -> None:
        """Take a counter out of its key's chain."""
        key = counter.key
        head = self._heads[key]
        if head is counter:
            if counter.prev is None:
                del self._heads[key]
            else:
                self._heads[key] = counter.prev
        else:
            newer = head
            while newer.prev is not counter:
                assert newer.prev is not None, "a filed counter is in its key's chain"
                newer = newer.prev
            newer.prev = counter.prev
        counter.prev = None
