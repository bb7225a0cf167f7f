"""Mutual TLS on the mesh (`mesh.tls`): members with certificates from the cluster's CA
link and share counts; a node whose certificate comes from another CA is refused."""

from __future__ import annotations

from pathlib import Path

import trustme

from cluster.cluster_harness import BIG_LIMIT, DOMAIN, RULES
from cluster.conftest import ClusterFactory
from integration.hivemind_harness import wait_until


def _tls_files(ca: trustme.CA, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca_file": folder / "ca.pem", "cert_file": folder / "cert.pem", "key_file": folder / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca_file"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert_file"]))
    cert.private_key_pem.write_to_path(str(paths["key_file"]))
    return {f"mesh.tls.{name}": str(path) for name, path in paths.items()}


def test_mutual_tls_links_members_of_one_ca_and_refuses_others(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    ours, theirs = trustme.CA(), trustme.CA()
    cluster = cluster_factory(
        RULES,
        3,
        node_settings={
            0: _tls_files(ours, tmp_path / "n0"),
            1: _tls_files(ours, tmp_path / "n1"),
            2: _tls_files(theirs, tmp_path / "n2"),  # a stranger's CA
        },
    )
    cluster.wait_linked([0, 1])
    entries = {"big": "tls"}
    assert cluster.clients.hit(cluster[0].grpc_target, DOMAIN, entries, 7) == 7
    cluster.wait_remaining(DOMAIN, entries, BIG_LIMIT - 7, [0, 1])

    def stranger_alone() -> bool:
        return not any(m["linked"] for m in cluster.members(2).values())

    wait_until(stranger_alone, 5.0, interval=0.2, what="n2 to stay unlinked")
    for insider in (0, 1):
        linked = {name for name, m in cluster.members(insider).items() if m["linked"]}
        assert linked == {f"n{1 - insider}"}
    assert cluster.remaining(DOMAIN, entries)[2] == BIG_LIMIT  # nothing crossed to the stranger
