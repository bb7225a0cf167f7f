"""Crash, restart and graceful leave (spec §5.1, §5.4) in the simulated mesh."""

from __future__ import annotations

from hivemind_ratelimit.core.limiter import Code
from hivemind_ratelimit.mesh.membership import State
from hivemind_ratelimit.mesh.simnet import START, Faults, SimNetwork
from simulation.workload import DOMAIN, LIMIT, PREFIX, RULES, TIMING, uniform

EVENTUAL = [("eventual", "v")]


def network(n: int = 3, seed: int = 0) -> SimNetwork:
    net = SimNetwork(n, seed, TIMING, RULES, faults=Faults(delay=0.002, jitter=0.002))
    net.run(0.5)
    return net


def hit(net: SimNetwork, node: int, times: int, key: str = "eventual") -> int:
    """`times` requests on `node`, 10 ms apart; how many were admitted."""
    admitted = 0
    for _ in range(times):
        admitted += net.request(node, DOMAIN, [(key, "v")]).overall is Code.OK
        net.run(0.01)
    return admitted


def test_a_crashed_node_s_synced_counts_stay_and_only_its_unsent_interval_is_lost() -> None:
    net = network()
    assert hit(net, 2, 30) == 30
    net.run(0.1)  # synced
    assert net.totals(PREFIX) == [30, 30, 30]
    for _ in range(3):  # hits the crashing node never gets to send
        net.request(2, DOMAIN, EVENTUAL)
    net.crash(2)
    net.run(TIMING.probe_interval * 3 + TIMING.suspect_timeout)
    assert net.totals(PREFIX) == [30, 30, None]
    for i in (0, 1):
        assert net.nodes[i].core.membership.state_of("n2") is State.DEAD
        assert net.nodes[i].cluster.members == {f"n{1 - i}"}  # its share is released
    # Its 30 still count against the limit: only 70 more are admitted.
    admitted = sum(hit(net, i, 50) for i in (0, 1))
    net.run(0.1)
    assert admitted == LIMIT - 30
    assert net.converged(PREFIX)


def test_a_restarted_node_gets_full_state_back_and_the_window_does_not_reset() -> None:
    net = network()
    old_slot = net.nodes[2].core.slot
    assert hit(net, 2, 40) + hit(net, 0, 20) == 60
    net.run(0.1)
    net.crash(2)
    net.run(2.0)
    node = net.restart(2)
    assert node.core.slot != old_slot and len(node.store) == 0
    net.run(0.1)
    assert net.ready(2)  # linked, and full state came from every peer (the warm-up)
    [view] = net.views(PREFIX)[2:3]
    assert view is not None
    [slots] = view.values()
    assert slots == {old_slot: 40, net.nodes[0].core.slot: 20}
    for i in (0, 1):  # the others know the new incarnation
        member = net.nodes[i].core.membership.members["n2"]
        assert (member.state, member.incarnation) == (State.ALIVE, node.boot)
    # The window goes on: 40 more are admitted in all, wherever they land.
    assert hit(net, 2, 30) + hit(net, 1, 30) == LIMIT - 60
    net.run(0.1)
    assert net.converged(PREFIX)
    assert net.totals(PREFIX) == [120, 120, 120]  # hits count even when over the limit


def test_a_restart_in_bounded_mode_does_not_reset_the_window_either() -> None:
    net = network(n=4, seed=1)
    pick = uniform(4)
    admitted = 0
    while net.clock.now() < START + 10:
        admitted += net.request(pick(net.rng), DOMAIN, [("bounded", "v")]).overall is Code.OK
        net.run(0.05)
    net.crash(3)
    net.run(1.0)
    net.restart(3)
    net.run(0.1)
    assert net.ready(3)
    while net.clock.now() < START + 59:
        admitted += net.request(pick(net.rng), DOMAIN, [("bounded", "v")]).overall is Code.OK
        net.run(0.05)
    assert LIMIT <= admitted <= LIMIT + 4


def test_graceful_leave_loses_nothing() -> None:
    net = network()
    assert hit(net, 1, 10) == 10
    net.run(0.1)
    for _ in range(5):  # counted, not yet sent when the node is told to stop
        net.request(1, DOMAIN, EVENTUAL)
    net.leave(1)
    net.run(0.1)
    assert not net.nodes[1].running
    assert net.totals(PREFIX) == [15, None, 15]
    for i in (0, 2):
        core = net.nodes[i].core
        assert core.membership.state_of("n1") is State.LEFT
        assert "n1" not in core.links
        assert net.nodes[i].cluster.members == {f"n{2 - i}"}
    # A crash at the same point would lose the unsent hits: the difference leave makes.
    other = network()
    assert hit(other, 1, 10) == 10
    other.run(0.1)
    for _ in range(5):
        other.request(1, DOMAIN, EVENTUAL)
    other.crash(1)
    other.run(0.1)
    assert other.totals(PREFIX) == [10, None, 10]
