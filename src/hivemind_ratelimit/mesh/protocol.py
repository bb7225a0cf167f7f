"""The protocol core of one mesh node: what to send, when, and what received messages do.

Sans-I/O: the transport (or the simulator) hands it messages, link events and the
current time, and sends the (peer, envelope) pairs it returns. It owns no sockets and
reads no clock, so the same code runs over gRPC streams and in a deterministic
in-memory network.

Counters. Every `sync_interval` the node sends each linked peer the counters whose own
slot changed (absolute values: merging is a per-slot maximum, so loss, duplication and
reordering are harmless) together with its smoothed demand per counter key. Every new
link starts with a full state in both directions, all slots included, so a newcomer
also learns what departed nodes counted.

Failure detection (SWIM with a Lifeguard-style local health factor). Every
`probe_interval` one live member is pinged; without an answer in time three others are
asked to ping it; without any answer by the end of the round it is suspected, and the
membership declares it dead after `suspect_timeout`. A node that keeps failing its own
probes waits longer before it blames others (`awareness`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from hivemind_ratelimit.core.allowance import ClusterView
from hivemind_ratelimit.core.gcounter import make_slot
from hivemind_ratelimit.core.limiter import KEY_SEPARATOR
from hivemind_ratelimit.core.store import Counter, CounterMesh, CounterStore
from hivemind_ratelimit.mesh.membership import Change, Membership, State
from hivemind_ratelimit.mesh.proto import mesh_pb2 as pb

PROTOCOL_VERSION = 1
MAX_COUNTERS_PER_MESSAGE = 1000  # per full-state batch
MAX_DELTAS_PER_MESSAGE = 5000  # per sync message (columnar, ~60 bytes each)
INDIRECT_PROBES = 3
MAX_AWARENESS = 8

Out = tuple[str, pb.Envelope]


@dataclass(frozen=True, slots=True)
class Timing:
    sync_interval: float = 0.02
    probe_interval: float = 1.0
    suspect_timeout: float = 5.0
    grace: float = 2.0  # counters outlive their window by this much


@dataclass(slots=True)
class MeshStats:
    sent: dict[str, int] = field(default_factory=dict)  # messages by kind
    received: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_received: int = 0
    malformed: int = 0  # streams closed for a bad message
    refused: int = 0  # handshakes refused (secret, version, self)
    dropped_counters: int = 0  # peer counters not stored (store full)
    sync_lag: dict[str, float] = field(default_factory=dict)  # peer -> seconds, last sync
    # After each window closes: windows, admitted hits, limits and hits over the limit,
    # per domain, from the merged view.
    windows_closed: dict[str, int] = field(default_factory=dict)
    admitted: dict[str, int] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    over_admitted: dict[str, int] = field(default_factory=dict)

    def count(self, table: dict[str, int], key: str, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    sent_at: float
    indirect_at: float
    acked: bool = False
    indirect_sent: bool = False


def _unspent(mesh: CounterMesh | None, now: float) -> int:
    """What is left of this node's allowance while its lease runs (0 without one)."""
    if mesh is None or mesh.allowance < 0 or now >= mesh.lease_until:
        return 0
    return max(0, mesh.allowance - mesh.spent)


def _ns(now: float) -> int:
    return int(now * 1e9)


class MeshCore:
    def __init__(
        self,
        *,
        node_id: str,
        boot: int,
        address: str,
        store: CounterStore,
        cluster: ClusterView,
        timing: Timing,
        rng: random.Random,
        stats: MeshStats | None = None,
    ) -> None:
        self.node_id = node_id
        self.boot = boot
        self.slot = make_slot(node_id, boot)
        self.store = store
        self.cluster = cluster
        self.timing = timing
        self.rng = rng
        self.stats = stats or MeshStats()
        self.membership = Membership(node_id, boot, address, timing.suspect_timeout)
        self.links: set[str] = set()
        self.full_state_from: set[str] = set()  # peers whose full state arrived (warm-up)
        self.disconnect: set[str] = set()  # dead or departed peers the transport should drop
        self.events: list[Change] = []  # membership changes, for the transport to log
        self.awareness = 0
        self.left = False
        self._next_sync = 0.0
        self._next_probe = 0.0
        self._seq = 0
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._relays: dict[int, tuple[str, int, float]] = {}  # our seq -> (origin, its seq, when)

    # -- links ---------------------------------------------------------------------------

    def hello(self, nonce: bytes = b"", proof: bytes = b"", secret_set: bool = False) -> pb.Envelope:
        m = self.membership
        return pb.Envelope(
            hello=pb.Hello(
                node_id=self.node_id,
                incarnation=m.incarnation,
                address=m.address,
                protocol_version=PROTOCOL_VERSION,
                nonce=nonce,
                proof=proof,
                secret_set=secret_set,
                members=[_member(c) for c in m.snapshot()[1:]],
            )
        )

    def link_up(self, peer: str, incarnation: int, address: str, now: float) -> list[Out]:
        """A stream to `peer` is established (handshake done): exchange full state."""
        self.links.add(peer)
        self.disconnect.discard(peer)
        self._changes(self._opt(self.membership.heard_from(peer, incarnation, address, now)))
        self._refresh_cluster()  # reachable again, even when its membership did not change
        return [self._out(peer, envelope) for envelope in self.full_state()]

    def link_down(self, peer: str) -> None:
        self.links.discard(peer)
        self.full_state_from.discard(peer)
        self._refresh_cluster()

    def full_state(self) -> list[pb.Envelope]:
        members = [_member(c) for c in self.membership.snapshot()]
        states = [self._state(c) for c in self.store if c.shared]
        out = []
        for batch in _batches(states):
            out.append(pb.Envelope(full_state=pb.FullState(counters=batch)))
        if not out:
            out.append(pb.Envelope(full_state=pb.FullState()))
        out[0].full_state.members.extend(members)
        out[-1].full_state.last = True
        return out

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, peer: str, envelope: pb.Envelope, now: float) -> list[Out]:
        kind = envelope.WhichOneof("body")
        self.stats.count(self.stats.received, kind or "empty")
        member = self.membership.members.get(peer)
        if member is not None:
            member.last_heard = now
        probe = self._probe
        if probe is not None and probe.target == peer:
            probe.acked = True  # any message on its stream shows it is alive
        if kind == "sync":
            sync = envelope.sync
            if sync.sent_unix_ns:
                self.stats.sync_lag[peer] = max(0.0, now - sync.sent_unix_ns / 1e9)
            if sync.HasField("deltas"):
                self._merge_deltas(peer, sync.deltas, now)
            self._merge(peer, sync.counters, now)
            self._gossip(sync.members, now)
            return []
        if kind == "full_state":
            full = envelope.full_state
            self._merge(peer, full.counters, now)
            self._gossip(full.members, now)
            if full.last:
                self.full_state_from.add(peer)
            return []
        if kind == "ping":
            ping = envelope.ping
            ack = pb.Ack(
                seq=ping.seq,
                ping_sent_unix_ns=ping.sent_unix_ns,
                acker_unix_ns=_ns(now),
                acker=self.node_id,
                origin=ping.origin,
            )
            return [self._out(peer, pb.Envelope(ack=ack))]
        if kind == "ack":
            return self._on_ack(peer, envelope.ack, now)
        if kind == "ping_req":
            req = envelope.ping_req
            if req.target not in self.links:
                return []
            self._seq += 1
            self._relays[self._seq] = (peer, req.seq, now)
            ping = pb.Ping(seq=self._seq, sent_unix_ns=_ns(now), origin=peer)
            return [self._out(req.target, pb.Envelope(ping=ping))]
        if kind == "leave":
            leave = envelope.leave
            self._changes(
                self._opt(self.membership.apply(leave.node_id, leave.incarnation, "", State.LEFT, now))
            )
            return []
        raise ValueError(f"unexpected message {kind!r} on an established stream")

    def _on_ack(self, peer: str, ack: pb.Ack, now: float) -> list[Out]:
        relay = self._relays.pop(ack.seq, None)
        if relay is not None and ack.origin:
            origin, origin_seq, _ = relay
            if origin in self.links:
                forwarded = pb.Ack(seq=origin_seq, acker=ack.acker, origin=origin)
                return [self._out(origin, pb.Envelope(ack=forwarded))]
            return []
        probe = self._probe
        if probe is not None and ack.seq == probe.seq and ack.acker == probe.target:
            probe.acked = True
        if not ack.origin and ack.ping_sent_unix_ns:
            member = self.membership.members.get(peer)
            if member is not None:
                sent = ack.ping_sent_unix_ns / 1e9
                rtt = max(0.0, now - sent)
                member.rtt = rtt
                member.clock_offset = ack.acker_unix_ns / 1e9 - (sent + rtt / 2)
        return []

    def _merge(self, peer: str, states: Iterable[pb.CounterState], now: float) -> None:
        grace = self.timing.grace
        for state in states:
            self.cluster.reported(state.key, peer, state.demand)
            if not state.slots:
                continue
            retain = state.window_start + state.length * max(1, state.retain_windows) + grace
            if retain <= now or state.length <= 0:
                continue  # a window that is over: nothing to decide with it
            counter = self.store.get_or_create(state.key, state.window_start, state.length, retain, now)
            if counter is None:
                self.stats.dropped_counters += 1
                continue
            if retain > counter.retain_until:
                counter.retain_until = retain
            if state.limit and not counter.limit:
                counter.limit = state.limit
            counter.merge_remote({s.id: s.count for s in state.slots}, self.slot)
            if state.admitted:
                counter.merge_admitted({s.id: s.count for s in state.admitted}, self.slot)

    def _merge_deltas(self, peer: str, deltas: pb.Deltas, now: float) -> None:
        slot = deltas.slot
        if not slot or slot == self.slot:
            raise ValueError("deltas without a peer slot")
        columns = (
            deltas.keys,
            deltas.window_starts,
            deltas.lengths,
            deltas.counts,
            deltas.admitted,
            deltas.demands,
            deltas.limits,
            deltas.retain_windows,
        )
        size = len(deltas.keys)
        if any(len(column) != size for column in columns):
            raise ValueError("deltas with columns of different lengths")
        unspent = deltas.unspent
        if unspent and len(unspent) != size:
            raise ValueError("deltas with columns of different lengths")
        lease_until = now + self.cluster.lease
        grace = self.timing.grace
        store, reported = self.store, self.cluster.reported
        for index, (key, start, length, count, admitted, demand, limit, windows) in enumerate(
            zip(*columns, strict=True)
        ):
            reported(key, peer, demand)
            retain = start + length * max(1, windows) + grace
            if retain <= now or length <= 0:
                continue
            counter = store.get(key, start) or store.get_or_create(key, start, length, retain, now)
            if counter is None:
                self.stats.dropped_counters += 1
                continue
            if retain > counter.retain_until:
                counter.retain_until = retain
            if limit and not counter.limit:
                counter.limit = limit
            counter.merge_slot(slot, count, admitted)
            if unspent:
                mesh = counter.mesh_state()
                held = unspent[index]
                if held:
                    if mesh.leases is None:
                        mesh.leases = {}
                    mesh.leases[slot] = (held, lease_until)
                elif mesh.leases:
                    mesh.leases.pop(slot, None)
                mesh.stale = True  # the free budget changed

    def _gossip(self, members: Iterable[pb.Member], now: float) -> None:
        for m in members:
            change = self.membership.apply(m.node_id, m.incarnation, m.address, State(m.state), now)
            self._changes(self._opt(change))

    def _changes(self, changes: Iterable[Change]) -> None:
        changed = False
        for change in changes:
            changed = True
            self.events.append(change)
            if change.state in (State.DEAD, State.LEFT):
                self.disconnect.add(change.node_id)
                # What the member counted stays in every counter (its slots are kept);
                # only its share of future budgets is released.
        if changed:  # the live set moves only with a change; recomputing it per gossiped member is O(n²)
            self._refresh_cluster()

    def _refresh_cluster(self) -> None:
        live = self.membership.live()
        self.cluster.members = set(live)
        members = self.membership.members
        self.cluster.set_unreachable(
            frozenset(m for m in live if m not in self.links or members[m].state is State.SUSPECT)
        )

    @staticmethod
    def _opt(change: Change | None) -> list[Change]:
        return [change] if change is not None else []

    # -- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Out]:
        out: list[Out] = []
        self._changes(self.membership.tick(now))
        if now >= self._next_probe:
            out += self._start_probe(now)
        probe = self._probe
        if probe is not None and not probe.acked and not probe.indirect_sent and now >= probe.indirect_at:
            out += self._indirect(probe)
        if now >= self._next_sync:
            self._next_sync = now + self.timing.sync_interval
            out += self._sync(now)
        return out

    def _sync(self, now: float) -> list[Out]:
        deltas = self._deltas(now)
        members = [_member(c) for c in self.membership.drain_gossip()]
        if not (deltas or members) or not self.links:
            return []
        sent = _ns(now)
        envelopes = [pb.Envelope(sync=pb.Sync(deltas=d, sent_unix_ns=sent)) for d in deltas]
        if not envelopes:
            envelopes.append(pb.Envelope(sync=pb.Sync(sent_unix_ns=sent)))
        envelopes[0].sync.members.extend(members)
        return [self._out(peer, envelope) for envelope in envelopes for peer in sorted(self.links)]

    def _deltas(self, now: float) -> list[pb.Deltas]:
        """Counters whose own slot changed since the last tick, with this node's demand.

        Work is proportional to the counters that changed, not to all live counters:
        demand that is not refreshed fades by itself on every node (core/allowance.py).
        """
        dirty, self.store.dirty = self.store.dirty, set()
        seen: dict[str, int] = {}
        changed = []
        for counter in dirty:
            if not counter.shared:
                continue
            seen[counter.key] = seen.get(counter.key, 0) + counter.seen
            counter.seen = 0
            mesh = counter.mesh
            if mesh is not None and 0 <= mesh.allowance <= mesh.spent:
                mesh.allowance = -1  # spent: ask for a new share at next use
            changed.append(counter)
        if not changed:
            return []
        demand = {key: self.cluster.record(key, hits) for key, hits in seen.items()}
        out = []
        for first in range(0, len(changed), MAX_DELTAS_PER_MESSAGE):
            batch = changed[first : first + MAX_DELTAS_PER_MESSAGE]
            out.append(
                pb.Deltas(
                    slot=self.slot,
                    keys=[c.key for c in batch],
                    window_starts=[c.window_start for c in batch],
                    lengths=[c.length for c in batch],
                    counts=[c.own for c in batch],
                    admitted=[c.admitted for c in batch],
                    demands=[demand[c.key] for c in batch],
                    limits=[c.limit for c in batch],
                    retain_windows=[
                        2 if c.retain_until - c.window_start > 1.5 * c.length else 1 for c in batch
                    ],
                    unspent=[_unspent(c.mesh, now) for c in batch],
                )
            )
        return out

    def _state(self, counter: Counter) -> pb.CounterState:
        """A counter with all its slots, for a full state."""
        own_slot = self.slot
        slots = counter.slots(own_slot)
        admitted = counter.admitted_slots(own_slot)
        retain_windows = 2 if counter.retain_until - counter.window_start > 1.5 * counter.length else 1
        return pb.CounterState(
            key=counter.key,
            window_start=counter.window_start,
            length=counter.length,
            slots=[pb.Slot(id=s, count=n) for s, n in slots.items()],
            admitted=[pb.Slot(id=s, count=n) for s, n in admitted.items() if n],
            demand=self.cluster.own(counter.key),
            retain_windows=retain_windows,
            limit=counter.limit,
        )

    def _start_probe(self, now: float) -> list[Out]:
        self._next_probe = now + self.timing.probe_interval
        previous = self._probe
        if previous is not None:
            if previous.acked:
                self.awareness = max(0, self.awareness - 1)
            else:
                self.awareness = min(MAX_AWARENESS, self.awareness + 1)
                self._changes(self._opt(self.membership.suspect(previous.target, now)))
        self._probe = None
        self._relays = {
            seq: relay for seq, relay in self._relays.items() if now - relay[2] < self.timing.probe_interval
        }
        target = self._next_target()
        if target is None:
            return []
        self._seq += 1
        timeout = min(
            self.timing.probe_interval * 0.4 * (1 + self.awareness), self.timing.probe_interval * 0.8
        )
        probe = self._probe = _Probe(target, self._seq, now, now + timeout)
        if target not in self.links:
            return self._indirect(probe)
        return [self._out(target, pb.Envelope(ping=pb.Ping(seq=probe.seq, sent_unix_ns=_ns(now))))]

    def _next_target(self) -> str | None:
        live = set(self.membership.live())
        while self._probe_order:
            candidate = self._probe_order.pop()
            if candidate in live:
                return candidate
        if not live:
            return None
        self._probe_order = sorted(live)
        self.rng.shuffle(self._probe_order)
        return self._probe_order.pop()

    def _indirect(self, probe: _Probe) -> list[Out]:
        probe.indirect_sent = True
        helpers = sorted(p for p in self.links if p != probe.target)
        chosen = self.rng.sample(helpers, min(INDIRECT_PROBES, len(helpers)))
        req = pb.PingReq(seq=probe.seq, target=probe.target)
        return [self._out(helper, pb.Envelope(ping_req=req)) for helper in chosen]

    def leave(self, now: float) -> list[Out]:
        """Graceful leave: final counts to every peer, then the announcement."""
        out = self._sync(now)
        change = self.membership.leave()
        announcement = pb.Envelope(leave=pb.Leave(node_id=self.node_id, incarnation=change.incarnation))
        out += [self._out(peer, announcement) for peer in sorted(self.links)]
        self.left = True
        return out

    # -- accounting -------------------------------------------------------------------------

    def sweep(self, now: float, budget: int | None = None) -> int:
        """Drop ended counters (at most `budget`); measure each closed window's merged
        total against its limit. Idle demand is forgotten once the sweep is complete."""
        closed: list[Counter] = []
        dropped = self.store.expire(now, closed, budget)
        if budget is None or dropped < budget:
            self.cluster.forget_idle()
        stats = self.stats
        for counter in closed:
            if not counter.shared or not counter.limit:
                continue
            domain = counter.key.split(KEY_SEPARATOR, 1)[0]
            admitted = counter.admitted_total
            stats.count(stats.windows_closed, domain)
            stats.count(stats.admitted, domain, admitted)
            stats.count(stats.limits, domain, counter.limit)
            stats.count(stats.over_admitted, domain, max(0, admitted - counter.limit))
        return dropped

    def describe(self, now: float) -> dict[str, object]:
        """This node and every member as it sees them, for /mesh and `hivemind mesh status`."""
        m = self.membership
        members = []
        for member in sorted(m.members.values(), key=lambda x: x.node_id):
            members.append(
                {
                    "id": member.node_id,
                    "address": member.address,
                    "state": member.state.name.lower(),
                    "incarnation": member.incarnation,
                    "linked": member.node_id in self.links,
                    "last_heard_seconds_ago": round(max(0.0, now - member.last_heard), 3),
                    "rtt_ms": None if member.rtt is None else round(member.rtt * 1000, 3),
                    "clock_offset_ms": None
                    if member.clock_offset is None
                    else round(member.clock_offset * 1000, 3),
                    "sync_lag_ms": (
                        None
                        if member.node_id not in self.stats.sync_lag
                        else round(self.stats.sync_lag[member.node_id] * 1000, 3)
                    ),
                }
            )
        st = self.stats
        return {
            "node": {
                "id": self.node_id,
                "address": m.address,
                "incarnation": m.incarnation,
                "slot": self.slot,
                "awareness": self.awareness,
            },
            "members": members,
            "sync": {
                "messages_sent": dict(st.sent),
                "messages_received": dict(st.received),
                "bytes_sent": st.bytes_sent,
                "bytes_received": st.bytes_received,
                "malformed_messages": st.malformed,
                "refused_peers": st.refused,
                "dropped_counters": st.dropped_counters,
                "sync_interval_ms": self.timing.sync_interval * 1000,
            },
            "accuracy": {
                domain: {
                    "windows_closed": st.windows_closed.get(domain, 0),
                    "admitted": st.admitted.get(domain, 0),
                    "limits": st.limits.get(domain, 0),
                    "over_admitted": st.over_admitted.get(domain, 0),
                }
                for domain in sorted(st.windows_closed)
            },
        }

    def _out(self, peer: str, envelope: pb.Envelope) -> Out:
        self.stats.count(self.stats.sent, envelope.WhichOneof("body") or "empty")
        return (peer, envelope)


def _member(change: Change) -> pb.Member:
    return pb.Member(
        node_id=change.node_id,
        incarnation=change.incarnation,
        address=change.address,
        state=int(change.state),  # type: ignore[arg-type]
    )


def _batches(states: list[pb.CounterState]) -> Iterator[list[pb.CounterState]]:
    for start in range(0, len(states), MAX_COUNTERS_PER_MESSAGE):
        yield states[start : start + MAX_COUNTERS_PER_MESSAGE]
