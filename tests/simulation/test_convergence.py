"""Replicas converge (spec §5.2): whatever the network did — delay, reordering,
duplication, lost messages (which break their stream, as on TCP), a partition and its
heal — once it is quiet every node holds the same slots for every counter, and the
sum is the true number of hits."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hivemind_ratelimit.core.limiter import KEY_SEPARATOR
from hivemind_ratelimit.mesh.protocol import Timing
from hivemind_ratelimit.mesh.simnet import Faults, SimNetwork
from simulation.workload import DOMAIN, PREFIX, RULES

CHAOS = Faults(delay=0.002, jitter=0.02, loss=0.02, duplicate=0.2)  # jitter >> sync interval: reordering
FAST_FAILURE = Timing(sync_interval=0.02, probe_interval=0.25, suspect_timeout=1.0, grace=2.0)


def random_requests(net: SimNetwork, seconds: float, counted: dict[str, int]) -> None:
    """Random requests on random running nodes, for random values, for `seconds`."""
    rng = net.rng
    end = net.clock.now() + seconds
    while net.clock.now() < end:
        running = [node.index for node in net.nodes if node.running]
        value = f"v{rng.randrange(4)}"
        hits = rng.choice([1, 1, 1, 2, 5])
        net.request(rng.choice(running), DOMAIN, [("big", value)], hits)
        counted[value] = counted.get(value, 0) + hits
        net.run(rng.expovariate(100.0))


def assert_converged(net: SimNetwork, counted: dict[str, int]) -> None:
    views = [v for v in net.views(PREFIX) if v is not None]
    assert views and all(v == views[0] for v in views)
    # Counter keys are domain, descriptor path ("big=v0") and window length.
    totals = {
        key.split(KEY_SEPARATOR)[1].partition("=")[2]: sum(s.values()) for (key, _), s in views[0].items()
    }
    assert totals == counted


@pytest.mark.parametrize("seed", range(6))
def test_replicas_converge_after_loss_duplication_reordering_and_a_partition(seed: int) -> None:
    net = SimNetwork(5, seed, FAST_FAILURE, RULES, faults=replace(CHAOS))
    counted: dict[str, int] = {}
    random_requests(net, 1.0, counted)
    groups = [[0, 1], [2, 3, 4]] if seed % 2 else [[0], [1, 2, 3, 4]]
    net.partition(groups)
    # Long enough for each side to declare the other dead (probe + suspect timeout).
    random_requests(net, 2.5, counted)
    assert not net.converged(PREFIX)
    net.heal()
    random_requests(net, 1.0, counted)
    net.set_faults(Faults(delay=0.002))  # quiet network: no new faults
    net.run(2.0)
    assert net.lost > 0 and net.stale > 0  # the faults happened
    assert_converged(net, counted)
    for node in net.nodes:  # and the membership healed too: everyone alive, linked
        assert len(node.core.links) == 4
        assert len(node.cluster.members) == 4


@pytest.mark.parametrize("seed", range(3))
def test_replicas_converge_when_the_mesh_forms_through_real_handshakes(seed: int) -> None:
    net = SimNetwork(8, seed, FAST_FAILURE, RULES, faults=replace(CHAOS), formed=False)
    counted: dict[str, int] = {}
    random_requests(net, 1.5, counted)
    net.set_faults(Faults(delay=0.002))
    net.run(1.5)
    assert all(net.ready(i) for i in range(8))
    assert_converged(net, counted)


def test_the_same_seed_gives_the_same_run() -> None:
    def run(seed: int) -> tuple[object, ...]:
        net = SimNetwork(4, seed, FAST_FAILURE, RULES, faults=replace(CHAOS))
        counted: dict[str, int] = {}
        random_requests(net, 1.0, counted)
        bytes_sent = tuple(node.core.stats.bytes_sent for node in net.nodes)
        return (net.delivered, net.lost, net.stale, bytes_sent, tuple(net.totals(PREFIX)))

    assert run(11) == run(11)
    assert run(11) != run(12)
