"""The sans-I/O mesh core (mesh/protocol.py), driven by hand with a manual clock:
probes and indirect probes, suspicion, full state and deltas, demand, leave, sweep.

Every message goes through protobuf bytes, as on the wire.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable

import pytest

from hivemind_ratelimit.core.allowance import ClusterView
from hivemind_ratelimit.core.clock import ManualClock
from hivemind_ratelimit.core.gcounter import make_slot
from hivemind_ratelimit.core.limiter import (
    KEY_SEPARATOR,
    Code,
    Limiter,
    LimiterOptions,
    Request,
    RequestDescriptor,
)
from hivemind_ratelimit.core.store import Counter, CounterStore
from hivemind_ratelimit.mesh.membership import State
from hivemind_ratelimit.mesh.proto import mesh_pb2 as pb
from hivemind_ratelimit.mesh.protocol import MeshCore, Out, Timing
from hivemind_ratelimit.rules.loader import load_texts
from hivemind_ratelimit.rules.model import Consistency
from hivemind_ratelimit.telemetry.stats import ServiceStats

T0 = 1_699_999_200.0  # a whole hour: the minute window starts here
TIMING = Timing(sync_interval=0.02, probe_interval=1.0, suspect_timeout=5.0, grace=2.0)
RULES = load_texts(
    [
        (
            "t.yaml",
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 100}\n",
        )
    ]
)
PREFIX = "d" + KEY_SEPARATOR


class Node:
    def __init__(
        self, name: str, clock: ManualClock, boot: int = 1, consistency: Consistency = Consistency.BOUNDED
    ) -> None:
        self.name = name
        self.clock = clock
        self.store = CounterStore(1000)
        self.cluster = ClusterView(name, clock, half_life=1.0)
        self.limiter = Limiter(
            store=self.store,
            clock=clock,
            stats=ServiceStats(),
            rules=RULES,
            cluster=self.cluster,
            options=LimiterOptions(default_consistency=consistency),
        )
        self.core = MeshCore(
            node_id=name,
            boot=boot,
            address=f"{name}:7946",
            store=self.store,
            cluster=self.cluster,
            timing=TIMING,
            rng=random.Random(name),
        )

    def hit(self, n: int = 1) -> list[Code]:
        request = Request("d", (RequestDescriptor((("k", "v"),)),))
        return [self.limiter.decide(request).overall for _ in range(n)]

    def counter(self) -> Counter:
        [counter] = [c for c in self.store if c.key.startswith(PREFIX)]
        return counter


class Net:
    """Hand-driven message passing: `send` queues, `pump` delivers until quiet."""

    def __init__(self, *names: str, consistency: Consistency = Consistency.BOUNDED) -> None:
        self.clock = ManualClock(T0)
        self.nodes = {name: Node(name, self.clock, consistency=consistency) for name in names}
        self.queue: deque[tuple[str, str, bytes]] = deque()
        self.down: set[str] = set()  # nodes that receive nothing
        self.log: list[tuple[str, str, str]] = []  # (from, to, kind) sent

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def send(self, src: str, outs: Iterable[Out]) -> None:
        for dst, envelope in outs:
            self.queue.append((src, dst, envelope.SerializeToString()))

    def pump(self) -> None:
        while self.queue:
            src, dst, data = self.queue.popleft()
            envelope = pb.Envelope.FromString(data)
            self.log.append((src, dst, envelope.WhichOneof("body") or ""))
            if dst in self.down:
                continue
            self.send(dst, self.nodes[dst].core.receive(src, envelope, self.clock.now()))

    def link(self, a: str, b: str) -> None:
        now = self.clock.now()
        na, nb = self.nodes[a].core, self.nodes[b].core
        self.send(a, na.link_up(b, nb.membership.incarnation, nb.membership.address, now))
        self.send(b, nb.link_up(a, na.membership.incarnation, na.membership.address, now))
        self.pump()

    def mesh(self) -> None:
        names = sorted(self.nodes)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                self.link(a, b)

    def tick(self, name: str) -> list[tuple[str, pb.Envelope]]:
        outs = self.nodes[name].core.tick(self.clock.now())
        self.send(name, outs)
        return outs

    def settle(self) -> None:
        """A sync round on every node, so the gossip of the links is spent."""
        for name in self.nodes:
            self.tick(name)
        self.pump()
        self.log.clear()


def kinds(outs: Iterable[Out]) -> list[tuple[str, str]]:
    return [(peer, envelope.WhichOneof("body") or "") for peer, envelope in outs]


# -- probes ------------------------------------------------------------------------------


def probe_target(net: Net, prober: str, target: str) -> None:
    """Run probe rounds, all answered, until `prober`'s next ping goes to `target`."""
    for _ in range(10):
        outs = net.tick(prober)
        pings = [peer for peer, kind in kinds(outs) if kind == "ping"]
        if pings == [target]:
            net.queue.clear()
            return
        net.pump()
        net.clock.advance(TIMING.probe_interval)
    raise AssertionError(f"{prober} never probed {target}")


def test_a_probe_is_a_ping_answered_by_an_ack() -> None:
    net = Net("a", "b")
    net.link("a", "b")
    outs = net["a"].core.tick(net.clock.now())
    [ping] = [env.ping for peer, env in outs if env.WhichOneof("body") == "ping" and peer == "b"]
    net.clock.advance(0.003)
    [(peer, answer)] = net["b"].core.receive("a", ping_envelope(ping), net.clock.now())
    assert peer == "a" and answer.WhichOneof("body") == "ack"
    assert (answer.ack.seq, answer.ack.acker) == (ping.seq, "b")
    assert net["a"].core.receive("b", answer, net.clock.now()) == []
    member = net["a"].core.membership.members["b"]
    assert member.rtt == pytest.approx(0.003, abs=1e-6)
    assert member.clock_offset is not None and abs(member.clock_offset) < 0.01
    net.clock.advance(TIMING.probe_interval)
    net.tick("a")
    assert net["a"].core.membership.state_of("b") is State.ALIVE
    assert net["a"].core.awareness == 0


def ping_envelope(ping: pb.Ping) -> pb.Envelope:
    return pb.Envelope.FromString(pb.Envelope(ping=ping).SerializeToString())


def test_without_an_answer_others_are_asked_then_it_is_suspected_then_dead() -> None:
    net = Net("a", "b", "c", "d", "t")
    net.mesh()
    net.settle()
    probe_target(net, "a", "t")
    net.down.add("t")  # t hears nothing from now on (and so says nothing)
    indirect_at = net.clock.now() + 0.4 * TIMING.probe_interval
    net.clock.set(indirect_at - 0.01)
    assert [k for _, k in kinds(net.tick("a")) if k == "ping_req"] == []  # not yet
    net.clock.set(indirect_at)
    outs = net.tick("a")
    requests = [(peer, env.ping_req.target) for peer, env in outs if env.WhichOneof("body") == "ping_req"]
    assert sorted(requests) == [("b", "t"), ("c", "t"), ("d", "t")]
    net.pump()
    relayed = [(src, dst) for src, dst, kind in net.log if kind == "ping"]
    assert sorted(relayed) == [("b", "t"), ("c", "t"), ("d", "t")]  # the helpers tried, t is silent
    # The round ends unanswered: t is suspected, and the news rides on the next sync.
    net.clock.set(indirect_at + 0.6 * TIMING.probe_interval)
    outs = net.tick("a")
    core = net["a"].core
    assert core.membership.state_of("t") is State.SUSPECT
    assert "t" in net["a"].cluster.members  # a suspect keeps its share
    assert core.awareness == 1  # a failed round makes the prober slower to blame others
    gossip = [
        m for peer, env in outs if peer == "b" and env.WhichOneof("body") == "sync" for m in env.sync.members
    ]
    assert [(m.node_id, State(m.state)) for m in gossip] == [("t", State.SUSPECT)]
    net.pump()
    assert net["b"].core.membership.state_of("t") is State.SUSPECT
    # Nobody refutes it: dead after the suspect timeout, and the link is to be dropped.
    net.clock.advance(TIMING.suspect_timeout)
    net.tick("a")
    assert core.membership.state_of("t") is State.DEAD
    assert "t" in core.disconnect
    assert "t" not in net["a"].cluster.members


def test_an_indirect_ack_saves_the_target_from_suspicion() -> None:
    net = Net("a", "b", "c", "d", "t")
    net.mesh()
    net.settle()
    probe_target(net, "a", "t")  # the direct ping to t is lost (cleared)
    net.clock.advance(0.4 * TIMING.probe_interval)
    net.tick("a")
    net.pump()  # helpers ping t, t acks them, they forward the ack to a
    forwarded = [(src, dst) for src, dst, kind in net.log if kind == "ack" and dst == "a"]
    assert forwarded  # at least one helper's forwarded ack reached a
    net.clock.advance(0.6 * TIMING.probe_interval)
    net.tick("a")
    assert net["a"].core.membership.state_of("t") is State.ALIVE


def test_the_suspected_node_refutes_through_the_mesh() -> None:
    net = Net("a", "b", "t")
    net.mesh()
    net.settle()
    probe_target(net, "a", "t")
    net.clock.advance(TIMING.probe_interval)  # no ack (cleared): t becomes suspect at a
    net.tick("a")
    net.pump()  # the suspicion reaches t
    assert net["t"].core.membership.incarnation == 2  # refuted
    net.tick("t")  # the refutation rides on t's next sync
    net.pump()
    assert net["a"].core.membership.state_of("t") is State.ALIVE
    assert net["a"].core.membership.members["t"].incarnation == 2
    net.clock.advance(TIMING.suspect_timeout)
    net.tick("a")
    assert net["a"].core.membership.state_of("t") is State.ALIVE


# -- counters ----------------------------------------------------------------------------


def test_a_new_link_exchanges_full_state_with_every_slot_and_member() -> None:
    net = Net("a", "b", "c", "n")
    net.link("a", "b")
    net.link("a", "c")
    assert net["b"].hit(3) == [Code.OK] * 3
    assert net["c"].hit(2) == [Code.OK] * 2
    assert net["a"].hit(1) == [Code.OK]
    for name in "abc":
        net.tick(name)
    net.pump()
    outs = net["a"].core.link_up("n", 1, "n:7946", net.clock.now())
    assert kinds(outs) == [("n", "full_state")]
    full = outs[0][1].full_state
    assert full.last
    assert {m.node_id for m in full.members} == {"a", "b", "c", "n"}
    [state] = full.counters
    assert {s.id: s.count for s in state.slots} == {
        make_slot("a", 1): 1,
        make_slot("b", 1): 3,
        make_slot("c", 1): 2,
    }
    assert state.limit == 100
    net.send("a", outs)
    net.pump()
    n = net["n"]
    assert n.counter().total == 6
    assert n.counter().slots(n.core.slot) == net["a"].counter().slots(net["a"].core.slot)
    assert "a" in n.core.full_state_from
    assert set(n.core.membership.members) == {"a", "b", "c"}


def test_deltas_carry_only_the_own_slot_and_only_when_it_changed() -> None:
    net = Net("a", "b", "c", consistency=Consistency.EVENTUAL)
    net.mesh()
    net["b"].hit(4)
    net.settle()
    assert net["a"].counter().total == 4
    net.clock.advance(TIMING.sync_interval)
    assert kinds(net.tick("a")) == []  # nothing changed: nothing sent
    net["a"].hit(2)
    net.clock.advance(TIMING.sync_interval)
    outs = net.tick("a")
    assert sorted(kinds(outs)) == [("b", "sync"), ("c", "sync")]
    deltas = outs[0][1].sync.deltas
    assert deltas.slot == net["a"].core.slot
    assert list(deltas.keys) == [net["a"].counter().key]
    assert list(deltas.counts) == [2]  # absolute, own slot only: b's 4 are not echoed
    assert list(deltas.admitted) == [2]
    assert list(deltas.limits) == [100]
    net.pump()
    assert net["c"].counter().total == 6


def test_deltas_are_absolute_so_loss_duplication_and_reordering_are_harmless() -> None:
    net = Net("a", "b")
    net.link("a", "b")
    net.settle()
    sent = []
    for _ in range(3):
        net["a"].hit(1)
        net.clock.advance(TIMING.sync_interval)
        sent += net["a"].core.tick(net.clock.now())
    first, _, last = (env for _, env in sent)
    b = net["b"].core
    b.receive("a", last, net.clock.now())  # the second is lost, the last arrives first
    b.receive("a", first, net.clock.now())
    b.receive("a", last, net.clock.now())
    assert net["b"].counter().total == 3


def test_demand_is_reported_with_deltas_and_decays_at_the_receiver() -> None:
    net = Net("a", "b")
    net.link("a", "b")
    net.settle()
    for _ in range(10):
        net["a"].hit(1)
        net.clock.advance(0.1)
        net.tick("a")
    net.pump()
    key = net["a"].counter().key
    reported = net["b"].cluster.demands(key)["a"]
    assert reported > 1.0
    assert net["b"].cluster.demands(key)["b"] == 0.0
    assert net["b"].cluster.allowance(key, 50) < 25  # a gets most of what is left
    net.clock.advance(1.0)  # one half-life, nothing sent
    assert net["b"].cluster.demands(key)["a"] == pytest.approx(reported / 2)
    net.clock.advance(30.0)
    assert net["b"].cluster.is_new(key)


def test_a_refused_hit_still_counts_as_demand() -> None:
    """Bounded mode: while a has all the demand, b holds only its floor of one hit; its
    refused requests are demand too, so at the next merge the budget moves towards b."""
    net = Net("a", "b")
    net.link("a", "b")
    net.settle()
    for _ in range(5):
        net["a"].hit(1)
        net.clock.advance(TIMING.sync_interval)
        net.tick("a")
        net.pump()
    b = net["b"]
    assert b.hit(3) == [Code.OK, Code.OVER_LIMIT, Code.OVER_LIMIT]
    assert b.counter().own == 1  # refused by the allowance: not counted
    net.clock.advance(TIMING.sync_interval)
    net.tick("b")
    net.pump()
    key = b.counter().key
    assert net["a"].cluster.demands(key)["b"] > 0.0
    # a's allowance is a lease b keeps aside until it runs out (or a reports it spent).
    assert b.hit(1) == [Code.OVER_LIMIT]
    net.clock.advance(b.cluster.lease)
    assert b.hit(3) == [Code.OK] * 3


def test_a_peer_without_a_stream_is_unreachable_until_its_stream_is_back() -> None:
    """Its demand is frozen and its share reserved while it cannot be heard, and no
    longer once a new stream is up (even though its membership never changed)."""
    net = Net("a", "b", "c")
    net.mesh()
    net.settle()
    a = net["a"]
    a.core.link_down("b")
    assert a.cluster.unreachable == {"b"}
    assert a.core.membership.state_of("b") is State.ALIVE
    net.link("a", "b")
    assert a.cluster.unreachable == frozenset()


def test_leave_sends_the_final_counts_then_the_announcement() -> None:
    net = Net("a", "b", "c")
    net.mesh()
    net.settle()
    net["a"].hit(7)  # not yet synced
    outs = net["a"].core.leave(net.clock.now())
    assert sorted(kinds(outs)) == [("b", "leave"), ("b", "sync"), ("c", "leave"), ("c", "sync")]
    assert [k for p, k in kinds(outs) if p == "b"] == ["sync", "leave"]  # counts first
    net.send("a", outs)
    net.pump()
    for name in "bc":
        core = net[name].core
        assert net[name].counter().total == 7
        assert core.membership.state_of("a") is State.LEFT
        assert "a" in core.disconnect
        assert "a" not in net[name].cluster.members


def test_a_restarted_node_keeps_the_old_slot_and_counts_in_a_new_one() -> None:
    net = Net("a", "b")
    net.link("a", "b")
    net["a"].hit(5)
    net.settle()
    net["b"].core.link_down("a")
    net.nodes["a"] = Node("a", net.clock, boot=2)  # a restarts: empty store, new incarnation
    net.link("a", "b")
    assert net["a"].counter().slots(net["a"].core.slot) == {make_slot("a", 1): 5}
    assert net["b"].core.membership.members["a"].incarnation == 2
    net["a"].hit(1)
    net.settle()
    assert net["b"].counter().slots(net["b"].core.slot) == {make_slot("a", 1): 5, make_slot("a", 2): 1}


def test_malformed_messages_are_errors_for_the_transport_to_close_the_stream() -> None:
    net = Net("a", "b")
    net.link("a", "b")
    core = net["a"].core
    with pytest.raises(ValueError):
        core.receive("b", pb.Envelope(hello=pb.Hello(node_id="b")), net.clock.now())
    with pytest.raises(ValueError):
        core.receive("b", pb.Envelope(sync=pb.Sync(deltas=pb.Deltas(slot=core.slot))), net.clock.now())
    bad = pb.Deltas(slot="b#1", keys=["k"], window_starts=[], lengths=[60])
    with pytest.raises(ValueError):
        core.receive("b", pb.Envelope(sync=pb.Sync(deltas=bad)), net.clock.now())


# -- accounting --------------------------------------------------------------------------


def test_sweep_measures_each_closed_window_against_its_limit() -> None:
    net = Net("a", "b")
    net.link("a", "b")
    net.settle()
    net["b"].hit(50)
    net.clock.advance(TIMING.sync_interval)
    net.tick("b")
    net.pump()
    a = net["a"]
    a.core.link_down("b")  # a partition: a no longer sees b's share ...
    a.cluster.members = set()  # ... and b was declared dead: a is alone
    assert a.hit(60).count(Code.OK) == 50  # the global count (b's 50 included) stops a at 100
    a.counter().admitted += 10  # as if a had admitted 10 more before hearing of b's 50
    assert a.core.sweep(net.clock.now()) == 0  # the window is still open
    net.clock.set(T0 + 60 + TIMING.grace)
    assert a.core.sweep(net.clock.now()) == 1
    stats = a.core.stats
    assert stats.windows_closed == {"d": 1}
    assert stats.limits == {"d": 100}
    assert stats.admitted == {"d": 110}
    assert stats.over_admitted == {"d": 10}
    assert len(a.store) == 0
