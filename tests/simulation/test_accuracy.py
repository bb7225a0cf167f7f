"""How close the cluster stays to a limit of 100 per minute (spec §5.3), measured on
the real limiter and mesh code in a deterministic simulation.

Each test prints what it measured (`pytest -s` shows it).
"""

from __future__ import annotations

import pytest

from hivemind_ratelimit.mesh.simnet import START, Faults, SimNetwork
from simulation.workload import LIMIT, RULES, TIMING, WINDOW_END, drive, skewed, uniform


def network(n: int, seed: int, faults: Faults | None = None) -> SimNetwork:
    net = SimNetwork(n, seed, TIMING, RULES, faults=faults or Faults(delay=0.002, jitter=0.002))
    net.run(0.5)
    return net


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("seed", [1, 2])
def test_bounded_uniform_load_admits_the_limit_plus_at_most_one_per_node(n: int, seed: int) -> None:
    net = network(n, seed)
    admitted = drive(net, "bounded", rate=20, until=WINDOW_END - 1, pick=uniform(n))
    print(f"bounded, uniform, {n} nodes, seed {seed}: admitted {admitted} of {LIMIT}")
    assert LIMIT <= admitted <= LIMIT + n  # one cold-start hit per member at most


@pytest.mark.parametrize("n", [3, 5])
def test_bounded_skewed_load_learns_the_demand(n: int) -> None:
    """90% of the requests on one node: the budget moves to it, little is stranded."""
    net = network(n, seed=3)
    admitted = drive(net, "bounded", rate=20, until=WINDOW_END - 1, pick=skewed(n, 0.9))
    print(f"bounded, 90% on one node, {n} nodes: admitted {admitted} of {LIMIT}")
    assert LIMIT - 2 <= admitted <= LIMIT + n


@pytest.mark.parametrize("n", [3, 5])
def test_bounded_heavy_load_right_at_the_window_start(n: int) -> None:
    """200 requests per second from the first instant: the counter is new everywhere."""
    net = network(n, seed=4)
    admitted = drive(net, "bounded", rate=200, until=START + 5, pick=uniform(n))
    print(f"bounded, 200/s burst, {n} nodes: admitted {admitted} of {LIMIT}")
    assert LIMIT <= admitted <= LIMIT + n


@pytest.mark.parametrize("n", [3, 5])
def test_bounded_round_robin_sparse_load_is_not_starved(n: int) -> None:
    """A node asked every n/rate seconds has no demand left by the time it is asked
    again (demand halves every two sync intervals); the floor of one hit per member
    in each split keeps the budget from sitting on whichever node was asked last."""
    net = network(n, seed=5)
    turn = iter(range(10**6))
    admitted = drive(net, "bounded", rate=5, until=WINDOW_END - 1, pick=lambda _: next(turn) % n)
    print(f"bounded, round robin at 5/s, {n} nodes: admitted {admitted} of {LIMIT}")
    assert LIMIT - n <= admitted <= LIMIT + n


@pytest.mark.parametrize("n", [3, 5])
def test_eventual_over_admission_is_what_others_admit_in_one_sync_delay(n: int) -> None:
    """Spec: at most what the other nodes admit during one sync delay."""
    rate, faults = 200.0, Faults(delay=0.005, jitter=0.005)
    net = network(n, seed=6, faults=faults)
    admitted = drive(net, "eventual", rate=rate, until=START + 5, pick=uniform(n))
    # A hit is seen by the others at most one tick, one sync interval and one delay later.
    delay = 2 * TIMING.sync_interval + faults.delay + faults.jitter
    bound = rate * (n - 1) / n * delay + n
    print(f"eventual, 200/s, {n} nodes: admitted {admitted} of {LIMIT} (bound {LIMIT + bound:.0f})")
    assert LIMIT <= admitted <= LIMIT + bound


def test_bounded_partition_shorter_than_the_suspect_timeout_stays_within_the_shares() -> None:
    """Each side keeps the other side's shares reserved until it is declared dead, and
    gets them back when the partition heals."""
    n = 4
    net = network(n, seed=7)
    admitted = drive(net, "bounded", rate=20, until=START + 3, pick=uniform(n))
    net.partition([[0, 1], [2, 3]])
    admitted += drive(net, "bounded", rate=40, until=START + 3 + TIMING.suspect_timeout, pick=uniform(n))
    net.heal()
    admitted += drive(net, "bounded", rate=20, until=WINDOW_END - 1, pick=uniform(n))
    print(f"bounded, 2+2 partition for 5 s, {n} nodes: admitted {admitted} of {LIMIT}")
    assert LIMIT - n <= admitted <= LIMIT + n


@pytest.mark.parametrize("seed", [7, 9])
def test_bounded_a_brief_partition_leaves_no_share_reserved(seed: int) -> None:
    """Streams that break and come back before anyone is suspected change no membership;
    the peers must still count as reachable again (else half the budget stays set aside)."""
    n = 4
    net = network(n, seed)
    net.partition([[0, 1]])
    net.run(0.3)
    net.heal()
    net.run(1.0)
    assert all(not node.cluster.unreachable for node in net.nodes)
    admitted = drive(net, "bounded", rate=20, until=WINDOW_END - 1, pick=uniform(n))
    print(f"bounded, after a 0.3 s partition, {n} nodes, seed {seed}: admitted {admitted} of {LIMIT}")
    assert LIMIT <= admitted <= LIMIT + n
