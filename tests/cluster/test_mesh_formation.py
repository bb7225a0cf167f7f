"""Nodes that know each other as bootstrap peers form a full mesh and share counts."""

from __future__ import annotations

import json

import pytest

from cluster.cluster_harness import BIG_LIMIT, DOMAIN, LIMIT, Cluster, metric
from integration.hivemind_harness import LOOPBACK, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


@pytest.mark.parametrize("name", ["trio", "quintet"])
def test_nodes_form_a_full_mesh(name: str, request: pytest.FixtureRequest) -> None:
    cluster: Cluster = request.getfixturevalue(name)
    cluster.wait_linked()
    for i, node in enumerate(cluster):
        view = node.http("/mesh").json()
        assert view["node"]["id"] == f"n{i}"
        assert view["node"]["address"] == node.mesh_address
        members = {m["id"]: m for m in view["members"]}
        others = {f"n{j}": other for j, other in enumerate(cluster) if j != i}
        assert set(members) == set(others), members
        for member_id, member in members.items():
            assert member["state"] == "alive", member
            assert member["linked"] is True, member
            assert member["address"] == others[member_id].mesh_address
            assert member["incarnation"] > 0
        assert metric(node, "hivemind_mesh_members") == cluster.size - 1


def test_mesh_status_prints_the_members(trio: Cluster) -> None:
    trio.wait_linked()
    target = f"{LOOPBACK}:{trio[0].http_port}"
    result = run_cli("mesh", "status", "--target", target)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"node n0 at {trio[0].mesh_address}"), result.stdout
    for j in (1, 2):
        row = next((line.split() for line in lines if line.startswith(f"n{j} ")), None)
        assert row is not None, result.stdout
        assert row[1:4] == ["alive", trio[j].mesh_address, "yes"], row

    raw = run_cli("mesh", "status", "--target", target, "--json")
    assert raw.returncode == 0, raw.stderr
    members = {m["id"]: m["state"] for m in json.loads(raw.stdout)["members"]}
    assert members == {"n1": "alive", "n2": "alive"}


def test_mesh_status_of_an_unreachable_node_fails() -> None:
    result = run_cli("mesh", "status", "--target", f"{LOOPBACK}:1", "--timeout", "2")
    assert result.returncode == 1
    assert "cannot read" in result.stderr


@pytest.mark.parametrize("name", ["trio", "quintet"])
def test_every_node_sees_what_any_node_counted(name: str, request: pytest.FixtureRequest) -> None:
    cluster: Cluster = request.getfixturevalue(name)
    entries = {"big": f"share-{name}"}
    counted = 0
    for i, node in enumerate(cluster):
        # Bounded: a node may refuse its first hits on a counter that others use, until
        # its own demand is known; refused hits are not counted.
        counted += cluster.clients.hit(node.grpc_target, DOMAIN, entries, times=i + 1)
    assert counted >= 1
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - counted, timeout=5.0)
    # The same on an eventual counter: every hit is admitted and counted everywhere.
    entries = {"eventual": f"share-{name}"}
    for i, node in enumerate(cluster):
        assert cluster.clients.hit(node.grpc_target, DOMAIN, entries, times=i + 1) == i + 1
    cluster.wait_remaining(DOMAIN, entries, LIMIT - sum(range(1, cluster.size + 1)), timeout=5.0)
