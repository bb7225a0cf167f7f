"""Fixtures for the cluster tests: clusters of real Hivemind processes, and proxies.

Every node binds 127.0.0.1 on fresh ports and is stopped in teardown (SIGTERM, then
SIGKILL); every proxy is closed. When a test fails, the log of every node still
running is attached to its report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from cluster.cluster_harness import RULES, Cluster, ProxyHub
from integration.hivemind_harness import ensure_window_room

ClusterFactory = Callable[..., Cluster]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: starts several hivemind processes that form a mesh")


class _Factory:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.clusters: list[Cluster] = []
        self.hub: ProxyHub | None = None

    def __call__(
        self,
        rules: str,
        size: int,
        *,
        settings: Mapping[str, str] | None = None,
        node_settings: Mapping[int, Mapping[str, str]] | None = None,
        proxied: bool = False,
        start: bool = True,
    ) -> Cluster:
        """A cluster of `size` nodes on `rules` (YAML text), started unless `start=False`."""
        if proxied and self.hub is None:
            self.hub = ProxyHub()
        cluster = Cluster(
            self.workdir / f"cluster-{len(self.clusters)}",
            rules,
            size,
            settings=dict(settings or {}),
            node_settings=dict(node_settings or {}),
            proxied=proxied,
            hub=self.hub if proxied else None,
        )
        self.clusters.append(cluster)
        if start:
            cluster.start()
        return cluster

    def close(self) -> None:
        errors = []
        for cluster in self.clusters:
            try:
                cluster.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if self.hub is not None:
            self.hub.close()
        if errors:
            raise errors[0]


@pytest.fixture(autouse=True)
def _window_room() -> None:
    """Hour windows: a test never straddles two (it waits for the next hour if needed)."""
    ensure_window_room(3600, 60.0)


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    factory = _Factory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def module_cluster_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    factory = _Factory(tmp_path_factory.mktemp("cluster"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="package")
def _shared_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Factory]:
    """Clusters shared by the tests of this folder, stopped when its last test is done
    (not at the end of the whole run: idle nodes would still load the machine)."""
    factory = _Factory(tmp_path_factory.mktemp("shared-clusters"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="package")
def trio(_shared_factory: _Factory) -> Cluster:
    """Three nodes shared by the tests that only count on descriptor values of their own."""
    return _shared_factory(RULES, 3)


@pytest.fixture(scope="package")
def quintet(_shared_factory: _Factory) -> Cluster:
    """Five nodes, shared the same way."""
    return _shared_factory(RULES, 5)
