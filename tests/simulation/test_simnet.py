"""The simulator itself (mesh/simnet.py): determinism and what each fault does."""

from __future__ import annotations

from hivemind_ratelimit.mesh.simnet import DIAL_EVERY, Faults, SimNetwork
from simulation.workload import DOMAIN, PREFIX, RULES, TIMING


def busy(net: SimNetwork, seconds: float, rate: float = 100.0) -> None:
    end = net.clock.now() + seconds
    while net.clock.now() < end:
        net.request(net.rng.randrange(len(net.nodes)), DOMAIN, [("big", "v")])
        net.run(1.0 / rate)


def fingerprint(seed: int) -> tuple[object, ...]:
    faults = Faults(delay=0.002, jitter=0.01, loss=0.02, duplicate=0.2)
    net = SimNetwork(4, seed, TIMING, RULES, faults=faults)
    busy(net, 1.0)
    bytes_sent = tuple(node.core.stats.bytes_sent for node in net.nodes)
    return net.delivered, net.lost, net.stale, bytes_sent, tuple(net.totals(PREFIX))


def test_the_same_seed_gives_the_same_run() -> None:
    assert fingerprint(11) == fingerprint(11)
    assert fingerprint(11) != fingerprint(12)


def test_a_formed_mesh_is_linked_and_ready_from_the_start() -> None:
    net = SimNetwork(5, 0, TIMING, RULES)
    assert len(net.links) == 10
    assert all(net.ready(i) and len(net.nodes[i].cluster.members) == 4 for i in range(5))


def test_lost_messages_break_their_stream_and_the_dialer_relinks_it() -> None:
    net = SimNetwork(3, 0, TIMING, RULES, faults=Faults(loss=0.05))
    busy(net, 1.0)
    assert net.lost > 0
    net.set_loss(0.0)
    net.run(DIAL_EVERY + 0.1)
    assert len(net.links) == 3 and net.converged(PREFIX)


def test_datagram_loss_leaves_links_up() -> None:
    net = SimNetwork(3, 0, TIMING, RULES, faults=Faults(loss=0.05), break_on_loss=False)
    links = dict(net.links)
    busy(net, 1.0)
    assert net.lost > 0 and net.stale == 0
    assert net.links == links  # the same streams: what was lost stays lost until a full state


def test_duplicates_arrive_twice_and_change_nothing() -> None:
    net = SimNetwork(3, 0, TIMING, RULES, faults=Faults(duplicate=1.0))
    busy(net, 0.5)
    net.run(0.1)
    sent = sum(sum(node.core.stats.sent.values()) for node in net.nodes)
    assert net.delivered == 2 * sent
    assert net.converged(PREFIX)


def test_faults_can_be_set_per_link() -> None:
    net = SimNetwork(3, 0, TIMING, RULES)
    net.set_faults(Faults(loss=1.0), between=(0, 1))
    busy(net, 0.3)
    assert (0, 1) not in net.links and (0, 2) in net.links and (1, 2) in net.links


def test_a_partition_cuts_the_links_between_groups_and_heal_restores_them() -> None:
    net = SimNetwork(5, 0, TIMING, RULES)
    net.partition([[0, 1]])  # 0 and 1 on one side, the rest together on the other
    assert sorted(net.links) == [(0, 1), (2, 3), (2, 4), (3, 4)]
    busy(net, 0.5)
    assert not net.converged(PREFIX)
    net.heal()
    net.run(DIAL_EVERY + 0.1)
    assert len(net.links) == 10 and net.converged(PREFIX)
    assert all(not node.cluster.unreachable for node in net.nodes)
