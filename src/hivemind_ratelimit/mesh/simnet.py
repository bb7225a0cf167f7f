"""A deterministic in-memory network that runs many nodes' real mesh logic (spec §5.5).

Each node is what app.py builds (CounterStore, ClusterView, Limiter, MeshCore) without
sockets. One ManualClock is shared by all; a discrete-event scheduler (a heap of
(time, seq, event)) moves it from event to event; all randomness comes from the seed,
so a run is a pure function of its seed and the calls made on it. Every message is
serialised and parsed with protobuf, so the wire format is exercised too.

Links stand for the transport's gRPC streams. A handshake brings a link up: both
sides gossip the other's Hello, call `link_up` and send the full state it returns. A
link that breaks (crash, partition, dead or departed member, lost message) reports
`link_down` on both ends and what was in flight on it is lost. Like the transport, a
dialer redials every node it is not linked to (the bootstrap name resolves to all
nodes, as a Kubernetes headless Service does) every DIAL_EVERY seconds.

Faults per link: delay plus uniform jitter (jitter reorders), duplication and loss.
On TCP a message is only ever lost with its stream, so by default a lost message
breaks its link and the redial exchanges full state. With `break_on_loss=False` it
vanishes silently (datagram loss): a counter's last delta, once lost, is repaired
only by the next full state on that link.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from hivemind_ratelimit.core.allowance import ClusterView
from hivemind_ratelimit.core.clock import ManualClock
from hivemind_ratelimit.core.gcounter import Slot
from hivemind_ratelimit.core.limiter import Decision, Limiter, LimiterOptions, Request, RequestDescriptor
from hivemind_ratelimit.core.store import CounterId, CounterStore
from hivemind_ratelimit.mesh.membership import State
from hivemind_ratelimit.mesh.proto import mesh_pb2 as pb
from hivemind_ratelimit.mesh.protocol import MeshCore, MeshStats, Out, Timing
from hivemind_ratelimit.rules.loader import load_texts
from hivemind_ratelimit.rules.model import Consistency
from hivemind_ratelimit.telemetry.stats import ServiceStats

START = 1_699_999_200.0  # a multiple of one hour: second, minute and hour windows start here
DIAL_EVERY = 0.5  # as the transport's dialer
SWEEP_EVERY = 1.0  # as app.py's sweeper
Pair = tuple[int, int]


@dataclass(slots=True)
class Faults:
    delay: float = 0.001  # seconds, one way
    jitter: float = 0.0  # extra delay, uniform in [0, jitter)
    loss: float = 0.0  # probability a message is lost
    duplicate: float = 0.0  # probability a message arrives twice


class SimNode:
    """One node: the parts app.py wires together, on the shared clock."""

    def __init__(self, net: SimNetwork, index: int, boot: int) -> None:
        self.index = index
        self.node_id = net.node_ids[index]
        self.boot = boot
        self.running = True
        self.leaving = False
        self.store = CounterStore(net.max_counters)
        # As app.py: demand fades with a half-life of two sync intervals.
        self.cluster = ClusterView(
            self.node_id,
            net.clock,
            half_life=2 * net.timing.sync_interval,
            lease=3 * net.timing.sync_interval,
        )
        self.stats = ServiceStats()
        options = LimiterOptions(default_consistency=net.consistency, grace_seconds=net.timing.grace)
        self.limiter = Limiter(store=self.store, clock=net.clock, stats=self.stats, options=options)
        self.limiter.rules, self.limiter.cluster = net.rules, self.cluster
        self.core = MeshCore(
            node_id=self.node_id,
            boot=boot,
            address=f"sim://{self.node_id}",
            store=self.store,
            cluster=self.cluster,
            timing=net.timing,
            rng=random.Random(f"{net.seed}/{self.node_id}/{boot}"),
            stats=MeshStats(),
        )


class _Wire:
    """One serialised message, parsed once however many peers receive it."""

    __slots__ = ("data", "parsed")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.parsed: pb.Envelope | None = None


def _pair(a: int, b: int) -> Pair:
    return (a, b) if a < b else (b, a)


class SimNetwork:
    def __init__(
        self,
        n: int,
        seed: int,
        timing: Timing,
        rules_text: str,
        *,
        faults: Faults | None = None,
        consistency: Consistency = Consistency.BOUNDED,
        break_on_loss: bool = True,
        max_counters: int = 100_000,
        start: float = START,
        formed: bool = True,
    ) -> None:
        self.seed = seed
        self.timing = timing
        self.rules = load_texts([("sim.yaml", rules_text)])
        self.consistency = consistency
        self.break_on_loss = break_on_loss
        self.max_counters = max_counters
        self.clock = ManualClock(start)
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.link_faults: dict[Pair, Faults] = {}
        width = len(str(max(n - 1, 0)))
        self.node_ids = [f"n{i:0{width}d}" for i in range(n)]
        self._index = {node_id: i for i, node_id in enumerate(self.node_ids)}
        self.nodes = [SimNode(self, i, int(start * 1000)) for i in range(n)]
        self.groups: dict[int, int] = {}  # node -> partition group; empty: no partition
        self.links: dict[Pair, int] = {}  # linked pairs -> id of the current stream
        self.delivered = self.lost = self.stale = 0  # messages, for reports
        self._stream = 0
        self._dialing: set[Pair] = set()
        self._arrival: dict[Pair, float] = {}  # last scheduled delivery per pair
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        tick = min(timing.sync_interval, 0.05)  # the transport's ticker
        for node in self.nodes:
            self._start_ticks(node, self.rng.random() * tick)
        if formed:
            self._form()
        self._at(start, self._dialer)
        self._at(start + SWEEP_EVERY, self._sweeper)

    # -- driving ---------------------------------------------------------------------

    def run(self, seconds: float) -> None:
        self.run_until(self.clock.now() + seconds)

    def run_until(self, until: float) -> None:
        queue = self._queue
        while queue and queue[0][0] <= until:
            when, _, event = heapq.heappop(queue)
            self.clock.set(when)
            event()
        self.clock.set(max(until, self.clock.now()))

    def request(self, i: int, domain: str, entries: Sequence[tuple[str, str]], hits: int = 1) -> Decision:
        """One ShouldRateLimit with one descriptor, on node `i`, now."""
        node = self.nodes[i]
        if not node.running or node.leaving:
            raise RuntimeError(f"node {i} is not serving")
        return node.limiter.decide(Request(domain, (RequestDescriptor(tuple(entries)),), hits))

    # -- faults ----------------------------------------------------------------------

    def set_faults(self, faults: Faults, between: tuple[int, int] | None = None) -> None:
        if between is None:
            self.faults = faults
        else:
            self.link_faults[_pair(*between)] = faults

    def set_loss(self, p: float) -> None:
        self.faults.loss = p

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Split the network; nodes in no group form one more group together."""
        self.groups = {i: g for g, members in enumerate(groups) for i in members}
        for pair in sorted(self.links):
            if not self._reachable(*pair):
                self._unlink(pair)

    def heal(self) -> None:
        """End the partition; the dialers find the other side within DIAL_EVERY."""
        self.groups = {}

    def crash(self, i: int) -> None:
        """Node `i` stops dead: its streams break, what it had not sent is lost."""
        self.nodes[i].running = False
        for pair in [p for p in self.links if i in p]:
            self._unlink(pair)

    def restart(self, i: int) -> SimNode:
        """A new incarnation with an empty store; it bootstraps and pulls full state."""
        old = self.nodes[i]
        if old.running:
            self.crash(i)
        node = self.nodes[i] = SimNode(self, i, max(int(self.clock.now() * 1000), old.boot + 1))
        self._start_ticks(node, 0.0)
        self._dial_from(node)
        return node

    def leave(self, i: int) -> None:
        """Graceful leave: final counts and the announcement, then stop once they are out."""
        node = self.nodes[i]
        node.leaving = True
        self._send(node, node.core.leave(self.clock.now()))
        pairs = [p for p in self.links if i in p]
        last = max((self._arrival.get(p, 0.0) for p in pairs), default=0.0)
        self._at(max(last, self.clock.now()) + 1e-6, lambda: self.crash(i) if self.nodes[i] is node else None)

    # -- reading ---------------------------------------------------------------------

    def ready(self, i: int) -> bool:
        """As the transport's warm-up: linked, and full state came from every link."""
        core = self.nodes[i].core
        return bool(core.links) and core.links <= core.full_state_from

    def views(self, key_prefix: str) -> list[dict[CounterId, dict[Slot, int]] | None]:
        """Per node (None when down): every counter under `key_prefix`, all its slots."""
        out: list[dict[CounterId, dict[Slot, int]] | None] = []
        for node in self.nodes:
            if not node.running:
                out.append(None)
                continue
            slot = node.core.slot
            out.append(
                {(c.key, c.window_start): c.slots(slot) for c in node.store if c.key.startswith(key_prefix)}
            )
        return out

    def totals(self, key_prefix: str) -> list[int | None]:
        """Per node (None when down): the sum of its global counts under `key_prefix`."""
        return [
            None if view is None else sum(sum(s.values()) for s in view.values())
            for view in self.views(key_prefix)
        ]

    def converged(self, key_prefix: str) -> bool:
        views = [v for v in self.views(key_prefix) if v is not None]
        return all(v == views[0] for v in views)

    def _form(self) -> None:
        """Start as a formed mesh: everyone knows everyone alive, linked, gossip spent.

        That is where the real handshakes end up (the stores are empty, so the full
        states would carry only the member lists), without their O(n³) member entries.
        """
        now = self.clock.now()
        for node in self.nodes:
            core = node.core
            for other in self.nodes:
                if other is not node:
                    core.membership.apply(
                        other.node_id, other.boot, other.core.membership.address, State.ALIVE, now
                    )
                    core.links.add(other.node_id)
                    core.full_state_from.add(other.node_id)
                    if node.index < other.index:
                        self._stream += 1
                        self.links[(node.index, other.index)] = self._stream
            core.membership.drain_gossip()
            core._refresh_cluster()

    # -- the scheduler ---------------------------------------------------------------

    def _at(self, when: float, event: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, event))

    def _start_ticks(self, node: SimNode, phase: float) -> None:
        interval = min(self.timing.sync_interval, 0.05)

        def tick() -> None:
            if not node.running or node.leaving or self.nodes[node.index] is not node:
                return
            now = self.clock.now()
            self._send(node, node.core.tick(now))
            for peer in sorted(node.core.disconnect):  # as the transport's _drop_departed
                self._unlink(_pair(node.index, self._index[peer]))
            node.core.disconnect.clear()
            self._at(now + interval, tick)

        self._at(self.clock.now() + phase, tick)

    def _sweeper(self) -> None:
        now = self.clock.now()
        for node in self.nodes:
            if node.running:
                node.core.sweep(now)
        self._at(now + SWEEP_EVERY, self._sweeper)

    def _dialer(self) -> None:
        for node in self.nodes:
            if node.running and not node.leaving:
                self._dial_from(node)
        self._at(self.clock.now() + DIAL_EVERY, self._dialer)

    # -- links -----------------------------------------------------------------------

    def _reachable(self, a: int, b: int) -> bool:
        na, nb = self.nodes[a], self.nodes[b]
        return na.running and nb.running and self.groups.get(a, -1) == self.groups.get(b, -1)

    def _faults(self, pair: Pair) -> Faults:
        return self.link_faults.get(pair, self.faults)

    def _dial_from(self, node: SimNode) -> None:
        """As the transport: the bootstrap name resolves to every node; the crashed,
        departed and partitioned ones do not answer."""
        if len(node.core.links) < len(self.nodes) - 1:
            for target in range(len(self.nodes)):
                if target != node.index:
                    self._dial(node.index, target)

    def _dial(self, a: int, b: int) -> None:
        pair = _pair(a, b)
        if pair in self.links or pair in self._dialing or not self._reachable(a, b):
            return
        self._dialing.add(pair)
        faults = self._faults(pair)
        handshake = 3 * faults.delay + self.rng.random() * faults.jitter  # hello, hello, auth
        self._at(self.clock.now() + handshake, lambda: self._connect(pair))

    def _connect(self, pair: Pair) -> None:
        self._dialing.discard(pair)
        if pair in self.links or not self._reachable(*pair):
            return
        a, b = self.nodes[pair[0]], self.nodes[pair[1]]
        if a.leaving or b.leaving:
            return
        now = self.clock.now()
        hello_a = pb.Envelope.FromString(a.core.hello().SerializeToString()).hello
        hello_b = pb.Envelope.FromString(b.core.hello().SerializeToString()).hello
        self._stream += 1
        self.links[pair] = self._stream
        outs = []
        for node, hello in ((a, hello_b), (b, hello_a)):
            node.core._gossip(hello.members, now)  # as the transport's _serve_link
            outs.append((node, node.core.link_up(hello.node_id, hello.incarnation, hello.address, now)))
        for node, out in outs:
            self._send(node, out)

    def _unlink(self, pair: Pair) -> None:
        if self.links.pop(pair, None) is None:
            return
        for x, y in (pair, pair[::-1]):
            node = self.nodes[x]
            if node.running:
                node.core.link_down(self.node_ids[y])

    # -- messages --------------------------------------------------------------------

    def _send(self, src: SimNode, outs: list[Out]) -> None:
        wires: dict[int, _Wire] = {}  # a broadcast is serialised once
        for peer, envelope in outs:
            dst = self._index[peer]
            pair = _pair(src.index, dst)
            stream = self.links.get(pair)
            if stream is None:
                continue  # no link: the transport drops it too
            wire = wires.get(id(envelope))
            if wire is None:
                wire = wires[id(envelope)] = _Wire(envelope.SerializeToString())
            src.core.stats.bytes_sent += len(wire.data)
            faults = self._faults(pair)
            rng = self.rng
            if faults.loss and rng.random() < faults.loss:
                self.lost += 1
                if self.break_on_loss:
                    self._unlink(pair)
                continue
            copies = 2 if faults.duplicate and rng.random() < faults.duplicate else 1
            for _ in range(copies):
                when = self.clock.now() + faults.delay + rng.random() * faults.jitter
                self._arrival[pair] = max(self._arrival.get(pair, 0.0), when)
                self._at(when, partial(self._deliver, src.index, dst, stream, wire))
        src.core.events.clear()  # membership changes: the transport only logs them

    def _deliver(self, src: int, dst: int, stream: int, wire: _Wire) -> None:
        pair = _pair(src, dst)
        if self.links.get(pair) != stream:
            self.stale += 1  # its stream broke on the way
            return
        self.delivered += 1
        node = self.nodes[dst]
        if wire.parsed is None:
            wire.parsed = pb.Envelope.FromString(wire.data)
        node.core.stats.bytes_received += len(wire.data)
        try:
            outs = node.core.receive(self.node_ids[src], wire.parsed, self.clock.now())
        except (ValueError, KeyError):  # as the transport: close that stream
            node.core.stats.malformed += 1
            self._unlink(pair)
            return
        self._send(node, outs)
