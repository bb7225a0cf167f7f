"""Members that crash, restart, leave, get cut off, or do not know the cluster secret.

Every test counts on the `big` rule (1000 per hour, bounded) with a descriptor value
of its own, far from the limit, so what is checked is the merged count: each node's
`limit_remaining` for a check that does not count (hits_addend 0). Expected counts are
what the clients saw admitted: in bounded mode a node's first hits on a counter that
another node is already using can be refused until its own demand is known (about one
sync interval), and refused hits are not counted.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from cluster.cluster_harness import BIG_LIMIT, DOMAIN, RULES, Cluster, metric
from cluster.conftest import ClusterFactory
from integration.hivemind_harness import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

DETECT_TIMEOUT = 10.0  # suspect after a failed probe round (~0.4 s), dead 1 s later
HEAL_TIMEOUT = 25.0  # redial backoff after a partition can reach several seconds


def states(cluster: Cluster, observer: int, member: str) -> tuple[str | None, int | None, bool]:
    m = cluster.members(observer).get(member)
    return (None, None, False) if m is None else (m["state"], m["incarnation"], m["linked"])


def test_a_killed_member_is_declared_dead_and_its_counts_stay(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(RULES, 3)
    cluster.wait_linked()
    entries = {"big": "crash"}
    hit = cluster.clients.hit
    old_incarnation = cluster.members(0)["n2"]["incarnation"]
    counted = hit(cluster[2].grpc_target, DOMAIN, entries, 15)
    assert counted == 15  # the first user of a counter new to the cluster
    counted += hit(cluster[0].grpc_target, DOMAIN, entries, 10)
    counted += hit(cluster[1].grpc_target, DOMAIN, entries, 10)
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - counted)

    cluster[2].kill()  # SIGKILL: no leave, no final sync

    # The survivors suspect it, then declare it dead; what it had synced stays counted.
    seen: dict[int, list[str]] = {0: [], 1: []}

    def dead_everywhere() -> bool:
        for observer, history in seen.items():
            state = states(cluster, observer, "n2")[0]
            assert state is not None, f"n{observer} forgot n2"
            if not history or history[-1] != state:
                history.append(state)
        remaining = [cluster.clients.peek(cluster[i].grpc_target, DOMAIN, entries) for i in (0, 1)]
        assert remaining == [BIG_LIMIT - counted] * 2, f"the survivors' counts moved: {remaining}"
        return all(history[-1] == "dead" for history in seen.values())

    wait_until(dead_everywhere, DETECT_TIMEOUT, interval=0.03, what="n2 dead on n0 and n1")
    for history in seen.values():
        assert history[-1] == "dead"
        assert set(history) <= {"alive", "suspect", "dead"}, history
    assert any("suspect" in history for history in seen.values()), f"never seen suspect: {seen}"

    # The survivors go on counting without it (its share of the budget is released).
    assert hit(cluster[0].grpc_target, DOMAIN, entries, 5) == 5
    counted += 5
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - counted, [0, 1])

    # Restarted on the same ports: a new incarnation that pulls the state before it is ready.
    cluster.start([2])
    first = cluster.clients.peek(cluster[2].grpc_target, DOMAIN, entries)
    assert first == BIG_LIMIT - counted, f"the restarted member's first answer: {first} left"
    counted += hit(cluster[2].grpc_target, DOMAIN, entries, 3)
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - counted)
    cluster.wait_linked()
    for observer in (0, 1):
        state, incarnation, linked = states(cluster, observer, "n2")
        assert (state, linked) == ("alive", True)
        assert incarnation is not None and incarnation > old_incarnation


def test_a_member_that_leaves_hands_over_its_counts(cluster_factory: ClusterFactory) -> None:
    # n2 syncs only every hour, so what it counts below reaches its peers only through
    # the final push of a graceful leave. It counts first: the counter is new to the
    # cluster, so it gets an equal share, and so does n0 after it (n2 reported nothing).
    cluster = cluster_factory(RULES, 3, node_settings={2: {"mesh.sync_interval": "1h"}})
    cluster.wait_linked()
    time.sleep(0.5)  # n2's first tick (which syncs at once, then hourly) is behind us
    entries = {"big": "leave"}
    hit = cluster.clients.hit
    assert hit(cluster[2].grpc_target, DOMAIN, entries, 12) == 12
    assert hit(cluster[0].grpc_target, DOMAIN, entries, 10) == 10
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - 10, [0, 1])
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - 22, [2])
    time.sleep(0.3)  # many sync intervals of n0 and n1: nothing of n2's arrives
    assert cluster.remaining(DOMAIN, entries) == [BIG_LIMIT - 10, BIG_LIMIT - 10, BIG_LIMIT - 22]

    cluster[2].send_signal(signal.SIGTERM)
    assert cluster[2].wait(15.0) == 0
    cluster[2].stop()  # bookkeeping only: it has exited

    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - 22, [0, 1], timeout=5.0)
    for observer in (0, 1):
        assert states(cluster, observer, "n2")[:1] == ("left",)
    # It is not suspected or dialed after leaving: it stays `left`.
    time.sleep(1.5)
    for observer in (0, 1):
        assert states(cluster, observer, "n2")[:1] == ("left",)


def test_a_partition_heals_to_the_same_totals(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(RULES, 3, proxied=True)
    cluster.wait_linked()
    for i, node in enumerate(cluster):  # peers know each other by the proxies' addresses
        for j, member in cluster.members(i).items():
            assert member["address"] == cluster.proxies[int(j[1:])].address
        assert node.http("/mesh").json()["node"]["address"] == cluster.proxies[i].address
    entries = {"big": "partition"}
    hit = cluster.clients.hit
    before = hit(cluster[0].grpc_target, DOMAIN, entries, 5) + hit(cluster[1].grpc_target, DOMAIN, entries, 5)
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - before)

    # {n0} | {n1, n2}: streams across the cut go silent (blackholed), new ones are refused.
    cluster.proxies[0].cut(["n1", "n2"], how="blackhole")
    cluster.proxies[1].cut(["n0"], how="blackhole")
    cluster.proxies[2].cut(["n0"], how="blackhole")

    def split() -> bool:
        return (
            all(states(cluster, 0, peer)[0] == "dead" for peer in ("n1", "n2"))
            and all(states(cluster, i, "n0")[0] == "dead" for i in (1, 2))
            and states(cluster, 1, "n2")[:3:2] == ("alive", True)
        )

    wait_until(split, DETECT_TIMEOUT, interval=0.1, what="each side to declare the other dead")

    # Both sides keep deciding, each on its own count.
    side_a = hit(cluster[0].grpc_target, DOMAIN, entries, 20)
    assert side_a == 20  # alone, n0 holds the whole budget
    side_b = hit(cluster[1].grpc_target, DOMAIN, entries, 7) + hit(cluster[2].grpc_target, DOMAIN, entries, 8)
    assert side_b > 0
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - before - side_a, [0])
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - before - side_b, [1, 2])
    time.sleep(0.3)  # still apart
    assert cluster.remaining(DOMAIN, entries) == [
        BIG_LIMIT - before - side_a,
        BIG_LIMIT - before - side_b,
        BIG_LIMIT - before - side_b,
    ]

    for proxy in cluster.proxies:
        proxy.heal()
    cluster.wait_linked(timeout=HEAL_TIMEOUT)
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - before - side_a - side_b, timeout=5.0)
    # n0 was declared dead by the others: it refuted with a higher incarnation.
    assert cluster.members(1)["n0"]["state"] == "alive"


def _secret(path: Path, text: str) -> str:
    path.write_text(text + "\n", encoding="utf-8")
    return str(path)


def test_a_node_without_the_cluster_secret_is_refused(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    right = _secret(tmp_path / "right.secret", "correct horse battery staple")
    wrong = _secret(tmp_path / "wrong.secret", "incorrect donkey")
    cluster = cluster_factory(
        RULES,
        4,
        node_settings={
            0: {"mesh.secret_file": right},
            1: {"mesh.secret_file": right},
            2: {"mesh.secret_file": wrong},
            3: {},  # no secret at all
        },
    )
    cluster.wait_linked([0, 1])

    def refused() -> bool:
        return all(metric(cluster[i], "hivemind_mesh_refused_peers_total") >= 2 for i in (0, 1))

    # Both outsiders are refused by both members (each side dials the other).
    wait_until(refused, 10.0, interval=0.1, what="n0 and n1 to refuse n2 and n3")
    for outsider in (2, 3):
        members = cluster.members(outsider)
        assert not any(m["linked"] for m in members.values()), members
        assert metric(cluster[outsider], "hivemind_mesh_refused_peers_total") >= 1
    for insider in (0, 1):
        assert set(cluster.members(insider)) == {f"n{1 - insider}"}

    # Counts do not cross: the insiders share theirs, the outsiders keep their own.
    entries = {"big": "secret"}
    assert cluster.clients.hit(cluster[0].grpc_target, DOMAIN, entries, 3) == 3
    assert cluster.clients.hit(cluster[2].grpc_target, DOMAIN, entries, 4) == 4  # alone: all its own
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - 3, [0, 1])
    time.sleep(0.3)
    assert cluster.remaining(DOMAIN, entries) == [BIG_LIMIT - 3, BIG_LIMIT - 3, BIG_LIMIT - 4, BIG_LIMIT]
